//! Causal attention of a batch of queries over the KV cache (f16), with GQA and an
//! optional sliding window.
//!
//! Flash-style: each job takes one KV head and a few consecutive tokens (all the query
//! heads of the group), so every key and value row it loads serves several query rows;
//! it walks the keys in tiles with an online softmax, never materializing a full score
//! row. The inner loops are written to auto-vectorize and compiled once more with AVX2/FMA
//! and AVX-512, chosen at run time.

use super::ops::dot;
use super::SharedMut;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

pub use crate::matrix::AttnShape;

/// Keys per tile.
const TILE: usize = 64;
/// Query rows (tokens × heads of a group) per job block (the AVX-512 register block).
const JOB_ROWS: usize = 8;
/// Keys per score micro-kernel (8 rows × 32 keys = 16 AVX-512 accumulators).
const KEYS: usize = 32;
/// Value dimensions per weighted-sum micro-kernel (8 rows × 32 = 16 accumulators).
const VDIMS: usize = 32;

/// `q`: [N, n_head*head_dim] (already scaled and rotated); `k_cache`/`v_cache`: [ctx, kv_dim]
/// holding positions 0..=positions[last]; `out`: [N, n_head*head_dim_v].
pub fn attention(
    s: &AttnShape,
    q: &[f32],
    positions: &[usize],
    k_cache: &[f16],
    v_cache: &[f16],
    out: &mut [f32],
) {
    attention_with_sinks(s, None, q, positions, k_cache, v_cache, out)
}

/// [`attention`] with attention sinks (gpt-oss): one learned logit per query head that
/// joins every softmax's denominator and carries no value, so a head can attend to nothing.
pub fn attention_with_sinks(
    s: &AttnShape,
    sinks: Option<&[f32]>,
    q: &[f32],
    positions: &[usize],
    k_cache: &[f16],
    v_cache: &[f16],
    out: &mut [f32],
) {
    let n = positions.len();
    if n == 0 {
        return;
    }
    if let Some(sinks) = sinks {
        assert_eq!(sinks.len(), s.n_head, "one sink per query head");
    }
    if n == 1 {
        return decode(s, sinks, q, positions[0], k_cache, v_cache, out);
    }
    let (d, kvd, vd) = (s.head_dim, s.n_head_kv * s.head_dim, s.n_head_kv * s.head_dim_v);
    // Convert the cached rows the batch needs to f32 once (not once per query): keys
    // transposed per KV head ([head][dim][row]), so scores vectorize along the keys.
    let first = positions.iter().map(|&p| s.window.map_or(0, |w| (p + 1).saturating_sub(w))).min().unwrap_or(0);
    let last = positions.iter().copied().max().unwrap_or(0);
    let used = last + 1 - first;
    // A tile of zeros past the end, so every tile is whole (the mask drops what it reads there).
    let rows = used + TILE;
    let mut keys_t = vec![0f32; s.n_head_kv * d * rows];
    let mut vals = vec![0f32; rows * vd];
    keys_t.par_chunks_mut(d * rows).enumerate().for_each(|(g, slab)| {
        let mut row = vec![0f32; d];
        for j in 0..used {
            k_cache[(first + j) * kvd + g * d..][..d].convert_to_f32_slice(&mut row);
            for (i, v) in row.iter().enumerate() {
                slab[i * rows + j] = *v;
            }
        }
    });
    vals[..used * vd]
        .par_chunks_mut(vd)
        .enumerate()
        .for_each(|(j, vr)| v_cache[(first + j) * vd..][..vd].convert_to_f32_slice(vr));

    let group = s.n_head / s.n_head_kv;
    let tokens_per_job = (JOB_ROWS / group).max(1);
    let blocks = n.div_ceil(tokens_per_job);
    let kernel = pick_kernel();
    let ctx = Ctx { s, sinks, q, positions, keys_t: &keys_t, vals: &vals, first, rows, out: SharedMut(out.as_mut_ptr()) };
    (0..blocks * s.n_head_kv).into_par_iter().for_each_init(Scratch::default, |scratch, job| {
        let (g, b) = (job % s.n_head_kv, job / s.n_head_kv);
        let tokens = b * tokens_per_job..((b + 1) * tokens_per_job).min(n);
        // SAFETY: the kernel matches the CPU (pick_kernel); the job writes only the output
        // rows of its tokens × the heads of group g.
        unsafe { kernel(&ctx, g, tokens, scratch) };
    });
}

