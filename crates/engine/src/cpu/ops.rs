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
    }
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
    let table = gelu_table();
    zip_pieces(gate, up, |gate, up| {
        for (g, u) in gate.iter_mut().zip(up) {
            let x = *g;
            *g = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x * u
            } else {
                table[half::f16::from_f32(x).to_bits() as usize].to_f32() * u
            };
        }
    });
}

/// The tanh-approximated GELU.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

fn gelu_table() -> &'static [half::f16] {
    static TABLE: std::sync::OnceLock<Vec<half::f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX).map(|bits| half::f16::from_f32(gelu_tanh(half::f16::from_bits(bits).to_f32()))).collect()
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

/// RoPE angle tables for one position: cos/sin per rotated pair.
pub struct RopeTable {
    /// θ_i for pair i (before multiplying by the position).
    inv_freq: Vec<f32>,
    freq_scale: f32,
}

impl RopeTable {
    /// θ_i = base^(-2i/dims) / factor_i, as ggml computes it.
    pub fn new(dims: usize, base: f32, freq_scale: f32, freq_factors: Option<&[f32]>) -> Self {
        let inv_freq = (0..dims / 2)
            .map(|i| {
                let theta = base.powf(-2.0 * i as f32 / dims as f32);
                theta / freq_factors.map_or(1.0, |f| f[i])
            })
            .collect();
        RopeTable { inv_freq, freq_scale }
    }

    /// Rotate one head vector `x` (the first `2 * pairs` dims) at `pos`.
    /// `neox` pairs (i, i + dims/2); otherwise adjacent (2i, 2i+1).
    pub fn apply(&self, x: &mut [f32], pos: usize, neox: bool) {
        let mut angles = Vec::new();
        self.angles(pos, &mut angles);
        Self::rotate(x, &angles, neox);
    }

    /// (sin, cos) of every pair's angle at `pos`: computed once per token, shared by its heads.
    pub fn angles(&self, pos: usize, out: &mut Vec<(f32, f32)>) {
        let p = pos as f32 * self.freq_scale;
        out.clear();
        out.extend(self.inv_freq.iter().map(|&f| (p * f).sin_cos()));
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
        let t = RopeTable::new(8, 10000.0, 1.0, None);
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
        RopeTable::new(4, 10000.0, 1.0, None).apply(&mut x, 1, false);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
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
