//! A Gated DeltaNet layer's work between its projections, for one sequence on the CPU: the
//! causal depthwise convolution over the joint q/k/v projection (carrying the last inputs in
//! the sequence's convolution state), SiLU, L2-normed q and k, β = σ(b), the decay
//! g = softplus(α + dt_bias)·A, the gated delta rule over the sequence's recurrent state, and
//! the gated RMSNorm of each value head's output. Heads run in parallel, each walking the
//! tokens in order: the state of a head (d_v × d_k floats) stays in the core's cache.

use crate::cpu::ops;
use crate::plan::{DeltaNet, DeltaShape};
use rayon::prelude::*;

/// The projections of one sequence's `n` tokens, laid out `[n, width]` each.
pub struct DeltaInputs<'a> {
    /// `attn_qkv`'s output, `[n, conv_dim]` (overwritten by the convolution's output).
    pub mixed: &'a mut [f32],
    /// The output gate z, `[n, value_dim]`.
    pub z: &'a [f32],
    /// The write strength's logits, `[n, n_v_heads]`.
    pub beta: &'a [f32],
    /// The decay's logits, `[n, n_v_heads]`.
    pub alpha: &'a [f32],
}

/// Runs the layer's recurrence for one sequence: `conv_state` (`[d_conv - 1, conv_dim]`, oldest
/// first) and `ssm_state` (`[n_v_heads, d_v, d_k]`) carry the sequence from its previous
/// tokens and are left as they are after these; `out` (`[n, value_dim]`) gets the gated,
/// normed output that the output projection takes.
pub fn forward(d: &DeltaNet, eps: f32, x: DeltaInputs<'_>, conv_state: &mut [f32], ssm_state: &mut [f32], out: &mut [f32]) {
    let sh = d.shape;
    let n = x.beta.len() / sh.n_v_heads;
    conv_silu(&sh, &d.conv, x.mixed, conv_state);
    let (kd, dk, dv) = (sh.n_k_heads * sh.head_k_dim, sh.head_k_dim, sh.head_v_dim);
    // q and k L2-normed per head (llama.cpp: x / sqrt(Σx² + eps)).
    x.mixed.par_chunks_mut(sh.conv_dim()).for_each(|row| {
        for head in row[..2 * kd].chunks_exact_mut(dk) {
            let inv = 1.0 / (head.iter().map(|v| v * v).sum::<f32>() + eps).sqrt();
            head.iter_mut().for_each(|v| *v *= inv);
        }
    });
    let (mixed, conv_dim, h_v) = (&*x.mixed, sh.conv_dim(), sh.n_v_heads);
    let scale = 1.0 / (dk as f32).sqrt();
    // Each value head over every token, in parallel: its output columns land in `per_head`.
    let mut per_head = vec![0f32; h_v * n * dv];
    per_head.par_chunks_mut(n * dv).zip(ssm_state.par_chunks_mut(dv * dk)).enumerate().for_each(|(h, (o, s))| {
        let kh = sh.key_head(h);
        let mut delta = vec![0f32; dv];
        for t in 0..n {
            let row = &mixed[t * conv_dim..(t + 1) * conv_dim];
            let (q, k) = (&row[kh * dk..(kh + 1) * dk], &row[kd + kh * dk..kd + (kh + 1) * dk]);
            let v = &row[2 * kd + h * dv..2 * kd + (h + 1) * dv];
            let beta = sigmoid(x.beta[t * h_v + h]);
            let g = softplus(x.alpha[t * h_v + h] + d.dt_bias[h]) * d.a[h];
            let decay = g.exp();
            // Row j of the state: decayed, corrected toward v[j] along k, then read along q
            // (one pass over the row while it is in registers and L1).
            for (j, sj) in s.chunks_exact_mut(dk).enumerate() {
                sj.iter_mut().for_each(|v| *v *= decay);
                delta[j] = (v[j] - ops::dot(sj, k)) * beta;
                let dj = delta[j];
                sj.iter_mut().zip(k).for_each(|(a, b)| *a += dj * b);
                o[t * dv + j] = ops::dot(sj, q) * scale;
            }
        }
    });
    // Gated RMSNorm per head: rms_norm(o) · w · silu(z), token-major for the projection.
    out.par_chunks_mut(h_v * dv).enumerate().for_each(|(t, row)| {
        for (h, o) in row.chunks_exact_mut(dv).enumerate() {
            o.copy_from_slice(&per_head[h * n * dv + t * dv..h * n * dv + (t + 1) * dv]);
            let inv = 1.0 / (o.iter().map(|v| v * v).sum::<f32>() / dv as f32 + eps).sqrt();
            let z = &x.z[t * h_v * dv + h * dv..t * h_v * dv + (h + 1) * dv];
            for ((v, w), z) in o.iter_mut().zip(&d.norm).zip(z) {
                *v = *v * inv * w * silu(*z);
            }
        }
    });
}

