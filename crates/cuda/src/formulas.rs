//! The per-element index arithmetic of the CUDA dequantize kernels, transcribed line
//! for line into Rust and checked against `quant::dequantize_row` on random blocks of
//! every format. The GPU check binary tests the kernels themselves; this catches a
//! wrong index on a machine without a GPU.

use quant::tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS, KVALUES_FP4, KVALUES_IQ4NL,
};
use quant::GgmlType;

fn ldh(b: &[u8], o: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32()
}

fn ldu32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn scale_min_k4(q: &[u8], is: usize) -> (i32, i32) {
    if is < 4 {
        ((q[is] & 63) as i32, (q[is + 4] & 63) as i32)
    } else {
        (((q[is + 4] & 15) | ((q[is - 4] >> 6) << 4)) as i32, ((q[is + 4] >> 4) | ((q[is] >> 6) << 4)) as i32)
    }
}

/// Nibble `j` of a 32-element group packed in 16 bytes (`nib32`).
fn nib32(qs: &[u8], j: usize) -> usize {
    (if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 }) as usize
}

fn e8m0_half(e: u8) -> f32 {
    f32::from_bits(if e < 2 { 0x0020_0000 << e } else { (e as u32 - 1) << 23 })
}

fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let (e, m) = (((x >> 3) & 15) as i32, (x & 7) as f32);
    let raw = if e == 0 { m * (1.0 / 512.0) } else { (1.0 + m / 8.0) * f32::from_bits(((e + 120) as u32) << 23) };
    raw * 0.5
}

fn gsign(signs: u8, k: usize) -> f32 {
    if (signs >> k) & 1 != 0 {
        -1.0
    } else {
        1.0
    }
}

fn gbyte(e: u64, k: usize) -> f32 {
    ((e >> (8 * k)) & 255) as f32
}

fn g1(idx: usize, k: usize) -> f32 {
    ((IQ1S_GRID[idx] >> (8 * k)) & 255) as u8 as i8 as f32
}

