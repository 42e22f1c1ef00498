//! Activation quantizers: the bytes llama.cpp's CPU backend actually feeds its dot
//! products on this architecture.
//!
//! ggml's `quantize_row_q8_0` / `quantize_row_q8_1` (the `from_float` of the Q8 dot
//! types) are not the `*_ref` algorithms on x86: `ggml-cpu/arch/x86/quants.c` (built
//! whenever AVX or AVX2 is on, i.e. on every x86-64 build llama.cpp ships) computes,
//! per block of 32,
//!
//! - `amax = max |x|` (`_mm256_max_ps` tree, exact),
//! - `d = amax / 127` (stored as f16, round to nearest even),
//! - `id = amax != 0 ? 127 / amax : 0` (not `1 / d`: can differ by an ulp),
//! - `q = (int) round_half_even(x * id)` (`_mm256_round_ps(_MM_ROUND_NEAREST)`, not
//!   `roundf`'s half away from zero), narrowed by two saturating packs,
//! - Q8_1 only: `s = f16(d * (float) sum(q))` with the sum of the unsaturated i32 quants.
//!
//! [`quantize_row_x86`] is a scalar transcription of that arithmetic (usable and tested
//! on every architecture); [`quantize_activations`] is what an engine should call: the
//! x86 variant on x86-64 (AVX2 SIMD when available, bit-identical to the scalar one),
//! ggml's reference elsewhere. Q8_K activations are the reference on x86 too
//! (`quantize_row_q8_K` is `quantize_row_q8_K_ref` there).

use crate::blocks::{check_lengths, quantize_row};
use crate::util::wr_f16;
use crate::{GgmlType, QuantError};

/// Quantize activations for a dot product the way llama.cpp's CPU backend does on this
/// architecture: on x86-64, [`quantize_row_x86`]'s arithmetic for Q8_0/Q8_1 (SIMD when
/// the CPU has AVX2); every other case is [`quantize_row`]'s result (Q8_K through a
/// bit-identical SIMD version on AVX2).
pub fn quantize_activations(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    #[cfg(target_arch = "x86_64")]
    if matches!(ty, GgmlType::Q8_0 | GgmlType::Q8_1) {
        check_lengths(ty, src.len(), dst.len())?;
        if crate::simd::x86::has_avx2() {
            crate::simd::x86::quantize_q8_x86(ty == GgmlType::Q8_1, src, dst);
        } else {
            q8_x86_scalar(ty == GgmlType::Q8_1, src, dst);
        }
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if ty == GgmlType::Q8_K && crate::simd::x86::has_avx2() {
        // The reference algorithm (what ggml runs on x86 too), vectorized.
        check_lengths(ty, src.len(), dst.len())?;
        crate::simd::x86::quantize_q8_k(src, dst);
        return Ok(());
    }
    quantize_row(ty, src, dst)
}

/// ggml's x86 `quantize_row_q8_0` / `quantize_row_q8_1` arithmetic (see the module
/// docs), in portable scalar code; other types fall back to [`quantize_row`].
pub fn quantize_row_x86(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if matches!(ty, GgmlType::Q8_0 | GgmlType::Q8_1) {
        check_lengths(ty, src.len(), dst.len())?;
        q8_x86_scalar(ty == GgmlType::Q8_1, src, dst);
        return Ok(());
    }
    quantize_row(ty, src, dst)
}

/// `_mm256_cvtps_epi32` on an already integral value: NaN and out-of-range values
/// (both fail the range test) give the "integer indefinite" `i32::MIN`.
#[inline(always)]
fn cvt_epi32(v: f32) -> i32 {
    if !(-2147483648.0..2147483648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

fn q8_x86_scalar(q8_1: bool, src: &[f32], dst: &mut [u8]) {
    let (bb, off) = if q8_1 { (36, 4) } else { (34, 2) };
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(bb)) {
        // max is exact and order-free on non-NaN inputs (abs never yields -0).
        let amax = x.iter().fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        wr_f16(b, 0, d);
        let mut sum = 0i32;
        for (j, &v) in x.iter().enumerate() {
            let q = cvt_epi32((v * id).round_ties_even());
            sum = sum.wrapping_add(q);
            // packs_epi32 then packs_epi16: saturation at each step, i.e. a clamp.
            b[off + j] = q.clamp(-128, 127) as i8 as u8;
        }
        if q8_1 {
            wr_f16(b, 2, d * sum as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_round_to_even_and_scale_is_127_over_max() {
        // amax = 127: id = 1 exactly, so x.5 values are exact ties.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 3.5;
        x[4] = 0.5;
        let mut b = [0u8; 36];
        quantize_row_x86(GgmlType::Q8_1, &x, &mut b).unwrap();
        let q: Vec<i8> = b[4..9].iter().map(|&v| v as i8).collect();
        assert_eq!(q, [127, 2, -2, 4, 0]);
        let s = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
        assert_eq!(s, half::f16::from_f32(1.0 * 131.0).to_f32());
        // The reference rounds half away from zero.
        quantize_row(GgmlType::Q8_1, &x, &mut b).unwrap();
        let q: Vec<i8> = b[4..9].iter().map(|&v| v as i8).collect();
        assert_eq!(q, [127, 3, -3, 4, 1]);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut b = [0u8; 33];
        assert!(quantize_activations(GgmlType::Q8_0, &[0.0; 32], &mut b).is_err());
        assert!(quantize_row_x86(GgmlType::Q8_1, &[0.0; 31], &mut b).is_err());
    }
}
