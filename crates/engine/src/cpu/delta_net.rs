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
    // Each value head over every token, in parallel: its output columns land in `per_head`.
    let mut per_head = vec![0f32; h_v * n * dv];
    per_head.par_chunks_mut(n * dv).zip(ssm_state.par_chunks_mut(dv * dk)).enumerate().for_each(|(h, (o, s))| {
        let kh = sh.key_head(h);
        let head = HeadInputs {
            n,
            dk,
            dv,
            q: &|t| &mixed[t * conv_dim + kh * dk..t * conv_dim + (kh + 1) * dk],
            k: &|t| &mixed[t * conv_dim + kd + kh * dk..t * conv_dim + kd + (kh + 1) * dk],
            v: &|t| &mixed[t * conv_dim + 2 * kd + h * dv..t * conv_dim + 2 * kd + (h + 1) * dv],
            beta: &|t| sigmoid(x.beta[t * h_v + h]),
            log_decay: &|t| softplus(x.alpha[t * h_v + h] + d.dt_bias[h]) * d.a[h],
        };
        // Token by token on the CPU: the chunked form measured slower here (it moves the same
        // bytes through the per-head state, plus chunk-squared products; examples/delta_net_bench).
        recur_sequential(&head, s, o);
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

/// Tokens per chunk of the chunked form.
pub const CHUNK: usize = 64;

/// One value head's inputs over a sequence's `n` tokens (q and k L2-normed, β = σ(b), the
/// log-decay g = softplus(α + dt_bias)·A).
pub struct HeadInputs<'a> {
    /// Tokens.
    pub n: usize,
    /// Key size.
    pub dk: usize,
    /// Value size.
    pub dv: usize,
    /// Token t's query.
    pub q: &'a (dyn Fn(usize) -> &'a [f32] + Sync),
    /// Token t's key.
    pub k: &'a (dyn Fn(usize) -> &'a [f32] + Sync),
    /// Token t's value.
    pub v: &'a (dyn Fn(usize) -> &'a [f32] + Sync),
    /// Token t's write strength.
    pub beta: &'a (dyn Fn(usize) -> f32 + Sync),
    /// Token t's log-decay (≤ 0).
    pub log_decay: &'a (dyn Fn(usize) -> f32 + Sync),
}

/// The gated delta rule token by token over the state `s` (`[dv, dk]`, row j maps keys to
/// value j): `S ← e^g·S; δ = β(v − S k); S += δ kᵀ; o = S q / √dk`. Each row takes two passes:
/// its dot with k, then decay, correction and the dot with q together (its δ depends on that
/// row only). `o`: `[n, dv]`.
pub fn recur_sequential(x: &HeadInputs<'_>, s: &mut [f32], o: &mut [f32]) {
    let (dk, dv) = (x.dk, x.dv);
    let scale = 1.0 / (dk as f32).sqrt();
    for t in 0..x.n {
        let (q, k, v, beta, decay) = ((x.q)(t), (x.k)(t), (x.v)(t), (x.beta)(t), (x.log_decay)(t).exp());
        for (j, sj) in s.chunks_exact_mut(dk).enumerate() {
            let dj = (v[j] - decay * ops::dot(sj, k)) * beta;
            o[t * dv + j] = decay_add_dot(sj, decay, dj, k, q) * scale;
        }
    }
}

/// `s = s·decay + d·k`, returning the new `s · q` (sixteen lanes summed in order, as `ops::dot`).
#[inline(always)]
fn decay_add_dot(s: &mut [f32], decay: f32, d: f32, k: &[f32], q: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut tail = 0f32;
    let (mut sc, kc, qc) = (s.chunks_exact_mut(16), k.chunks_exact(16), q.chunks_exact(16));
    let (kr, qr) = (kc.remainder(), qc.remainder());
    for ((s, k), q) in (&mut sc).zip(kc).zip(qc) {
        for i in 0..16 {
            s[i] = s[i] * decay + d * k[i];
            lanes[i] += s[i] * q[i];
        }
    }
    for ((s, k), q) in sc.into_remainder().iter_mut().zip(kr).zip(qr) {
        *s = *s * decay + d * k;
        tail += *s * q;
    }
    lanes.iter().sum::<f32>() + tail
}

