//! Attention of a decode step (one query token per sequence) split over the keys, "flash
//! decoding": one block per KV head and split of the keys, so a long context is read by the
//! whole card rather than by one block per query head; a second kernel merges the splits.
//! The splits are fixed by the rows the sequence's cache holds on the card (not by its
//! length), so consecutive steps launch alike and replay as one graph (`graph.rs`).

use crate::gpu::{int, Gpu, KArg, Res};
use crate::stack_attention::SeqAttention;
use engine::matrix::AttnShape;

/// The kernels (after the matrix-vector frame: they use its `warp_sum`).
pub(crate) const KERNELS: &str = r#"
// Split sp of a decode step's keys: [sp*per, (sp+1)*per) of those the query (at pos[0]) sees,
// 0..pos[0] or its window's. Grid (KV heads, splits), AD_WARPS warps: each takes every
// AD_WARPS-th key; a lane holds dims lane + 32c (c < C) of the group's G query heads (G*C <= 32
// floats each for queries and outputs); per key each head's score is a warp sum, folded into
// an online softmax. The warps merge in shared memory into the split's partial per head:
// max, sum, then D outputs (f32, unnormalized) at part[(h * splits + sp) * (D + 2)].
#define AD_WARPS 4
template <int C>
__device__ __forceinline__ void attn_decode(const u16* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                                            float* __restrict__ part, const int* __restrict__ pos, int n_head, int n_kv, int window, int per) {
    constexpr int D = 32 * C, GMAX = 32 / C;
    __shared__ float red[AD_WARPS][32 * 2 + 1024];
    const float NEG_INF = -__int_as_float(0x7f800000);
    const int gk = blockIdx.x, sp = blockIdx.y, splits = gridDim.y, G = n_head / n_kv;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int p = pos[0], lo = window > 0 ? max(0, p + 1 - window) : 0;
    const int j0 = max(lo, sp * per), j1 = min(p + 1, (sp + 1) * per);
    const i64 kvd = (i64)n_kv * D;
    float qr[GMAX][C], acc[GMAX][C], m[GMAX], l[GMAX];
    #pragma unroll
    for (int g = 0; g < GMAX; g++) {
        m[g] = NEG_INF;
        l[g] = 0.0f;
        #pragma unroll
        for (int c = 0; c < C; c++) {
            acc[g][c] = 0.0f;
            qr[g][c] = g < G ? h2f(q[(i64)(gk * G + g) * D + lane + 32 * c]) : 0.0f;
        }
    }
    for (int j = j0 + warp; j < j1; j += AD_WARPS) {
        float kr[C], vr[C];
        #pragma unroll
        for (int c = 0; c < C; c++) {
            kr[c] = h2f(kc[j * kvd + gk * D + lane + 32 * c]);
            vr[c] = h2f(vc[j * kvd + gk * D + lane + 32 * c]);
        }
        #pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g < G) {
                float s = 0.0f;
                #pragma unroll
                for (int c = 0; c < C; c++) s += qr[g][c] * kr[c];
                s = warp_sum(s);
                const float mn = fmaxf(m[g], s), corr = expf(m[g] - mn), e = expf(s - mn);
                l[g] = l[g] * corr + e;
                #pragma unroll
                for (int c = 0; c < C; c++) acc[g][c] = acc[g][c] * corr + e * vr[c];
                m[g] = mn;
            }
        }
    }
    // Each warp's (max, sum) per head, then its outputs; warp 0's lanes merge them.
    float* mine = red[warp];
    #pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g < G) {
            if (lane == 0) { mine[2 * g] = m[g]; mine[2 * g + 1] = l[g]; }
            #pragma unroll
            for (int c = 0; c < C; c++) mine[64 + g * D + lane + 32 * c] = acc[g][c];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * (D + 2); e += blockDim.x) {
        const int g = e / (D + 2), k = e % (D + 2);
        float mx = NEG_INF;
        for (int w = 0; w < AD_WARPS; w++) mx = fmaxf(mx, red[w][2 * g]);
        float v = 0.0f;
        for (int w = 0; w < AD_WARPS; w++) {
            const float f = mx == NEG_INF ? 0.0f : expf(red[w][2 * g] - mx);
            v += f * (k == 0 ? 0.0f : k == 1 ? red[w][2 * g + 1] : red[w][64 + g * D + k - 2]);
        }
        part[((i64)(gk * G + g) * splits + sp) * (D + 2) + k] = k == 0 ? mx : v;
    }
}
#define ATTN_DECODE(NAME, C) \
extern "C" __global__ void NAME(const u16* q, const u16* kc, const u16* vc, float* part, const int* pos, int n_head, int n_kv, int window, int per) { \
    attn_decode<C>(q, kc, vc, part, pos, n_head, n_kv, window, per); \
}
ATTN_DECODE(attn_decode_d64, 2)
ATTN_DECODE(attn_decode_d128, 4)
ATTN_DECODE(attn_decode_d256, 8)