/// Element `j` of block `b`, as the kernel for `ty` computes it (before rounding to f16).
fn element(ty: GgmlType, b: &[u8], j: usize) -> f32 {
    use GgmlType::*;
    match ty {
        F32 => f32::from_bits(ldu32(b, 0)),
        BF16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
        F16 => ldh(b, 0),
        Q4_0 => {
            let q = if j < 16 { b[2 + j] & 15 } else { b[2 + j - 16] >> 4 } as i32;
            (q - 8) as f32 * ldh(b, 0)
        }
        Q4_1 => {
            let q = if j < 16 { b[4 + j] & 15 } else { b[4 + j - 16] >> 4 } as i32;
            q as f32 * ldh(b, 0) + ldh(b, 2)
        }
        Q5_0 | Q5_1 => {
            let (qh_at, qs_at) = if ty == Q5_0 { (2, 6) } else { (4, 8) };
            let (qh, l) = (ldu32(b, qh_at), j & 15);
            let q = if j < 16 {
                (b[qs_at + l] as u32 & 15) | ((qh >> l) << 4) & 0x10
            } else {
                (b[qs_at + l] as u32 >> 4) | ((qh >> (l + 12)) & 0x10)
            } as i32;
            if ty == Q5_0 {
                (q - 16) as f32 * ldh(b, 0)
            } else {
                q as f32 * ldh(b, 0) + ldh(b, 2)
            }
        }
        Q8_0 => b[2 + j] as i8 as f32 * ldh(b, 0),
        Q2_K => {
            let (h, r) = (j >> 7, j & 127);
            let (s, part, l) = (r >> 5, (r >> 4) & 1, r & 15);
            let sc = b[h * 8 + s * 2 + part];
            let q = (b[16 + 32 * h + l + 16 * part] >> (2 * s)) & 3;
            ldh(b, 80) * (sc & 15) as f32 * q as f32 - ldh(b, 82) * (sc >> 4) as f32
        }
        Q3_K => {
            let (h, r) = (j >> 7, j & 127);
            let (s, part, l) = (r >> 5, (r >> 4) & 1, r & 31);
            let is = h * 8 + s * 2 + part;
            let lo = ((b[96 + (is & 7)] >> (4 * (is >> 3))) & 15) as i32;
            let hi = ((b[104 + (is & 3)] >> (2 * (is >> 2))) & 3) as i32;
            let q = ((b[32 + 32 * h + l] >> (2 * s)) & 3) as i32 - if b[l] & (1 << (4 * h + s)) != 0 { 0 } else { 4 };
            ldh(b, 108) * ((lo | (hi << 4)) - 32) as f32 * q as f32
        }
        Q4_K | Q5_K => {
            let (jj, hi, l) = (j >> 6, (j >> 5) & 1, j & 31);
            let (sc, m) = scale_min_k4(&b[4..16], 2 * jj + hi);
            let qs_at = if ty == Q4_K { 16 } else { 48 };
            let x = b[qs_at + 32 * jj + l];
            let mut q = if hi == 1 { x >> 4 } else { x & 15 } as i32;
            if ty == Q5_K {
                q += (((b[16 + l] >> (2 * jj + hi)) & 1) as i32) << 4;
            }
            ldh(b, 0) * sc as f32 * q as f32 - ldh(b, 2) * m as f32
        }
        Q6_K => {
            let (h, qt, l) = (j >> 7, (j >> 5) & 3, j & 31);
            let x = b[64 * h + l + 32 * (qt & 1)];
            let q = ((if qt >= 2 { x >> 4 } else { x & 15 }) | (((b[128 + 32 * h + l] >> (2 * qt)) & 3) << 4)) as i32 - 32;
            ldh(b, 208) * (b[192 + 8 * h + (l >> 4) + 2 * qt] as i8 as f32) * q as f32
        }
        IQ4_NL => ldh(b, 0) * KVALUES_IQ4NL[nib32(&b[2..], j)] as f32,
        MXFP4 => e8m0_half(b[0]) * KVALUES_FP4[nib32(&b[1..], j)] as f32,
        IQ4_XS => {
            let ib = j >> 5;
            let h = u16::from_le_bytes([b[2], b[3]]) as i32;
            let ls = ((b[4 + (ib >> 1)] as i32 >> (4 * (ib & 1))) & 15) | (((h >> (2 * ib)) & 3) << 4);
            ldh(b, 0) * (ls - 32) as f32 * KVALUES_IQ4NL[nib32(&b[8 + 16 * ib..], j & 31)] as f32
        }
        NVFP4 => {
            let (sb, l) = (j >> 4, j & 15);
            let x = b[4 + 8 * sb + (l & 7)];
            ue4m3_half(b[sb]) * KVALUES_FP4[if l < 8 { x & 15 } else { x >> 4 } as usize] as f32
        }
        Q1_0 => {
            if (b[2 + (j >> 3)] >> (j & 7)) & 1 != 0 {
                ldh(b, 0)
            } else {
                -ldh(b, 0)
            }
        }
        Q2_0 => (((b[2 + (j >> 2)] >> (2 * (j & 3))) & 3) as i32 - 1) as f32 * ldh(b, 0),
        TQ1_0 => {
            let (i, n) = if j < 160 {
                (j & 31, j >> 5)
            } else if j < 240 {
                (32 + ((j - 160) & 15), (j - 160) >> 4)
            } else {
                (48 + ((j - 240) & 3), (j - 240) >> 2)
            };
            let t = ((b[i].wrapping_mul([1u8, 3, 9, 27, 81][n]) as i32) * 3) >> 8;
            (t - 1) as f32 * ldh(b, 52)
        }
        TQ2_0 => ((((b[32 * (j >> 7) + (j & 31)] >> (2 * ((j >> 5) & 3))) & 3) as i32 - 1) as f32) * ldh(b, 64),
        IQ2_XXS => {
            let (ib, l, k) = (j >> 5, (j >> 3) & 3, j & 7);
            let aux = ldu32(b, 6 + 8 * ib);
            let db = ldh(b, 0) * (0.5 + (aux >> 28) as f32) * 0.25;
            db * gbyte(IQ2XXS_GRID[b[2 + 8 * ib + l] as usize], k) * gsign(KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize], k)
        }
        IQ2_XS => {
            let (ib, l, k) = (j >> 5, (j >> 3) & 3, j & 7);
            let q = b[2 + 8 * ib + 2 * l] as usize | ((b[3 + 8 * ib + 2 * l] as usize) << 8);
            let db = ldh(b, 0) * (0.5 + ((b[66 + ib] >> (4 * (l >> 1))) & 15) as f32) * 0.25;
            db * gbyte(IQ2XS_GRID[q & 511], k) * gsign(KSIGNS_IQ2XS[q >> 9], k)
        }
        IQ2_S => {
            let (ib, l, k) = (j >> 5, (j >> 3) & 3, j & 7);
            let idx = b[2 + 4 * ib + l] as usize | (((b[66 + ib] as usize) << (8 - 2 * l)) & 0x300);
            let db = ldh(b, 0) * (0.5 + ((b[74 + ib] >> (4 * (l >> 1))) & 15) as f32) * 0.25;
            db * gbyte(IQ2S_GRID[idx], k) * gsign(b[34 + 4 * ib + l], k)
        }
        IQ3_XXS => {
            let (ib, g) = (j >> 5, (j >> 2) & 7);
            let aux = ldu32(b, 66 + 4 * ib);
            let db = ldh(b, 0) * (0.5 + (aux >> 28) as f32) * 0.5;
            db * gbyte(IQ3XXS_GRID[b[2 + 8 * ib + g] as usize], j & 3) * gsign(KSIGNS_IQ2XS[((aux >> (7 * (g >> 1))) & 127) as usize], j & 7)
        }
        IQ3_S => {
            let (ib, g) = (j >> 5, (j >> 2) & 7);
            let idx = b[2 + 8 * ib + g] as usize | (((b[66 + ib] as usize) << (8 - g)) & 256);
            let db = ldh(b, 0) * (1 + 2 * ((b[106 + (ib >> 1)] >> (4 * (ib & 1))) & 15) as i32) as f32;
            db * gbyte(IQ3S_GRID[idx], j & 3) * gsign(b[74 + 4 * ib + (g >> 1)], j & 7)
        }
        IQ1_S => {
            let (ib, l) = (j >> 5, (j >> 3) & 3);
            let qh = b[34 + 2 * ib] as usize | ((b[35 + 2 * ib] as usize) << 8);
            let idx = b[2 + 4 * ib + l] as usize | (((qh >> (3 * l)) & 7) << 8);
            let dl = ldh(b, 0) * (2 * ((qh >> 12) & 7) + 1) as f32;
            dl * (g1(idx, j & 7) + if qh & 0x8000 != 0 { -0.125 } else { 0.125 })
        }
        IQ1_M => {
            let (ib, l) = (j >> 5, (j >> 3) & 3);
            let h = (b[49] >> 4) as u16 | (b[51] & 0xF0) as u16 | (((b[53] >> 4) as u16) << 8) | (((b[55] & 0xF0) as u16) << 8);
            let sc = b[48 + 2 * (ib >> 1)] as usize | ((b[49 + 2 * (ib >> 1)] as usize) << 8);
            let dl = half::f16::from_bits(h).to_f32() * (2 * ((sc >> (6 * (ib & 1) + 3 * (l >> 1))) & 7) + 1) as f32;
            let qh = b[32 + 2 * ib + (l >> 1)] as usize;
            let nib = if l & 1 == 1 { qh >> 4 } else { qh & 15 };
            let idx = b[4 * ib + l] as usize | ((nib & 7) << 8);
            dl * (g1(idx, j & 7) + if nib & 8 != 0 { -0.125 } else { 0.125 })
        }
        Q8_1 | Q8_K => unreachable!("not weight formats"),
    }
}