/// One token (a decode step): memory-bound, so the cache is read once, straight from f16
/// (no conversion pass), split by KV head and by key chunk across threads; the chunks'
/// partial softmaxes are merged at the end.
fn decode(s: &AttnShape, sinks: Option<&[f32]>, q: &[f32], pos: usize, k_cache: &[f16], v_cache: &[f16], out: &mut [f32]) {
    let dv = s.head_dim_v;
    let group = s.n_head / s.n_head_kv;
    let lo = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let keys = pos + 1 - lo;
    // Enough chunks to keep every thread busy even with one KV head, none under 64 keys.
    let want = (2 * rayon::current_num_threads()).div_ceil(s.n_head_kv);
    let chunk = keys.div_ceil(want.max(1)).max(64);
    let chunks = keys.div_ceil(chunk);
    // Per (head, chunk): running max, sum, and the weighted sum of values.
    let kernel = pick_decode_kernel();
    let dj = DecodeJob { s, q, k_cache, v_cache, lo, pos, chunk, chunks };
    let parts: Vec<Part> = (0..s.n_head_kv * chunks)
        .into_par_iter()
        // SAFETY: the kernel matches the CPU (pick_decode_kernel).
        .map(|job| unsafe { kernel(&dj, job) })
        .collect();
    for g in 0..s.n_head_kv {
        let parts = &parts[g * chunks..][..chunks];
        for r in 0..group {
            let h = g * group + r;
            let m = parts.iter().map(|p| p.0[r]).fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[h * dv..][..dv];
            o.fill(0.0);
            let mut total = 0.0;
            for (maxes, sums, acc) in parts {
                let w = exp(maxes[r] - m);
                total += w * sums[r];
                for (o, a) in o.iter_mut().zip(&acc[r * dv..][..dv]) {
                    *o += w * a;
                }
            }
            total += sink_weight(sinks, h, m);
            o.iter_mut().for_each(|v| *v /= total);
        }
    }
}

/// A decode step's partial softmax over one chunk of keys: per query row of the group,
/// the maximum score, the sum of exponentials, and the weighted sum of values.
type Part = (Vec<f32>, Vec<f32>, Vec<f32>);

/// What every decode job reads.
struct DecodeJob<'a> {
    s: &'a AttnShape,
    q: &'a [f32],
    k_cache: &'a [f16],
    v_cache: &'a [f16],
    lo: usize,
    pos: usize,
    chunk: usize,
    chunks: usize,
}

type DecodeKernel = unsafe fn(&DecodeJob, usize) -> Part;

