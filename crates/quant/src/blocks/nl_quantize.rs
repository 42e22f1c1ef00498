//! Quantizers of the 4-bit codebook formats: `quantize_row_iq4_nl_ref`,
//! `quantize_row_iq4_xs_ref` (both `quantize_row_iq4_nl_impl` without importance
//! weights), `quantize_row_mxfp4_ref` and `quantize_row_nvfp4_ref`, operation for operation.

use super::k_quants::QK_K;
use super::legacy::signed_absmax;
use super::nonlinear::{e8m0_half, ue4m3_half};
use crate::tables::{KVALUES_FP4, KVALUES_IQ4NL};
use crate::util::{f32_to_f16_bits, nearest_int};

const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `best_index_int8`: the index of the table value nearest `x` (ties go up).
fn best_index_int8(values: &[i8; 16], x: f32) -> usize {
    let v = |i: usize| values[i] as f32;
    if x <= v(0) {
        return 0;
    }
    if x >= v(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0, 15);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v(mav) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - v(mu - 1) < v(mu) - x {
        mu - 1
    } else {
        mu
    }
}

/// `best_index_mxfp4`: the first FP4 value `v` with the least `|v * e - x|`.
fn best_index_fp4(x: f32, e: f32) -> u8 {
    let mut best = 0;
    let mut best_err = (KVALUES_FP4[0] as f32 * e - x).abs();
    for (i, &v) in KVALUES_FP4.iter().enumerate().skip(1) {
        let err = (v as f32 * e - x).abs();
        if err < best_err {
            best = i;
            best_err = err;
        }
    }
    best as u8
}

/// What `quantize_row_iq4_nl_impl` produces for one super-block of `x.len()` elements
/// (32 or 256): the f16 scale, the sub-block scales (IQ4_XS), the packed nibbles.
struct Iq4 {
    d: u16,
    scales_h: u16,
    scales_l: [u8; 4],
    qs: [u8; QK_K / 2],
}

/// Sums of `w*q*x` and `w*q*q` (weights `x^2`) for the indices the scale `id` picks.
fn sums(xb: &[f32], id: f32, mut pick: impl FnMut(usize, usize)) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for (j, &x) in xb.iter().enumerate() {
        let l = best_index_int8(&KVALUES_IQ4NL, id * x);
        pick(j, l);
        let (q, w) = (KVALUES_IQ4NL[l] as f32, x * x);
        sumqx += w * q * x;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// `quantize_row_iq4_nl_impl(.., quant_weights = NULL, ntry)` for block size 32.
fn iq4_impl(x: &[f32], ntry: i32) -> Iq4 {
    let nsb = x.len() / 32;
    let v0 = KVALUES_IQ4NL[0] as f32;
    // ggml leaves an all-zero block's indices as the previous block left them; we write
    // the index nearest 0 (whatever the index, the scale is 0).
    let mut l_all = [best_index_int8(&KVALUES_IQ4NL, 0.0) as u8; QK_K];
    let mut scales = [0f32; QK_K / 32];
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for ib in 0..nsb {
        let xb = &x[32 * ib..32 * ib + 32];
        let lb = &mut l_all[32 * ib..32 * ib + 32];
        let max = signed_absmax(xb);
        let amax = max.abs();
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let d0 = if ntry > 0 { -max / v0 } else { max / v0 };
        let (sumqx, sumq2) = sums(xb, 1.0 / d0, |j, l| lb[j] = l as u8);
        let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            let id = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
            let (sumqx, sumq2) = sums(xb, id, |_, _| {});
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let mut out = Iq4 { d: 0, scales_h: 0, scales_l: [0; 4], qs: [0; QK_K / 2] };
    if nsb > 1 {
        let d = -max_scale / 32.0;
        out.d = f32_to_f16_bits(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nsb {
            let l = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for j in 0..32 {
                l_all[32 * ib + j] = best_index_int8(&KVALUES_IQ4NL, idl * x[32 * ib + j]) as u8;
            }
            let l = (l + 32) as u8;
            out.scales_l[ib / 2] |= (l & 0xF) << (4 * (ib % 2));
            out.scales_h |= ((l >> 4) as u16) << (2 * (ib % 8));
        }
    } else {
        out.d = f32_to_f16_bits(scales[0]);
        if ntry > 0 {
            let id = if scales[0] != 0.0 { 1.0 / scales[0] } else { 0.0 };
            for (l, &v) in l_all.iter_mut().zip(x) {
                *l = best_index_int8(&KVALUES_IQ4NL, id * v) as u8;
            }
        }
    }
    for i in 0..nsb {
        for j in 0..16 {
            out.qs[16 * i + j] = l_all[32 * i + j] | (l_all[32 * i + 16 + j] << 4);
        }
    }
    out
}

pub(crate) fn quant_iq4_nl(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        // The reference passes ntry = -1: the first estimate, no search.
        let q = iq4_impl(x, -1);
        b[0..2].copy_from_slice(&q.d.to_le_bytes());
        b[2..18].copy_from_slice(&q.qs[..16]);
    }
}

pub(crate) fn quant_iq4_xs(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(136)) {
        let q = iq4_impl(x, 7);
        b[0..2].copy_from_slice(&q.d.to_le_bytes());
        b[2..4].copy_from_slice(&q.scales_h.to_le_bytes());
        b[4..8].copy_from_slice(&q.scales_l);
        b[8..136].copy_from_slice(&q.qs);
    }
}

pub(crate) fn quant_mxfp4(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(17)) {
        let amax = x.iter().fold(0f32, |m, v| if m < v.abs() { v.abs() } else { m });
        // floorf(log2f(amax)) - 2 + 127 in float, then (uint8_t); same libm log2f.
        let e = if amax > 0.0 { (amax.log2().floor() - 2.0 + 127.0) as u8 } else { 0 };
        let d = e8m0_half(e);
        b[0] = e;
        for j in 0..16 {
            b[1 + j] = best_index_fp4(x[j], d) | (best_index_fp4(x[j + 16], d) << 4);
        }
    }
}

/// `ggml_fp32_to_ue4m3`: round to nearest (ties up) into 4 exponent and 3 mantissa bits,
/// saturating at 0x7E (448); non-positive values give 0.
fn f32_to_ue4m3(x: f32) -> u8 {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let x = x.min(448.0);
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xFF) as i32 - 127 + 7;
    if exp <= 0 {
        // Subnormal: man * 2^-9 (C's (int) truncation of x * 512 + 0.5).
        let man = ((x * 512.0 + 0.5) as i32).min(7);
        return if man < 1 { 0 } else { man as u8 };
    }
    if exp >= 15 {
        return 0x7E;
    }
    let man = ((bits >> 20) & 7) as i32 + ((bits >> 19) & 1) as i32;
    let (exp, man) = if man > 7 { (exp + 1, 0) } else { (exp, man) };
    if exp >= 15 {
        return 0x7E;
    }
    ((exp << 3) | man) as u8
}

pub(crate) fn quant_nvfp4(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(64).zip(dst.chunks_exact_mut(36)) {
        for s in 0..4 {
            let xb = &x[16 * s..16 * s + 16];
            let amax = xb.iter().fold(0f32, |m, v| if m < v.abs() { v.abs() } else { m });
            b[s] = f32_to_ue4m3(amax / 6.0);
            let d = ue4m3_half(b[s]);
            for j in 0..8 {
                b[4 + 8 * s + j] = best_index_fp4(xb[j], d) | (best_index_fp4(xb[j + 8], d) << 4);
            }
        }
    }
}
