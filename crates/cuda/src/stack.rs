//! Whole decoder stacks on the card: the hidden states go up once, every block runs there
//! (norms, Q/K/V, RoPE, attention, output projection, residuals, feed-forward), and only
//! the last block's output and the new tokens' K/V come back — the K/V into the host
//! cache too, for steps the CPU takes.
//!
//! The card implements the steps of `engine::block::run_layers` (`CardSteps`). Per layer, on the compute stream:
//! Q/K/V GEMMs from the normed input (f16) → `qk_prep` (bias, QK-norm, RoPE, scale and temperature; K/V as
//! the batch's f16 rows in a scratch region) → attention per sequence (`stack_attention.rs`) → output GEMM →
//! `residual_norm` (post-norm, residual add, the FFN norm) → gate/up GEMMs → activation →
//! down GEMM → `residual_norm` (post-norm, residual add, the next layer's attention norm).
//! Each sequence keeps its rows on the card between calls (`device_rows.rs`: only rows the
//! card lacks go up, so a decode step uploads nothing but its token); `qk_prep` writes the
//! batch's new rows into a scratch region, from which they are copied into each sequence's
//! rows and go down on the copy stream into a ring of pinned slots (every layer's, unless
//! that passes STAGING_BYTES), and the host copies them into the caches while later layers
//! compute. The host enqueues every layer without waiting for the card, except to
//! free a pinned slot when the ring is shorter than the model. Weights are the resident
//! prepared buffers, or streamed layer by layer (`streaming.rs`) for models over the budget.

use crate::gpu::{ensure_dev, ensure_host, err, int, DevBuf, Gpu, HostBuf, KArg, Res};
use crate::kernels::{activation_kernel, ATTN_MAX_DIM};
use crate::phases::Phases;
use crate::stack_attention::{attention, flash_kernel, Scores, SeqAttention, SCORE_BYTES};
use crate::streaming::Streamer;
use crate::weights::DevWeight;
use cudarc::driver::result as drv;
use cudarc::driver::CudaEvent;
use engine::arch::RopeStyle;
use engine::block::{run_layers, BlockSteps};
use engine::matrix::{KvRows, StackInput};
use engine::plan::{Attention, DenseFfn, FeedForwardPart, Layer, Mixer, MoeFfn, RopeKind, VectorId, VectorRole, WeightRole};
use rayon::prelude::*;
use std::collections::HashMap;

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
    /// A decode step's new K/V rows, every layer's in a region of its own.
    step_rows: Option<DevBuf>,
    /// A decode step's attention partials (`decode_attention.rs`).
    partials: Option<DevBuf>,
    /// The experts' scratch (`stack_moe.rs`).
    moe: crate::stack_moe::Buffers,
    /// The Gated DeltaNet layers' scratch (`stack_delta.rs`).
    delta: crate::stack_delta::Buffers,
    /// The last decode step's graph (`graph.rs`).
    pub(crate) graphs: crate::graph::StepGraphs,
    /// Which paths built without a GPU are on.
    untried: crate::Untried,
    small: Option<DevBuf>,
    /// The norm weights and biases as last uploaded (the same every call of a model).
    vectors: Option<(Vectors, DevBuf)>,
    /// f16 expansions of weights kept only as raw blocks (one at a time: the stream orders them).
    expand: Option<DevBuf>,
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
pub(crate) const FFN_CHUNK: usize = 4096;
impl Buffers {
    /// Empty buffers; `profile` times the card's phases of every call, `flash` picks the
    /// flash-attention kernels where they fit, `graphs` replays decode steps as CUDA graphs.
    pub(crate) fn new(profile: bool, flash: usize, graphs: bool, untried: crate::Untried) -> Self {
        let graphs = if graphs { Default::default() } else { crate::graph::StepGraphs::off("turned off") };
        Buffers { profile, flash, graphs, untried, ..Default::default() }
    }
}

/// Bytes of pinned memory for K/V on their way down (a slot per layer within this).
const STAGING_BYTES: usize = 1 << 30;
/// Threads of the row kernels.
pub(crate) const ROW_THREADS: u32 = 256;

