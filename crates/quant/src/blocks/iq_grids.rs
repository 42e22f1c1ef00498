//! The i-quants built from a grid of magnitudes and sign bits: IQ2_XXS, IQ2_XS, IQ2_S,
//! IQ3_XXS, IQ3_S (256-element super-blocks, against Q8_K).
//!
//! Each group of 8 elements (IQ3: two groups of 4 sharing a sign byte) is one grid
//! point (`crate::tables`) with its signs; each 32 elements (IQ3_S: 64) have a scale.
//! Layouts (ggml-common.h, little endian, no padding), per 32-element sub-block `ib`:
//! - IQ2_XXS (66 B): d f16 | 8 bytes per ib: 4 grid indices, then a u32 of four 7-bit
//!   sign fields (`KSIGNS_IQ2XS`, even parity) and the 4-bit scale in bits 28..32
//! - IQ2_XS (74 B):  d f16 | u16 per group: 9-bit index | 7 sign bits | scales[8]
//!   (one nibble per 16 elements)
//! - IQ2_S (82 B):   d f16 | qs[32] index low bits | signs[32] | qh[8] (2 high index
//!   bits per group) | scales[8]
//! - IQ3_XXS (98 B): d f16 | qs[64] (one index per 4) | per ib a u32 like IQ2_XXS's
//! - IQ3_S (110 B):  d f16 | qs[64] | qh[8] (9th index bit) | signs[32] | scales[4]
//!   (one nibble per 64 elements, scale 1 + 2s)
//!
//! Dequantizers and dots follow ggml (`dequantize_row_*`, `ggml_vec_dot_*_q8_K_generic`).

use super::k_quants::{Q8K_QS, QK_K};
use crate::tables::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS};
use crate::util::{rd_f16, rd_f32, rd_u32};

/// `y[j] = db * grid_j * (-1 if sign bit j)` for the `y.len()` values of grid entry `e`.
#[inline(always)]
fn signed_grid(e: u64, signs: u8, db: f32, y: &mut [f32]) {
    for (j, v) in y.iter_mut().enumerate() {
        let s = if (signs >> j) & 1 != 0 { -1.0 } else { 1.0 };
        *v = db * ((e >> (8 * j)) as u8) as f32 * s;
    }
}

/// Σ grid_j * q8_j with the signs, over `q8.len()` values of grid entry `e`.
#[inline(always)]
fn signed_grid_dot(e: u64, signs: u8, q8: &[u8]) -> i32 {
    let mut s = 0;
    for (j, &q) in q8.iter().enumerate() {
        let v = ((e >> (8 * j)) as u8) as i32 * q as i8 as i32;
        s += if (signs >> j) & 1 != 0 { -v } else { v };
    }
    s
}

/// IQ2_XXS: the u32 of sub-block `ib`'s four sign fields and 4-bit scale.
#[inline(always)]
fn iq2xxs_aux(b: &[u8], ib: usize) -> u32 {
    rd_u32(b, 6 + 8 * ib)
}

/// IQ3_XXS: the same u32, after the grid indices.
#[inline(always)]
fn iq3xxs_aux(b: &[u8], ib: usize) -> u32 {
    rd_u32(b, 66 + 4 * ib)
}

/// IQ2_S: group `l` of sub-block `ib`'s 10-bit grid index.
#[inline(always)]
fn iq2s_index(b: &[u8], ib: usize, l: usize) -> usize {
    b[2 + 4 * ib + l] as usize | ((b[66 + ib] as usize) << (8 - 2 * l) & 0x300)
}

/// IQ3_S: the 9-bit grid index of 4-value group `g` (0..8) of sub-block `ib`.
#[inline(always)]
fn iq3s_index(b: &[u8], ib: usize, g: usize) -> usize {
    b[2 + 8 * ib + g] as usize | (((b[66 + ib] as usize) << (8 - g)) & 256)
}

// ---------------------------------------------------------------- dequantize

pub(crate) fn dequant_iq2_xxs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(66).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        for ib in 0..8 {
            let aux = iq2xxs_aux(b, ib);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let e = IQ2XXS_GRID[b[2 + 8 * ib + l] as usize];
                signed_grid(e, signs, db, &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8]);
            }
        }
    }
}

pub(crate) fn dequant_iq2_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(74).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        for ib in 0..8 {
            let sc = b[66 + ib];
            let db = [d * (0.5 + (sc & 0xF) as f32) * 0.25, d * (0.5 + (sc >> 4) as f32) * 0.25];
            for l in 0..4 {
                let q = u16::from_le_bytes([b[2 + 8 * ib + 2 * l], b[3 + 8 * ib + 2 * l]]) as usize;
                let signs = KSIGNS_IQ2XS[q >> 9];
                signed_grid(IQ2XS_GRID[q & 511], signs, db[l / 2], &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8]);
            }
        }
    }
}

pub(crate) fn dequant_iq2_s(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(82).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        for ib in 0..8 {
            let sc = b[74 + ib];
            let db = [d * (0.5 + (sc & 0xF) as f32) * 0.25, d * (0.5 + (sc >> 4) as f32) * 0.25];
            for l in 0..4 {
                let signs = b[34 + 4 * ib + l];
                let e = IQ2S_GRID[iq2s_index(b, ib, l)];
                signed_grid(e, signs, db[l / 2], &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8]);
            }
        }
    }
}