#[test]
fn kernel_index_arithmetic_matches_the_scalar_dequantizers() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for ty in GgmlType::ALL.into_iter().filter(|t| !matches!(t, GgmlType::Q8_1 | GgmlType::Q8_K)) {
        let (bs, bb) = (ty.block_size(), ty.block_bytes());
        let nblocks = 64usize.div_ceil(bs) * 4;
        // Quantized random values give valid scales; random bytes on top give every bit pattern of the quants.
        let vals: Vec<f32> = (0..nblocks * bs).map(|_| (rnd() % 2001) as f32 / 1000.0 - 1.0).collect();
        let mut bytes = vec![0u8; nblocks * bb];
        quant::quantize_row(ty, &vals, &mut bytes).unwrap();
        if bs > 1 {
            for blk in bytes.chunks_exact_mut(bb).skip(1) {
                // Keep the f16 scale fields finite: scramble only the quants and sub-scales.
                use GgmlType::*;
                let scales: &[usize] = match ty {
                    Q2_K => &[80, 81, 82, 83],
                    Q3_K => &[108, 109],
                    Q6_K => &[208, 209],
                    Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS | Q1_0 | Q2_0 => &[0, 1],
                    IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ1_S => &[0, 1],
                    TQ1_0 => &[52, 53],
                    TQ2_0 => &[64, 65],
                    MXFP4 => &[0],
                    NVFP4 => &[],
                    // The f16 scale lives in the top nibbles of bytes 49, 51, 53, 55.
                    IQ1_M => &[49, 51, 53, 55],
                    _ => &[0, 1, 2, 3],
                };
                for (i, v) in blk.iter_mut().enumerate() {
                    if !scales.contains(&i) {
                        *v = rnd() as u8;
                    }
                }
            }
        }
        let mut want = vec![0f32; nblocks * bs];
        quant::dequantize_row(ty, &bytes, &mut want).unwrap();
        for (i, w) in want.iter().enumerate() {
            let got = element(ty, &bytes[(i / bs) * bb..(i / bs + 1) * bb], i % bs);
            assert!((got - w).abs() <= 1e-5 * w.abs().max(1e-3), "{} element {i}: kernel {got} vs scalar {w}", ty.name());
        }
    }
}