fn pick_decode_kernel() -> DecodeKernel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("fma") && has!("f16c") {
            return decode_avx512;
        }
        if has!("avx2") && has!("fma") && has!("f16c") {
            return decode_avx2;
        }
    }
    decode_portable
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn decode_avx512(dj: &DecodeJob, job: usize) -> Part {
    decode_part::<WidenAvx512>(dj, job)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_avx2(dj: &DecodeJob, job: usize) -> Part {
    decode_part::<WidenF16c>(dj, job)
}

unsafe fn decode_portable(dj: &DecodeJob, job: usize) -> Part {
    decode_part::<WidenPortable>(dj, job)
}

/// A cached f16 row to f32, inlined into each decode kernel. A decode step converts one short
/// row per key and head (tens of thousands a token at a long context); a library call per
/// row costs more than the conversion. f16 to f32 is exact, so every way gives the same bits.
trait Widen {
    /// # Safety
    /// The CPU has the instructions the implementation uses; `dst.len() == src.len()`.
    unsafe fn widen(src: &[f16], dst: &mut [f32]);

    /// `out[r] = qs[r] · k` for the group's query rows (`qs`: `[out.len(), k.len()]`), `row`
    /// a scratch row of at least `k.len()`.
    ///
    /// # Safety
    /// As [`Widen::widen`].
    #[inline(always)]
    unsafe fn dots(qs: &[f32], k: &[f16], row: &mut [f32], out: &mut [f32]) {
        widen_then_dot::<Self>(qs, k, row, out)
    }
}

/// [`Widen::dots`] through a widened row and the shared `dot`.
///
/// # Safety
/// As [`Widen::widen`].
#[inline(always)]
unsafe fn widen_then_dot<W: Widen + ?Sized>(qs: &[f32], k: &[f16], row: &mut [f32], out: &mut [f32]) {
    let d = k.len();
    W::widen(k, &mut row[..d]);
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(&qs[r * d..][..d], &row[..d]);
    }
}

struct WidenPortable;