pub(crate) fn dequant_iq3_xxs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(98).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        for ib in 0..8 {
            let aux = iq3xxs_aux(b, ib);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let o = 32 * ib + 8 * l;
                signed_grid(IQ3XXS_GRID[b[2 + 8 * ib + 2 * l] as usize], signs, db, &mut y[o..o + 4]);
                signed_grid(IQ3XXS_GRID[b[3 + 8 * ib + 2 * l] as usize], signs >> 4, db, &mut y[o + 4..o + 8]);
            }
        }
    }
}

pub(crate) fn dequant_iq3_s(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        for ib in 0..8 {
            let db = d * (1 + 2 * ((b[106 + ib / 2] >> (4 * (ib % 2))) & 0xF) as i32) as f32;
            for l in 0..4 {
                let signs = b[74 + 4 * ib + l];
                let o = 32 * ib + 8 * l;
                signed_grid(IQ3S_GRID[iq3s_index(b, ib, 2 * l)], signs, db, &mut y[o..o + 4]);
                signed_grid(IQ3S_GRID[iq3s_index(b, ib, 2 * l + 1)], signs >> 4, db, &mut y[o + 4..o + 8]);
            }
        }
    }
}

// ---------------------------------------------------------------- reference dots

fn check(n: usize, w: &[u8], wb: usize, a: &[u8], what: &str) {
    assert!(n.is_multiple_of(QK_K), "{what} dot: n={n} not a multiple of {QK_K}");
    assert!(w.len() == n / QK_K * wb && a.len() == n / QK_K * 292, "{what} dot: bad lengths");
}

/// Runs `isum(x, q8, ib)` (the scaled integer sum of sub-block `ib`) over every
/// super-block, then `factor * Σ (dx * dy) * Σ_ib isum` as ggml does.
#[inline(always)]
fn superblocks(w: &[u8], a: &[u8], wb: usize, factor: f32, isum: impl Fn(&[u8], &[u8], usize) -> i32) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(wb).zip(a.chunks_exact(292)) {
        let d = rd_f16(x, 0) * rd_f32(y, 0);
        let bsum: i32 = (0..8).map(|ib| isum(x, &y[Q8K_QS + 32 * ib..Q8K_QS + 32 * ib + 32], ib)).sum();
        sumf += d * bsum as f32;
    }
    factor * sumf
}

pub(crate) fn dot_iq2_xxs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 66, a, "IQ2_XXS");
    superblocks(w, a, 66, 0.125, |x, q8, ib| {
        let aux = iq2xxs_aux(x, ib);
        let sumi: i32 = (0..4)
            .map(|l| {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                signed_grid_dot(IQ2XXS_GRID[x[2 + 8 * ib + l] as usize], signs, &q8[8 * l..8 * l + 8])
            })
            .sum();
        sumi * (2 * (aux >> 28) + 1) as i32
    })
}

pub(crate) fn dot_iq2_xs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 74, a, "IQ2_XS");
    superblocks(w, a, 74, 0.125, |x, q8, ib| {
        let group = |l: usize| {
            let q = u16::from_le_bytes([x[2 + 8 * ib + 2 * l], x[3 + 8 * ib + 2 * l]]) as usize;
            signed_grid_dot(IQ2XS_GRID[q & 511], KSIGNS_IQ2XS[q >> 9], &q8[8 * l..8 * l + 8])
        };
        let sc = x[66 + ib] as i32;
        (group(0) + group(1)) * (2 * (sc & 0xF) + 1) + (group(2) + group(3)) * (2 * (sc >> 4) + 1)
    })
}

pub(crate) fn dot_iq2_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 82, a, "IQ2_S");
    superblocks(w, a, 82, 0.125, |x, q8, ib| {
        let group = |l: usize| signed_grid_dot(IQ2S_GRID[iq2s_index(x, ib, l)], x[34 + 4 * ib + l], &q8[8 * l..8 * l + 8]);
        let sc = x[74 + ib] as i32;
        (1 + 2 * (sc & 0xF)) * (group(0) + group(1)) + (1 + 2 * (sc >> 4)) * (group(2) + group(3))
    })
}

pub(crate) fn dot_iq3_xxs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 98, a, "IQ3_XXS");
    superblocks(w, a, 98, 0.25, |x, q8, ib| {
        let aux = iq3xxs_aux(x, ib);
        let sumi: i32 = (0..4)
            .map(|l| {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let (g1, g2) = (IQ3XXS_GRID[x[2 + 8 * ib + 2 * l] as usize], IQ3XXS_GRID[x[3 + 8 * ib + 2 * l] as usize]);
                signed_grid_dot(g1, signs, &q8[8 * l..8 * l + 4]) + signed_grid_dot(g2, signs >> 4, &q8[8 * l + 4..8 * l + 8])
            })
            .sum();
        sumi * (2 * (aux >> 28) + 1) as i32
    })
}

pub(crate) fn dot_iq3_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, 110, a, "IQ3_S");
    superblocks(w, a, 110, 1.0, |x, q8, ib| {
        let sumi: i32 = (0..4)
            .map(|l| {
                let signs = x[74 + 4 * ib + l];
                let (g1, g2) = (IQ3S_GRID[iq3s_index(x, ib, 2 * l)], IQ3S_GRID[iq3s_index(x, ib, 2 * l + 1)]);
                signed_grid_dot(g1, signs, &q8[8 * l..8 * l + 4]) + signed_grid_dot(g2, signs >> 4, &q8[8 * l + 4..8 * l + 8])
            })
            .sum();
        sumi * (2 * ((x[106 + ib / 2] >> (4 * (ib % 2))) & 0xF) as i32 + 1)
    })
}