/// The same recurrence in chunks of [`CHUNK`] tokens (the WY form): within a chunk the state
/// is `S_t = Γ_t S_0 + Σ_{i≤t} (Γ_t/Γ_i) u_i k_iᵀ` (Γ the decay since the chunk's start), the
/// corrections u solve the unit lower-triangular system
/// `u_t + β_t Σ_{i<t} (Γ_t/Γ_i)(k_t·k_i) u_i = β_t (v_t − Γ_t S_0 k_t)`, the outputs are
/// `o_t = Γ_t S_0 q_t + Σ_{i≤t} (Γ_t/Γ_i)(k_i·q_t) u_i`, and the state after the chunk
/// `Γ_C S_0 + Σ_i (Γ_C/Γ_i) u_i k_iᵀ`: the state is read and written once per chunk instead
/// of once per token, and the rest is chunk-sized products (a GPU's tensor-core form).
pub fn recur_chunked(x: &HeadInputs<'_>, s: &mut [f32], o: &mut [f32]) {
    let (dk, dv) = (x.dk, x.dv);
    let scale = 1.0 / (dk as f32).sqrt();
    let (mut gam, mut beta, mut u) = (Vec::with_capacity(CHUNK), Vec::with_capacity(CHUNK), vec![0f32; CHUNK * dv]);
    let mut kk = vec![0f32; CHUNK * CHUNK];
    for c0 in (0..x.n).step_by(CHUNK) {
        let c = CHUNK.min(x.n - c0);
        gam.clear();
        beta.clear();
        let mut acc = 0f32;
        for t in 0..c {
            acc += (x.log_decay)(c0 + t);
            gam.push(acc);
            beta.push((x.beta)(c0 + t));
        }
        // Keys against keys (strictly lower triangle) for the system.
        for t in 0..c {
            for i in 0..t {
                kk[t * CHUNK + i] = ops::dot((x.k)(c0 + t), (x.k)(c0 + i));
            }
        }
        // u by forward substitution, from the chunk's starting state.
        for t in 0..c {
            let (k, v, g) = ((x.k)(c0 + t), (x.v)(c0 + t), gam[t].exp());
            let (done, rest) = u.split_at_mut(t * dv);
            let ut = &mut rest[..dv];
            for (j, sj) in s.chunks_exact(dk).enumerate() {
                ut[j] = v[j] - g * ops::dot(sj, k);
            }
            for i in 0..t {
                let w = (gam[t] - gam[i]).exp() * kk[t * CHUNK + i];
                ut.iter_mut().zip(&done[i * dv..(i + 1) * dv]).for_each(|(a, b)| *a -= w * b);
            }
            ut.iter_mut().for_each(|a| *a *= beta[t]);
        }
        // Outputs: the starting state's part, then the chunk's corrections.
        for t in 0..c {
            let (q, g) = ((x.q)(c0 + t), gam[t].exp());
            let ot = &mut o[(c0 + t) * dv..(c0 + t + 1) * dv];
            for (j, sj) in s.chunks_exact(dk).enumerate() {
                ot[j] = g * ops::dot(sj, q);
            }
            for i in 0..=t {
                let w = (gam[t] - gam[i]).exp() * ops::dot((x.k)(c0 + i), q);
                ot.iter_mut().zip(&u[i * dv..(i + 1) * dv]).for_each(|(a, b)| *a += w * b);
            }
            ot.iter_mut().for_each(|a| *a *= scale);
        }
        // The state after the chunk.
        let last = gam[c - 1];
        for (j, sj) in s.chunks_exact_mut(dk).enumerate() {
            sj.iter_mut().for_each(|a| *a *= last.exp());
            for i in 0..c {
                let w = (last - gam[i]).exp() * u[i * dv + j];
                sj.iter_mut().zip((x.k)(c0 + i)).for_each(|(a, b)| *a += w * b);
            }
        }
    }
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

    /// The chunked recurrence equals the token-by-token one: prompts shorter than a chunk,
    /// exact multiples, ragged tails, and continued from a state left by earlier tokens.
    #[test]
    fn chunked_recurrence_equals_the_sequential_one() {
        let (dk, dv) = (16, 12);
        let mut seed = 11;
        for n in [1, 5, 63, 64, 65, 128, 150] {
            let total = n + 7;
            let unit = |seed: &mut u64, d: usize| {
                let v: Vec<f32> = (0..d).map(|_| rnd(seed)).collect();
                let l = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(move |x| x / l)
            };
            let qf: Vec<f32> = (0..total).flat_map(|_| unit(&mut seed, dk).collect::<Vec<_>>()).collect();
            let kf: Vec<f32> = (0..total).flat_map(|_| unit(&mut seed, dk).collect::<Vec<_>>()).collect();
            let vf: Vec<f32> = (0..total * dv).map(|_| rnd(&mut seed)).collect();
            let bf: Vec<f32> = (0..total).map(|_| sigmoid(2.0 * rnd(&mut seed))).collect();
            let gf: Vec<f32> = (0..total).map(|_| -0.3 * (rnd(&mut seed) + 1.0)).collect();
            let (qf, kf, vf, bf, gf) = (&qf[..], &kf[..], &vf[..], &bf[..], &gf[..]);
            let run = |from: usize, len: usize, chunked: bool, s: &mut [f32], o: &mut [f32]| {
                let q = move |t: usize| &qf[(from + t) * dk..(from + t + 1) * dk];
                let k = move |t: usize| &kf[(from + t) * dk..(from + t + 1) * dk];
                let v = move |t: usize| &vf[(from + t) * dv..(from + t + 1) * dv];
                let beta = move |t: usize| bf[from + t];
                let log_decay = move |t: usize| gf[from + t];
                let head = HeadInputs { n: len, dk, dv, q: &q, k: &k, v: &v, beta: &beta, log_decay: &log_decay };
                if chunked { recur_chunked(&head, s, o) } else { recur_sequential(&head, s, o) }
            };
            // 7 tokens first (the state a continued prompt starts from), then n more.
            let mut s_seq = vec![0f32; dv * dk];
            run(0, 7, false, &mut s_seq, &mut vec![0f32; 7 * dv]);
            let mut s_chk = s_seq.clone();
            let (mut o_seq, mut o_chk) = (vec![0f32; n * dv], vec![0f32; n * dv]);
            run(7, n, false, &mut s_seq, &mut o_seq);
            run(7, n, true, &mut s_chk, &mut o_chk);
            let err = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(err(&o_seq, &o_chk) < 1e-4, "n={n}: outputs differ by {}", err(&o_seq, &o_chk));
            assert!(err(&s_seq, &s_chk) < 1e-4, "n={n}: states differ by {}", err(&s_seq, &s_chk));
        }
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