/// Whether the kernels can run these layers.
pub(crate) fn check(layers: &[Layer], untried: crate::Untried) -> Result<(), String> {
    for l in layers {
        let mixer_width = match &l.mixer {
            Mixer::DeltaNet(d) => {
                crate::stack_delta::check(d, untried.delta_net)?;
                d.shape.conv_dim().max(d.shape.value_dim())
            }
            Mixer::Attention(a) => {
                let s = &a.shape;
                if s.head_dim > ATTN_MAX_DIM || s.head_dim_v > ATTN_MAX_DIM {
                    return Err(format!("head dimension {}/{} above {ATTN_MAX_DIM}", s.head_dim, s.head_dim_v));
                }
                if a.rope_dims > s.head_dim || !a.rope_dims.is_multiple_of(2) {
                    return Err(format!("RoPE over {} of {} dimensions", a.rope_dims, s.head_dim));
                }
                crate::attention::check(s)?;
                // gpt-oss's sinks and output bias; gemma4's shared or value-normed K/V.
                if !a.is_plain() {
                    return Err("attention with sinks, output biases, shared or normed values runs op by op, not as a stack on the card".into());
                }
                s.n_head * s.head_dim.max(s.head_dim_v)
            }
        };
        let ff_rows = match &l.ffn {
            FeedForwardPart::Dense(f) if !f.block().is_plain() => {
                return Err(format!("no kernels for {:?} feed-forward blocks with biases {}", f.activation, f.biases.is_some()));
            }
            FeedForwardPart::Dense(f) => f.gate.rows,
            // Experts: routed on the host from the card's router logits (`stack_moe.rs`).
            FeedForwardPart::Moe(m) => {
                crate::stack_moe::check(m, untried.moe)?;
                m.experts.iter().map(|e| e.gate.rows).max().unwrap_or(0)
            }
        };
        // gemma4's per-layer inputs and output scales.
        if l.per_layer.is_some() || l.out_scale.is_some() {
            return Err("per-layer inputs and layer output scales run op by op, not as a stack on the card".into());
        }
        int(l.n_embd().max(ff_rows).max(mixer_width))?;
    }
    Ok(())
}

/// Whether any of these layers has a mixture of experts (routed on the host; never streamed).
pub(crate) fn has_experts(layers: &[Layer]) -> bool {
    layers.iter().any(|l| matches!(l.ffn, FeedForwardPart::Moe(_)))
}

/// A layer's weights on the card, by role.
pub(crate) struct LayerWeights(pub(crate) Vec<(WeightRole, DevWeight)>);

/// What a part of a layer kept in its own module (experts, Gated DeltaNet) works on: the
/// normed input `h` (f16 `[n, n_embd]`), its output `o` (f32 `[n, n_embd]`), and the layer's
/// weights and vectors (device addresses, 0 when absent) by role.
pub(crate) struct PartIo<'a> {
    pub(crate) h: u64,
    pub(crate) o: u64,
    pub(crate) n: usize,
    pub(crate) weights: &'a LayerWeights,
    pub(crate) vector: &'a dyn Fn(VectorRole) -> u64,
}

impl LayerWeights {
    /// Every weight of `role`, in order (the experts').
    pub(crate) fn all(&self, role: WeightRole) -> Vec<DevWeight> {
        self.0.iter().filter(|(r, _)| *r == role).map(|&(_, p)| p).collect()
    }

    pub(crate) fn get(&self, role: WeightRole) -> Res<DevWeight> {
        self.0.iter().find(|(r, _)| *r == role).map(|&(_, p)| p).ok_or_else(|| format!("no {role:?} weight on the card"))
    }
}

/// The small per-layer vectors (norm weights, biases), packed for one upload: offsets in floats.
struct Vectors {
    data: Vec<f32>,
    at: HashMap<VectorId, usize>,
}

impl Vectors {
    fn pack(layers: &[Layer]) -> Vectors {
        let (mut data, mut at) = (Vec::new(), HashMap::new());
        for (il, l) in layers.iter().enumerate() {
            for (role, v) in l.vectors() {
                at.insert((il, role), data.len());
                data.extend_from_slice(v);
            }
        }
        Vectors { data, at }
    }

    /// Whether these are `layers`' vectors, value for value (read in place: no copy).
    fn holds(&self, layers: &[Layer]) -> bool {
        let mut count = 0;
        let same = layers.iter().enumerate().all(|(il, l)| {
            l.vectors().all(|(role, v)| {
                count += 1;
                self.at.get(&(il, role)).is_some_and(|&at| self.data.get(at..at + v.len()) == Some(v))
            })
        });
        same && count == self.at.len()
    }
}

/// Runs every block of `input.layers` over `x` (`[n, n_embd]`, in place) with the weights
/// resident at `weights[layer]`, or streamed when `None`, storing the new K/V rows into `caches`.
pub(crate) fn run(gpu: &Gpu, b: &mut Buffers, input: &StackInput<'_>, weights: Option<&[LayerWeights]>, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Res<()> {
    check(input.layers, b.untried)?;
    let n = input.n();
    if n == 0 || input.layers.is_empty() {
        return Ok(());
    }
    let d = input.layers[0].n_embd();
    if x.len() != n * d || caches.len() != input.spans.len() || weights.is_some_and(|w| w.len() != input.layers.len()) {
        return Err(format!("stack buffers do not match {n} tokens of {} sequences", input.spans.len()));
    }
    if weights.is_none() && has_experts(input.layers) {
        return Err("mixture-of-experts stacks run with their weights resident on the card only".into());
    }
    gpu.bind()?;
    let r = run_inner(gpu, b, input, weights, x, caches);
    if r.is_err() {
        gpu.sync_all();
    }
    r
}

