//! Whole decoder stacks on the card: the hidden states go up once, every block runs there
//! (norms, Q/K/V, RoPE, attention, output projection, residuals, feed-forward), and only
//! the last block's output and the new tokens' K/V come back — the K/V into the host
//! cache, where decode reads them.
//!
//! The steps mirror `engine::block::run_block`. Per layer, on the compute stream:
//! Q/K/V GEMMs from the normed input (f16) → `qk_prep` (bias, QK-norm, RoPE, scale; K/V as
//! f16 rows of a device cache region) → attention per sequence (`stack_attention.rs`) → output GEMM →
//! `residual_norm` (post-norm, residual add, the FFN norm) → gate/up GEMMs → activation →
//! down GEMM → `residual_norm` (post-norm, residual add, the next layer's attention norm).
//! Each sequence's region holds its cached prefix (uploaded from the host cache) and its new
//! rows; the new rows go down on the copy stream into a ring of pinned slots (every layer's,
//! unless that passes STAGING_BYTES) and the host copies them into the caches while later
//! layers compute. The host enqueues every layer without waiting for the card, except to
//! free a pinned slot when the ring is shorter than the model. Weights are the resident
//! prepared buffers, or streamed layer by layer (`streaming.rs`) for models over the budget.

use crate::gpu::{ensure_dev, ensure_host, err, int, DevBuf, Gpu, HostBuf, KArg, Res};
use crate::kernels::{activation_kernel, ATTN_MAX_DIM};
use crate::phases::Phases;
use crate::stack_attention::{attention, flash_kernel, Scores, SeqAttention, SCORE_BYTES};
use crate::streaming::Streamer;
use cudarc::driver::result as drv;
use cudarc::driver::CudaEvent;
use engine::arch::{Config, RopeStyle};
use engine::block::StackInput;
use engine::kv_cache::KvCache;
use rayon::prelude::*;

/// Device and pinned buffers reused across calls (grown on demand).
#[derive(Default)]
pub(crate) struct Buffers {
    x: Option<DevBuf>,
    h: Option<DevBuf>,
    q: Option<DevBuf>,
    k: Option<DevBuf>,
    v: Option<DevBuf>,
    q_h: Option<DevBuf>,
    scores: Option<DevBuf>,
    probs: Option<DevBuf>,
    att_h: Option<DevBuf>,
    o: Option<DevBuf>,
    ffn: Option<DevBuf>,
    region: [Option<DevBuf>; 2],
    small: Option<DevBuf>,
    staging: Option<HostBuf>,
    /// Pinned hidden states, up and down.
    x_host: Option<HostBuf>,
    /// Weight slots of streamed stacks.
    streaming: crate::streaming::Buffers,
    /// Per pinned slot: its rows are down (copy stream).
    copied: Vec<CudaEvent>,
    /// The rows of the current layer are ready to go down (compute stream).
    prepped: Option<CudaEvent>,
    /// Time the phases of each call (`CudaOptions::profile_stack`).
    profile: bool,
    /// Queries per block of the flash-attention kernels where they fit, 0 = none
    /// (`CudaOptions::flash_attention`).
    flash: usize,
    /// The last profiled call's card time per phase, ms.
    pub(crate) phases: Vec<(&'static str, f64)>,
}

/// Tokens per feed-forward pass: bounds the gate/up/product buffers (10 bytes × n_ff per token).
const FFN_CHUNK: usize = 4096;
impl Buffers {
    /// Empty buffers; `profile` times the card's phases of every call, `flash` picks the
    /// flash-attention kernels where they fit.
    pub(crate) fn new(profile: bool, flash: usize) -> Self {
        Buffers { profile, flash, ..Default::default() }
    }
}

/// Bytes of pinned memory for K/V on their way down (a slot per layer within this).
const STAGING_BYTES: usize = 1 << 30;
/// Threads of the row kernels.
pub(crate) const ROW_THREADS: u32 = 256;

/// Whether the kernels can run this model's blocks.
pub(crate) fn check(c: &Config) -> Result<(), String> {
    if c.head_dim > ATTN_MAX_DIM || c.head_dim_v > ATTN_MAX_DIM {
        return Err(format!("head dimension {}/{} above {ATTN_MAX_DIM}", c.head_dim, c.head_dim_v));
    }
    if c.rope_dims > c.head_dim || !c.rope_dims.is_multiple_of(2) {
        return Err(format!("RoPE over {} of {} dimensions", c.rope_dims, c.head_dim));
    }
    for window in [None, c.swa_window] {
        let s = engine::cpu::attention::AttnShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            head_dim_v: c.head_dim_v,
            window,
        };
        crate::attention::check(&s)?;
    }
    int(c.n_embd.max(c.n_ff).max(c.n_head * c.head_dim))?;
    Ok(())
}

