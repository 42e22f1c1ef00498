//! The 1- and 2-bit formats with one scale per block: Q1_0, Q2_0 (against Q8_0) and the
//! ternary TQ1_0, TQ2_0 (against Q8_K).
//!
//! Layouts (ggml-common.h, little endian, no padding):
//! - Q1_0 (18 B, 128 elements): d f16 | qs[16], bit j = element j is +d (else -d)
//! - Q2_0 (18 B, 64 elements):  d f16 | qs[16], bits 2(j%4).. of qs[j/4] = q, value (q-1)d
//! - TQ1_0 (54 B, 256 elements): qs[48] | qh[4] | d f16; five base-3 digits per byte
//!   (four in qh), stored as a fixed-point fraction of 243: digit n of byte q is
//!   `((q * 3^n mod 256) * 3) >> 8`, value (digit - 1) * d
//! - TQ2_0 (66 B, 256 elements): qs[64] | d f16; bits 2l.. of qs[32h + m] = element
//!   128h + 32l + m, value (q - 1) * d
//!
//! Dequantizers, reference quantizers (`quantize_row_*_ref`) and dots
//! (`ggml_vec_dot_*_generic`) follow ggml operation for operation.

use super::k_quants::{Q8K_QS, QK_K};
use crate::util::{rd_f16, rd_f32, wr_f16};

/// Element `j`'s 2-bit code in Q2_0's packing (four per byte, lowest first).
#[inline(always)]
fn code2(qs: &[u8], j: usize) -> i32 {
    ((qs[j / 4] >> (2 * (j % 4))) & 3) as i32
}

/// Base-3 digit `n` of a TQ1_0 byte (`q * 3^n` wraps mod 256, then the top trit).
#[inline(always)]
fn trit(q: u8, n: usize) -> i32 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    ((q.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as i32
}

/// TQ1_0's 256 digits (0..=2) in element order: five per byte of qs[0..32] (elements
/// 32n + m), of qs[32..48] (160 + 16n + m), four per byte of qh (240 + 4n + j).
fn tq1_digits(b: &[u8]) -> [i8; QK_K] {
    let mut t = [0i8; QK_K];
    for n in 0..5 {
        for m in 0..32 {
            t[32 * n + m] = trit(b[m], n) as i8;
        }
        for m in 0..16 {
            t[160 + 16 * n + m] = trit(b[32 + m], n) as i8;
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            t[240 + 4 * n + j] = trit(b[48 + j], n) as i8;
        }
    }
    t
}

// ---------------------------------------------------------------- dequantize

pub(crate) fn dequant_q1_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(128)) {
        let d = rd_f16(b, 0);
        for (j, v) in y.iter_mut().enumerate() {
            *v = if (b[2 + j / 8] >> (j % 8)) & 1 != 0 { d } else { -d };
        }
    }
}

pub(crate) fn dequant_q2_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(64)) {
        let d = rd_f16(b, 0);
        for (j, v) in y.iter_mut().enumerate() {
            *v = (code2(&b[2..], j) - 1) as f32 * d;
        }
    }
}

pub(crate) fn dequant_tq1_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(54).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 52);
        for (v, t) in y.iter_mut().zip(tq1_digits(b)) {
            *v = (t as i32 - 1) as f32 * d;
        }
    }
}

pub(crate) fn dequant_tq2_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(66).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 64);
        for (e, v) in y.iter_mut().enumerate() {
            let (h, l, m) = (e / 128, (e / 32) % 4, e % 32);
            *v = (((b[32 * h + m] >> (2 * l)) & 3) as i32 - 1) as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- quantize

pub(crate) fn quant_q1_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(128).zip(dst.chunks_exact_mut(18)) {
        let sum_abs = x.iter().fold(0f32, |s, v| s + v.abs());
        wr_f16(b, 0, sum_abs / 128.0);
        b[2..].fill(0);
        for (j, &v) in x.iter().enumerate() {
            if v >= 0.0 {
                b[2 + j / 8] |= 1 << (j % 8);
            }
        }
    }
}

pub(crate) fn quant_q2_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(64).zip(dst.chunks_exact_mut(18)) {
        let d = x.iter().fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        wr_f16(b, 0, d);
        b[2..].fill(0);
        for (j, &v) in x.iter().enumerate() {
            let q = ((v * id).round() as i32 + 1).clamp(0, 3);
            b[2 + j / 4] |= (q as u8) << (2 * (j % 4));
        }
    }
}

