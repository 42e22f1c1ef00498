//! x86 kernels for the low-bit K-quants, Q2_K and Q3_K, against Q8_K activations.
//!
//! Both store 2 low bits per element in the same order: 32-element chunk c = 4h + s
//! (h = 128-half, s = 2-bit plane) is `(qs[32h + l] >> 2s) & 3`, with one scale per
//! 16 elements. Mins (Q2_K) and Q3_K's -4 offset go through Q8_K's `bsums`, exactly.

use std::arch::x86_64::*;

use super::{check_blocks, chunk_scales, dot_entry, hsum_ps, ld256, ld_f16, ld_f32, Isa};
use crate::blocks::k_quants::scales_q3k;

/// The 2-bit plane `s` (0..4) of 32 packed bytes, as bytes 0..3.
#[inline(always)]
pub(super) unsafe fn plane(q: __m256i, s: usize) -> __m256i {
    let v = match s {
        0 => q,
        1 => _mm256_srli_epi16(q, 2),
        2 => _mm256_srli_epi16(q, 4),
        _ => _mm256_srli_epi16(q, 6),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(3))
}

#[inline(always)]
unsafe fn q2_k_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (mut acc, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in 0..n / 256 {
        let (x, y) = (w.add(i * 84), a.add(i * 292));
        let yd = ld_f32(y);
        let (dall, dmin) = (yd * ld_f16(x.add(80)), yd * ld_f16(x.add(82)));
        let raw = _mm_loadu_si128(x as *const __m128i);
        let m4 = _mm_set1_epi8(0x0F);
        let scales = _mm_and_si128(raw, m4);
        let mins = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        let prod = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), ld256(y.add(260)));
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), acc_m);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let q2 = ld256(x.add(16 + 32 * h));
            for s in 0..4 {
                let c = 4 * h + s;
                let p = _mm256_maddubs_epi16(plane(q2, s), ld256(y.add(4 + 32 * c)));
                sumi = I::madd16(sumi, p, chunk_scales(scales, c));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - hsum_ps(acc_m)
}

#[inline(always)]
unsafe fn q3_k_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let one = _mm256_set1_epi8(1);
    for i in 0..n / 256 {
        let (x, y) = (w.add(i * 110), a.add(i * 292));
        let d = ld_f16(x.add(108)) * ld_f32(y);
        let sc = scales_q3k(&(x.add(96) as *const [u8; 12]).read_unaligned());
        let biased = _mm_loadu_si128(sc.as_ptr() as *const __m128i);
        let scales = _mm_sub_epi8(biased, _mm_set1_epi8(32)); // -32..31
                                                              // Quants are stored +4 (high bit set means no -4): subtract 4 * sum_g sc_g * bsum_g.
        let corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), ld256(y.add(260)));
        let hm = ld256(x);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let q3 = ld256(x.add(32 + 32 * h));
            for s in 0..4 {
                let c = 4 * h + s;
                // hmask bit c of each byte; 16-bit shifts keep each byte's own bit in bit 0.
                let hb = match c {
                    0 => hm,
                    1 => _mm256_srli_epi16(hm, 1),
                    2 => _mm256_srli_epi16(hm, 2),
                    3 => _mm256_srli_epi16(hm, 3),
                    4 => _mm256_srli_epi16(hm, 4),
                    5 => _mm256_srli_epi16(hm, 5),
                    6 => _mm256_srli_epi16(hm, 6),
                    _ => _mm256_srli_epi16(hm, 7),
                };
                let q = _mm256_or_si256(
                    plane(q3, s),
                    _mm256_slli_epi16(_mm256_and_si256(hb, one), 2),
                );
                let p = _mm256_maddubs_epi16(q, ld256(y.add(4 + 32 * c)));
                sumi = I::madd16(sumi, p, chunk_scales(scales, c));
            }
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(corr, 2));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

dot_entry!(
    dot_q2_k_avx2,
    dot_q2_k_avx512,
    q2_k_body,
    |n, w: &[u8], a: &[u8]| check_blocks(n, w, a, 256, 84, 292)
);
dot_entry!(
    dot_q3_k_avx2,
    dot_q3_k_avx512,
    q3_k_body,
    |n, w: &[u8], a: &[u8]| check_blocks(n, w, a, 256, 110, 292)
);