/// The small per-layer vectors (norm weights, biases), packed for one upload: offsets in floats.
struct Vectors {
    data: Vec<f32>,
    /// Per layer: attn_norm, ffn_norm, q_norm, k_norm, post_attn, post_ffn, bq, bk, bv.
    at: Vec<[Option<usize>; 9]>,
}

impl Vectors {
    fn pack(input: &StackInput<'_>) -> Vectors {
        let mut data = Vec::new();
        let mut put = |v: Option<&Vec<f32>>| {
            v.map(|v| {
                let at = data.len();
                data.extend_from_slice(v);
                at
            })
        };
        let at = input
            .model
            .layers
            .iter()
            .map(|l| {
                [
                    put(Some(&l.attn_norm)),
                    put(Some(&l.ffn_norm)),
                    put(l.q_norm.as_ref()),
                    put(l.k_norm.as_ref()),
                    put(l.post_attn_norm.as_ref()),
                    put(l.post_ffn_norm.as_ref()),
                    put(l.bq.as_ref()),
                    put(l.bk.as_ref()),
                    put(l.bv.as_ref()),
                ]
            })
            .collect();
        Vectors { data, at }
    }
}

/// Runs every block of `input.model` over `x` (`[n, n_embd]`, in place) with the weights
/// resident at `weights[layer]` (Q, K, V, O, gate, up, down: f16 `[rows, cols]`), storing
/// the new K/V rows into `caches`.
pub(crate) fn run(gpu: &Gpu, b: &mut Buffers, input: &StackInput<'_>, weights: Option<&[[u64; 7]]>, x: &mut [f32], caches: &mut [&mut KvCache]) -> Res<()> {
    let c = &input.model.config;
    check(c)?;
    let n = input.n();
    if n == 0 {
        return Ok(());
    }
    if x.len() != n * c.n_embd || caches.len() != input.spans.len() || weights.is_some_and(|w| w.len() != c.n_layer) {
        return Err(format!("stack buffers do not match {n} tokens of {} sequences", input.spans.len()));
    }
    gpu.bind()?;
    let r = run_inner(gpu, b, input, weights, x, caches);
    if r.is_err() {
        gpu.sync_all();
    }
    r
}

