//! The 32-element "legacy" formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! Layouts (ggml-common.h, little endian, no padding):
//! - Q4_0 (18 B): d f16 | qs[16] (element j in the low nibble of qs[j], j+16 in the high one)
//! - Q4_1 (20 B): d f16 | m f16 | qs[16]
//! - Q5_0 (22 B): d f16 | qh u32 (bit j = 5th bit of element j) | qs[16]
//! - Q5_1 (24 B): d f16 | m f16 | qh u32 | qs[16]
//! - Q8_0 (34 B): d f16 | qs i8[32]
//! - Q8_1 (36 B): d f16 | s f16 (= d * sum(qs)) | qs i8[32]
//!
//! Quantizers follow `quantize_row_*_ref` in ggml-quants.c operation for operation,
//! and the dots follow `ggml_vec_dot_*_generic` (same integer sums, same float order).

use crate::util::{rd_f16, rd_u32, wr_f16};

pub(crate) const QK: usize = 32;

// ---------------------------------------------------------------- dequantize

pub(crate) fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for j in 0..16 {
            let q = b[2 + j];
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub(crate) fn dequant_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
        for j in 0..16 {
            let q = b[4 + j];
            y[j] = (q & 0x0F) as f32 * d + m;
            y[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

pub(crate) fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        let qh = rd_u32(b, 2);
        for j in 0..16 {
            let q = b[6 + j];
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
            y[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

pub(crate) fn dequant_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
        let qh = rd_u32(b, 4);
        for j in 0..16 {
            let q = b[8 + j];
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = ((q & 0x0F) | h0) as f32 * d + m;
            y[j + 16] = ((q >> 4) | h1) as f32 * d + m;
        }
    }
}

pub(crate) fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for j in 0..QK {
            y[j] = b[2 + j] as i8 as f32 * d;
        }
    }
}

/// Q8_1 has no dequantizer in ggml (it is activation-only); this is the obvious one, d * q.
pub(crate) fn dequant_q8_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(36).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for j in 0..QK {
            y[j] = b[4 + j] as i8 as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- quantize

/// The signed value with the largest magnitude (first one on ties), as ggml picks it.
#[inline(always)]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

pub(crate) fn quant_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        let d = signed_absmax(x) / -8.0;
        let id = inv(d);
        wr_f16(b, 0, d);
        for j in 0..16 {
            // C's (int8_t) cast truncates; values are in [0.5, 16.5] here.
            let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
            b[2 + j] = q0 | (q1 << 4);
        }
    }
}

pub(crate) fn quant_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inv(d);
        wr_f16(b, 0, d);
        wr_f16(b, 2, min);
        for j in 0..16 {
            let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
            b[4 + j] = q0 | (q1 << 4);
        }
    }
}

pub(crate) fn quant_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(22)) {
        let d = signed_absmax(x) / -16.0;
        let id = inv(d);
        wr_f16(b, 0, d);
        let mut qh = 0u32;
        for j in 0..16 {
            let q0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
            let q1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
            b[6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

pub(crate) fn quant_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(24)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inv(d);
        wr_f16(b, 0, d);
        wr_f16(b, 2, min);
        let mut qh = 0u32;
        for j in 0..16 {
            // ggml has no clamp here; (uint8_t) truncation of values in [0.5, 31.5].
            let q0 = ((x[j] - min) * id + 0.5) as u8;
            let q1 = ((x[j + 16] - min) * id + 0.5) as u8;
            b[8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

#[inline(always)]
fn absmax(x: &[f32]) -> f32 {
    // MAX(amax, fabsf(v)) with ggml's macro: a > b ? a : b.
    x.iter()
        .fold(0f32, |m, v| if m > v.abs() { m } else { v.abs() })
}

pub(crate) fn quant_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let d = absmax(x) / 127.0;
        let id = inv(d);
        wr_f16(b, 0, d);
        for j in 0..QK {
            // roundf: half away from zero, which f32::round is.
            b[2 + j] = (x[j] * id).round() as i8 as u8;
        }
    }
}

pub(crate) fn quant_q8_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(36)) {
        let d = absmax(x) / 127.0;
        let id = inv(d);
        wr_f16(b, 0, d);
        let mut sum = 0i32;
        for j in 0..QK {
            let q = (x[j] * id).round() as i8;
            b[4 + j] = q as u8;
            sum += q as i32;
        }
        wr_f16(b, 2, sum as f32 * d);
    }
}

// ---------------------------------------------------------------- reference dots

#[inline(always)]
fn check(n: usize, w: &[u8], wb: usize, a: &[u8], ab: usize, what: &str) -> usize {
    assert!(
        n.is_multiple_of(QK),
        "{what} dot: n={n} not a multiple of {QK}"
    );
    let nb = n / QK;
    assert!(
        w.len() == nb * wb && a.len() == nb * ab,
        "{what} dot: bad lengths"
    );
    nb
}

#[inline(always)]
fn i8s(b: &[u8]) -> impl Iterator<Item = i32> + '_ {
    b.iter().map(|&v| v as i8 as i32)
}