/// The causal depthwise convolution with SiLU, in place over `mixed` (`[n, conv_dim]`):
/// channel c at token t is Σ_k w[c][k] · input[t - (d_conv - 1) + k], the inputs before the
/// first token taken from `state`, which then holds the last `d_conv - 1` inputs.
pub fn conv_silu(sh: &DeltaShape, taps: &[f32], mixed: &mut [f32], state: &mut [f32]) {
    let (cd, kw) = (sh.conv_dim(), sh.d_conv);
    let n = mixed.len() / cd;
    let hist = kw - 1;
    // The whole window: the carried inputs, then this call's.
    let mut window = Vec::with_capacity((hist + n) * cd);
    window.extend_from_slice(state);
    window.extend_from_slice(mixed);
    mixed.par_chunks_mut(cd).enumerate().for_each(|(t, out)| {
        for (c, o) in out.iter_mut().enumerate() {
            let w = &taps[c * kw..(c + 1) * kw];
            let acc: f32 = (0..kw).map(|k| window[(t + k) * cd + c] * w[k]).sum();
            *o = silu(acc);
        }
    });
    state.copy_from_slice(&window[n * cd..(n + hist) * cd]);
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// ggml's softplus: ln(1 + e^x), x itself above 20.
fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> DeltaShape {
        DeltaShape { n_k_heads: 2, n_v_heads: 4, head_k_dim: 8, head_v_dim: 6, d_conv: 4, interleaved: false }
    }

    fn rnd(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The convolution over a sequence split anywhere equals it in one call (the state
    /// carries exactly the inputs the next call needs), and equals the direct sum.
    #[test]
    fn convolution_carries_its_state_across_calls() {
        let sh = shape();
        let (cd, kw) = (sh.conv_dim(), sh.d_conv);
        let mut seed = 7;
        let taps: Vec<f32> = (0..cd * kw).map(|_| rnd(&mut seed)).collect();
        let input: Vec<f32> = (0..11 * cd).map(|_| rnd(&mut seed)).collect();
        let mut whole = input.clone();
        let mut state = vec![0f32; sh.conv_state_len()];
        conv_silu(&sh, &taps, &mut whole, &mut state);
        // Direct: zeros before the first token.
        for t in 0..11 {
            for c in 0..cd {
                let acc: f32 = (0..kw).filter(|&k| t + k >= kw - 1).map(|k| input[(t + k + 1 - kw) * cd + c] * taps[c * kw + k]).sum();
                assert!((whole[t * cd + c] - silu(acc)).abs() < 1e-5);
            }
        }
        for split in [1, 2, 3, 5, 10] {
            let mut st = vec![0f32; sh.conv_state_len()];
            let (mut a, mut b) = (input[..split * cd].to_vec(), input[split * cd..].to_vec());
            conv_silu(&sh, &taps, &mut a, &mut st);
            conv_silu(&sh, &taps, &mut b, &mut st);
            a.extend(b);
            assert_eq!(a, whole, "split at {split}");
            assert_eq!(st, state);
        }
    }
}