impl Widen for WidenPortable {
    #[inline(always)]
    unsafe fn widen(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

#[cfg(target_arch = "x86_64")]
struct WidenF16c;

#[cfg(target_arch = "x86_64")]
impl Widen for WidenF16c {
    #[inline(always)]
    unsafe fn widen(src: &[f16], dst: &mut [f32]) {
        use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n elements of both; unaligned loads and stores; F16C per the caller.
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        for j in i..n {
            dst[j] = src[j].to_f32();
        }
    }
}

/// AVX-512: the key row widened in registers and every query row's dot with it at once, each
/// reduced by a tree (a 16-lane sum added up lane by lane took longer than the products at a
/// long context).
#[cfg(target_arch = "x86_64")]
struct WidenAvx512;

#[cfg(target_arch = "x86_64")]
impl Widen for WidenAvx512 {
    #[inline(always)]
    unsafe fn widen(src: &[f16], dst: &mut [f32]) {
        WidenF16c::widen(src, dst)
    }

    #[inline(always)]
    unsafe fn dots(qs: &[f32], k: &[f16], row: &mut [f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (d, group) = (k.len(), out.len());
        if d % 16 != 0 || group > 8 || qs.len() < group * d {
            return widen_then_dot::<Self>(qs, k, row, out);
        }
        let mut acc = [_mm512_setzero_ps(); 8];
        for c in (0..d).step_by(16) {
            // SAFETY: c + 16 <= d elements of k and of each query row (checked above).
            let kv = _mm512_cvtph_ps(_mm256_loadu_si256(k.as_ptr().add(c) as *const __m256i));
            for (r, a) in acc[..group].iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(qs.as_ptr().add(r * d + c)), kv, *a);
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = _mm512_reduce_add_ps(*a);
        }
    }
}

/// Job `job` = (KV head, key chunk) of a decode step.
#[inline(always)]
fn decode_part<W: Widen>(dj: &DecodeJob, job: usize) -> Part {
    let DecodeJob { s, q, k_cache, v_cache, lo, pos, chunk, chunks } = *dj;
    let (d, dv) = (s.head_dim, s.head_dim_v);
    let (kvd, vd) = (s.n_head_kv * d, s.n_head_kv * dv);
    let group = s.n_head / s.n_head_kv;
    let (g, c) = (job / chunks, job % chunks);
    let (j0, j1) = (lo + c * chunk, (lo + (c + 1) * chunk).min(pos + 1));
    let qs: Vec<f32> =
        (g * group..(g + 1) * group).flat_map(|h| q[h * d..][..d].iter().map(|&x| f16::from_f32(x).to_f32())).collect();
    let mut scores = vec![0f32; group * (j1 - j0)];
    let mut row = vec![0f32; d.max(dv)];
    let mut key_scores = vec![0f32; group];
    for j in j0..j1 {
        prefetch_row(k_cache, (j + PREFETCH_ROWS) * kvd + g * d, d);
        // SAFETY: the kernel that inlined this has W's instructions (pick_decode_kernel).
        unsafe { W::dots(&qs, &k_cache[j * kvd + g * d..][..d], &mut row, &mut key_scores) };
        for (r, &sc) in key_scores.iter().enumerate() {
            scores[r * (j1 - j0) + j - j0] = sc;
        }
    }
    let mut maxes = vec![0f32; group];
    let mut sums = vec![0f32; group];
    for r in 0..group {
        let sr = &mut scores[r * (j1 - j0)..][..j1 - j0];
        maxes[r] = max_of(sr);
        for v in sr.iter_mut() {
            *v = exp(*v - maxes[r]);
        }
        sums[r] = sum_of(sr);
    }
    let mut acc = vec![0f32; group * dv];
    for j in j0..j1 {
        prefetch_row(v_cache, (j + PREFETCH_ROWS) * vd + g * dv, dv);
        // SAFETY: as for the keys.
        unsafe { W::widen(&v_cache[j * vd + g * dv..][..dv], &mut row[..dv]) };
        for r in 0..group {
            let p = scores[r * (j1 - j0) + j - j0];
            for (a, &v) in acc[r * dv..][..dv].iter_mut().zip(&row[..dv]) {
                *a += p * v;
            }
        }
    }
    (maxes, sums, acc)
}

/// Rows ahead a decode job asks for: its head's part of each position's row is a short
/// piece every `kvd` elements, which the hardware prefetcher follows poorly (at 8k positions
/// SmolLM2's decode read its cache at a fifth of the machine's bandwidth).
const PREFETCH_ROWS: usize = 8;

/// Ask for the cache lines of `cache[at..at + len]` (nothing past the end).
#[inline(always)]
fn prefetch_row(cache: &[f16], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if at + len <= cache.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for off in (0..len).step_by(32) {
            // SAFETY: a hint on an address inside the slice; it never faults.
            unsafe { _mm_prefetch(cache.as_ptr().add(at + off) as *const i8, _MM_HINT_T0) };
        }
    }
}

/// A sink's term in the softmax denominator of head `h` whose scores' maximum is `max`
/// (0 without sinks). Past f32's range it is infinite and the head's output 0, its limit.
#[inline]
fn sink_weight(sinks: Option<&[f32]>, h: usize, max: f32) -> f32 {
    sinks.map_or(0.0, |s| (s[h] - max).exp())
}

/// What every job reads.
struct Ctx<'a> {
    s: &'a AttnShape,
    sinks: Option<&'a [f32]>,
    q: &'a [f32],
    positions: &'a [usize],
    keys_t: &'a [f32],
    vals: &'a [f32],
    first: usize,
    rows: usize,
    out: SharedMut<f32>,
}

// SAFETY: the output pointer is written at disjoint rows by different jobs.
unsafe impl Sync for Ctx<'_> {}

/// Per-thread buffers, reused across jobs.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    lo: Vec<usize>,
    hi: Vec<usize>,
}

type Kernel = unsafe fn(&Ctx, usize, std::ops::Range<usize>, &mut Scratch);

