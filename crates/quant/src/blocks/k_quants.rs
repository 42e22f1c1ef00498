//! The 256-element K-quant super-blocks: layouts, dequantizers, Q8_K, reference dots.
//!
//! Layouts (ggml-common.h, little endian, no padding):
//! - Q2_K (84 B):  scales[16] (lo nibble scale, hi nibble min) | qs[64] | d f16 | dmin f16
//! - Q3_K (110 B): hmask[32] | qs[64] | scales[12] (16 x 6 bit) | d f16
//! - Q4_K (144 B): d f16 | dmin f16 | scales[12] (8 scales + 8 mins, 6 bit) | qs[128]
//! - Q5_K (176 B): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
//! - Q6_K (210 B): ql[128] | qh[64] | scales i8[16] | d f16
//! - Q8_K (292 B): d f32 | qs i8[256] | bsums i16[16] (sums of 16 consecutive qs)
//!
//! Dots follow `ggml_vec_dot_*_q8_K_generic`: integer sums per super-block, then the same
//! float operations in the same order (8 lane accumulators where ggml has them).

use crate::util::{nearest_int, rd_f16, rd_f32, rd_i16};

pub(crate) const QK_K: usize = 256;

/// Q8_K field offsets.
pub(crate) const Q8K_QS: usize = 4;
pub(crate) const Q8K_BSUMS: usize = 260;

/// Unpacks Q4_K/Q5_K's 12 scale bytes into 8 six-bit scales and 8 six-bit mins
/// (ggml's `get_scale_min_k4` for j = 0..8).
#[inline(always)]
pub(crate) fn scale_min_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = q[j] & 63;
        m[j] = q[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
    (sc, m)
}

/// Unpacks Q3_K's 12 scale bytes into 16 six-bit scales, biased by 32 (not yet subtracted):
/// scale j has its low 4 bits in nibble (j / 8) of byte j % 8, its high 2 bits in bits
/// 2*(j / 4).. of byte 8 + j % 4. Done on u32 words like ggml.
#[inline(always)]
pub(crate) fn scales_q3k(s: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, tmp) = (w(0), w(1), w(2));
    let words = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, v) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------- dequantize

pub(crate) fn dequant_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(84).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (rd_f16(b, 80), rd_f16(b, 82));
        let mut o = 0;
        let mut is = 0;
        for half in 0..2 {
            let q = &b[16 + 32 * half..16 + 32 * half + 32];
            for shift in [0u32, 2, 4, 6] {
                for part in 0..2 {
                    let sc = b[is];
                    is += 1;
                    let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
                    for l in 0..16 {
                        y[o] = dl * ((q[l + 16 * part] >> shift) & 3) as f32 - ml;
                        o += 1;
                    }
                }
            }
        }
    }
}

