//! Element-wise and row-wise operations on f32 activations laid out `[tokens, features]`.
//! Large inputs (a prefill's) are split across the current thread pool; results do not
//! depend on the split.

use rayon::prelude::*;

/// Elements per parallel piece of an element-wise op.
const PIECE: usize = 1 << 14;

/// RMSNorm of each row of `x` (row length `w.len()`), times `w`, in place.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let norm_row = |row: &mut [f32]| {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    };
    if x.len() >= 2 * PIECE {
        x.par_chunks_mut(w.len()).for_each(norm_row);
    } else {
        x.chunks_exact_mut(w.len()).for_each(norm_row);
    }
}

/// f32 dot product in sixteen lanes summed in order, then the remainder's products: it
/// vectorizes without reassociation flags, and every caller gets the same bits.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `f(a_piece, b_piece)` over matching pieces of two equal-length slices, in parallel when large.
fn zip_pieces(a: &mut [f32], b: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if a.len() >= 2 * PIECE {
        a.par_chunks_mut(PIECE).zip(b.par_chunks(PIECE)).for_each(|(a, b)| f(a, b));
    } else {
        f(a, b);
    }
}

/// `dst = rms_norm(src) * w`, row by row.
pub fn rms_norm_into(src: &[f32], w: &[f32], eps: f32, dst: &mut [f32]) {
    dst.copy_from_slice(src);
    rms_norm(dst, w, eps);
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    zip_pieces(x, y, |x, y| {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    });
}

/// Add a bias to every row.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

/// `gate = act(gate) * up`: the feed-forward product for either activation.
pub fn gated(act: crate::arch::Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        crate::arch::Activation::Silu => silu_mul(gate, up),
        crate::arch::Activation::GeluTanh => gelu_mul(gate, up),
        crate::arch::Activation::SwigluOai => swiglu_oai_mul(gate, up),
    }
}

/// gpt-oss's clamped SwiGLU, as ggml's `swiglu_oai`: `x = min(gate, limit)`,
/// `y = clamp(up, -limit, limit)`, `gate = x / (1 + e^(-α·x)) · (y + 1)`.
pub fn swiglu_oai_mul(gate: &mut [f32], up: &[f32]) {
    use crate::arch::{SWIGLU_OAI_ALPHA as ALPHA, SWIGLU_OAI_LIMIT as LIMIT};
    zip_pieces(gate, up, |gate, up| {
        for (g, u) in gate.iter_mut().zip(up) {
            let x = g.min(LIMIT);
            let y = u.clamp(-LIMIT, LIMIT);
            *g = x / (1.0 + (ALPHA * -x).exp()) * (y + 1.0);
        }
    });
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    zip_pieces(gate, up, |gate, up| {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    });
}

/// `gate = gelu_tanh(gate) * up`, computed as ggml does on the CPU: the input is rounded
/// to f16 and looked up in a table of f16 GELU values (saturating beyond ±10). Matching
/// this keeps greedy outputs identical to llama.cpp's at near-ties.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    zip_pieces(gate, up, |gate, up| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
            // SAFETY: the features were just detected.
            let done = unsafe { gelu_mul_avx2(gate, up) };
            return gelu_mul_scalar(&mut gate[done..], &up[done..]);
        }
        gelu_mul_scalar(gate, up)
    });
}

fn gelu_mul_scalar(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[half::f16::from_f32(x).to_bits() as usize] * u
        };
    }
}