fn run_inner(gpu: &Gpu, b: &mut Buffers, input: &StackInput<'_>, weights: Option<&[LayerWeights]>, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Res<()> {
    let prof = Phases::start(gpu, b.profile)?;
    let mut steps = CardSteps::new(gpu, b, input, weights, x, caches, prof)?;
    let all = 0..input.layers.len();
    if steps.geo.graph {
        let mut graphs = std::mem::take(&mut steps.b.graphs);
        let r = crate::graph::run_step(gpu, &mut graphs, || run_layers(&mut steps, input.layers, all.clone()));
        steps.b.graphs = graphs;
        r?;
    } else {
        run_layers(&mut steps, input.layers, all)?;
    }
    steps.finish(x)
}

/// Sizes of one call, fixed before the first layer.
struct Geometry {
    n: usize,
    d: usize,
    /// Per sequence: its first new position, and per layer its K and V rows on the card.
    pos0: Vec<usize>,
    seq_rows: Vec<Vec<(u64, u64)>>,
    /// Per sequence: the rows its copy on the card has room for.
    seq_cap: Vec<usize>,
    /// Pinned slots for K/V rows on their way down, and elements per slot.
    slots: usize,
    staged: usize,
    /// Tokens per feed-forward pass.
    chunk: usize,
    /// Queries per flash-attention block (0: the cuBLAS path).
    flash: usize,
    /// A decode step of resident weights: every layer's new rows in a region of their own,
    /// down together after the last layer (no copy stream, nothing to wait for between layers).
    step: bool,
    /// The step's launches replayed as a CUDA graph (flash attention, no profiling).
    graph: bool,
}

/// Device addresses of one call's buffers.
struct Device {
    x: u64,
    h: u64,
    q: u64,
    k: u64,
    v: u64,
    q_h: u64,
    att_h: u64,
    o: u64,
    ffn: u64,
    /// The new K/V rows, `[n, kvd]` then `[n, vd]`: layer `il`'s in `regions[il % len]`, two
    /// alternating by parity (a layer's rows go down while the next fills the other), or one
    /// per layer in a decode step.
    regions: Vec<u64>,
    vec_at: u64,
    rope_g: u64,
    rope_l: u64,
    pos: u64,
    scores: Scores,
}

/// The block's steps on the card (see `engine::block::run_layers`): the residual stream
/// `x`, the normed input `h` (f16) and each part's output `o` stay on the card.
struct CardSteps<'a, 'c> {
    gpu: &'a Gpu,
    b: &'a mut Buffers,
    input: &'a StackInput<'a>,
    caches: &'a mut [&'c mut dyn KvRows],
    weights: Option<&'a [LayerWeights]>,
    streamer: Option<Streamer<'a>>,
    prof: Option<Phases>,
    /// Where each layer's vectors start in the uploaded norms, in floats.
    vecs: HashMap<VectorId, usize>,
    geo: Geometry,
    dev: Device,
    /// The current layer's weights.
    current: LayerWeights,
}

