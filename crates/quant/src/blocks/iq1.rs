//! The 1.5-bit i-quants IQ1_S and IQ1_M: each group of 8 elements is a point of a grid
//! of ternary values (`IQ1S_GRID`, i8 -1/0/1) plus a shift of +-1/8, times a sub-block
//! scale (256-element super-blocks, against Q8_K).
//!
//! Layouts (ggml-common.h, little endian, no padding), per 32-element sub-block `ib`:
//! - IQ1_S (50 B): d f16 | qs[32] (index low 8 bits) | qh u16[8]: bits 3l..3l+3 the
//!   high index bits of group l, bits 12..15 the scale s (2s + 1), bit 15 the shift's sign
//! - IQ1_M (56 B): qs[32] | qh[16] (per group pair: a nibble of 3 index bits + shift
//!   sign) | scales u16[4]: 3-bit scales per 16 elements, and in the top nibbles of the
//!   four u16 the f16 super-block scale
//!
//! Dequantizers and dots follow ggml (`dequantize_row_*`, `ggml_vec_dot_*_q8_K_generic`).

use super::k_quants::{Q8K_BSUMS, Q8K_QS, QK_K};
use crate::tables::IQ1S_GRID;
use crate::util::{f16_bits_to_f32, rd_f16, rd_f32, rd_i16};

/// `IQ1S_DELTA` / `IQ1M_DELTA`.
const DELTA: f32 = 0.125;

/// Grid value `j` (-1, 0, 1) of entry `idx`.
#[inline(always)]
fn grid(idx: usize, j: usize) -> i32 {
    (IQ1S_GRID[idx] >> (8 * j)) as u8 as i8 as i32
}

#[inline(always)]
fn rd_u16(b: &[u8], off: usize) -> u32 {
    u16::from_le_bytes([b[off], b[off + 1]]) as u32
}

/// IQ1_S: (qh of sub-block `ib`, grid index of its group `l`).
#[inline(always)]
fn iq1s_index(b: &[u8], ib: usize, l: usize) -> (u32, usize) {
    let qh = rd_u16(b, 34 + 2 * ib);
    (qh, b[2 + 4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8))
}

/// IQ1_M's super-block scale, gathered from the top nibbles of its four scale words.
#[inline(always)]
fn iq1m_scale(b: &[u8]) -> f32 {
    let sc = |k: usize| rd_u16(b, 48 + 2 * k);
    let h = (sc(0) >> 12) | ((sc(1) >> 8) & 0x00F0) | ((sc(2) >> 4) & 0x0F00) | (sc(3) & 0xF000);
    f16_bits_to_f32(h as u16)
}

/// IQ1_M: the 3-bit scale (2s + 1) of half `h` (0, 1) of sub-block `ib`.
#[inline(always)]
fn iq1m_sub_scale(b: &[u8], ib: usize, h: usize) -> i32 {
    2 * ((rd_u16(b, 48 + 2 * (ib / 2)) >> (6 * (ib % 2) + 3 * h)) & 7) as i32 + 1
}

/// IQ1_M: (grid index, shift is negative) of group `l` of sub-block `ib`.
#[inline(always)]
fn iq1m_group(b: &[u8], ib: usize, l: usize) -> (usize, bool) {
    let qh = b[32 + 2 * ib + l / 2] as usize;
    let nib = if l.is_multiple_of(2) { qh & 0xF } else { qh >> 4 };
    (b[4 * ib + l] as usize | ((nib & 7) << 8), nib & 8 != 0)
}

// ---------------------------------------------------------------- dequantize

pub(crate) fn dequant_iq1_s(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(50).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        for ib in 0..8 {
            for l in 0..4 {
                let (qh, idx) = iq1s_index(b, ib, l);
                let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
                let delta = if qh & 0x8000 != 0 { -DELTA } else { DELTA };
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = dl * (grid(idx, j) as f32 + delta);
                }
            }
        }
    }
}

pub(crate) fn dequant_iq1_m(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(56).zip(dst.chunks_exact_mut(QK_K)) {
        let d = iq1m_scale(b);
        for ib in 0..8 {
            for l in 0..4 {
                let dl = d * iq1m_sub_scale(b, ib, l / 2) as f32;
                let (idx, neg) = iq1m_group(b, ib, l);
                let delta = if neg { -DELTA } else { DELTA };
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = dl * (grid(idx, j) as f32 + delta);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- reference dots

fn check(n: usize, w: &[u8], wb: usize, a: &[u8], what: &str) {
    assert!(n.is_multiple_of(QK_K), "{what} dot: n={n} not a multiple of {QK_K}");
    assert!(w.len() == n / QK_K * wb && a.len() == n / QK_K * 292, "{what} dot: bad lengths");
}

/// Σ q8_j * grid_j over group `l` (8 values) of a sub-block's quants.
#[inline(always)]
fn group_dot(idx: usize, q8: &[u8]) -> i32 {
    (0..8).map(|j| q8[j] as i8 as i32 * grid(idx, j)).sum()
}

pub(crate) fn dot_iq1_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 50, a, "IQ1_S");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(50).zip(a.chunks_exact(292)) {
        let (mut sumi, mut sumi1) = (0i32, 0i32);
        for ib in 0..8 {
            let q8 = &y[Q8K_QS + 32 * ib..Q8K_QS + 32 * ib + 32];
            let qh = rd_u16(x, 34 + 2 * ib);
            let ls = 2 * ((qh >> 12) & 7) as i32 + 1;
            let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
            let lsum: i32 = (0..4).map(|l| group_dot(iq1s_index(x, ib, l).1, &q8[8 * l..8 * l + 8])).sum();
            sumi += ls * lsum;
            let bsums = rd_i16(y, Q8K_BSUMS + 4 * ib) as i32 + rd_i16(y, Q8K_BSUMS + 4 * ib + 2) as i32;
            sumi1 += ls * delta * bsums;
        }
        sumf += rd_f16(x, 0) * rd_f32(y, 0) * (sumi as f32 + DELTA * sumi1 as f32);
    }
    sumf
}

pub(crate) fn dot_iq1_m_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 56, a, "IQ1_M");
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(56).zip(a.chunks_exact(292)) {
        let (mut sumi1, mut sumi2) = (0i32, 0i32);
        for ib in 0..8 {
            let q8 = &y[Q8K_QS + 32 * ib..Q8K_QS + 32 * ib + 32];
            let (mut sum1, mut sum2) = ([0i32; 2], [0i32; 2]);
            for l in 0..4 {
                let (idx, neg) = iq1m_group(x, ib, l);
                let g = &q8[8 * l..8 * l + 8];
                sum1[l / 2] += group_dot(idx, g);
                let lsum2: i32 = g.iter().map(|&q| q as i8 as i32).sum();
                sum2[l / 2] += if neg { -lsum2 } else { lsum2 };
            }
            let (ls1, ls2) = (iq1m_sub_scale(x, ib, 0), iq1m_sub_scale(x, ib, 1));
            sumi1 += sum1[0] * ls1 + sum1[1] * ls2;
            sumi2 += sum2[0] * ls1 + sum2[1] * ls2;
        }
        sumf += iq1m_scale(x) * rd_f32(y, 0) * (sumi1 as f32 + DELTA * sumi2 as f32);
    }
    sumf
}