/// [`gelu_mul`] 8 at a time: F16C rounds to f16 (to nearest even, as `half` does) and a
/// gather reads the table; the same bits as the scalar form. Returns how many it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn gelu_mul_avx2(gate: &mut [f32], up: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let table = gelu_table();
    let n = gate.len().min(up.len()) / 8 * 8;
    let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
    for i in (0..n).step_by(8) {
        let x = _mm256_loadu_ps(gate.as_ptr().add(i));
        let u = _mm256_loadu_ps(up.as_ptr().add(i));
        let bits = _mm256_cvtepu16_epi32(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
        let g = _mm256_mul_ps(_mm256_i32gather_ps::<4>(table.as_ptr(), bits), u);
        let g = _mm256_blendv_ps(g, _mm256_mul_ps(x, u), _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
        let g = _mm256_blendv_ps(g, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LE_OQ>(x, lo));
        _mm256_storeu_ps(gate.as_mut_ptr().add(i), g);
    }
    n
}

/// The tanh-approximated GELU.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

/// GELU of every f16 value, rounded to f16 as ggml's table, kept as f32 for the gathers.
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX).map(|bits| half::f16::from_f32(gelu_tanh(half::f16::from_bits(bits).to_f32())).to_f32()).collect()
    })
}

/// Softmax in place (max-subtracted).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// ggml_rope_ext's YaRN parameters (after llama.cpp's context set-up): `ext_factor` 0 and
/// `attn_factor` 1 give plain RoPE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// Mix of extrapolated (unscaled) angles into the low-frequency dims' interpolated ones
    /// (ggml's ramp between the correction dims); 0 switches YaRN off.
    pub ext_factor: f32,
    /// Magnitude of cos/sin (further multiplied by `1 + 0.1 ln(1/freq_scale)` when `ext_factor != 0`).
    pub attn_factor: f32,
    /// Rotations at the original context above which a dim is extrapolated.
    pub beta_fast: f32,
    /// Rotations below which a dim is fully interpolated.
    pub beta_slow: f32,
    /// The context the model was trained for before scaling (the correction dims depend on it).
    pub n_ctx_orig: usize,
}

impl Yarn {
    /// Plain RoPE (llama.cpp's defaults when no scaling applies).
    pub const NONE: Yarn = Yarn { ext_factor: 0.0, attn_factor: 1.0, beta_fast: 32.0, beta_slow: 1.0, n_ctx_orig: 0 };

    /// ggml_rope_yarn_corr_dims: the first and last dims of the ramp, as ggml computes them in f32.
    pub fn corr_dims(&self, dims: usize, base: f32) -> [f32; 2] {
        let corr_dim = |rotations: f32| {
            dims as f32 * (self.n_ctx_orig as f32 / (rotations * 2.0 * std::f32::consts::PI)).ln() / (2.0 * base.ln())
        };
        let start = corr_dim(self.beta_fast).floor();
        let end = corr_dim(self.beta_slow).ceil();
        [start.max(0.0), end.min(dims as f32 - 1.0)]
    }
}

/// RoPE angles of one kind of layer: ggml_rope_ext's cache, position by position.
pub struct RopeTable {
    /// `base^(-2/dims)`: each pair's θ is the previous one's times this.
    theta_scale: f32,
    freq_scale: f32,
    /// Per-pair frequency divisors (Llama 3.1's `rope_freqs`, LongRoPE's factors); empty when none.
    freq_factors: Vec<f32>,
    pairs: usize,
    yarn: Yarn,
    corr_dims: [f32; 2],
}

impl RopeTable {
    /// Angles for `dims` rotated dims: pair i turns by `pos · base^(-2i/dims) / factor_i`, scaled
    /// by `freq_scale` and, with YaRN, ramped between interpolation and extrapolation, its cos and
    /// sin multiplied by the magnitude scale — as ggml's CPU rope computes them (f32, θ built by
    /// repeated multiplication, the same order of operations).
    pub fn new(dims: usize, base: f32, freq_scale: f32, yarn: Yarn, freq_factors: Option<&[f32]>) -> Self {
        RopeTable {
            theta_scale: base.powf(-2.0 / dims as f32),
            freq_scale,
            freq_factors: freq_factors.map_or_else(Vec::new, |f| f[..dims / 2].to_vec()),
            pairs: dims / 2,
            yarn,
            corr_dims: yarn.corr_dims(dims, base),
        }
    }

    /// Rotate one head vector `x` (the first `2 * pairs` dims) at `pos`.
    /// `neox` pairs (i, i + dims/2); otherwise adjacent (2i, 2i+1).
    pub fn apply(&self, x: &mut [f32], pos: usize, neox: bool) {
        let mut angles = Vec::new();
        self.angles(pos, &mut angles);
        Self::rotate(x, &angles, neox);
    }