/// One lane's terms of the common formats' matrix-vector kernels (`mv_q4_k`, `mv_q6_k`,
/// `mv_q8_0`), transcribed: `(element index in the row, weight value)` for every element the
/// lane reads, with the value built the kernel's way (scales folded per sub-block).
fn mv_lane_terms(ty: GgmlType, row: &[u8], cols: usize, lane: usize) -> Vec<(usize, f32)> {
    let mut out = Vec::new();
    match ty {
        GgmlType::Q4_K => {
            let (jj, l) = (lane >> 3, 4 * (lane & 7));
            for ib in 0..cols / 256 {
                let b = &row[ib * 144..];
                let ((sc0, m0), (sc1, m1)) = (scale_min_k4(&b[4..], 2 * jj), scale_min_k4(&b[4..], 2 * jj + 1));
                let (d, dmin) = (ldh(b, 0), ldh(b, 2));
                let q = ldu32(b, 16 + 4 * lane);
                let e = ib * 256 + 64 * jj + l;
                for k in 0..4 {
                    out.push((e + k, d * sc0 as f32 * ((q >> (8 * k)) & 15) as f32 - dmin * m0 as f32));
                    out.push((e + 32 + k, d * sc1 as f32 * ((q >> (8 * k + 4)) & 15) as f32 - dmin * m1 as f32));
                }
            }
        }
        GgmlType::Q6_K => {
            let (h, l) = (lane >> 4, 2 * (lane & 15));
            for ib in 0..cols / 256 {
                let b = &row[ib * 210..];
                let d = ldh(b, 208);
                for e in 0..2 {
                    let (xa, xb, hb) = (b[64 * h + l + e] as i32, b[64 * h + l + 32 + e] as i32, b[128 + 32 * h + l + e] as i32);
                    let q = [(xa & 15) | ((hb & 3) << 4), (xb & 15) | (((hb >> 2) & 3) << 4), (xa >> 4) | (((hb >> 4) & 3) << 4), (xb >> 4) | (((hb >> 6) & 3) << 4)];
                    for (qt, q) in q.iter().enumerate() {
                        let sc = d * b[192 + 8 * h + (l >> 4) + 2 * qt] as i8 as f32;
                        out.push((ib * 256 + 128 * h + 32 * qt + l + e, sc * (q - 32) as f32));
                    }
                }
            }
        }
        GgmlType::Q8_0 => {
            let o = 8 * (lane & 3);
            for ib in (lane >> 2..cols / 32).step_by(8) {
                let b = &row[ib * 34..];
                for k in 0..8 {
                    out.push((ib * 32 + o + k, ldh(b, 0) * b[2 + o + k] as i8 as f32));
                }
            }
        }
        _ => unreachable!("no own kernel"),
    }
    out
}