impl<'a, 'c> CardSteps<'a, 'c> {
    /// Sizes the buffers, uploads the hidden states and the small inputs, and stages the
    /// first streamed layer.
    fn new(gpu: &'a Gpu, b: &'a mut Buffers, input: &'a StackInput<'a>, weights: Option<&'a [LayerWeights]>, x: &[f32], caches: &'a mut [&'c mut dyn KvRows], prof: Option<Phases>) -> Res<Self> {
        let layers = input.layers;
        let n = input.n();
        let d = layers[0].n_embd();
        // The attention layers' shapes (Gated DeltaNet layers keep no K/V rows).
        let shapes: Vec<_> = layers.iter().filter_map(|l| l.attention()).map(|a| a.shape).collect();
        let max = |f: &dyn Fn(&engine::matrix::AttnShape) -> usize| shapes.iter().map(f).max().unwrap_or(0);
        let (qd, kvd, vd, od) = (max(&|s| s.n_head * s.head_dim), max(&|s| s.n_head_kv * s.head_dim), max(&|s| s.n_head_kv * s.head_dim_v), max(&|s| s.n_head * s.head_dim_v));
        let n_head = max(&|s| s.n_head);
        let ff = layers.iter().map(|l| match &l.ffn { FeedForwardPart::Dense(f) => f.gate.rows, FeedForwardPart::Moe(_) => 0 }).max().unwrap_or(0);

        // Each sequence's rows on the card: its prefix there, room for its new tokens.
        let pos0: Vec<usize> = input.spans.iter().map(|s| input.positions[s.start]).collect();
        let mut pos = vec![0i32; n];
        for (s, &p0) in input.spans.iter().zip(&pos0) {
            for t in s.clone() {
                if input.positions[t] != p0 + (t - s.start) {
                    return Err("a sequence's positions must be consecutive".into());
                }
                pos[t] = int(input.positions[t])?;
            }
        }
        let widths: Vec<(usize, usize)> = layers.iter().map(kv_widths).collect();
        let (mut seq_rows, mut seq_cap) = (Vec::with_capacity(caches.len()), Vec::with_capacity(caches.len()));
        for ((cache, s), &p0) in caches.iter_mut().zip(input.spans).zip(&pos0) {
            let (rows, cap) = crate::device_rows::prepare(gpu, &mut **cache, &widths, p0, p0 + s.len())?;
            seq_rows.push(rows);
            seq_cap.push(cap);
        }
        let rope_flat = |r: &[(f32, f32)]| -> Vec<f32> { r.iter().flat_map(|&(s, c)| [s, c]).collect() };
        let (rope_g, rope_l) = (rope_flat(input.rope_global), rope_flat(input.rope_local));
        // The norm weights go up when they differ from the last call's (another model).
        if b.vectors.as_ref().is_none_or(|(v, _)| !v.holds(layers)) {
            let vecs = Vectors::pack(layers);
            b.vectors = None;
            let dev = DevBuf::new(&gpu.ctx, vecs.data.len() * 4)?;
            unsafe { drv::memcpy_htod_async(dev.ptr, &vecs.data[..], gpu.s_comp.cu_stream()) }.map_err(err("upload norms"))?;
            b.vectors = Some((vecs, dev));
        }
        let (vecs, vec_at) = b.vectors.as_ref().map(|(v, d)| (v.at.clone(), d.ptr)).expect("set above");

        // Device memory: the small inputs in one buffer (f32/i32 words), then the activations.
        let small_words = rope_g.len() + rope_l.len() + n;
        let small = ensure_dev(&gpu.ctx, &mut b.small, small_words * 4)?;
        let rope_g_at = small;
        let rope_l_at = rope_g_at + (rope_g.len() * 4) as u64;
        let pos_at = rope_l_at + (rope_l.len() * 4) as u64;
        let chunk = n.min(FFN_CHUNK);
        let d_x = ensure_dev(&gpu.ctx, &mut b.x, n * d * 4)?;
        // The hidden states cross through pinned memory (full bus speed), copied on every core.
        let x_pinned = ensure_host(&gpu.ctx, &mut b.x_host, n * d * 4, false)?.slice_mut::<f32>(n * d);
        par_copy(x_pinned, x);
        let x_pinned = x_pinned.as_mut_ptr();
        // Attention works through query chunks, so scores for every key of the longest sequence
        // stay within SCORE_BYTES.
        let ld_max = input.spans.iter().zip(&pos0).map(|(s, p0)| p0 + s.len()).max().unwrap_or(1).next_multiple_of(8);
        let longest = input.spans.iter().map(|s| s.len()).max().unwrap_or(1);
        let qc = (SCORE_BYTES / (n_head * ld_max * 6)).clamp(16, 4096).min(longest);
        // The flash kernels need no score buffers (when every layer can use them).
        let flash = if shapes.iter().all(|s| flash_kernel(gpu, s, b.flash).is_some()) { b.flash } else { 0 };
        let score_elems = if flash > 0 { 0 } else { n_head * qc * ld_max };
        // A decode step's own layout (every layer's new rows in a region, down once at the end)
        // serves the graphs and the split attention; both are opt-in until a GPU has run them,
        // so by default decode steps keep the ring of regions.
        let split = b.untried.split_attention;
        let step = n <= crate::kernels::MV_MAX_N && weights.is_some() && (b.graphs.off.is_none() || split);
        // Experts are routed, and recurrent states cross, on the host between launches: no graph then.
        let host_between = has_experts(layers) || layers.iter().any(|l| l.attention().is_none());
        // Only one-token-a-sequence steps: a short prompt's chunk would be captured, never replayed.
        let graph = step && flash > 0 && !host_between && input.spans.iter().all(|s| s.len() == 1) && prof.is_none() && b.graphs.off.is_none();
        let dev = Device {
            x: d_x,
            h: ensure_dev(&gpu.ctx, &mut b.h, n * d * 2)?,
            q: ensure_dev(&gpu.ctx, &mut b.q, n * qd * 4)?,
            k: ensure_dev(&gpu.ctx, &mut b.k, n * kvd * 4)?,
            v: ensure_dev(&gpu.ctx, &mut b.v, n * vd * 4)?,
            q_h: ensure_dev(&gpu.ctx, &mut b.q_h, n * qd * 2)?,
            scores: Scores {
                s: ensure_dev(&gpu.ctx, &mut b.scores, score_elems * 4)?,
                p: ensure_dev(&gpu.ctx, &mut b.probs, score_elems * 2)?,
                chunk: qc,
                // A decode step's split attention (`Untried::split_attention`):
                // partials for the most splits any copy has (not the largest copy's: split
                // counts do not grow with every capacity).
                part: if step && split {
                    let for_cap = |cap: usize| shapes.iter().map(|s| crate::decode_attention::partial_bytes(s.n_head, s.head_dim, cap)).max().unwrap_or(0);
                    let bytes = seq_cap.iter().map(|&cap| for_cap(cap)).max().unwrap_or(0);
                    ensure_dev(&gpu.ctx, &mut b.partials, bytes)?
                } else {
                    0
                },
            },
            att_h: ensure_dev(&gpu.ctx, &mut b.att_h, n * od * 2)?,
            o: ensure_dev(&gpu.ctx, &mut b.o, n * d * 4)?,
            ffn: ensure_dev(&gpu.ctx, &mut b.ffn, chunk * ff * 10)?,
            regions: if step {
                let base = ensure_dev(&gpu.ctx, &mut b.step_rows, layers.len() * n * (kvd + vd) * 2)?;
                (0..layers.len()).map(|il| base + (il * n * (kvd + vd) * 2) as u64).collect()
            } else {
                vec![ensure_dev(&gpu.ctx, &mut b.region[0], n * (kvd + vd) * 2)?, ensure_dev(&gpu.ctx, &mut b.region[1], n * (kvd + vd) * 2)?]
            },
            vec_at,
            rope_g: rope_g_at,
            rope_l: rope_l_at,
            pos: pos_at,
        };
        // The largest expansion a GEMM of this call makes, allocated now: growing it between
        // GEMMs could free memory a queued one still reads.
        // Likewise a decode step's 8-bit tokens for the widest weight (and the dry run of a
        // graphed step then grows nothing its capture would not find).
        let all_weights = || weights.into_iter().flatten().flat_map(|l| &l.0).map(|(_, w)| w);
        let most = if n > crate::kernels::MV_MAX_N {
            all_weights().map(|w| w.expansion_bytes()).max().unwrap_or(0)
        } else {
            all_weights().map(|w| crate::matvec::q8_token_bytes(n, w.cols)).max().unwrap_or(0)
        };
        if most > 0 {
            ensure_dev(&gpu.ctx, &mut b.expand, most)?;
        }
        let staged = n * (kvd + vd);
        let slots = if step { layers.len() } else { (STAGING_BYTES / (staged * 2)).clamp(2, layers.len().max(2)) };
        ensure_host(&gpu.ctx, &mut b.staging, slots * staged * 2, false)?;
        while b.copied.len() < slots {
            b.copied.push(gpu.event(false)?);
        }
        if b.prepped.is_none() {
            b.prepped = Some(gpu.event(false)?);
        }
        let stream = gpu.s_comp.cu_stream();
        unsafe {
            drv::memcpy_htod_async(rope_g_at, &rope_g[..], stream).map_err(err("upload RoPE"))?;
            drv::memcpy_htod_async(rope_l_at, &rope_l[..], stream).map_err(err("upload RoPE"))?;
            drv::memcpy_htod_async(pos_at, &pos[..], stream).map_err(err("upload positions"))?;
            drv::memcpy_htod_async(d_x, std::slice::from_raw_parts(x_pinned as *const f32, n * d), stream).map_err(err("upload hidden states"))?;
        }
        // Streamed weights: the first layer's now, each next one while the card computes.
        let streamer = match weights {
            Some(_) => None,
            None => {
                let s = Streamer::new(gpu, &mut b.streaming, layers)?;
                s.stage(gpu, &mut b.streaming, 0)?;
                Some(s)
            }
        };
        let geo = Geometry { n, d, pos0, seq_rows, seq_cap, slots, staged, chunk, flash, step, graph };
        Ok(CardSteps { gpu, b, input, caches, weights, streamer, prof, vecs, geo, dev, current: LayerWeights(Vec::new()) })
    }

    /// The device address of a layer's vector (0 when the layer has none).
    fn vptr(&self, id: Option<VectorId>) -> u64 {
        vector_at(&self.vecs, self.dev.vec_at, id)
    }


    /// `x += post(o)` when `o` is given, then `h = f16(rmsnorm(x) * next)` when `next` is.
    fn residual_norm(&mut self, o: u64, post: Option<VectorId>, next: Option<VectorId>) -> Res<()> {
        let eps = self.input.layers[post.or(next).map_or(0, |(il, _)| il)].norm_eps;
        let args = [KArg::P(self.dev.x), KArg::P(o), KArg::P(self.vptr(post)), KArg::P(self.vptr(next)), KArg::P(self.dev.h), KArg::I(int(self.geo.d)?), KArg::F(eps)];
        self.gpu.launch("residual_norm", int(self.geo.n)? as u32, ROW_THREADS, &args)
    }

    /// Layer `il`'s new rows (`reg_k`, `reg_v`) down into pinned slot `slot` on the copy
    /// stream, once the compute stream has written them.
    fn rows_down(gpu: &Gpu, b: &mut Buffers, g: &Geometry, slot: usize, (reg_k, reg_v): (u64, u64), (kvd, vd): (usize, usize)) -> Res<()> {
        let prepped = b.prepped.as_ref().expect("created in new");
        prepped.record(&gpu.s_comp).map_err(err("record"))?;
        gpu.s_d2h.wait(prepped).map_err(err("wait"))?;
        let host = b.staging.as_mut().expect("allocated in new").slice_mut::<u16>(g.slots * g.staged);
        let (hk, hv) = host[slot * g.staged..(slot + 1) * g.staged].split_at_mut(g.n * kvd);
        unsafe {
            drv::memcpy_dtoh_async(&mut hk[..g.n * kvd], reg_k, gpu.s_d2h.cu_stream()).map_err(err("download keys"))?;
            drv::memcpy_dtoh_async(&mut hv[..g.n * vd], reg_v, gpu.s_d2h.cu_stream()).map_err(err("download values"))?;
        }
        b.copied[slot].record(&gpu.s_d2h).map_err(err("record"))
    }

    /// Layer `il`'s new K/V rows into the caches, once down in its pinned slot.
    fn drain(&mut self, il: usize) -> Res<()> {
        let g = &self.geo;
        let slot = il % g.slots;
        let host = self.b.staging.as_mut().expect("allocated in new").slice_mut::<u16>(g.slots * g.staged);
        let mut kv: Vec<_> = self.caches.iter_mut().map(|c| c.layers_mut().swap_remove(il)).collect();
        land_rows(self.gpu, Some(&self.b.copied[slot]), &host[slot * g.staged..(slot + 1) * g.staged], &mut kv, self.input, kv_widths(&self.input.layers[il]))
    }

    /// After the last layer: the remaining K/V rows into the caches (a thread per layer,
    /// since first writes to a cache's pages fault them in one by one), the hidden states
    /// down, and only then `x` changed (a failure leaves it as it was).
    fn finish(self, x: &mut [f32]) -> Res<()> {
        let (gpu, b, input, g) = (self.gpu, self.b, self.input, &self.geo);
        let n_layer = input.layers.len();
        let rest = n_layer.saturating_sub(g.slots);
        let host = b.staging.as_mut().expect("allocated in new").slice_mut::<u16>(g.slots * g.staged);
        let host: &[u16] = host;
        let mut per_cache: Vec<Vec<(&mut [u16], &mut [u16])>> = self.caches.iter_mut().map(|c| c.layers_mut()).collect();
        let mut per_layer: Vec<Vec<(&mut [u16], &mut [u16])>> = (0..n_layer).map(|_| Vec::new()).collect();
        for layers in per_cache.iter_mut() {
            for (il, kv) in layers.drain(..).enumerate() {
                per_layer[il].push(kv);
            }
        }
        if g.step {
            // Every layer's rows down at once, ordered after the last layer on the compute stream.
            let bytes = n_layer * g.staged * 2;
            let down = unsafe { std::slice::from_raw_parts_mut(host.as_ptr() as *mut u16, bytes / 2) };
            unsafe { drv::memcpy_dtoh_async(down, self.dev.regions[0], gpu.s_comp.cu_stream()) }.map_err(err("download K/V rows"))?;
        }
        let x_pinned = b.x_host.as_mut().expect("allocated in new").slice_mut::<f32>(g.n * g.d);
        unsafe { drv::memcpy_dtoh_async(&mut x_pinned[..], self.dev.x, gpu.s_comp.cu_stream()) }.map_err(err("download hidden states"))?;
        let copied = &b.copied;
        if g.step {
            gpu.s_comp.synchronize().map_err(err("decoder stack"))?;
        }
        let land = |(il, mut kv): (usize, Vec<(&mut [u16], &mut [u16])>)| {
            let slot = il % g.slots;
            let copied = (!g.step).then(|| &copied[slot]);
            land_rows(gpu, copied, &host[slot * g.staged..(slot + 1) * g.staged], &mut kv, input, kv_widths(&input.layers[il]))
        };
        // A decode step's few rows land here: waking the pool would cost more than the copies.
        if g.n <= crate::kernels::MV_MAX_N {
            per_layer.into_iter().enumerate().skip(rest).try_for_each(land)?;
        } else {
            per_layer.into_par_iter().enumerate().skip(rest).try_for_each(land)?;
        }
        gpu.s_comp.synchronize().map_err(err("decoder stack"))?;
        // Every sequence's rows on the card now hold its new positions too.
        for ((cache, s), &p0) in self.caches.iter_mut().zip(input.spans).zip(&g.pos0) {
            cache.mirror().valid = p0 + s.len();
        }
        par_copy(x, x_pinned);
        if let Some(p) = self.prof {
            b.phases = p.report(g.n)?;
        }
        Ok(())
    }
}

/// The device address of vector `id` among the uploaded ones starting at `base` (0 when absent).
fn vector_at(vecs: &HashMap<VectorId, usize>, base: u64, id: Option<VectorId>) -> u64 {
    id.and_then(|id| vecs.get(&id)).map_or(0, |&at| base + (at * 4) as u64)
}

/// Layer `il`'s vectors by role (borrowing only the uploaded vectors' places, so the step's
/// buffers stay free to lend out).
fn vector_closure(vecs: &HashMap<VectorId, usize>, base: u64, il: usize) -> impl Fn(VectorRole) -> u64 + '_ {
    move |role| vector_at(vecs, base, Some((il, role)))
}

