//! Test helpers: a seeded PRNG and random valid blocks.
#![allow(dead_code)]

use quant::{quantize_row, GgmlType};

/// xorshift64* — small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of uniforms), mean 0, sd 1.
    pub fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.unit()).sum::<f32>() - 6.0
    }
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Offsets of the f16 scale fields inside one block of `ty`.
pub fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS | Q1_0 | Q2_0 => &[0],
        IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ1_S => &[0],
        Q4_1 | Q5_1 | Q8_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        TQ1_0 => &[52],
        TQ2_0 => &[64],
        _ => &[],
    }
}

/// `nb` blocks of `ty` with random quant bits and finite, moderate scales.
/// Float types are made by converting random values instead.
pub fn random_weights(rng: &mut Rng, ty: GgmlType, nb: usize) -> Vec<u8> {
    let n = nb * ty.block_size();
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return quantized(ty, &rng.normals(n, 1.0));
    }
    let bb = ty.block_bytes();
    let mut b = rng.bytes(nb * bb);
    for blk in b.chunks_exact_mut(bb) {
        if ty == GgmlType::MXFP4 {
            blk[0] = 110 + (rng.next_u64() % 25) as u8; // E8M0 exponent of a moderate scale
        }
        if ty == GgmlType::IQ1_M {
            // The f16 scale: nibble k in the top nibble of the u16 scales[k] (bytes 48..56).
            let mut h = [0u8; 2];
            quant::f32_to_f16_slice(&[(0.5 + rng.unit()) * 1e-2], &mut h);
            let h = u16::from_le_bytes(h);
            for k in 0..4 {
                blk[49 + 2 * k] = (blk[49 + 2 * k] & 0x0F) | ((((h >> (4 * k)) & 0xF) as u8) << 4);
            }
        }
        for &off in f16_fields(ty) {
            let sign = if rng.unit() < 0.2 { -1.0 } else { 1.0 };
            let d =
                sign * (0.5 + 1.5 * rng.unit()) * 10f32.powi(-(1 + (rng.next_u64() % 3) as i32));
            let mut h = [0u8; 2];
            quant::f32_to_f16_slice(&[d], &mut h);
            blk[off..off + 2].copy_from_slice(&h);
        }
    }
    b
}

/// `src` quantized to `ty`.
pub fn quantized(ty: GgmlType, src: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.bytes_for(src.len() as u64).unwrap() as usize];
    quantize_row(ty, src, &mut out).unwrap();
    out
}

/// Activations for a weight type: random values quantized to its vec_dot_type
/// (the activation quantizers never produce -128, which the kernels rely on).
pub fn random_activations(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    quantized(ty.vec_dot_type(), &rng.normals(n, 1.0))
}

pub fn dequantized(ty: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    quant::dequantize_row(ty, src, &mut out).unwrap();
    out
}

/// The weight types that have dot kernels.
pub const WEIGHT_TYPES: [GgmlType; 28] = {
    use GgmlType::*;
    [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4,
        NVFP4, Q1_0, Q2_0, TQ1_0, TQ2_0, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M,
    ]
};

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
