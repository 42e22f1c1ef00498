//! Causal attention of a batch of queries over the KV cache (f16), with GQA and an
//! optional sliding window. Parallel over (token, kv-head) pairs.

use super::ops::softmax;
use super::SharedMut;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Shapes for one attention call.
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Query/key head dimension.
    pub head_dim: usize,
    /// Value head dimension.
    pub head_dim_v: usize,
    /// Sliding window (keys with pos_q - pos_k >= window are masked).
    pub window: Option<usize>,
}

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
    let n = positions.len();
    let group = s.n_head / s.n_head_kv;
    let (qd, kvd, vd) = (s.n_head * s.head_dim, s.n_head_kv * s.head_dim, s.n_head_kv * s.head_dim_v);
    let od = s.n_head * s.head_dim_v;
    // Convert the cached rows every query needs to f32 once (in parallel), instead of once
    // per query: a prefill of N tokens would otherwise convert O(N²) rows.
    let first = positions.iter().map(|&p| s.window.map_or(0, |w| (p + 1).saturating_sub(w))).min().unwrap_or(0);
    let last = positions.iter().copied().max().unwrap_or(0);
    let rows = last + 1 - first;
    let mut keys = vec![0f32; rows * kvd];
    let mut vals = vec![0f32; rows * vd];
    keys.par_chunks_mut(kvd).zip(vals.par_chunks_mut(vd)).enumerate().for_each(|(j, (kr, vr))| {
        k_cache[(first + j) * kvd..][..kvd].convert_to_f32_slice(kr);
        v_cache[(first + j) * vd..][..vd].convert_to_f32_slice(vr);
    });
    let dst = SharedMut(out.as_mut_ptr());
    (0..n * s.n_head_kv).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(scores, qh), job| {
            let (t, g) = (job / s.n_head_kv, job % s.n_head_kv);
            let pos = positions[t];
            let lo = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let key_rows = &keys[(lo - first) * kvd..(pos + 1 - first) * kvd];
            let val_rows = &vals[(lo - first) * vd..(pos + 1 - first) * vd];
            for h in g * group..(g + 1) * group {
                // Queries are rounded to f16 like the keys, as ggml does before its f16 dot.
                qh.clear();
                qh.extend(q[t * qd + h * s.head_dim..][..s.head_dim].iter().map(|&x| f16::from_f32(x).to_f32()));
                scores.clear();
                scores.extend(key_rows.chunks_exact(kvd).map(|k| dot(qh, &k[g * s.head_dim..][..s.head_dim])));
                softmax(scores);
                // SAFETY: the (t, h) output slice belongs to this job alone.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(dst.ptr().add(t * od + h * s.head_dim_v), s.head_dim_v)
                };
                o.fill(0.0);
                for (p, v) in scores.iter().zip(val_rows.chunks_exact(vd)) {
                    for (a, b) in o.iter_mut().zip(&v[g * s.head_dim_v..][..s.head_dim_v]) {
                        *a += p * b;
                    }
                }
            }
        },
    );
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorize without reassociation flags.
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain reference: full softmax attention in f64 over the same f16 values.
    fn reference(s: &AttnShape, q: &[f32], pos: &[usize], k: &[f16], v: &[f16]) -> Vec<f32> {
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
                let z: f64 = sc.iter().map(|x| (x.1 - m).exp()).sum();
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
}