pub(crate) fn dequant_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let d_all = rd_f16(b, 108);
        let scales = scales_q3k(&b[96..108]);
        let hm = &b[0..32];
        let mut m = 1u8;
        let mut o = 0;
        let mut is = 0;
        for half in 0..2 {
            let q = &b[32 + 32 * half..64 + 32 * half];
            for shift in [0u32, 2, 4, 6] {
                for part in 0..2 {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    for l in 16 * part..16 * part + 16 {
                        let v = ((q[l] >> shift) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                        y[o] = dl * v as f32;
                        o += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

pub(crate) fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (rd_f16(b, 0), rd_f16(b, 2));
        let (sc, m) = scale_min_k4(&b[4..16]);
        for j in 0..4 {
            let q = &b[16 + 32 * j..48 + 32 * j];
            let (d1, m1) = (d * sc[2 * j] as f32, min * m[2 * j] as f32);
            let (d2, m2) = (d * sc[2 * j + 1] as f32, min * m[2 * j + 1] as f32);
            let yo = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                yo[l] = d1 * (q[l] & 0xF) as f32 - m1;
                yo[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub(crate) fn dequant_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (rd_f16(b, 0), rd_f16(b, 2));
        let (sc, m) = scale_min_k4(&b[4..16]);
        let qh = &b[16..48];
        for j in 0..4 {
            let ql = &b[48 + 32 * j..80 + 32 * j];
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let (d1, m1) = (d * sc[2 * j] as f32, min * m[2 * j] as f32);
            let (d2, m2) = (d * sc[2 * j + 1] as f32, min * m[2 * j + 1] as f32);
            let yo = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                yo[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                yo[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

pub(crate) fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 208);
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..160 + 32 * half];
            let sc = &b[192 + 8 * half..200 + 8 * half];
            let yo = &mut y[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                // d * sc * q, evaluated left to right as in C.
                yo[l] = d * (sc[is] as i8 as f32) * q1 as f32;
                yo[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
                yo[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
                yo[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
            }
        }
    }
}

pub(crate) fn dequant_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(292).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f32(b, 0);
        for j in 0..QK_K {
            y[j] = d * b[Q8K_QS + j] as i8 as f32;
        }
    }
}

/// `quantize_row_q8_K_ref`: scale -127/max, round half to even, bsums per 16.
pub(crate) fn quant_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(292)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            // ggml leaves bsums untouched here; zero is the only consistent value.
            b.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for j in 0..QK_K {
            b[Q8K_QS + j] = nearest_int(iscale * x[j]).min(127) as i8 as u8;
        }
        for j in 0..16 {
            let s: i32 = b[Q8K_QS + 16 * j..Q8K_QS + 16 * j + 16]
                .iter()
                .map(|&q| q as i8 as i32)
                .sum();
            b[Q8K_BSUMS + 2 * j..Q8K_BSUMS + 2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
        }
        b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

// ---------------------------------------------------------------- reference dots

#[inline(always)]
fn check(n: usize, w: &[u8], wb: usize, a: &[u8], what: &str) {
    assert!(
        n.is_multiple_of(QK_K),
        "{what} dot: n={n} not a multiple of {QK_K}"
    );
    let nb = n / QK_K;
    assert!(
        w.len() == nb * wb && a.len() == nb * 292,
        "{what} dot: bad lengths"
    );
}

/// Sums of ggml's 8 integer lanes (lane = element index mod 8), then `sums[l] += d*aux32[l]`.
/// `scales[g]` applies to the 8 elements of group g (a scale covers 16 or 32 elements,
/// so it is constant within a group); groups of 8 keep the loop vectorizable.
#[inline(always)]
fn lanes_add(sums: &mut [f32; 8], d: f32, q8: &[u8], vals: &[i8; QK_K], scales: &[i32; QK_K / 8]) {
    let mut aux32 = [0i32; 8];
    for ((q, v), &sc) in q8.chunks_exact(8).zip(vals.chunks_exact(8)).zip(scales) {
        for l in 0..8 {
            aux32[l] += sc * (q[l] as i8 as i32 * v[l] as i32);
        }
    }
    for l in 0..8 {
        sums[l] += d * aux32[l] as f32;
    }
}

/// Expands per-`span` scales to one per group of 8.
#[inline(always)]
fn group_scales(span: usize, scale_of: impl Fn(usize) -> i32) -> [i32; QK_K / 8] {
    let mut out = [0i32; QK_K / 8];
    for (g, o) in out.iter_mut().enumerate() {
        *o = scale_of(g * 8 / span);
    }
    out
}

pub(crate) fn dot_q2_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 84, a, "Q2_K");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(84).zip(a.chunks_exact(292)) {
        let sc = &x[0..16];
        let q8 = &y[Q8K_QS..Q8K_QS + QK_K];
        let summs: i32 = (0..16)
            .map(|j| rd_i16(y, Q8K_BSUMS + 2 * j) as i32 * (sc[j] >> 4) as i32)
            .sum();
        let yd = rd_f32(y, 0);
        let dall = yd * rd_f16(x, 80);
        let dmin = yd * rd_f16(x, 82);
        let mut isum = 0i32;
        let mut is = 0;
        for half in 0..2 {
            let q2 = &x[16 + 32 * half..48 + 32 * half];
            for (j, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                let q8b = &q8[128 * half + 32 * j..128 * half + 32 * j + 32];
                for part in 0..2 {
                    let d = (sc[is] & 0xF) as i32;
                    is += 1;
                    let s: i32 = (16 * part..16 * part + 16)
                        .map(|l| q8b[l] as i8 as i32 * ((q2[l] >> shift) & 3) as i32)
                        .sum();
                    isum += d * s;
                }
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

pub(crate) fn dot_q3_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 110, a, "Q3_K");
    let mut sums = [0f32; 8];
    for (x, y) in w.chunks_exact(110).zip(a.chunks_exact(292)) {
        let mut vals = [0i8; QK_K];
        let hm = &x[0..32];
        let mut m = 1u8;
        for half in 0..2 {
            let q3 = &x[32 + 32 * half..64 + 32 * half];
            for shift in [0u32, 2, 4, 6] {
                let o = 128 * half + 32 * (shift as usize / 2);
                for l in 0..32 {
                    vals[o + l] = ((q3[l] >> shift) & 3) as i8 - if hm[l] & m != 0 { 0 } else { 4 };
                }
                m <<= 1;
            }
        }
        let scales = scales_q3k(&x[96..108]);
        let d = rd_f16(x, 108) * rd_f32(y, 0);
        let gs = group_scales(16, |j| scales[j] as i32 - 32);
        lanes_add(&mut sums, d, &y[Q8K_QS..Q8K_QS + QK_K], &vals, &gs);
    }
    sums.iter().fold(0f32, |s, v| s + v)
}

/// Shared by Q4_K and Q5_K: `vals` are the unsigned quants, scales/mins per 32.
#[inline(always)]
fn k4_block(sums: &mut [f32; 8], sumf: &mut f32, x: &[u8], y: &[u8], vals: &[i8; QK_K]) {
    let (sc, mins) = scale_min_k4(&x[4..16]);
    let sumi: i32 = (0..16)
        .map(|j| rd_i16(y, Q8K_BSUMS + 2 * j) as i32 * mins[j / 2] as i32)
        .sum();
    let yd = rd_f32(y, 0);
    lanes_add(
        sums,
        rd_f16(x, 0) * yd,
        &y[Q8K_QS..Q8K_QS + QK_K],
        vals,
        &group_scales(32, |j| sc[j] as i32),
    );
    let dmin = rd_f16(x, 2) * yd;
    *sumf -= dmin * sumi as f32;
}

pub(crate) fn dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 144, a, "Q4_K");
    let (mut sums, mut sumf) = ([0f32; 8], 0f32);
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let mut vals = [0i8; QK_K];
        for j in 0..4 {
            let q4 = &x[16 + 32 * j..48 + 32 * j];
            for l in 0..32 {
                vals[64 * j + l] = (q4[l] & 0xF) as i8;
                vals[64 * j + 32 + l] = (q4[l] >> 4) as i8;
            }
        }
        k4_block(&mut sums, &mut sumf, x, y, &vals);
    }
    sums.iter().fold(sumf, |s, v| s + v)
}

pub(crate) fn dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 176, a, "Q5_K");
    let (mut sums, mut sumf) = ([0f32; 8], 0f32);
    for (x, y) in w.chunks_exact(176).zip(a.chunks_exact(292)) {
        let mut vals = [0i8; QK_K];
        let hm = &x[16..48];
        for j in 0..4 {
            let q4 = &x[48 + 32 * j..80 + 32 * j];
            let (m1, m2) = (1u8 << (2 * j), 2u8 << (2 * j));
            for l in 0..32 {
                vals[64 * j + l] = (q4[l] & 0xF) as i8 + if hm[l] & m1 != 0 { 16 } else { 0 };
                vals[64 * j + 32 + l] = (q4[l] >> 4) as i8 + if hm[l] & m2 != 0 { 16 } else { 0 };
            }
        }
        k4_block(&mut sums, &mut sumf, x, y, &vals);
    }
    sums.iter().fold(sumf, |s, v| s + v)
}

pub(crate) fn dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 210, a, "Q6_K");
    let mut sums = [0f32; 8];
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let mut vals = [0i8; QK_K];
        for half in 0..2 {
            let ql = &x[64 * half..64 * half + 64];
            let qh = &x[128 + 32 * half..160 + 32 * half];
            let v = &mut vals[128 * half..128 * half + 128];
            for l in 0..32 {
                v[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                v[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                v[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                v[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        let d = rd_f16(x, 208) * rd_f32(y, 0);
        let gs = group_scales(16, |j| x[192 + j] as i8 as i32);
        lanes_add(&mut sums, d, &y[Q8K_QS..Q8K_QS + QK_K], &vals, &gs);
    }
    sums.iter().fold(0f32, |s, v| s + v)
}
