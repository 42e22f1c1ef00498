//! The 4-bit codebook formats: each 4-bit index selects a value from a fixed table.
//!
//! Layouts (ggml-common.h, little endian, no padding):
//! - IQ4_NL (18 B, 32 elements):  d f16 | qs[16] (element j low nibble of qs[j], j+16 high)
//! - IQ4_XS (136 B, 256 elements): d f16 | scales_h u16 | scales_l[4] | qs[128];
//!   sub-block `ib` of 32 has the 6-bit scale `ls` = nibble `ib % 2` of scales_l[ib / 2]
//!   | bits 2ib..2ib+2 of scales_h << 4, and scale `d * (ls - 32)`
//! - MXFP4 (17 B, 32 elements):   e u8 (E8M0 exponent) | qs[16], values E2M1 (doubled)
//! - NVFP4 (36 B, 64 elements):   d[4] (UE4M3 scale per 16) | qs[32]; sub-block s is
//!   qs[8s..8s+8], low nibbles first, like a 16-element MXFP4 block
//!
//! Dequantizers follow `dequantize_row_*` in ggml-quants.c and the dots
//! `ggml_vec_dot_*_generic` in ggml-cpu/quants.c (same integer sums, same float order).

use super::k_quants::{Q8K_QS, QK_K};
use crate::tables::{KVALUES_FP4, KVALUES_IQ4NL};
use crate::util::{rd_f16, rd_f32};

/// 2^(e - 128): half the E8M0 scale, since the FP4 table holds doubled values
/// (`ggml_e8m0_to_fp32_half`; e < 2 are subnormal in f32).
#[inline(always)]
pub(crate) fn e8m0_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits((e as u32 - 1) << 23)
    }
}

/// An unsigned E4M3 scale as f32, halved for the doubled FP4 table (`ggml_ue4m3_to_fp32`:
/// 0 and 0x7F are 0, the top bit is ignored).
#[inline(always)]
pub(crate) fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let pow2 = |k: i32| f32::from_bits(((127 + k) as u32) << 23);
    let (exp, man) = (((x >> 3) & 0xF) as i32, (x & 7) as f32);
    let raw = if exp == 0 { man * pow2(-9) } else { (1.0 + man / 8.0) * pow2(exp - 7) };
    raw * 0.5
}

/// The 6-bit scale of IQ4_XS sub-block `ib` (0..8), still biased by 32.
#[inline(always)]
pub(crate) fn iq4_xs_scale(b: &[u8], ib: usize) -> i32 {
    let h = u16::from_le_bytes([b[2], b[3]]) as i32;
    ((b[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xF) | (((h >> (2 * ib)) & 3) << 4)
}

/// `qs.len()` packed bytes -> twice as many table values (low nibbles first), times `d`.
#[inline(always)]
fn lookup(qs: &[u8], table: &[i8; 16], d: f32, y: &mut [f32]) {
    let h = qs.len();
    for j in 0..h {
        y[j] = d * table[(qs[j] & 0xF) as usize] as f32;
        y[j + h] = d * table[(qs[j] >> 4) as usize] as f32;
    }
}

// ---------------------------------------------------------------- dequantize

pub(crate) fn dequant_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        lookup(&b[2..18], &KVALUES_IQ4NL, rd_f16(b, 0), y);
    }
}

pub(crate) fn dequant_mxfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(17).zip(dst.chunks_exact_mut(32)) {
        lookup(&b[1..17], &KVALUES_FP4, e8m0_half(b[0]), y);
    }
}

pub(crate) fn dequant_nvfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(36).zip(dst.chunks_exact_mut(64)) {
        for s in 0..4 {
            lookup(&b[4 + 8 * s..12 + 8 * s], &KVALUES_FP4, ue4m3_half(b[s]), &mut y[16 * s..16 * s + 16]);
        }
    }
}

pub(crate) fn dequant_iq4_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(136).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        for ib in 0..8 {
            let dl = d * (iq4_xs_scale(b, ib) - 32) as f32;
            lookup(&b[8 + 16 * ib..24 + 16 * ib], &KVALUES_IQ4NL, dl, &mut y[32 * ib..32 * ib + 32]);
        }
    }
}

// ---------------------------------------------------------------- reference dots

/// Sum over `2 * qs.len()` elements of table values times Q8 quants (elements j and
/// j + len share byte j; ggml sums them in two partial sums).
#[inline(always)]
fn isum(qs: &[u8], table: &[i8; 16], q8: &[u8]) -> i32 {
    let h = qs.len();
    let (mut s1, mut s2) = (0i32, 0i32);
    for j in 0..h {
        s1 += q8[j] as i8 as i32 * table[(qs[j] & 0xF) as usize] as i32;
        s2 += q8[j + h] as i8 as i32 * table[(qs[j] >> 4) as usize] as i32;
    }
    s1 + s2
}

fn check(n: usize, w: &[u8], wb: usize, a: &[u8], ab: usize, qk: usize, what: &str) {
    assert!(n.is_multiple_of(qk), "{what} dot: n={n} not a multiple of {qk}");
    assert!(w.len() == n / qk * wb && a.len() == n / qk * ab, "{what} dot: bad lengths");
}

pub(crate) fn dot_iq4_nl_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 18, a, 34, 32, "IQ4_NL");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let d = rd_f16(y, 0) * rd_f16(x, 0);
        sumf += d * isum(&x[2..18], &KVALUES_IQ4NL, &y[2..34]) as f32;
    }
    sumf
}

pub(crate) fn dot_mxfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 17, a, 34, 32, "MXFP4");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(17).zip(a.chunks_exact(34)) {
        let d = rd_f16(y, 0) * e8m0_half(x[0]);
        sumf += d * isum(&x[1..17], &KVALUES_FP4, &y[2..34]) as f32;
    }
    sumf
}

pub(crate) fn dot_nvfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 36, a, 2 * 34, 64, "NVFP4");
    let mut sumf = 0f32;
    for (x, y2) in w.chunks_exact(36).zip(a.chunks_exact(2 * 34)) {
        for s in 0..4 {
            // Sub-blocks 2k and 2k + 1 are the halves of Q8_0 block k.
            let y = &y2[34 * (s / 2)..34 * (s / 2) + 34];
            let q8 = &y[2 + 16 * (s % 2)..18 + 16 * (s % 2)];
            let sumi = isum(&x[4 + 8 * s..12 + 8 * s], &KVALUES_FP4, q8);
            sumf += rd_f16(y, 0) * ue4m3_half(x[s]) * sumi as f32;
        }
    }
    sumf
}

pub(crate) fn dot_iq4_xs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 136, a, 292, QK_K, "IQ4_XS");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(136).zip(a.chunks_exact(292)) {
        let d4d8 = rd_f16(x, 0) * rd_f32(y, 0);
        for ib in 0..8 {
            let dl = d4d8 * (iq4_xs_scale(x, ib) - 32) as f32;
            let q8 = &y[Q8K_QS + 32 * ib..Q8K_QS + 32 * ib + 32];
            sumf += dl * isum(&x[8 + 16 * ib..24 + 16 * ib], &KVALUES_IQ4NL, q8) as f32;
        }
    }
    sumf
}
