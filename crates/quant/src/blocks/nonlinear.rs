//! The 4-bit codebook formats: each 4-bit index selects a value from a fixed table.
//!
//! Layouts (ggml-common.h, little endian, no padding):
//! - IQ4_NL (18 B, 32 elements):  d f16 | qs[16] (element j low nibble of qs[j], j+16 high)
//! - IQ4_XS (136 B, 256 elements): d f16 | scales_h u16 | scales_l[4] | qs[128];
//!   sub-block `ib` of 32 has the 6-bit scale `ls` = nibble `ib % 2` of scales_l[ib / 2]
//!   | bits 2ib..2ib+2 of scales_h << 4, and scale `d * (ls - 32)`
//! - MXFP4 (17 B, 32 elements):   e u8 (E8M0 exponent) | qs[16], values E2M1 (doubled)
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

/// The 6-bit scale of IQ4_XS sub-block `ib` (0..8), still biased by 32.
#[inline(always)]
pub(crate) fn iq4_xs_scale(b: &[u8], ib: usize) -> i32 {
    let h = u16::from_le_bytes([b[2], b[3]]) as i32;
    ((b[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xF) | (((h >> (2 * ib)) & 3) << 4)
}

/// 16 packed bytes -> 32 table values (low nibbles first), times `d`.
#[inline(always)]
fn lookup32(qs: &[u8], table: &[i8; 16], d: f32, y: &mut [f32]) {
    for j in 0..16 {
        y[j] = d * table[(qs[j] & 0xF) as usize] as f32;
        y[j + 16] = d * table[(qs[j] >> 4) as usize] as f32;
    }
}

// ---------------------------------------------------------------- dequantize

pub(crate) fn dequant_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        lookup32(&b[2..18], &KVALUES_IQ4NL, rd_f16(b, 0), y);
    }
}

pub(crate) fn dequant_mxfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(17).zip(dst.chunks_exact_mut(32)) {
        lookup32(&b[1..17], &KVALUES_FP4, e8m0_half(b[0]), y);
    }
}

pub(crate) fn dequant_iq4_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(136).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        for ib in 0..8 {
            let dl = d * (iq4_xs_scale(b, ib) - 32) as f32;
            lookup32(&b[8 + 16 * ib..24 + 16 * ib], &KVALUES_IQ4NL, dl, &mut y[32 * ib..32 * ib + 32]);
        }
    }
}

// ---------------------------------------------------------------- reference dots

/// Sum over one 32-element block of table values times Q8 quants (elements j and j+16
/// share byte j, as ggml sums them: two partial sums).
#[inline(always)]
fn isum32(qs: &[u8], table: &[i8; 16], q8: &[u8]) -> i32 {
    let (mut s1, mut s2) = (0i32, 0i32);
    for j in 0..16 {
        s1 += q8[j] as i8 as i32 * table[(qs[j] & 0xF) as usize] as i32;
        s2 += q8[j + 16] as i8 as i32 * table[(qs[j] >> 4) as usize] as i32;
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
        sumf += d * isum32(&x[2..18], &KVALUES_IQ4NL, &y[2..34]) as f32;
    }
    sumf
}

pub(crate) fn dot_mxfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 17, a, 34, 32, "MXFP4");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(17).zip(a.chunks_exact(34)) {
        let d = rd_f16(y, 0) * e8m0_half(x[0]);
        sumf += d * isum32(&x[1..17], &KVALUES_FP4, &y[2..34]) as f32;
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
            sumf += dl * isum32(&x[8 + 16 * ib..24 + 16 * ib], &KVALUES_IQ4NL, q8) as f32;
        }
    }
    sumf
}
