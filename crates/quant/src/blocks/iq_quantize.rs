//! Quantizers for the grid i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
//! IQ3_S). These are ours, not ggml's: ggml needs an importance matrix for IQ1/IQ2_XXS/
//! IQ2_XS and a neighbour search for the rest. Here each sub-block's scale comes from its
//! largest magnitude and each group takes the nearest grid point (exhaustive search),
//! which is enough to write valid, reasonable weights (test models, conformance cases).
//! Their output is not byte-identical to llama-quantize's.

use super::k_quants::QK_K;
use crate::tables::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use crate::util::{f16_bits_to_f32, f32_to_f16_bits};

/// The entry of `grid` nearest `t` in least squares (values are bytes, `signed`: as i8).
fn nearest(grid: &[u64], t: &[f32], signed: bool) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (i, &e) in grid.iter().enumerate() {
        let mut err = 0f32;
        for (j, &tj) in t.iter().enumerate() {
            let b = (e >> (8 * j)) as u8;
            let g = if signed { b as i8 as f32 } else { b as f32 };
            err += (tj - g) * (tj - g);
        }
        if err < best.1 {
            best = (i, err);
        }
    }
    best
}

/// Sign bits of `x` (bit j: x_j < 0). With `even`, the count is made even by flipping
/// the bit of the smallest |x| (formats that store 7 bits and imply the 8th).
fn sign_bits(x: &[f32], even: bool) -> u8 {
    let mut s = x.iter().enumerate().fold(0u8, |s, (j, &v)| s | (((v < 0.0) as u8) << j));
    if even && s.count_ones() % 2 == 1 {
        let j = (0..x.len()).min_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs())).unwrap_or(0);
        s ^= 1 << j;
    }
    s
}

/// Grid indices of `x` (8 values) at step `db`, signs given: one point of 8 values, or
/// two of 4 (`per == 4`).
fn signed_points(grid: &[u64], x: &[f32], signs: u8, db: f32, per: usize) -> [usize; 2] {
    let inv = if db > 0.0 { 1.0 / db } else { 0.0 };
    let t: Vec<f32> = x.iter().enumerate().map(|(j, &v)| if (signs >> j) & 1 != 0 { -v * inv } else { v * inv }).collect();
    let mut idx = [0; 2];
    for (k, chunk) in t.chunks(per).enumerate() {
        idx[k] = nearest(grid, chunk, false).0;
    }
    idx
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// A super-block's scales: `d` (f16 bits `h`) and per span of elements a code `c` in
/// `0..=cmax` whose step `d * step(c)` is nearest the span's largest magnitude over the
/// grid's largest value `gmax`.
struct Scales {
    h: u16,
    d: f32,
    codes: Vec<u8>,
}

fn scales(x: &[f32], span: usize, gmax: f32, cmax: u8, step: impl Fn(u8) -> f32) -> Scales {
    let want: Vec<f32> = x.chunks(span).map(|s| amax(s) / gmax).collect();
    let top = want.iter().fold(0f32, |m, &v| m.max(v));
    let h = f32_to_f16_bits(top / step(cmax));
    let d = f16_bits_to_f32(h);
    let codes = want
        .iter()
        .map(|&w| (0..=cmax).min_by(|&a, &b| (d * step(a) - w).abs().total_cmp(&(d * step(b) - w).abs())).unwrap_or(0))
        .collect();
    Scales { h, d, codes }
}

/// IQ2_XXS, IQ2_XS, IQ2_S: the step of code c is (0.5 + c) / 4, magnitudes up to 43.
fn iq2_step(c: u8) -> f32 {
    (0.5 + c as f32) * 0.25
}

pub(crate) fn quant_iq2_xxs(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(66)) {
        let Scales { h, d, codes } = scales(x, 32, 43.0, 15, iq2_step);
        b[0..2].copy_from_slice(&h.to_le_bytes());
        for (ib, xs) in x.chunks(32).enumerate() {
            let db = d * iq2_step(codes[ib]);
            let mut aux = (codes[ib] as u32) << 28;
            for (l, g) in xs.chunks(8).enumerate() {
                let signs = sign_bits(g, true);
                b[2 + 8 * ib + l] = signed_points(&IQ2XXS_GRID, g, signs, db, 8)[0] as u8;
                aux |= ((signs & 127) as u32) << (7 * l);
            }
            b[6 + 8 * ib..10 + 8 * ib].copy_from_slice(&aux.to_le_bytes());
        }
    }
}

pub(crate) fn quant_iq2_xs(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(74)) {
        let Scales { h, d, codes } = scales(x, 16, 43.0, 15, iq2_step);
        b[0..2].copy_from_slice(&h.to_le_bytes());
        for (g, xs) in x.chunks(8).enumerate() {
            let (ib, l) = (g / 4, g % 4);
            let signs = sign_bits(xs, true);
            let idx = signed_points(&IQ2XS_GRID, xs, signs, d * iq2_step(codes[g / 2]), 8)[0];
            let q = idx as u16 | ((signs as u16 & 127) << 9);
            b[2 + 8 * ib + 2 * l..4 + 8 * ib + 2 * l].copy_from_slice(&q.to_le_bytes());
        }
        for ib in 0..8 {
            b[66 + ib] = codes[2 * ib] | (codes[2 * ib + 1] << 4);
        }
    }
}