/// The 32 lanes of each common format's own matrix-vector kernel read every element of a
/// row exactly once, with the value the scalar dequantizer gives.
#[test]
fn matrix_vector_lanes_cover_every_element_once() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0] {
        assert!(crate::kernels::gemv_kernel(ty).is_some_and(|k| k.starts_with("mv_")), "{}", ty.name());
        let cols = 256 * 3;
        let vals: Vec<f32> = (0..cols)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 33) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let mut row = vec![0u8; ty.bytes_for(cols as u64).unwrap() as usize];
        quant::quantize_row(ty, &vals, &mut row).unwrap();
        let mut want = vec![0f32; cols];
        quant::dequantize_row(ty, &row, &mut want).unwrap();
        let mut seen = vec![0u32; cols];
        for lane in 0..32 {
            for (i, v) in mv_lane_terms(ty, &row, cols, lane) {
                seen[i] += 1;
                assert!((v - want[i]).abs() <= 1e-5 * want[i].abs().max(1e-3), "{} element {i}: lane {lane} reads {v}, scalar {}", ty.name(), want[i]);
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{}: elements read {:?} times", ty.name(), seen.iter().filter(|&&c| c != 1).count());
    }
}

/// `quantize_q8_32` transcribed: per 32 elements the i8 values and their f32 scale.
fn quantize_q8_32(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / 32];
    for (b, blk) in x.chunks_exact(32).enumerate() {
        let s = blk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        d[b] = s;
        for (i, v) in blk.iter().enumerate() {
            q[b * 32 + i] = if s > 0.0 { (v / s).round_ties_even() as i8 } else { 0 };
        }
    }
    (q, d)
}

/// Uniform values in [-1, 1] from a seeded LCG.
fn lcg(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) % 2001) as f32 / 1000.0 - 1.0
    }
}

/// A random row of `ty` against random tokens (times `x_scale`) in `quantize_q8_32`'s form:
/// what a dp4a kernel's lanes read, the dot they must give (the dequantized weights times
/// `d * q` of each activation), the sum of its terms' sizes (the tolerance's scale) and the
/// dot with the unquantized tokens.
struct Dp4aCase {
    row: Vec<u8>,
    xq: Vec<i8>,
    xd: Vec<f32>,
    want: f64,
    scale: f64,
    exact: f64,
}

fn dp4a_case(ty: GgmlType, cols: usize, x_scale: f32, rnd: &mut impl FnMut() -> f32) -> Dp4aCase {
    let vals: Vec<f32> = (0..cols).map(|_| rnd()).collect();
    let mut row = vec![0u8; ty.bytes_for(cols as u64).unwrap() as usize];
    quant::quantize_row(ty, &vals, &mut row).unwrap();
    let mut w = vec![0f32; cols];
    quant::dequantize_row(ty, &row, &mut w).unwrap();
    let x: Vec<f32> = (0..cols).map(|_| x_scale * rnd()).collect();
    let (xq, xd) = quantize_q8_32(&x);
    let term = |i: usize| w[i] as f64 * (xd[i / 32] * xq[i] as f32) as f64;
    let want = (0..cols).map(term).sum();
    let scale = (0..cols).map(|i| term(i).abs()).sum();
    let exact = (0..cols).map(|i| w[i] as f64 * x[i] as f64).sum();
    Dp4aCase { row, xq, xd, want, scale, exact }
}

/// The sum over every lane of every one of a row's `s` warps of `lane_sum(part, lane)`.
fn all_lanes(s: usize, lane_sum: impl Fn(usize, usize) -> f32) -> f64 {
    (0..s).flat_map(|p| (0..32).map(move |lane| (p, lane))).map(|(p, lane)| lane_sum(p, lane) as f64).sum()
}