fn pick_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            return job_avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return job_avx2;
        }
    }
    job_portable
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn job_avx512(c: &Ctx, g: usize, tokens: std::ops::Range<usize>, s: &mut Scratch) {
    job::<Fused, JOB_ROWS, KEYS, VDIMS>(c, g, tokens, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn job_avx2(c: &Ctx, g: usize, tokens: std::ops::Range<usize>, s: &mut Scratch) {
    // 16 vector registers, not 32: register blocks of 4 rows x 16 keys (or dimensions) are 8
    // accumulators; the AVX-512 blocks would be 32 and spill (a fifth of a Gemma 3 prefill).
    job::<Fused, 4, 16, 16>(c, g, tokens, s)
}

unsafe fn job_portable(c: &Ctx, g: usize, tokens: std::ops::Range<usize>, s: &mut Scratch) {
    // aarch64 always has FMA; elsewhere an unfused multiply-add avoids a libm call.
    #[cfg(target_arch = "aarch64")]
    job::<Fused, JOB_ROWS, KEYS, VDIMS>(c, g, tokens, s);
    #[cfg(not(target_arch = "aarch64"))]
    job::<Plain, JOB_ROWS, KEYS, VDIMS>(c, g, tokens, s);
}

/// `a + b·c`, fused where the target has FMA.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}
struct Fused;
#[allow(dead_code)]
struct Plain;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        b.mul_add(c, a)
    }
}
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a + b * c
    }
}

/// One job: tokens `tokens` × the query heads of KV head `g`, over every key they see, in
/// register blocks of `R` rows by `K` keys (scores) or `V` dimensions (values). The blocking
/// changes no sum's order: every level gives the same bits.
#[inline(always)]
fn job<M: MulAdd, const R: usize, const K: usize, const V: usize>(c: &Ctx, g: usize, tokens: std::ops::Range<usize>, sc: &mut Scratch) {
    const { assert!(JOB_ROWS.is_multiple_of(R) && TILE.is_multiple_of(K)) };
    let sh = c.s;
    let (d, dv) = (sh.head_dim, sh.head_dim_v);
    let group = sh.n_head / sh.n_head_kv;
    let (qd, vd, od) = (sh.n_head * d, sh.n_head_kv * dv, sh.n_head * dv);
    let r_count = tokens.len() * group;
    // Whole blocks of JOB_ROWS rows; padding rows are zero queries that see no key.
    let r_pad = r_count.next_multiple_of(JOB_ROWS);
    // Query rows, rounded to f16 like the keys (as ggml does before its f16 dot), and
    // each row's visible key range [lo, hi] relative to `first`.
    sc.q.clear();
    sc.lo.clear();
    sc.hi.clear();
    for t in tokens.clone() {
        let pos = c.positions[t];
        let lo = sh.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in g * group..(g + 1) * group {
            sc.q.extend(c.q[t * qd + h * d..][..d].iter().map(|&x| f16::from_f32(x).to_f32()));
            sc.lo.push(lo - c.first);
            sc.hi.push(pos - c.first);
        }
    }
    let lo = *sc.lo.iter().min().expect("at least one row");
    let hi = *sc.hi.iter().max().expect("at least one row");
    sc.q.resize(r_pad * d, 0.0);
    sc.lo.resize(r_pad, usize::MAX);
    sc.hi.resize(r_pad, 0);
    sc.scores.resize(r_pad * TILE, 0.0);
    sc.acc.clear();
    sc.acc.resize(r_pad * dv, 0.0);
    sc.max.clear();
    sc.max.resize(r_pad, f32::NEG_INFINITY);
    sc.sum.clear();
    sc.sum.resize(r_pad, 0.0);
    let keys = &c.keys_t[g * d * c.rows..][..d * c.rows];
    let mut j0 = lo;
    while j0 <= hi {
        for rb in (0..r_pad).step_by(R) {
            let q = &sc.q[rb * d..][..R * d];
            let scores = &mut sc.scores[rb * TILE..][..R * TILE];
            for kb in (0..TILE).step_by(K) {
                scores_block::<M, R, K>(q, d, keys, c.rows, j0 + kb, &mut scores[kb..]);
            }
        }
        // Online softmax: rescale what was accumulated when a row's maximum grows.
        for r in 0..r_pad {
            let a = sc.lo[r].max(j0).min(j0 + TILE) - j0;
            let b = (sc.hi[r] + 1).min(j0 + TILE).saturating_sub(j0);
            let srow = &mut sc.scores[r * TILE..][..TILE];
            if a >= b {
                srow.fill(0.0);
                continue;
            }
            let new_max = sc.max[r].max(max_of(&srow[a..b]));
            let rescale = exp(sc.max[r] - new_max);
            for v in srow.iter_mut() {
                *v = exp(*v - new_max);
            }
            srow[..a].fill(0.0);
            srow[b..].fill(0.0);
            sc.sum[r] = sc.sum[r] * rescale + sum_of(srow);
            sc.max[r] = new_max;
            if rescale != 1.0 {
                sc.acc[r * dv..][..dv].iter_mut().for_each(|o| *o *= rescale);
            }
        }
        // Weighted values: each value row is loaded once for all rows of a block.
        let vals = &c.vals[j0 * vd + g * dv..];
        for rb in (0..r_pad).step_by(R) {
            let p = &sc.scores[rb * TILE..][..R * TILE];
            let acc = &mut sc.acc[rb * dv..][..R * dv];
            weighted_values::<M, R, V>(p, vals, vd, dv, acc);
        }
        j0 += TILE;
    }
    let mut r = 0;
    for t in tokens {
        for h in g * group..(g + 1) * group {
            let inv = 1.0 / (sc.sum[r] + sink_weight(c.sinks, h, sc.max[r]));
            // SAFETY: the (t, h) output row belongs to this job alone.
            let o = unsafe { std::slice::from_raw_parts_mut(c.out.ptr().add(t * od + h * dv), dv) };
            for (o, a) in o.iter_mut().zip(&sc.acc[r * dv..][..dv]) {
                *o = a * inv;
            }
            r += 1;
        }
    }
}