pub(crate) fn dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 18, a, 34, "Q4_0");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let (mut s0, mut s1) = (0i32, 0i32);
        for (j, yq) in i8s(&y[2..18]).enumerate() {
            s0 += ((x[2 + j] & 0x0F) as i32 - 8) * yq;
        }
        for (j, yq) in i8s(&y[18..34]).enumerate() {
            s1 += ((x[2 + j] >> 4) as i32 - 8) * yq;
        }
        sumf += (s0 + s1) as f32 * rd_f16(x, 0) * rd_f16(y, 0);
    }
    sumf
}

pub(crate) fn dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 20, a, 36, "Q4_1");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        let (mut s0, mut s1) = (0i32, 0i32);
        for (j, yq) in i8s(&y[4..20]).enumerate() {
            s0 += (x[4 + j] & 0x0F) as i32 * yq;
        }
        for (j, yq) in i8s(&y[20..36]).enumerate() {
            s1 += (x[4 + j] >> 4) as i32 * yq;
        }
        sumf += (rd_f16(x, 0) * rd_f16(y, 0)) * (s0 + s1) as f32 + rd_f16(x, 2) * rd_f16(y, 2);
    }
    sumf
}

pub(crate) fn dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 22, a, 34, "Q5_0");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(22).zip(a.chunks_exact(34)) {
        let qh = rd_u32(x, 2);
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..16 {
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + 16)) & 1) << 4;
            let x0 = ((x[6 + j] & 0x0F) as u32 | h0) as i32 - 16;
            let x1 = ((x[6 + j] >> 4) as u32 | h1) as i32 - 16;
            s0 += x0 * y[2 + j] as i8 as i32;
            s1 += x1 * y[18 + j] as i8 as i32;
        }
        sumf += (rd_f16(x, 0) * rd_f16(y, 0)) * (s0 + s1) as f32;
    }
    sumf
}

pub(crate) fn dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 24, a, 36, "Q5_1");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(24).zip(a.chunks_exact(36)) {
        let qh = rd_u32(x, 4);
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..16 {
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + 16)) & 1) << 4;
            let x0 = ((x[8 + j] & 0x0F) as u32 | h0) as i32;
            let x1 = ((x[8 + j] >> 4) as u32 | h1) as i32;
            s0 += x0 * y[4 + j] as i8 as i32;
            s1 += x1 * y[20 + j] as i8 as i32;
        }
        sumf += (rd_f16(x, 0) * rd_f16(y, 0)) * (s0 + s1) as f32 + rd_f16(x, 2) * rd_f16(y, 2);
    }
    sumf
}

pub(crate) fn dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 34, a, 34, "Q8_0");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let sumi: i32 = i8s(&x[2..34]).zip(i8s(&y[2..34])).map(|(p, q)| p * q).sum();
        sumf += sumi as f32 * (rd_f16(x, 0) * rd_f16(y, 0));
    }
    sumf
}