/// A layer's K and V widths per token.
fn kv_widths(l: &Layer) -> (usize, usize) {
    l.attention().map_or((0, 0), |a| (a.shape.n_head_kv * a.shape.head_dim, a.shape.n_head_kv * a.shape.head_dim_v))
}

impl BlockSteps for CardSteps<'_, '_> {
    type Error = String;

    fn delta_net(&mut self, il: usize, d: &engine::plan::DeltaNet) -> Res<()> {
        let vector = vector_closure(&self.vecs, self.dev.vec_at, il);
        let io = PartIo { h: self.dev.h, o: self.dev.o, n: self.geo.n, weights: &self.current, vector: &vector };
        let layer = crate::stack_delta::Layer { il, eps: self.input.layers[il].norm_eps, spans: self.input.spans };
        crate::stack_delta::run(self.gpu, &mut self.b.delta, &mut self.b.expand, d, &layer, &io, self.caches)?;
        Phases::mark(&mut self.prof, self.gpu, "Gated DeltaNet")
    }

    fn per_layer_input(&mut self, _il: usize, _p: &engine::plan::PerLayerInput) -> Res<()> {
        Err("per-layer inputs are refused by the stack check".into())
    }

    fn scale_stream(&mut self, _scale: f32) -> Res<()> {
        Err("layer output scales are refused by the stack check".into())
    }