/// One Q4_K block's share of a dp4a lane's sum: sub-blocks 2j and 2j+1, their scales and
/// mins read from the block's 16-byte header `hd` as `scale_min_k4_reg` reads them (bytes 4..
/// scales, 8.. the rest), each with the lane's integer dot and activation sum, times its
/// activation scale (`xd`: the two sub-blocks').
fn q4k_term(hd: &[u8], j: usize, (xd, (dot0, sum0), (dot1, sum1)): (&[f32], (i32, i32), (i32, i32))) -> f32 {
    let byte = |k: usize| hd[k] as i32;
    let scale_min = |is: usize| {
        if is < 4 {
            (byte(4 + is) & 63, byte(8 + is) & 63)
        } else {
            ((byte(8 + is) & 15) | ((byte(is) >> 6) << 4), (byte(8 + is) >> 4) | ((byte(4 + is) >> 6) << 4))
        }
    };
    let ((sc0, m0), (sc1, m1)) = (scale_min(2 * j), scale_min(2 * j + 1));
    let (d, dmin) = (ldh(hd, 0), ldh(hd, 2));
    xd[0] * (d * sc0 as f32 * dot0 as f32 - dmin * m0 as f32 * sum0 as f32) + xd[1] * (d * sc1 as f32 * dot1 as f32 - dmin * m1 as f32 * sum1 as f32)
}

/// `mv_q4_k_q8_rows<S>` transcribed, one lane of warp `part` of the row's `s`: its blocks'
/// header bytes read as `scale_min_k4_reg` reads them (bytes 4.. scales, 8.. the rest),
/// integer dots of nibbles and activation bytes; groups of MV_Q4K_UNROLL (4) blocks dealt out
/// to the row's warps in turn.
fn mv_q4_k_q8_lane(row: &[u8], xq: &[i8], xd: &[f32], cols: usize, (part, s): (usize, usize), lane: usize) -> f32 {
    let (jj, l) = (lane >> 3, 4 * (lane & 7));
    let dp4a = |a: u32, b: &[i8]| (0..4).map(|k| ((a >> (8 * k)) & 0xFF) as i8 as i32 * b[k] as i32).sum::<i32>();
    let mut acc = 0f32;
    let blocks = (part * 4..cols / 256).step_by(4 * s).flat_map(|ib0| ib0..(ib0 + 4).min(cols / 256));
    for ib in blocks {
        let q = ldu32(row, ib * 144 + 16 + 4 * lane);
        let (lo, hi) = (q & 0x0F0F_0F0F, (q >> 4) & 0x0F0F_0F0F);
        let (e, sb) = (ib * 256 + 64 * jj + l, ib * 8 + 2 * jj);
        let (a0, a1) = (&xq[e..e + 4], &xq[e + 32..e + 36]);
        let (dot0, dot1, sum0, sum1) = (dp4a(lo, a0), dp4a(hi, a1), dp4a(0x0101_0101, a0), dp4a(0x0101_0101, a1));
        acc += q4k_term(&row[ib * 144..ib * 144 + 16], jj, (&xd[sb..sb + 2], (dot0, sum0), (dot1, sum1)));
    }
    acc
}

/// The dp4a Q4_K kernel's lanes together give the row's dot with the 8-bit tokens (the
/// dequantized weights times `d * q` of each activation), to float rounding.
#[test]
fn dp4a_q4_k_lanes_sum_to_the_dot_with_the_quantized_tokens() {
    let mut rnd = lcg(0x2545_f491_4f6c_dd1d);
    for (cols, s) in [(256 * 5, 1), (256 * 5, 2), (256 * 16, 4), (256 * 13, 4), (256 * 3, 4)] {
        let Dp4aCase { row, xq, xd, want, scale, exact } = dp4a_case(GgmlType::Q4_K, cols, 3.0, &mut rnd);
        // Every lane of every warp of the row: each block counted once.
        let got = all_lanes(s, |p, lane| mv_q4_k_q8_lane(&row, &xq, &xd, cols, (p, s), lane));
        assert!((got - want).abs() <= 1e-5 * scale, "cols {cols}, {s} warps: {got} vs {want} (scale {scale})");
        // And close to the unquantized tokens' dot (8-bit activations: about 1% of the scale).
        assert!((got - exact).abs() <= 2e-2 * scale, "{got} vs {exact}");
    }
}