pub(crate) fn quant_iq2_s(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(82)) {
        let Scales { h, d, codes } = scales(x, 16, 43.0, 15, iq2_step);
        b.fill(0);
        b[0..2].copy_from_slice(&h.to_le_bytes());
        for (g, xs) in x.chunks(8).enumerate() {
            let (ib, l) = (g / 4, g % 4);
            let signs = sign_bits(xs, false);
            let idx = signed_points(&IQ2S_GRID, xs, signs, d * iq2_step(codes[g / 2]), 8)[0];
            b[2 + 4 * ib + l] = idx as u8;
            b[34 + 4 * ib + l] = signs;
            b[66 + ib] |= ((idx >> 8) as u8) << (2 * l);
        }
        for ib in 0..8 {
            b[74 + ib] = codes[2 * ib] | (codes[2 * ib + 1] << 4);
        }
    }
}

pub(crate) fn quant_iq3_xxs(src: &[f32], dst: &mut [u8]) {
    let step = |c: u8| (0.5 + c as f32) * 0.5;
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(98)) {
        let Scales { h, d, codes } = scales(x, 32, 62.0, 15, step);
        b[0..2].copy_from_slice(&h.to_le_bytes());
        for (ib, xs) in x.chunks(32).enumerate() {
            let mut aux = (codes[ib] as u32) << 28;
            for (l, g) in xs.chunks(8).enumerate() {
                let signs = sign_bits(g, true);
                let idx = signed_points(&IQ3XXS_GRID, g, signs, d * step(codes[ib]), 4);
                b[2 + 8 * ib + 2 * l] = idx[0] as u8;
                b[3 + 8 * ib + 2 * l] = idx[1] as u8;
                aux |= ((signs & 127) as u32) << (7 * l);
            }
            b[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&aux.to_le_bytes());
        }
    }
}

pub(crate) fn quant_iq3_s(src: &[f32], dst: &mut [u8]) {
    let step = |c: u8| (1 + 2 * c as i32) as f32;
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(110)) {
        let Scales { h, d, codes } = scales(x, 32, 15.0, 15, step);
        b.fill(0);
        b[0..2].copy_from_slice(&h.to_le_bytes());
        for (ib, xs) in x.chunks(32).enumerate() {
            for (l, g) in xs.chunks(8).enumerate() {
                let signs = sign_bits(g, false);
                let idx = signed_points(&IQ3S_GRID, g, signs, d * step(codes[ib]), 4);
                for (k, &i) in idx.iter().enumerate() {
                    b[2 + 8 * ib + 2 * l + k] = i as u8;
                    b[66 + ib] |= ((i >> 8) as u8) << (2 * l + k);
                }
                b[74 + 4 * ib + l] = signs;
            }
            b[106 + ib / 2] |= codes[ib] << (4 * (ib % 2));
        }
    }
}

/// IQ1: the step of code c is 2c + 1; values are (grid + shift) in -1.125..=1.125.
fn iq1_step(c: u8) -> f32 {
    (2 * c as i32 + 1) as f32
}

/// The nearest IQ1 grid point to `x / dl` with shift `delta`, and its squared error.
fn iq1_point(x: &[f32], dl: f32, delta: f32) -> (usize, f32) {
    let inv = if dl > 0.0 { 1.0 / dl } else { 0.0 };
    let t: Vec<f32> = x.iter().map(|&v| v * inv - delta).collect();
    nearest(&IQ1S_GRID, &t, true)
}

pub(crate) fn quant_iq1_s(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(50)) {
        let Scales { h, d, codes } = scales(x, 32, 1.125, 7, iq1_step);
        b[0..2].copy_from_slice(&h.to_le_bytes());
        for (ib, xs) in x.chunks(32).enumerate() {
            let dl = d * iq1_step(codes[ib]);
            // One shift per sub-block: the sign with the smaller total error.
            let try_delta = |delta: f32| -> (Vec<usize>, f32) {
                let pts: Vec<(usize, f32)> = xs.chunks(8).map(|g| iq1_point(g, dl, delta)).collect();
                (pts.iter().map(|p| p.0).collect(), pts.iter().map(|p| p.1).sum())
            };
            let (pos, neg) = (try_delta(0.125), try_delta(-0.125));
            let (idx, negative) = if neg.1 < pos.1 { (neg.0, true) } else { (pos.0, false) };
            let mut qh = ((codes[ib] as u16) << 12) | if negative { 0x8000 } else { 0 };
            for (l, &i) in idx.iter().enumerate() {
                b[2 + 4 * ib + l] = i as u8;
                qh |= ((i >> 8) as u16) << (3 * l);
            }
            b[34 + 2 * ib..36 + 2 * ib].copy_from_slice(&qh.to_le_bytes());
        }
    }
}

pub(crate) fn quant_iq1_m(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(56)) {
        let Scales { h, d, codes } = scales(x, 16, 1.125, 7, iq1_step);
        b.fill(0);
        for (g, xs) in x.chunks(8).enumerate() {
            let (ib, l) = (g / 4, g % 4);
            let dl = d * iq1_step(codes[g / 2]);
            let (pos, neg) = (iq1_point(xs, dl, 0.125), iq1_point(xs, dl, -0.125));
            let (i, negative) = if neg.1 < pos.1 { (neg.0, true) } else { (pos.0, false) };
            b[4 * ib + l] = i as u8;
            let nib = ((i >> 8) as u8) | ((negative as u8) << 3);
            b[32 + 2 * ib + l / 2] |= nib << (4 * (l % 2));
        }
        for k in 0..4 {
            // Two sub-blocks' four 3-bit scales, and nibble k of the f16 scale on top.
            let c = |ib: usize, half: usize| codes[2 * ib + half] as u16;
            let (i0, i1) = (2 * k, 2 * k + 1);
            let w = c(i0, 0) | (c(i0, 1) << 3) | (c(i1, 0) << 6) | (c(i1, 1) << 9) | (((h >> (4 * k)) & 0xF) << 12);
            b[48 + 2 * k..50 + 2 * k].copy_from_slice(&w.to_le_bytes());
        }
    }
}