    fn norm(&mut self, id: VectorId) -> Res<()> {
        self.residual_norm(0, None, Some(id))?;
        Phases::mark(&mut self.prof, self.gpu, "upload + norm")
    }

    fn begin_layer(&mut self, il: usize) -> Res<()> {
        if !self.geo.step && il >= self.geo.slots {
            // Frees this layer's pinned slot (the ring is shorter than the model).
            self.drain(il - self.geo.slots)?;
        }
        self.current = match (self.weights, &self.streamer) {
            (Some(w), _) => LayerWeights(w[il].0.clone()),
            (None, Some(s)) => s.weights(self.gpu, &self.b.streaming, il)?,
            (None, None) => unreachable!("a streamer exists when weights are not resident"),
        };
        if !self.geo.step && il >= 2 {
            // The region's rows from two layers back must be down before it is refilled.
            self.gpu.s_comp.wait(&self.b.copied[(il - 2) % self.geo.slots]).map_err(err("wait"))?;
        }
        Ok(())
    }

    fn attention(&mut self, il: usize, a: &Attention) -> Res<()> {
        let (gpu, g, dev, input) = (self.gpu, &self.geo, &self.dev, self.input);
        let s = &a.shape;
        let (n, d, slot) = (g.n, g.d, il % g.slots);
        let (qd, od) = (s.n_head * s.head_dim, s.n_head * s.head_dim_v);
        let (kvd, vd) = kv_widths(&input.layers[il]);
        let region = dev.regions[il % dev.regions.len()];
        let (reg_k, reg_v) = (region, region + (n * kvd * 2) as u64);
        let w = &self.current;
        let (wq, wk, wv) = (w.get(WeightRole::AttnQ)?, w.get(WeightRole::AttnK)?, w.get(WeightRole::AttnV)?);
        if (wq.rows, wk.rows, wv.rows) != (qd, kvd, vd) || [wq.cols, wk.cols, wv.cols] != [d; 3] {
            return Err(format!("layer {il}: Q/K/V weights do not match the attention's shape"));
        }
        wq.matmul(gpu, dev.h, dev.q, n, &mut self.b.expand)?;
        wk.matmul(gpu, dev.h, dev.k, n, &mut self.b.expand)?;
        wv.matmul(gpu, dev.h, dev.v, n, &mut self.b.expand)?;
        Phases::mark(&mut self.prof, gpu, "Q/K/V GEMMs")?;
        let rope_at = match a.rope {
            RopeKind::Local => dev.rope_l,
            RopeKind::Global => dev.rope_g,
        };
        let v = |role| self.vptr(Some((il, role)));
        let args = [
            KArg::P(dev.q),
            KArg::P(dev.q_h),
            KArg::P(dev.k),
            KArg::P(dev.v),
            KArg::P(v(VectorRole::QBias)),
            KArg::P(v(VectorRole::KBias)),
            KArg::P(v(VectorRole::VBias)),
            KArg::P(v(VectorRole::QNorm)),
            KArg::P(v(VectorRole::KNorm)),
            KArg::P(rope_at),
            KArg::P(reg_k),
            KArg::P(reg_v),
            KArg::I(int(s.n_head)?),
            KArg::I(int(s.n_head_kv)?),
            KArg::I(int(s.head_dim)?),
            KArg::I(int(s.head_dim_v)?),
            KArg::I(int(a.rope_dims)?),
            KArg::I((a.rope_style == RopeStyle::Neox) as i32),
            KArg::F(input.layers[il].norm_eps),
            KArg::F(a.scale),
            // The query temperature (mistral3), from each token's position; off when absent.
            KArg::P(dev.pos),
            KArg::F(a.temperature.map_or(0.0, |t| t.scale)),
            KArg::F(a.temperature.map_or(1.0, |t| t.floor_scale as f32)),
            KArg::F(a.temperature.map_or(0.0, |t| t.offset)),
        ];
        gpu.launch("qk_prep", int(n)? as u32, ROW_THREADS, &args)?;
        // Each sequence's new rows after its cached ones on the card.
        for (sp, rows) in input.spans.iter().zip(&g.seq_rows) {
            let (k, v) = rows[il];
            let args = [
                KArg::P(reg_k + (sp.start * kvd * 2) as u64),
                KArg::P(reg_v + (sp.start * vd * 2) as u64),
                KArg::P(k),
                KArg::P(v),
                KArg::P(dev.pos + (sp.start * 4) as u64),
                KArg::I(int(kvd)?),
                KArg::I(int(vd)?),
            ];
            gpu.launch("kv_store", int(sp.len())? as u32, ROW_THREADS, &args)?;
        }
        Phases::mark(&mut self.prof, gpu, "qk_prep")?;
        // The new rows go down on the copy stream while attention and the rest run (a decode
        // step's all at once, after the last layer).
        if !g.step {
            Self::rows_down(gpu, self.b, g, slot, (reg_k, reg_v), (kvd, vd))?;
        }
        for (((sp, &p0), rows), &cap) in input.spans.iter().zip(&g.pos0).zip(&g.seq_rows).zip(&g.seq_cap) {
            let (k, v) = rows[il];
            let seq = SeqAttention {
                cap,
                q_h: dev.q_h + (sp.start * qd * 2) as u64,
                k,
                v,
                pos: dev.pos + (sp.start * 4) as u64,
                out: dev.att_h + (sp.start * od * 2) as u64,
                len: sp.len(),
                pos0: p0,
            };
            attention(gpu, s, &seq, &dev.scores, g.flash, &mut self.prof)?;
        }
        let wo = self.current.get(WeightRole::AttnOutput)?;
        if (wo.rows, wo.cols) != (d, od) {
            return Err(format!("layer {il}: the output projection does not match the attention's shape"));
        }
        wo.matmul(gpu, dev.att_h, dev.o, n, &mut self.b.expand)
    }

