//! aarch64 NEON kernels (baseline NEON only: no run-time detection needed).
//!
//! Each block's integer dot is reduced exactly (`vmull_s8` + pairwise widening adds,
//! then `vaddvq_s32`), and the float arithmetic per block is then done in the same
//! order as the scalar reference, so the legacy kernels give bit-identical results to
//! it; the K-quant ones combine a super-block's sub-block sums in integers first.

use std::arch::aarch64::*;

use crate::blocks::k_quants::scale_min_k4;
use crate::util::{rd_f16, rd_f32, rd_i16, rd_u32};
use crate::{DotFn, GgmlType};

/// This module has kernels (so the "neon" level is worth reporting).
pub(crate) const HAS_KERNELS: bool = true;

/// The NEON kernel for a weight type, if there is one.
pub(crate) fn kernel(ty: GgmlType) -> Option<DotFn> {
    use GgmlType::*;
    Some(match ty {
        F32 => dot_f32,
        Q4_0 => dot_q4_0,
        Q4_1 => dot_q4_1,
        Q5_0 => dot_q5_0,
        Q5_1 => dot_q5_1,
        Q8_0 => dot_q8_0,
        Q4_K => dot_q4_k,
        Q6_K => dot_q6_k,
        _ => return None,
    })
}

fn check(n: usize, w: &[u8], a: &[u8], qk: usize, wb: usize, ab: usize) -> usize {
    assert!(n.is_multiple_of(qk), "dot: n={n} not a multiple of {qk}");
    let nb = n / qk;
    assert!(w.len() == nb * wb && a.len() == nb * ab, "dot: bad lengths");
    nb
}

/// Sum of 16 i8*i8 products, widened into 4 i32 lanes.
#[inline(always)]
unsafe fn dot16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpaddlq_s16(lo), hi)
}

#[inline(always)]
unsafe fn ld(p: &[u8], off: usize) -> int8x16_t {
    assert!(off + 16 <= p.len());
    vld1q_s8(p.as_ptr().add(off) as *const i8)
}

/// The 32 quants of a 4-bit block at `qs`: (elements 0..16, elements 16..32), unsigned.
#[inline(always)]
unsafe fn nibbles(b: &[u8], qs: usize) -> (int8x16_t, int8x16_t) {
    let q = vreinterpretq_u8_s8(ld(b, qs));
    (
        vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))),
        vreinterpretq_s8_u8(vshrq_n_u8(q, 4)),
    )
}

/// The fifth bits of a Q5 block as 0x10 bytes: (elements 0..16, elements 16..32).
#[inline(always)]
unsafe fn fifth_bits(qh: u32) -> (int8x16_t, int8x16_t) {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let m = vld1q_u8(BITS.as_ptr());
    let b = qh.to_le_bytes();
    let lo = vcombine_u8(vdup_n_u8(b[0]), vdup_n_u8(b[1]));
    let hi = vcombine_u8(vdup_n_u8(b[2]), vdup_n_u8(b[3]));
    let t = vdupq_n_u8(0x10);
    (
        vreinterpretq_s8_u8(vandq_u8(vtstq_u8(lo, m), t)),
        vreinterpretq_s8_u8(vandq_u8(vtstq_u8(hi, m), t)),
    )
}

fn dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, a, 32, 34, 34);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        // SAFETY: NEON is baseline on aarch64; loads are within the 34-byte blocks.
        let sumi = unsafe {
            vaddvq_s32(vaddq_s32(
                dot16(ld(x, 2), ld(y, 2)),
                dot16(ld(x, 18), ld(y, 18)),
            ))
        };
        sumf += sumi as f32 * (rd_f16(x, 0) * rd_f16(y, 0));
    }
    sumf
}

fn dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, a, 32, 18, 34);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        // SAFETY: as above.
        let sumi = unsafe {
            let (lo, hi) = nibbles(x, 2);
            let eight = vdupq_n_s8(8);
            let p = vaddq_s32(
                dot16(vsubq_s8(lo, eight), ld(y, 2)),
                dot16(vsubq_s8(hi, eight), ld(y, 18)),
            );
            vaddvq_s32(p)
        };
        sumf += sumi as f32 * rd_f16(x, 0) * rd_f16(y, 0);
    }
    sumf
}

fn dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, a, 32, 20, 36);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        // SAFETY: as above.
        let sumi = unsafe {
            let (lo, hi) = nibbles(x, 4);
            vaddvq_s32(vaddq_s32(dot16(lo, ld(y, 4)), dot16(hi, ld(y, 20))))
        };
        sumf += (rd_f16(x, 0) * rd_f16(y, 0)) * sumi as f32 + rd_f16(x, 2) * rd_f16(y, 2);
    }
    sumf
}

fn dot_q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, a, 32, 22, 34);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(22).zip(a.chunks_exact(34)) {
        // SAFETY: as above.
        let sumi = unsafe {
            let (lo, hi) = nibbles(x, 6);
            let (hl, hh) = fifth_bits(rd_u32(x, 2));
            let s16 = vdupq_n_s8(16);
            let lo = vsubq_s8(vorrq_s8(lo, hl), s16);
            let hi = vsubq_s8(vorrq_s8(hi, hh), s16);
            vaddvq_s32(vaddq_s32(dot16(lo, ld(y, 2)), dot16(hi, ld(y, 18))))
        };
        sumf += (rd_f16(x, 0) * rd_f16(y, 0)) * sumi as f32;
    }
    sumf
}