/// `scores[r * TILE + l] = q_r · key_{j + l}` for the `R` rows of `q` ([rows][d]) and
/// `K` keys from `j`; `keys` is one head's slab, [d][stride]. The accumulators stay in registers.
#[inline(always)]
fn scores_block<M: MulAdd, const R: usize, const K: usize>(q: &[f32], d: usize, keys: &[f32], stride: usize, j: usize, scores: &mut [f32]) {
    let mut acc = [[0f32; K]; R];
    for i in 0..d {
        let k: &[f32; K] = keys[i * stride + j..][..K].try_into().expect("K long");
        for (r, row) in acc.iter_mut().enumerate() {
            let qv = q[r * d + i];
            for (a, &kv) in row.iter_mut().zip(k) {
                *a = M::mul_add(*a, qv, kv);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        scores[r * TILE..][..K].copy_from_slice(row);
    }
}

/// `acc[r] += Σ_l p[r][l] · value_l` over one tile, for `R` rows; value row `l` is
/// `vals[l * stride..][..dv]`. Strips of `V` dimensions stay in registers.
#[inline(always)]
fn weighted_values<M: MulAdd, const R: usize, const V: usize>(p: &[f32], vals: &[f32], stride: usize, dv: usize, acc: &mut [f32]) {
    let mut strip = 0;
    while strip + V <= dv {
        let mut o = [[0f32; V]; R];
        for (r, row) in o.iter_mut().enumerate() {
            row.copy_from_slice(&acc[r * dv + strip..][..V]);
        }
        for l in 0..TILE {
            let v: &[f32; V] = vals[l * stride + strip..][..V].try_into().expect("V long");
            for (r, row) in o.iter_mut().enumerate() {
                let pr = p[r * TILE + l];
                for (a, &x) in row.iter_mut().zip(v) {
                    *a = M::mul_add(*a, pr, x);
                }
            }
        }
        for (r, row) in o.iter().enumerate() {
            acc[r * dv + strip..][..V].copy_from_slice(row);
        }
        strip += V;
    }
    // Dimensions past the last whole strip (head sizes that are not a multiple of V).
    if strip < dv {
        for l in 0..TILE {
            let v = &vals[l * stride + strip..l * stride + dv];
            for r in 0..R {
                let pr = p[r * TILE + l];
                for (a, &x) in acc[r * dv + strip..r * dv + dv].iter_mut().zip(v) {
                    *a = M::mul_add(*a, pr, x);
                }
            }
        }
    }
}

/// The largest value (−∞ for none), in lanes so the loop vectorizes.
#[inline(always)]
fn max_of(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// The sum, in lanes so the loop vectorizes.
#[inline(always)]
fn sum_of(v: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` for x ≤ 0 (−∞ → 0): 2^k · e^r with k = round(x / ln 2) and r = x − k·ln 2 split
/// in two parts (Cody–Waite), e^r by its degree-7 Taylor polynomial (|r| ≤ ½ ln 2).
/// Within a few ulp; values under 2^-126 flush to 0; branch-free, so loops over it vectorize.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_751_953_125;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-88.0);
    // Round to nearest by the 1.5·2²³ trick (no rounding instruction needed).
    let k = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // k ≥ -127: the exponent field 0 (k = -127) gives 0.
    p * f32::from_bits(((k.max(-127.0) as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain reference: full softmax attention in f64 over the same f16 values.
    fn reference(s: &AttnShape, q: &[f32], pos: &[usize], k: &[f16], v: &[f16]) -> Vec<f32> {
        reference_with_sinks(s, None, q, pos, k, v)
    }

    /// The reference with one extra logit per head in each softmax (its value: none).
    fn reference_with_sinks(s: &AttnShape, sinks: Option<&[f32]>, q: &[f32], pos: &[usize], k: &[f16], v: &[f16]) -> Vec<f32> {
        let group = s.n_head / s.n_head_kv;
        let mut out = vec![0f32; pos.len() * s.n_head * s.head_dim_v];
        for (t, &p) in pos.iter().enumerate() {
            for h in 0..s.n_head {
                let g = h / group;
                let mut sc: Vec<(usize, f64)> = Vec::new();
                for j in 0..=p {
                    if s.window.is_some_and(|w| p - j >= w) {
                        continue;
                    }
                    let mut d = 0f64;
                    for i in 0..s.head_dim {
                        d += f16::from_f32(q[(t * s.n_head + h) * s.head_dim + i]).to_f64()
                            * k[(j * s.n_head_kv + g) * s.head_dim + i].to_f64();
                    }
                    sc.push((j, d));
                }
                let m = sc.iter().map(|x| x.1).fold(f64::MIN, f64::max);
                let sink = sinks.map_or(0.0, |s| (s[h] as f64 - m).exp());
                let z: f64 = sc.iter().map(|x| (x.1 - m).exp()).sum::<f64>() + sink;
                for &(j, d) in &sc {
                    let p = (d - m).exp() / z;
                    for i in 0..s.head_dim_v {
                        out[(t * s.n_head + h) * s.head_dim_v + i] +=
                            (p * v[(j * s.n_head_kv + g) * s.head_dim_v + i].to_f64()) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn exp_is_accurate() {
        for i in 0..=20000 {
            let x = -(i as f32) * 0.005;
            let (got, want) = (exp(x), (x as f64).exp());
            assert!(((got as f64 - want) / want).abs() < 3e-7 || (want < 1e-37 && got < 1e-37), "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    /// Shapes that cross tile and job boundaries: GQA groups of 1, 3 and 4, long contexts,
    /// windows, a batch that starts mid-cache, head dims of 64/128/256.
    #[test]
    fn matches_reference_on_random_shapes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 20000) as f32 / 5000.0 - 2.0
        };
        let cases = [
            (4, 4, 64, 64, None, 0, 150),
            (9, 3, 64, 64, None, 37, 70),
            (8, 2, 128, 128, Some(50), 100, 90),
            (4, 1, 256, 256, Some(512), 0, 200),
            (6, 2, 32, 16, Some(7), 3, 5),
            (2, 1, 16, 16, None, 300, 1),
            (8, 2, 128, 128, Some(50), 400, 1),
            (4, 1, 256, 256, None, 700, 1),
            // Rows that are not whole vectors of 8 (the f16 rows' widening tails).
            (3, 1, 20, 12, None, 50, 1),
        ];
        for (n_head, n_head_kv, head_dim, head_dim_v, window, pos0, n) in cases {
            let s = AttnShape { n_head, n_head_kv, head_dim, head_dim_v, window };
            let ctx = pos0 + n;
            let k: Vec<f16> = (0..ctx * n_head_kv * head_dim).map(|_| f16::from_f32(rnd())).collect();
            let v: Vec<f16> = (0..ctx * n_head_kv * head_dim_v).map(|_| f16::from_f32(rnd())).collect();
            let pos: Vec<usize> = (pos0..pos0 + n).collect();
            let q: Vec<f32> = (0..n * n_head * head_dim).map(|_| rnd() * 0.3).collect();
            let mut out = vec![f32::NAN; n * n_head * head_dim_v];
            attention(&s, &q, &pos, &k, &v, &mut out);
            let want = reference(&s, &q, &pos, &k, &v);
            let worst = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "heads {n_head}/{n_head_kv} dim {head_dim} window {window:?} pos0 {pos0} n {n}: {worst}");
        }
    }

    #[test]
    fn matches_reference_with_gqa_and_window() {
        let mut seed = 12345u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 2000) as f32 / 1000.0 - 1.0
        };
        for window in [None, Some(3)] {
            let s = AttnShape { n_head: 4, n_head_kv: 2, head_dim: 16, head_dim_v: 8, window };
            let ctx = 9;
            let k: Vec<f16> = (0..ctx * 2 * 16).map(|_| f16::from_f32(rnd())).collect();
            let v: Vec<f16> = (0..ctx * 2 * 8).map(|_| f16::from_f32(rnd())).collect();
            let pos = [5usize, 6, 7, 8];
            let q: Vec<f32> = (0..4 * 4 * 16).map(|_| rnd()).collect();
            let mut out = vec![f32::NAN; 4 * 4 * 8];
            attention(&s, &q, &pos, &k, &v, &mut out);
            let want = reference(&s, &q, &pos, &k, &v);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    /// Sinks from far below the scores (no effect) to far above them (output near 0), in
    /// prefill and decode, with GQA and a window.
    #[test]
    fn sinks_join_every_softmax() {
        let mut seed = 777u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 2000) as f32 / 1000.0 - 1.0
        };
        for (window, pos0, n) in [(None, 0, 70), (Some(16), 40, 33), (None, 90, 1), (Some(8), 30, 1)] {
            let s = AttnShape { n_head: 8, n_head_kv: 2, head_dim: 64, head_dim_v: 64, window };
            let ctx = pos0 + n;
            let k: Vec<f16> = (0..ctx * 2 * 64).map(|_| f16::from_f32(rnd())).collect();
            let v: Vec<f16> = (0..ctx * 2 * 64).map(|_| f16::from_f32(rnd())).collect();
            let pos: Vec<usize> = (pos0..ctx).collect();
            let q: Vec<f32> = (0..n * 8 * 64).map(|_| rnd() * 0.4).collect();
            let sinks = [-30.0, -1.0, 0.0, 0.5, 2.0, 5.0, 20.0, 200.0];
            let mut out = vec![f32::NAN; n * 8 * 64];
            attention_with_sinks(&s, Some(&sinks), &q, &pos, &k, &v, &mut out);
            let want = reference_with_sinks(&s, Some(&sinks), &q, &pos, &k, &v);
            let worst = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "window {window:?} pos0 {pos0} n {n}: {worst}");
            // The sinks changed something (the test would pass for an attention ignoring them otherwise).
            let plain = reference(&s, &q, &pos, &k, &v);
            let moved = plain.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(moved > 1e-2, "sinks had no effect: {moved}");
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }
}
