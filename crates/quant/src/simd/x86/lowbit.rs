//! x86 kernels for the 1- and 2-bit formats: Q1_0 and Q2_0 against Q8_0, TQ2_0 against
//! Q8_K. Each stores unsigned codes with an offset (Q1_0: bit b is 2b - 1; the others
//! q - 1), taken out exactly with `dot_u8i8_off` or Q8_K's block sums.

use std::arch::x86_64::*;

use super::k_low::plane;
use super::{check_blocks, dot_entry, hsum_ps, ld256, ld_f16, ld_f32, Isa};

/// Q1_0: per Q8_0 block (a quarter of a Q1_0 block) the 32 sign bits as codes 0 / 2.
#[inline(always)]
unsafe fn q1_0_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (one, two) = (_mm256_set1_epi8(1), _mm256_set1_epi8(2));
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 32 {
        let (x, y) = (w.add((i / 4) * 18), a.add(i * 34));
        let bits = (x.add(2 + 4 * (i % 4)) as *const u32).read_unaligned();
        let codes = _mm256_and_si256(I::bits_to_bytes(bits), two);
        let s = I::dot_u8i8_off(codes, ld256(y.add(2)), one);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ld_f16(x) * ld_f16(y)), _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

/// Q2_0: per Q8_0 block (half a Q2_0 block) 8 bytes of four 2-bit codes each, in
/// element order: nibbles first (two elements each), then their two codes.
#[inline(always)]
unsafe fn q2_0_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (m4, m3) = (_mm_set1_epi8(0x0F), _mm_set1_epi8(3));
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 32 {
        let (x, y) = (w.add((i / 2) * 18), a.add(i * 34));
        let raw = _mm_loadl_epi64(x.add(2 + 8 * (i % 2)) as *const __m128i);
        let nib = _mm_unpacklo_epi8(_mm_and_si128(raw, m4), _mm_and_si128(_mm_srli_epi16(raw, 4), m4));
        let (c0, c1) = (_mm_and_si128(nib, m3), _mm_and_si128(_mm_srli_epi16(nib, 2), m3));
        let codes = _mm256_set_m128i(_mm_unpackhi_epi8(c0, c1), _mm_unpacklo_epi8(c0, c1));
        let s = I::dot_u8i8_off(codes, ld256(y.add(2)), _mm256_set1_epi8(1));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ld_f16(x) * ld_f16(y)), _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

/// TQ2_0: Q2_K's 2-bit planes without scales; the -1 is the super-block's sum of quants.
#[inline(always)]
unsafe fn tq2_0_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 256 {
        let (x, y) = (w.add(i * 66), a.add(i * 292));
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let q2 = ld256(x.add(32 * h));
            for l in 0..4 {
                sumi = I::dot_u8i8(sumi, plane(q2, l), ld256(y.add(4 + 128 * h + 32 * l)));
            }
        }
        let total = _mm256_madd_epi16(ld256(y.add(260)), _mm256_set1_epi16(1));
        sumi = _mm256_sub_epi32(sumi, total);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ld_f32(y) * ld_f16(x.add(64))), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

dot_entry!(dot_q1_0_avx2, dot_q1_0_avx512, q1_0_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 128, 18, 4 * 34)
});
dot_entry!(dot_q2_0_avx2, dot_q2_0_avx512, q2_0_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 64, 18, 2 * 34)
});
dot_entry!(dot_tq2_0_avx2, dot_tq2_0_avx512, tq2_0_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 256, 66, 292)
});