    fn moe_ffn(&mut self, il: usize, m: &MoeFfn) -> Res<()> {
        let vector = vector_closure(&self.vecs, self.dev.vec_at, il);
        let io = PartIo { h: self.dev.h, o: self.dev.o, n: self.geo.n, weights: &self.current, vector: &vector };
        crate::stack_moe::run(self.gpu, &mut self.b.moe, &mut self.b.expand, m, &io)?;
        Phases::mark(&mut self.prof, self.gpu, "experts")
    }
    fn dense_ffn(&mut self, _il: usize, f: &DenseFfn) -> Res<()> {
        let (gpu, g, dev, w) = (self.gpu, &self.geo, &self.dev, &self.current);
        let (n, d, ff, chunk) = (g.n, g.d, f.gate.rows, g.chunk);
        let (wg, wu, wd) = (w.get(WeightRole::FfnGate)?, w.get(WeightRole::FfnUp)?, w.get(WeightRole::FfnDown)?);
        if (wg.rows, wg.cols, wu.rows, wu.cols, wd.rows, wd.cols) != (ff, d, ff, d, d, ff) {
            return Err("feed-forward weights do not chain".into());
        }
        for c0 in (0..n).step_by(chunk) {
            let len = chunk.min(n - c0);
            let (gate, up, mid) = (dev.ffn, dev.ffn + (len * ff * 4) as u64, dev.ffn + (len * ff * 8) as u64);
            let h_in = dev.h + (c0 * d * 2) as u64;
            wg.matmul(gpu, h_in, gate, len, &mut self.b.expand)?;
            wu.matmul(gpu, h_in, up, len, &mut self.b.expand)?;
            let kernel = activation_kernel(f.activation).ok_or("the stack was checked for its activations")?;
            gpu.launch_activation(kernel, gate, up, mid, len * ff)?;
            wd.matmul(gpu, mid, dev.o + (c0 * d * 4) as u64, len, &mut self.b.expand)?;
        }
        Phases::mark(&mut self.prof, gpu, "feed-forward")
    }