    /// (sin, cos) of every pair's angle at `pos`, magnitude-scaled: computed once per token,
    /// shared by its heads.
    pub fn angles(&self, pos: usize, out: &mut Vec<(f32, f32)>) {
        let y = &self.yarn;
        // The magnitude correction YaRN adds for interpolation (rope_yarn's mscale).
        let mscale = if y.ext_factor != 0.0 {
            y.attn_factor * (1.0 + 0.1 * (1.0 / self.freq_scale).ln())
        } else {
            y.attn_factor
        };
        let [low, high] = self.corr_dims;
        let mut theta = pos as f32;
        out.clear();
        for i in 0..self.pairs {
            let extrap = theta / self.freq_factors.get(i).copied().unwrap_or(1.0);
            let interp = self.freq_scale * extrap;
            let angle = if y.ext_factor != 0.0 {
                let ramp = 1.0 - ((i as f32 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                let mix = ramp * y.ext_factor;
                interp * (1.0 - mix) + extrap * mix
            } else {
                interp
            };
            out.push((angle.sin() * mscale, angle.cos() * mscale));
            theta *= self.theta_scale;
        }
    }

    /// Rotate one head vector by precomputed [`angles`](Self::angles).
    pub fn rotate(x: &mut [f32], angles: &[(f32, f32)], neox: bool) {
        let half = angles.len();
        for (i, &(sin, cos)) in angles.iter().enumerate() {
            let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * cos - x1 * sin;
            x[b] = x0 * sin + x1 * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rms() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        rms_norm(&mut x, &[1.0; 4], 0.0);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
        assert!((x[0] / x[1] - 0.75).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_inputs() {
        let mut x = vec![1000.0, 1001.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[2], 0.0);
        assert!(x[1] > x[0]);
    }

    #[test]
    fn rope_preserves_norm_and_is_identity_at_zero() {
        let t = RopeTable::new(8, 10000.0, 1.0, Yarn::NONE, None);
        let x0: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
        for neox in [false, true] {
            let mut x = x0.clone();
            t.apply(&mut x, 0, neox);
            assert_eq!(x, x0);
            t.apply(&mut x, 17, neox);
            let n0: f32 = x0.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
        }
        // Pair 0 rotates by exactly `pos` radians.
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        RopeTable::new(4, 10000.0, 1.0, Yarn::NONE, None).apply(&mut x, 1, false);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
    }

    /// ggml's rope_yarn and ggml_rope_yarn_corr_dims written out directly in f64.
    fn yarn_f64(dims: usize, base: f64, fs: f64, y: &Yarn, ff: Option<&[f32]>, pos: usize) -> Vec<(f64, f64)> {
        let corr = |rot: f64| dims as f64 * (y.n_ctx_orig as f64 / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
        let (low, high) = (corr(y.beta_fast as f64).floor().max(0.0), corr(y.beta_slow as f64).ceil().min(dims as f64 - 1.0));
        let ext = y.ext_factor as f64;
        let mut mscale = y.attn_factor as f64;
        if ext != 0.0 {
            mscale *= 1.0 + 0.1 * (1.0 / fs).ln();
        }
        (0..dims / 2)
            .map(|i| {
                let extrap = pos as f64 * base.powf(-2.0 * i as f64 / dims as f64) / ff.map_or(1.0, |f| f[i] as f64);
                let interp = fs * extrap;
                let ramp = 1.0 - ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                let mix = ramp * ext;
                let theta = interp * (1.0 - mix) + extrap * mix;
                (theta.sin() * mscale, theta.cos() * mscale)
            })
            .collect()
    }

    #[test]
    fn rope_yarn_matches_the_f64_transcription_of_ggml() {
        let mut st = 0x5eed_u64;
        let mut next = |n: u64| {
            st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (st >> 33) % n
        };
        let mut mixed = 0;
        for case in 0..300 {
            let dims = [8, 16, 32, 64, 96, 128][next(6) as usize];
            let base = [10_000.0f32, 500_000.0, 1_000_000.0][next(3) as usize];
            let fs = [1.0f32, 0.5, 0.25, 1.0 / 40.0][next(4) as usize];
            let y = Yarn {
                ext_factor: [0.0f32, 1.0, 0.5][next(3) as usize],
                attn_factor: [1.0f32, 0.8, 1.19][next(3) as usize],
                beta_fast: [32.0f32, 16.0][next(2) as usize],
                beta_slow: [1.0f32, 2.0][next(2) as usize],
                n_ctx_orig: [64, 4096, 32_768][next(3) as usize],
            };
            let ff: Option<Vec<f32>> = (case % 2 == 1).then(|| (0..dims / 2).map(|_| 1.0 + next(700) as f32 / 100.0).collect());
            let table = RopeTable::new(dims, base, fs, y, ff.as_deref());
            let mut got = Vec::new();
            for _ in 0..8 {
                let pos = next(8192) as usize;
                table.angles(pos, &mut got);
                let want = yarn_f64(dims, base as f64, fs as f64, &y, ff.as_deref(), pos);
                assert_eq!(got.len(), want.len());
                for (i, (&(s, c), &(ws, wc))) in got.iter().zip(&want).enumerate() {
                    // f32 θ built by i multiplications: relative error ~ (2i + 4) ulp of the angle.
                    let theta = pos as f64 * (base as f64).powf(-2.0 * i as f64 / dims as f64);
                    let tol = 1.3 * (theta * (2 * i + 4) as f64 * 6e-8 + 2e-6);
                    assert!(
                        (s as f64 - ws).abs() <= tol && (c as f64 - wc).abs() <= tol,
                        "case {case} dims {dims} base {base} fs {fs} {y:?} pos {pos} pair {i}: ({s}, {c}) vs ({ws}, {wc})"
                    );
                }
                mixed += (y.ext_factor != 0.0 && fs != 1.0) as usize;
            }
        }
        assert!(mixed > 100, "the cases exercise the YaRN ramp ({mixed})");
    }

    #[test]
    fn yarn_scales_cos_and_sin_by_its_magnitude_factor() {
        // ext_factor 1, freq_scale 1/4: |(sin, cos)| = attn_factor · (1 + 0.1 ln 4) for every pair.
        let y = Yarn { ext_factor: 1.0, attn_factor: 0.9, beta_fast: 32.0, beta_slow: 1.0, n_ctx_orig: 256 };
        let mut a = Vec::new();
        RopeTable::new(32, 10_000.0, 0.25, y, None).angles(77, &mut a);
        let want = 0.9 * (1.0 + 0.1 * 4f32.ln());
        for (s, c) in a {
            assert!(((s * s + c * c).sqrt() - want).abs() < 1e-5);
        }
    }

    #[test]
    fn gelu_mul_simd_gives_the_scalar_bits() {
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 30.0
        };
        // Random values over ±15, the saturation edges, NaN and the infinities; a ragged tail.
        let mut gate: Vec<f32> = (0..1003).map(|_| rnd()).collect();
        gate[..9].copy_from_slice(&[-10.0, 10.0, -9.999, 9.999, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0]);
        let up: Vec<f32> = (0..1003).map(|_| rnd()).collect();
        let mut want = gate.clone();
        gelu_mul_scalar(&mut want, &up);
        let mut got = gate.clone();
        gelu_mul(&mut got, &up);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "element {i} ({}): {g} vs {w}", gate[i]);
        }
    }

    #[test]
    fn gelu_matches_known_values() {
        let mut g = vec![0.0, 1.0, -1.0, 3.0];
        gelu_mul(&mut g, &[1.0; 4]);
        for (got, want) in g.iter().zip([0.0, 0.841_192, -0.158_808, 2.996_363]) {
            assert!((got - want).abs() < 2e-3, "{got} vs {want}");
        }
    }
}
