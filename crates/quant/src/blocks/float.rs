//! Plain float formats: F32, F16, BF16 (block size 1). Scalar conversion and reference dots.

use crate::util::{bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits, rd_f32};

/// F32 bytes -> f32 values.
pub(crate) fn dequant_f32(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = rd_f32(s, 0);
    }
}

/// f32 values -> F32 bytes.
pub(crate) fn quant_f32(src: &[f32], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&s.to_le_bytes());
    }
}

/// F16 bytes -> f32 values (exact).
pub(crate) fn dequant_f16(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16_bits_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

/// f32 values -> F16 bytes (round to nearest even).
pub(crate) fn quant_f16(src: &[f32], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_f16_bits(*s).to_le_bytes());
    }
}

/// BF16 bytes -> f32 values (exact).
pub(crate) fn dequant_bf16(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16_bits_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

/// f32 values -> BF16 bytes (ggml's rounding).
pub(crate) fn quant_bf16(src: &[f32], dst: &mut [u8]) {
    for (d, s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_bf16_bits(*s).to_le_bytes());
    }
}

/// ggml's scalar `ggml_vec_dot_f32`: f32 products summed in f64.
pub(crate) fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(w.len() == 4 * n && a.len() == 4 * n, "F32 dot: bad lengths");
    let mut sum = 0f64;
    for (x, y) in w.chunks_exact(4).zip(a.chunks_exact(4)) {
        sum += (rd_f32(x, 0) * rd_f32(y, 0)) as f64;
    }
    sum as f32
}

/// ggml's scalar `ggml_vec_dot_f16`: products of the widened halves summed in f64.
pub(crate) fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(w.len() == 2 * n && a.len() == 2 * n, "F16 dot: bad lengths");
    let mut sum = 0f64;
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
        let x = f16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
        let y = f16_bits_to_f32(u16::from_le_bytes([y[0], y[1]]));
        sum += (x * y) as f64;
    }
    sum as f32
}

/// ggml's scalar `ggml_vec_dot_bf16`: products of the widened values summed in f64.
pub(crate) fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(
        w.len() == 2 * n && a.len() == 2 * n,
        "BF16 dot: bad lengths"
    );
    let mut sum = 0f64;
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
        let x = bf16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
        let y = bf16_bits_to_f32(u16::from_le_bytes([y[0], y[1]]));
        sum += (x * y) as f64;
    }
    sum as f32
}