/// The ternary formats' scale: the block's absmax (`MAX(a, b)` is `a > b ? a : b`), and
/// the digit 0..=2 of `x` (`lroundf(x * id) + 1`).
fn ternary_scale(x: &[f32]) -> (f32, impl Fn(f32) -> u8) {
    let d = x.iter().fold(0f32, |m, v| if m > v.abs() { m } else { v.abs() });
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, move |v: f32| ((v * id).round() as i32 + 1) as u8)
}

pub(crate) fn quant_tq1_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(54)) {
        let (d, digit) = ternary_scale(x);
        wr_f16(b, 52, d);
        // Base-3 digits, the first the most significant, as a fraction of 243 rounded up.
        let pack = |digits: &mut dyn Iterator<Item = u8>, extra: u16| -> u8 {
            let q = digits.fold(0u8, |q, t| q * 3 + t) as u16 * extra;
            (q * 256).div_ceil(243) as u8
        };
        for m in 0..32 {
            b[m] = pack(&mut (0..5).map(|n| digit(x[m + 32 * n])), 1);
        }
        for m in 0..16 {
            b[32 + m] = pack(&mut (0..5).map(|n| digit(x[160 + m + 16 * n])), 1);
        }
        for j in 0..4 {
            // Four digits, shifted to the top of five.
            b[48 + j] = pack(&mut (0..4).map(|m| digit(x[240 + j + 4 * m])), 3);
        }
    }
}

pub(crate) fn quant_tq2_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(66)) {
        let (d, digit) = ternary_scale(x);
        wr_f16(b, 64, d);
        for h in 0..2 {
            for m in 0..32 {
                b[32 * h + m] = (0..4).fold(0u8, |q, n| q + ((digit(x[128 * h + m + 32 * n]) & 3) << (2 * n)));
            }
        }
    }
}

// ---------------------------------------------------------------- reference dots

fn check(n: usize, w: &[u8], wb: usize, a: &[u8], ab: usize, qk: usize, what: &str) {
    assert!(n.is_multiple_of(qk), "{what} dot: n={n} not a multiple of {qk}");
    assert!(w.len() == n / qk * wb && a.len() == n / qk * ab, "{what} dot: bad lengths");
}

pub(crate) fn dot_q1_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 18, a, 4 * 34, 128, "Q1_0");
    let mut sumf = 0f32;
    for (x, y4) in w.chunks_exact(18).zip(a.chunks_exact(4 * 34)) {
        let mut sumi = 0f32;
        for (k, y) in y4.chunks_exact(34).enumerate() {
            let s: i32 = (0..32)
                .map(|j| {
                    let q = y[2 + j] as i8 as i32;
                    if (x[2 + 4 * k + j / 8] >> (j % 8)) & 1 != 0 { q } else { -q }
                })
                .sum();
            sumi += rd_f16(y, 0) * s as f32;
        }
        sumf += rd_f16(x, 0) * sumi;
    }
    sumf
}

pub(crate) fn dot_q2_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 18, a, 2 * 34, 64, "Q2_0");
    let mut sumf = 0f32;
    for (x, y2) in w.chunks_exact(18).zip(a.chunks_exact(2 * 34)) {
        let mut sumi = 0f32;
        for (k, y) in y2.chunks_exact(34).enumerate() {
            let s: i32 = (0..32).map(|j| (code2(&x[2..], 32 * k + j) - 1) * y[2 + j] as i8 as i32).sum();
            sumi += rd_f16(y, 0) * s as f32;
        }
        sumf += rd_f16(x, 0) * sumi;
    }
    sumf
}

pub(crate) fn dot_tq1_0_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 54, a, 292, QK_K, "TQ1_0");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(54).zip(a.chunks_exact(292)) {
        let q8 = &y[Q8K_QS..Q8K_QS + QK_K];
        let sum: i32 = tq1_digits(x).iter().zip(q8).map(|(&t, &q)| (t as i32 - 1) * q as i8 as i32).sum();
        sumf += sum as f32 * (rd_f16(x, 52) * rd_f32(y, 0));
    }
    sumf
}

pub(crate) fn dot_tq2_0_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 66, a, 292, QK_K, "TQ2_0");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(66).zip(a.chunks_exact(292)) {
        let q8 = &y[Q8K_QS..Q8K_QS + QK_K];
        let sumi: i32 = (0..QK_K)
            .map(|e| {
                let (h, l, m) = (e / 128, (e / 32) % 4, e % 32);
                q8[e] as i8 as i32 * (((x[32 * h + m] >> (2 * l)) & 3) as i32 - 1)
            })
            .sum();
        sumf += sumi as f32 * (rd_f32(y, 0) * rd_f16(x, 64));
    }
    sumf
}