// The splits' partials of each query head merged: out[h, :] = sum_s e^(m_s - M) o_s / sum_s
// e^(m_s - M) l_s, as f16. One block per head, a thread per output dim.
extern "C" __global__ void attn_decode_merge(const float* __restrict__ part, u16* __restrict__ out, int d, int splits) {
    const float NEG_INF = -__int_as_float(0x7f800000);
    const int h = blockIdx.x;
    const float* ph = part + (i64)h * splits * (d + 2);
    float mx = NEG_INF;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, ph[s * (d + 2)]);
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float* ps = ph + s * (d + 2);
            const float f = ps[0] == NEG_INF ? 0.0f : expf(ps[0] - mx);
            num += f * ps[2 + k];
            den += f * ps[1];
        }
        out[(i64)h * d + k] = f2h(den > 0.0f ? num / den : 0.0f);
    }
}
"#;

/// Keys per split and splits for a cache of `cap` rows: at least 64 keys a split, at most
/// 256 splits.
pub(crate) fn splits(cap: usize) -> (usize, usize) {
    let per = cap.div_ceil(256).max(64);
    (per, cap.div_ceil(per).max(1))
}

/// The split kernel for this shape, when it fits: equal K and V head sizes of 64, 128 or
/// 256 with at most 32 / (size / 32) query heads per KV head (their queries and outputs stay
/// in a lane's registers).
pub(crate) fn kernel(sh: &AttnShape) -> Option<&'static str> {
    if sh.head_dim != sh.head_dim_v || sh.n_head_kv == 0 || !sh.n_head.is_multiple_of(sh.n_head_kv) {
        return None;
    }
    let (name, c) = match sh.head_dim {
        64 => ("attn_decode_d64", 2),
        128 => ("attn_decode_d128", 4),
        256 => ("attn_decode_d256", 8),
        _ => return None,
    };
    (sh.n_head / sh.n_head_kv <= 32 / c).then_some(name)
}

/// Bytes of partials a step of these shapes needs for caches of up to `cap` rows.
pub(crate) fn partial_bytes(n_head: usize, head_dim: usize, cap: usize) -> usize {
    n_head * splits(cap).1 * (head_dim + 2) * 4
}