fn dot_q5_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, a, 32, 24, 36);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(24).zip(a.chunks_exact(36)) {
        // SAFETY: as above.
        let sumi = unsafe {
            let (lo, hi) = nibbles(x, 8);
            let (hl, hh) = fifth_bits(rd_u32(x, 4));
            vaddvq_s32(vaddq_s32(
                dot16(vorrq_s8(lo, hl), ld(y, 4)),
                dot16(vorrq_s8(hi, hh), ld(y, 20)),
            ))
        };
        sumf += (rd_f16(x, 0) * rd_f16(y, 0)) * sumi as f32 + rd_f16(x, 2) * rd_f16(y, 2);
    }
    sumf
}

fn dot_q4_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, a, 256, 144, 292);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let (sc, m) = scale_min_k4(&x[4..16]);
        let summs: i32 = (0..16)
            .map(|j| rd_i16(y, 260 + 2 * j) as i32 * m[j / 2] as i32)
            .sum();
        let mut sumi = 0i32;
        for j in 0..4 {
            // SAFETY: as above; offsets stay inside the 144/292-byte blocks.
            let (s_lo, s_hi) = unsafe {
                let (l0, h0) = nibbles(x, 16 + 32 * j);
                let (l1, h1) = nibbles(x, 32 + 32 * j);
                let yo = 4 + 64 * j;
                (
                    vaddvq_s32(vaddq_s32(dot16(l0, ld(y, yo)), dot16(l1, ld(y, yo + 16)))),
                    vaddvq_s32(vaddq_s32(
                        dot16(h0, ld(y, yo + 32)),
                        dot16(h1, ld(y, yo + 48)),
                    )),
                )
            };
            sumi += sc[2 * j] as i32 * s_lo + sc[2 * j + 1] as i32 * s_hi;
        }
        let yd = rd_f32(y, 0);
        sumf += rd_f16(x, 0) * yd * sumi as f32 - rd_f16(x, 2) * yd * summs as f32;
    }
    sumf
}

fn dot_q6_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, a, 256, 210, 292);
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let mut sumi = 0i32;
        for h in 0..2 {
            for part in 0..2 {
                // 16 lanes of chunk c = 4h+k, elements 16*part.. of each 32-chunk.
                // SAFETY: as above; offsets stay inside the 210/292-byte blocks.
                unsafe {
                    let ql0 = vreinterpretq_u8_s8(ld(x, 64 * h + 16 * part));
                    let ql1 = vreinterpretq_u8_s8(ld(x, 64 * h + 32 + 16 * part));
                    let qh = vreinterpretq_u8_s8(ld(x, 128 + 32 * h + 16 * part));
                    let (m4, m3) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x03));
                    let q = [
                        vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8(vandq_u8(qh, m3), 4)),
                        vorrq_u8(
                            vandq_u8(ql1, m4),
                            vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m3), 4),
                        ),
                        vorrq_u8(
                            vshrq_n_u8(ql0, 4),
                            vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m3), 4),
                        ),
                        vorrq_u8(vshrq_n_u8(ql1, 4), vshlq_n_u8(vshrq_n_u8(qh, 6), 4)),
                    ];
                    for (k, qk) in q.into_iter().enumerate() {
                        let c = 4 * h + k;
                        let v = vsubq_s8(vreinterpretq_s8_u8(qk), vdupq_n_s8(32));
                        let s = vaddvq_s32(dot16(v, ld(y, 4 + 32 * c + 16 * part)));
                        sumi += x[192 + 2 * c + part] as i8 as i32 * s;
                    }
                }
            }
        }
        sumf += rd_f16(x, 208) * rd_f32(y, 0) * sumi as f32;
    }
    sumf
}

fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check(n, w, a, 1, 4, 4);
    let mut i = 0;
    let mut acc = [0f32; 4];
    // SAFETY: as above; 16-byte loads at i*4 with i + 4 <= n.
    unsafe {
        let mut v0 = vdupq_n_f32(0.0);
        let mut v1 = vdupq_n_f32(0.0);
        while i + 8 <= n {
            let x0 = vld1q_f32(w.as_ptr().add(4 * i) as *const f32);
            let y0 = vld1q_f32(a.as_ptr().add(4 * i) as *const f32);
            let x1 = vld1q_f32(w.as_ptr().add(4 * i + 16) as *const f32);
            let y1 = vld1q_f32(a.as_ptr().add(4 * i + 16) as *const f32);
            v0 = vfmaq_f32(v0, x0, y0);
            v1 = vfmaq_f32(v1, x1, y1);
            i += 8;
        }
        vst1q_f32(acc.as_mut_ptr(), vaddq_f32(v0, v1));
    }
    let mut s = acc.iter().sum::<f32>();
    for j in i..n {
        s += rd_f32(w, 4 * j) * rd_f32(a, 4 * j);
    }
    s
}