fn run_inner(gpu: &Gpu, b: &mut Buffers, input: &StackInput<'_>, weights: Option<&[[u64; 7]]>, x: &mut [f32], caches: &mut [&mut KvCache]) -> Res<()> {
    let mut prof = Phases::start(gpu, b.profile)?;
    let c = &input.model.config;
    let n = input.n();
    let (d, ff) = (c.n_embd, c.n_ff);
    let (qd, kvd, vd, od) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v, c.n_head * c.head_dim_v);

    // Each sequence's region of cache rows: its prefix, then its new tokens.
    let pos0: Vec<usize> = input.spans.iter().map(|s| input.positions[s.start]).collect();
    let mut region_at = Vec::with_capacity(input.spans.len());
    let mut rows = 0;
    for (s, &p0) in input.spans.iter().zip(&pos0) {
        region_at.push(rows);
        rows += p0 + s.len();
    }
    let mut kv_row = vec![0i32; n];
    let mut pos = vec![0i32; n];
    for ((s, &p0), &at) in input.spans.iter().zip(&pos0).zip(&region_at) {
        for t in s.clone() {
            if input.positions[t] != p0 + (t - s.start) {
                return Err("a sequence's positions must be consecutive".into());
            }
            pos[t] = int(input.positions[t])?;
            kv_row[t] = int(at + input.positions[t])?;
        }
    }
    let rope_flat = |r: &[(f32, f32)]| -> Vec<f32> { r.iter().flat_map(|&(s, c)| [s, c]).collect() };
    let (rope_g, rope_l) = (rope_flat(input.rope_global), rope_flat(input.rope_local));
    let vecs = Vectors::pack(input);

    // Device memory: the small inputs in one buffer (f32/i32 words), then the activations.
    let small_words = vecs.data.len() + rope_g.len() + rope_l.len() + 2 * n;
    let small = ensure_dev(&gpu.ctx, &mut b.small, small_words * 4)?;
    let (vec_at, rope_g_at) = (small, small + (vecs.data.len() * 4) as u64);
    let rope_l_at = rope_g_at + (rope_g.len() * 4) as u64;
    let pos_at = rope_l_at + (rope_l.len() * 4) as u64;
    let kv_row_at = pos_at + (n * 4) as u64;
    let chunk = n.min(FFN_CHUNK);
    let d_x = ensure_dev(&gpu.ctx, &mut b.x, n * d * 4)?;
    // The hidden states cross through pinned memory (full bus speed), copied on every core.
    let x_pinned = ensure_host(&gpu.ctx, &mut b.x_host, n * d * 4, false)?.slice_mut::<f32>(n * d);
    par_copy(x_pinned, x);
    let x_pinned_ptr = x_pinned.as_mut_ptr();
    let d_h = ensure_dev(&gpu.ctx, &mut b.h, n * d * 2)?;
    let d_q = ensure_dev(&gpu.ctx, &mut b.q, n * qd * 4)?;
    let d_k = ensure_dev(&gpu.ctx, &mut b.k, n * kvd * 4)?;
    let d_v = ensure_dev(&gpu.ctx, &mut b.v, n * vd * 4)?;
    let d_q_h = ensure_dev(&gpu.ctx, &mut b.q_h, n * qd * 2)?;
    // Attention works through query chunks, so scores for every key of the longest sequence
    // stay within SCORE_BYTES.
    let ld_max = input.spans.iter().zip(&pos0).map(|(s, p0)| p0 + s.len()).max().unwrap_or(1).next_multiple_of(8);
    let longest = input.spans.iter().map(|s| s.len()).max().unwrap_or(1);
    let qc = (SCORE_BYTES / (c.n_head * ld_max * 6)).clamp(16, 4096).min(longest);
    // The flash kernels need no score buffers.
    let flash = if flash_kernel(gpu, &input.attn_shape(0), b.flash).is_some() { b.flash } else { 0 };
    let score_elems = if flash > 0 { 0 } else { c.n_head * qc * ld_max };
    let scores = Scores {
        s: ensure_dev(&gpu.ctx, &mut b.scores, score_elems * 4)?,
        p: ensure_dev(&gpu.ctx, &mut b.probs, score_elems * 2)?,
        chunk: qc,
    };
    let d_att_h = ensure_dev(&gpu.ctx, &mut b.att_h, n * od * 2)?;
    let d_o = ensure_dev(&gpu.ctx, &mut b.o, n * d * 4)?;
    let d_ffn = ensure_dev(&gpu.ctx, &mut b.ffn, chunk * ff * 10)?;
    let regions = [
        ensure_dev(&gpu.ctx, &mut b.region[0], rows * (kvd + vd) * 2)?,
        ensure_dev(&gpu.ctx, &mut b.region[1], rows * (kvd + vd) * 2)?,
    ];
    let staged = n * (kvd + vd);
    let slots = (STAGING_BYTES / (staged * 2)).clamp(2, c.n_layer.max(2));
    ensure_host(&gpu.ctx, &mut b.staging, slots * staged * 2, false)?;
    while b.copied.len() < slots {
        b.copied.push(gpu.event(false)?);
    }
    if b.prepped.is_none() {
        b.prepped = Some(gpu.event(false)?);
    }

    let stream = gpu.s_comp.cu_stream();
    unsafe {
        drv::memcpy_htod_async(vec_at, &vecs.data[..], stream).map_err(err("upload norms"))?;
        drv::memcpy_htod_async(rope_g_at, &rope_g[..], stream).map_err(err("upload RoPE"))?;
        drv::memcpy_htod_async(rope_l_at, &rope_l[..], stream).map_err(err("upload RoPE"))?;
        drv::memcpy_htod_async(pos_at, &pos[..], stream).map_err(err("upload positions"))?;
        drv::memcpy_htod_async(kv_row_at, &kv_row[..], stream).map_err(err("upload rows"))?;
        drv::memcpy_htod_async(d_x, std::slice::from_raw_parts(x_pinned_ptr as *const f32, n * d), stream).map_err(err("upload hidden states"))?;
    }
    let vptr = |il: usize, which: usize| vecs.at[il][which].map_or(0, |at| vec_at + (at * 4) as u64);
    let (eps, dd) = (c.norm_eps, int(d)?);
    // The first layer's attention norm: h = f16(rmsnorm(x) * w).
    gpu.launch("residual_norm", int(n)? as u32, ROW_THREADS, &[KArg::P(d_x), KArg::P(0), KArg::P(0), KArg::P(vptr(0, 0)), KArg::P(d_h), KArg::I(dd), KArg::F(eps)])?;
    Phases::mark(&mut prof, gpu, "upload + norm")?;

    // Layer `il`'s new K/V rows into the caches, once down in its pinned slot (a ring shorter
    // than the model: the slot is needed again).
    let drain = |b: &mut Buffers, il: usize, caches: &mut [&mut KvCache]| -> Res<()> {
        let slot = il % slots;
        let host = b.staging.as_mut().expect("allocated above").slice_mut::<u16>(slots * staged);
        let mut kv: Vec<_> = caches.iter_mut().map(|c| c.layers_mut().swap_remove(il)).collect();
        land_rows(gpu, &b.copied[slot], &host[slot * staged..(slot + 1) * staged], &mut kv, input, (kvd, vd))
    };

    // Streamed weights: the first layer's now, each next one while the card computes.
    let streamer = match weights {
        Some(_) => None,
        None => {
            let s = Streamer::new(gpu, &mut b.streaming, input)?;
            s.stage(gpu, &mut b.streaming, 0)?;
            Some(s)
        }
    };
    for il in 0..c.n_layer {
        if il >= slots {
            // Frees this layer's pinned slot.
            drain(b, il - slots, caches)?;
        }
        let [wq, wk, wv, wo, wg, wu, wd] = match (weights, &streamer) {
            (Some(w), _) => w[il],
            (None, Some(s)) => s.weights(gpu, &b.streaming, il)?,
            (None, None) => unreachable!("a streamer exists when weights are not resident"),
        };
        let slot = il % slots;
        let region = regions[il % 2];
        let (reg_k, reg_v) = (region, region + (rows * kvd * 2) as u64);
        if il >= 2 {
            // The region's rows from two layers back must be down before it is refilled.
            gpu.s_comp.wait(&b.copied[(il - 2) % slots]).map_err(err("wait"))?;
        }
        // Cached prefixes (earlier turns of a conversation) from the host cache.
        for ((cache, &p0), &at) in caches.iter().zip(&pos0).zip(&region_at) {
            if p0 > 0 {
                let (kc, vc) = cache.layer(il);
                let bits = |h: &[half::f16]| -> &[u16] { unsafe { std::slice::from_raw_parts(h.as_ptr() as *const u16, h.len()) } };
                unsafe {
                    drv::memcpy_htod_async(reg_k + (at * kvd * 2) as u64, bits(&kc[..p0 * kvd]), stream).map_err(err("upload cached keys"))?;
                    drv::memcpy_htod_async(reg_v + (at * vd * 2) as u64, bits(&vc[..p0 * vd]), stream).map_err(err("upload cached values"))?;
                }
            }
        }
        gpu.gemm(wq, d_h, d_q, qd, d, n, false)?;
        gpu.gemm(wk, d_h, d_k, kvd, d, n, false)?;
        gpu.gemm(wv, d_h, d_v, vd, d, n, false)?;
        Phases::mark(&mut prof, gpu, "Q/K/V GEMMs")?;
        let rope_at = if c.swa_layers[il] { rope_l_at } else { rope_g_at };
        gpu.launch(
            "qk_prep",
            int(n)? as u32,
            ROW_THREADS,
            &[
                KArg::P(d_q),
                KArg::P(d_q_h),
                KArg::P(d_k),
                KArg::P(d_v),
                KArg::P(vptr(il, 6)),
                KArg::P(vptr(il, 7)),
                KArg::P(vptr(il, 8)),
                KArg::P(vptr(il, 2)),
                KArg::P(vptr(il, 3)),
                KArg::P(rope_at),
                KArg::P(kv_row_at),
                KArg::P(reg_k),
                KArg::P(reg_v),
                KArg::I(int(c.n_head)?),
                KArg::I(int(c.n_head_kv)?),
                KArg::I(int(c.head_dim)?),
                KArg::I(int(c.head_dim_v)?),
                KArg::I(int(c.rope_dims)?),
                KArg::I((c.rope_style == RopeStyle::Neox) as i32),
                KArg::F(eps),
                KArg::F(c.attn_scale),
            ],
        )?;
        Phases::mark(&mut prof, gpu, "qk_prep")?;
        // The new rows go down on the copy stream while attention and the rest run.
        let prepped = b.prepped.as_ref().expect("created above");
        prepped.record(&gpu.s_comp).map_err(err("record"))?;
        gpu.s_d2h.wait(prepped).map_err(err("wait"))?;
        let host = b.staging.as_mut().expect("allocated above").slice_mut::<u16>(slots * staged);
        let (hk, hv) = host[slot * staged..(slot + 1) * staged].split_at_mut(n * kvd);
        for (s, (&p0, &at)) in input.spans.iter().zip(pos0.iter().zip(&region_at)) {
            let row = at + p0;
            unsafe {
                drv::memcpy_dtoh_async(&mut hk[s.start * kvd..s.end * kvd], reg_k + (row * kvd * 2) as u64, gpu.s_d2h.cu_stream())
                    .map_err(err("download keys"))?;
                drv::memcpy_dtoh_async(&mut hv[s.start * vd..s.end * vd], reg_v + (row * vd * 2) as u64, gpu.s_d2h.cu_stream())
                    .map_err(err("download values"))?;
            }
        }
        b.copied[slot].record(&gpu.s_d2h).map_err(err("record"))?;

        let shape = input.attn_shape(il);
        for ((s, &p0), &at) in input.spans.iter().zip(&pos0).zip(&region_at) {
            let seq = SeqAttention {
                q_h: d_q_h + (s.start * qd * 2) as u64,
                k: reg_k + (at * kvd * 2) as u64,
                v: reg_v + (at * vd * 2) as u64,
                pos: pos_at + (s.start * 4) as u64,
                out: d_att_h + (s.start * od * 2) as u64,
                len: s.len(),
                pos0: p0,
            };
            attention(gpu, &shape, &seq, &scores, flash, &mut prof)?;
        }
        gpu.gemm(wo, d_att_h, d_o, d, od, n, false)?;
        gpu.launch("residual_norm", n as u32, ROW_THREADS, &[KArg::P(d_x), KArg::P(d_o), KArg::P(vptr(il, 4)), KArg::P(vptr(il, 1)), KArg::P(d_h), KArg::I(dd), KArg::F(eps)])?;
        Phases::mark(&mut prof, gpu, "output GEMM + norm")?;
        for c0 in (0..n).step_by(chunk) {
            let len = chunk.min(n - c0);
            let (gate, up, mid) = (d_ffn, d_ffn + (len * ff * 4) as u64, d_ffn + (len * ff * 8) as u64);
            let h_in = d_h + (c0 * d * 2) as u64;
            gpu.gemm(wg, h_in, gate, ff, d, len, false)?;
            gpu.gemm(wu, h_in, up, ff, d, len, false)?;
            gpu.launch_activation(activation_kernel(c.activation), gate, up, mid, len * ff)?;
            gpu.gemm(wd, mid, d_o + (c0 * d * 4) as u64, d, ff, len, false)?;
        }
        Phases::mark(&mut prof, gpu, "feed-forward")?;
        if let Some(s) = &streamer {
            s.done(gpu, &b.streaming, il)?;
            if il + 1 < c.n_layer {
                s.stage(gpu, &mut b.streaming, il + 1)?;
            }
        }
        let next_norm = if il + 1 < c.n_layer { vptr(il + 1, 0) } else { 0 };
        gpu.launch("residual_norm", n as u32, ROW_THREADS, &[KArg::P(d_x), KArg::P(d_o), KArg::P(vptr(il, 5)), KArg::P(next_norm), KArg::P(d_h), KArg::I(dd), KArg::F(eps)])?;
    }
    // The remaining K/V rows go into the caches while the last layers still compute: a
    // thread per layer, since first writes to a cache's pages fault them in one by one.
    let rest = c.n_layer.saturating_sub(slots);
    let host = b.staging.as_mut().expect("allocated above").slice_mut::<u16>(slots * staged);
    let host: &[u16] = host;
    let mut per_cache: Vec<Vec<(&mut [u16], &mut [u16])>> = caches.iter_mut().map(|c| c.layers_mut()).collect();
    let mut per_layer: Vec<Vec<(&mut [u16], &mut [u16])>> = (0..c.n_layer).map(|_| Vec::new()).collect();
    for layers in per_cache.iter_mut() {
        for (il, kv) in layers.drain(..).enumerate() {
            per_layer[il].push(kv);
        }
    }
    let copied = &b.copied;
    per_layer.into_par_iter().enumerate().skip(rest).try_for_each(|(il, mut kv)| {
        let slot = il % slots;
        land_rows(gpu, &copied[slot], &host[slot * staged..(slot + 1) * staged], &mut kv, input, (kvd, vd))
    })?;
    let x_pinned = b.x_host.as_mut().expect("allocated above").slice_mut::<f32>(n * d);
    unsafe { drv::memcpy_dtoh_async(&mut x_pinned[..], d_x, stream) }.map_err(err("download hidden states"))?;
    gpu.s_comp.synchronize().map_err(err("decoder stack"))?;
    // Only now, with everything done, does x change (a failure leaves it as it was).
    par_copy(x, x_pinned);
    if let Some(p) = prof {
        b.phases = p.report(n)?;
    }
    Ok(())
}

/// Waits until a layer's new K/V rows are down in their pinned slot (`rows`: K `[n, kvd]`
/// then V `[n, vd]`), then copies each sequence's rows to their positions in its cache
/// storage for that layer (`kv[i]`: sequence i's K and V).
fn land_rows(gpu: &Gpu, copied: &CudaEvent, rows: &[u16], kv: &mut [(&mut [u16], &mut [u16])], input: &StackInput<'_>, (kvd, vd): (usize, usize)) -> Res<()> {
    gpu.bind()?;
    copied.synchronize().map_err(err("K/V write-back"))?;
    let (hk, hv) = rows.split_at(input.n() * kvd);
    for ((k, v), s) in kv.iter_mut().zip(input.spans) {
        let p0 = input.positions[s.start];
        k[p0 * kvd..(p0 + s.len()) * kvd].copy_from_slice(&hk[s.start * kvd..s.end * kvd]);
        v[p0 * vd..(p0 + s.len()) * vd].copy_from_slice(&hv[s.start * vd..s.end * vd]);
    }
    Ok(())
}

/// `dst = src` in pieces across the thread pool.
fn par_copy(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s));
}