/// A sequence's one decode query (`a.len` = 1) against its cache rows, through the partials
/// at `part` ([`partial_bytes`]). False (nothing launched) where the shape does not fit.
pub(crate) fn launch(gpu: &Gpu, sh: &AttnShape, a: &SeqAttention, part: u64) -> Res<bool> {
    let Some(name) = kernel(sh) else { return Ok(false) };
    let (per, n_split) = splits(a.cap);
    let args = [
        KArg::P(a.q_h),
        KArg::P(a.k),
        KArg::P(a.v),
        KArg::P(part),
        KArg::P(a.pos),
        KArg::I(int(sh.n_head)?),
        KArg::I(int(sh.n_head_kv)?),
        KArg::I(int(sh.window.unwrap_or(0))?),
        KArg::I(int(per)?),
    ];
    gpu.launch_grid(name, (int(sh.n_head_kv)? as u32, int(n_split)? as u32), 128, &args)?;
    let merge = [KArg::P(part), KArg::P(a.out), KArg::I(int(sh.head_dim)?), KArg::I(int(n_split)?)];
    gpu.launch_grid("attn_decode_merge", (int(sh.n_head)? as u32, 1), sh.head_dim.min(256) as u32, &merge)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels' algorithm on the host: each split's online softmax over its keys (dealt
    /// out to warps), the warps merged, the splits merged; against a plain softmax.
    fn split_attention(q: &[f32], k: &[f32], v: &[f32], d: usize, p: usize, window: usize, cap: usize) -> Vec<f32> {
        let (per, n_split) = splits(cap);
        let lo = if window > 0 { (p + 1).saturating_sub(window) } else { 0 };
        let partial = |j0: usize, j1: usize| -> (f32, f32, Vec<f32>) {
            // Four warps, each every 4th key, then merged as the block does.
            let warps: Vec<(f32, f32, Vec<f32>)> = (0..4)
                .map(|w| {
                    let (mut m, mut l, mut acc) = (f32::NEG_INFINITY, 0f32, vec![0f32; d]);
                    for j in (j0 + w..j1).step_by(4) {
                        let s: f32 = (0..d).map(|c| q[c] * k[j * d + c]).sum();
                        let mn = m.max(s);
                        let (corr, e) = ((m - mn).exp(), (s - mn).exp());
                        l = l * corr + e;
                        acc.iter_mut().enumerate().for_each(|(c, a)| *a = *a * corr + e * v[j * d + c]);
                        m = mn;
                    }
                    (m, l, acc)
                })
                .collect();
            merge(&warps, d)
        };
        let parts: Vec<_> = (0..n_split).map(|sp| partial(lo.max(sp * per), (p + 1).min((sp + 1) * per))).collect();
        let (_, l, o) = merge(&parts, d);
        o.iter().map(|x| if l > 0.0 { x / l } else { 0.0 }).collect()
    }

    fn merge(parts: &[(f32, f32, Vec<f32>)], d: usize) -> (f32, f32, Vec<f32>) {
        let mx = parts.iter().fold(f32::NEG_INFINITY, |a, p| a.max(p.0));
        let f = |m: f32| if mx == f32::NEG_INFINITY { 0.0 } else { (m - mx).exp() };
        let l = parts.iter().map(|p| f(p.0) * p.1).sum();
        let o = (0..d).map(|c| parts.iter().map(|p| f(p.0) * p.2[c]).sum()).collect();
        (mx, l, o)
    }

    #[test]
    fn splits_merge_to_the_softmax_over_the_visible_keys_whatever_the_position_and_window() {
        let d = 8;
        let mut seed = 0x1234_5678u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let cap = 1000;
        let (k, v): (Vec<f32>, Vec<f32>) = (0..cap * d).map(|_| (rnd() * 2.0, rnd())).unzip();
        let q: Vec<f32> = (0..d).map(|_| rnd()).collect();
        for (p, window, cap) in [(0, 0, 256), (63, 0, 256), (64, 0, 256), (255, 0, 256), (300, 0, 512), (999, 0, 1000), (700, 100, 1000), (5, 3, 256), (130, 64, 256)] {
            let got = split_attention(&q, &k, &v, d, p, window, cap);
            let lo = if window > 0 { (p + 1).saturating_sub(window) } else { 0 };
            let s: Vec<f32> = (lo..=p).map(|j| (0..d).map(|c| q[c] * k[j * d + c]).sum()).collect();
            let mx = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = s.iter().map(|x| (x - mx).exp()).collect();
            let z: f32 = e.iter().sum();
            for c in 0..d {
                let want: f32 = (lo..=p).zip(&e).map(|(j, w)| w * v[j * d + c]).sum::<f32>() / z;
                assert!((got[c] - want).abs() < 1e-5, "p {p} window {window} cap {cap} dim {c}: {} vs {want}", got[c]);
            }
        }
    }

    #[test]
    fn split_counts_are_bounded_and_cover_the_capacity() {
        for cap in [1, 63, 64, 256, 257, 4096, 16384, 131072, 1 << 20] {
            let (per, n) = splits(cap);
            assert!(per >= 64 && n <= 256 && n * per >= cap && (n - 1) * per < cap.max(1), "cap {cap}: {per} x {n}");
        }
        let sh = |h, kv, d| AttnShape { n_head: h, n_head_kv: kv, head_dim: d, head_dim_v: d, window: None };
        assert_eq!(kernel(&sh(32, 8, 128)), Some("attn_decode_d128"));
        assert_eq!(kernel(&sh(32, 2, 128)), None, "16 heads a group of 128 dims: too many registers");
        assert_eq!(kernel(&sh(8, 1, 256)), None);
        assert_eq!(kernel(&sh(4, 1, 256)), Some("attn_decode_d256"));
        assert_eq!(kernel(&sh(16, 1, 64)), Some("attn_decode_d64"));
        assert_eq!(kernel(&sh(9, 3, 96)), None);
    }
}