/// `mv_q4_k_q8w_rows<S>` transcribed, one lane of warp `part` of the row's `s`: 16 quant
/// bytes of one block of each group of four, groups dealt out to the warps two at a time.
fn mv_q4_k_q8w_lane(row: &[u8], xq: &[i8], xd: &[f32], cols: usize, (part, s): (usize, usize), lane: usize) -> f32 {
    const UNROLL: usize = 2;
    let (sub, nb) = (lane & 7, cols / 256);
    let (j, h, groups) = (sub >> 1, sub & 1, nb.div_ceil(4));
    let dp4a = |a: u32, b: &[i8]| (0..4).map(|k| ((a >> (8 * k)) & 0xFF) as i8 as i32 * b[k] as i32).sum::<i32>();
    // Four words of quants (masked) against 16 activation bytes.
    let dp4a_x4 = |at: usize, mask: &dyn Fn(u32) -> u32, a: &[i8]| (0..4).map(|k| dp4a(mask(ldu32(row, at + 4 * k)), &a[4 * k..4 * k + 4])).sum::<i32>();
    let mut acc = 0f32;
    let group_starts = (part * UNROLL..groups).step_by(s * UNROLL);
    for ib in group_starts.flat_map(|g0| (g0..g0 + UNROLL).map(|g| 4 * g + (lane >> 3))).filter(|&ib| ib < nb) {
        let at = ib * 144 + 16 + 16 * sub;
        let (e, sb) = (ib * 256 + 64 * j + 16 * h, ib * 8 + 2 * j);
        let (a0, a1) = (&xq[e..e + 16], &xq[e + 32..e + 48]);
        let (dot0, dot1) = (dp4a_x4(at, &|q| q & 0x0F0F_0F0F, a0), dp4a_x4(at, &|q| (q >> 4) & 0x0F0F_0F0F, a1));
        let (sum0, sum1) = (a0.iter().map(|&v| v as i32).sum::<i32>(), a1.iter().map(|&v| v as i32).sum::<i32>());
        acc += q4k_term(&row[ib * 144..ib * 144 + 16], j, (&xd[sb..sb + 2], (dot0, sum0), (dot1, sum1)));
    }
    acc
}

/// The wide dp4a Q4_K kernel's lanes together give the row's dot with the 8-bit tokens,
/// ragged groups (blocks not a multiple of four) and warps left without a group included.
#[test]
fn dp4a_q4_k_wide_lanes_sum_to_the_dot_with_the_quantized_tokens() {
    let mut rnd = lcg(0x3c6e_f372_fe94_f82b);
    for (cols, s) in [(256, 1), (256 * 5, 1), (256 * 16, 1), (256 * 16, 2), (256 * 16, 4), (256 * 56, 4), (256 * 13, 2), (256 * 3, 4)] {
        let Dp4aCase { row, xq, xd, want, scale, exact } = dp4a_case(GgmlType::Q4_K, cols, 3.0, &mut rnd);
        let got = all_lanes(s, |p, lane| mv_q4_k_q8w_lane(&row, &xq, &xd, cols, (p, s), lane));
        assert!((got - want).abs() <= 1e-5 * scale, "cols {cols}, {s} warps: {got} vs {want} (scale {scale})");
        assert!((got - exact).abs() <= 2e-2 * scale, "{got} vs {exact}");
    }
}