    fn end_layer(&mut self, il: usize) -> Res<()> {
        if let Some(s) = &self.streamer {
            s.done(self.gpu, &self.b.streaming, il)?;
            if il + 1 < self.input.layers.len() {
                s.stage(self.gpu, &mut self.b.streaming, il + 1)?;
            }
        }
        Ok(())
    }

    fn residual(&mut self, post: Option<VectorId>, next: Option<VectorId>) -> Res<()> {
        self.residual_norm(self.dev.o, post, next)?;
        // One mark per layer for the mixer's output projection and its residual; the
        // feed-forward's residual counts with the next phase (fewer events, less overhead).
        match next {
            Some((_, VectorRole::FfnNorm)) => Phases::mark(&mut self.prof, self.gpu, "output GEMM + norm"),
            _ => Ok(()),
        }
    }
}

/// Waits until a layer's new K/V rows are down in their pinned slot (`rows`: K `[n, kvd]`
/// then V `[n, vd]`), then copies each sequence's rows to their positions in its cache
/// storage for that layer (`kv[i]`: sequence i's K and V).
fn land_rows(gpu: &Gpu, copied: Option<&CudaEvent>, rows: &[u16], kv: &mut [(&mut [u16], &mut [u16])], input: &StackInput<'_>, (kvd, vd): (usize, usize)) -> Res<()> {
    gpu.bind()?;
    if let Some(copied) = copied {
        copied.synchronize().map_err(err("K/V write-back"))?;
    }
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
    if dst.len() <= 1 << 16 {
        // A decode step's rows: one thread copies them before the pool would wake.
        return dst.copy_from_slice(src);
    }
    dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s));
}