/// `mv_q8_0_q8_rows<S>` transcribed, one lane of warp `part` of the row's `s`.
fn mv_q8_0_q8_lane(row: &[u8], xq: &[i8], xd: &[f32], cols: usize, (part, s): (usize, usize), lane: usize) -> f32 {
    let (nb, o) = (cols / 32, 8 * (lane & 3));
    let dp4a = |a: u32, b: &[i8]| (0..4).map(|k| ((a >> (8 * k)) & 0xFF) as i8 as i32 * b[k] as i32).sum::<i32>();
    let mut acc = 0f32;
    for ib in (part * 8 + (lane >> 2)..nb).step_by(8 * s) {
        let b = &row[ib * 34..];
        let u16at = |k: usize| u16::from_le_bytes([b[2 + o + 2 * k], b[3 + o + 2 * k]]) as u32;
        let (w0, w1) = (u16at(0) | (u16at(1) << 16), u16at(2) | (u16at(3) << 16));
        let a = &xq[ib * 32 + o..ib * 32 + o + 8];
        acc += ldh(b, 0) * xd[ib] * (dp4a(w0, &a[..4]) + dp4a(w1, &a[4..])) as f32;
    }
    acc
}

/// The dp4a Q8_0 kernel's lanes together give the row's dot with the 8-bit tokens.
#[test]
fn dp4a_q8_0_lanes_sum_to_the_dot_with_the_quantized_tokens() {
    let mut rnd = lcg(0x6a09_e667_f3bc_c908);
    for (cols, s) in [(32, 1), (32 * 9, 1), (32 * 37, 1), (32 * 9, 2), (32 * 37, 4), (32 * 3, 4)] {
        let Dp4aCase { row, xq, xd, want, scale, .. } = dp4a_case(GgmlType::Q8_0, cols, 2.0, &mut rnd);
        let got = all_lanes(s, |p, lane| mv_q8_0_q8_lane(&row, &xq, &xd, cols, (p, s), lane));
        assert!((got - want).abs() <= 1e-5 * scale, "cols {cols}, {s} warps: {got} vs {want} (scale {scale})");
    }
}

/// `mv_q6_k_q8` transcribed, one lane.
fn mv_q6_k_q8_lane(row: &[u8], xq: &[i8], xd: &[f32], cols: usize, lane: usize) -> f32 {
    let (nb, h, l0) = (cols / 256, (lane >> 3) & 1, 4 * (lane & 7));
    let dp4a = |a: u32, b: &[i8]| (0..4).map(|k| ((a >> (8 * k)) & 0xFF) as i8 as i32 * b[k] as i32).sum::<i32>();
    let mut acc = 0f32;
    for ib in (lane >> 4..nb).step_by(2) {
        let b = &row[ib * 210..];
        let d = ldh(b, 208);
        let (qa, qb, qh) = (ldu32(b, 64 * h + l0), ldu32(b, 64 * h + l0 + 32), ldu32(b, 128 + 32 * h + l0));
        let v = [
            (qa & 0x0F0F_0F0F) | ((qh & 0x0303_0303) << 4),
            (qb & 0x0F0F_0F0F) | (((qh >> 2) & 0x0303_0303) << 4),
            ((qa >> 4) & 0x0F0F_0F0F) | (((qh >> 4) & 0x0303_0303) << 4),
            ((qb >> 4) & 0x0F0F_0F0F) | (((qh >> 6) & 0x0303_0303) << 4),
        ];
        let (e, sb) = (ib * 256 + 128 * h + l0, ib * 8 + 4 * h);
        for (qt, &vq) in v.iter().enumerate() {
            let sc = d * b[192 + 8 * h + 2 * qt + (l0 >> 4)] as i8 as f32;
            let a = &xq[e + 32 * qt..e + 32 * qt + 4];
            acc += xd[sb + qt] * sc * (dp4a(vq, a) - 32 * dp4a(0x0101_0101, a)) as f32;
        }
    }
    acc
}

/// The dp4a Q6_K kernel's lanes together give the row's dot with the 8-bit tokens.
#[test]
fn dp4a_q6_k_lanes_sum_to_the_dot_with_the_quantized_tokens() {
    let mut rnd = lcg(0xbb67_ae85_84ca_a73b);
    for cols in [256, 256 * 3, 256 * 6] {
        let Dp4aCase { row, xq, xd, want, scale, .. } = dp4a_case(GgmlType::Q6_K, cols, 2.0, &mut rnd);
        let got = all_lanes(1, |_, lane| mv_q6_k_q8_lane(&row, &xq, &xd, cols, lane));
        assert!((got - want).abs() <= 1e-5 * scale, "cols {cols}: {got} vs {want} (scale {scale})");
    }
}
