//! x86 kernels for Q4_K, Q5_K, Q6_K against Q8_K activations.
//!
//! Integer sums per super-block are exact; the mins (Q4_K/Q5_K) and Q6_K's -32 offset
//! are folded in through Q8_K's `bsums`, which is exact too. Only float accumulation
//! order differs from the scalar reference.

use std::arch::x86_64::*;

use super::{check_blocks, chunk_scales, dot_entry, hsum_ps, ld256, ld_f16, ld_f32, Isa};

/// One Q4_K (`Q5 = false`) or Q5_K (`Q5 = true`) super-block at `x` against Q8_K `y`.
/// (A const generic rather than a closure: closures would not get the target features.)
#[inline(always)]
unsafe fn k4_block<I: Isa, const Q5: bool>(
    x: *const u8,
    y: *const u8,
    acc: &mut __m256,
    acc_m: &mut __m256,
) {
    let yd = ld_f32(y);
    let d = yd * ld_f16(x);
    let dmin = yd * ld_f16(x.add(2));
    let (scales, mins) = scales_mins_k4(x.add(4));
    // Mins: sum_j bsums[j] * m[j/2], as 8 i32 lanes.
    let m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
    let prod = _mm256_madd_epi16(m16, ld256(y.add(260)));
    *acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), *acc_m);
    // The eight 6-bit scales as i16 in both 128-bit lanes; chunk k's is broadcast by a shuffle.
    let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scales));

    let (m4, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    let qs = if Q5 { x.add(48) } else { x.add(16) };
    // Q5_K: qh bit 2j is the fifth bit of chunk j's low half, bit 2j+1 of its high half;
    // shifting 16-bit lanes right keeps each byte's own bits in its bit 0.
    let mut hb = if Q5 {
        ld256(x.add(16))
    } else {
        _mm256_setzero_si256()
    };
    let mut sumi = _mm256_setzero_si256();
    for j in 0..4 {
        let q = ld256(qs.add(32 * j));
        let mut lo = _mm256_and_si256(q, m4);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if Q5 {
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
            hi = _mm256_or_si256(
                hi,
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4),
            );
            hb = _mm256_srli_epi16(hb, 2);
        }
        let p_lo = _mm256_maddubs_epi16(lo, ld256(y.add(4 + 64 * j)));
        let p_hi = _mm256_maddubs_epi16(hi, ld256(y.add(4 + 64 * j + 32)));
        sumi = I::madd16(sumi, p_lo, _mm256_shuffle_epi8(sc, scale_pick(2 * j)));
        sumi = I::madd16(sumi, p_hi, _mm256_shuffle_epi8(sc, scale_pick(2 * j + 1)));
    }
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
}

/// Q4_K/Q5_K's twelve packed bytes of 6-bit scales and mins, unpacked with four 32-bit word
/// operations (the same values as `scale_min_k4`): (scales, mins), each 8 bytes in the low half.
#[inline(always)]
unsafe fn scales_mins_k4(p: *const u8) -> (__m128i, __m128i) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let w = |i: usize| (p.add(4 * i) as *const u32).read_unaligned();
    let (u0, u1, u2) = (w(0), w(1), w(2));
    // Scales/mins 0-3 are the low six bits of bytes 0-3/4-7; 4-7 take their low four bits
    // from bytes 8-11 (low/high nibble) and their top two from the top bits of bytes 0-3/4-7.
    let s47 = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
    let m47 = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
    (
        _mm_set_epi32(0, 0, s47 as i32, (u0 & LOW6) as i32),
        _mm_set_epi32(0, 0, m47 as i32, (u1 & LOW6) as i32),
    )
}

/// A byte shuffle that broadcasts i16 lane `k` across each 128-bit half.
#[inline(always)]
unsafe fn scale_pick(k: usize) -> __m256i {
    _mm256_set1_epi16((((2 * k + 1) << 8) | (2 * k)) as i16)
}

#[inline(always)]
pub(super) unsafe fn q4_k_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (mut acc, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in 0..n / 256 {
        k4_block::<I, false>(w.add(i * 144), a.add(i * 292), &mut acc, &mut acc_m);
    }
    hsum_ps(acc) - hsum_ps(acc_m)
}

#[inline(always)]
pub(super) unsafe fn q5_k_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (mut acc, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in 0..n / 256 {
        k4_block::<I, true>(w.add(i * 176), a.add(i * 292), &mut acc, &mut acc_m);
    }
    hsum_ps(acc) - hsum_ps(acc_m)
}

#[inline(always)]
pub(super) unsafe fn q6_k_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    for i in 0..n / 256 {
        let (x, y) = (w.add(i * 210), a.add(i * 292));
        let d = ld_f32(y) * ld_f16(x.add(208));
        let scales = _mm_loadu_si128(x.add(192) as *const __m128i);
        // The quants are stored +32: subtract 32 * sum_g scale_g * bsum_g afterwards.
        let corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), ld256(y.add(260)));
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let ql0 = ld256(x.add(64 * h));
            let ql1 = ld256(x.add(64 * h + 32));
            let qh = ld256(x.add(128 + 32 * h));
            // Bits 2k..2k+2 of qh, moved to bits 4..6 of each byte.
            let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
            let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
            let h2 = _mm256_and_si256(qh, _mm256_set1_epi8(0x30));
            let h3 = _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30));
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), h1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3),
            ];
            for (k, qk) in q.into_iter().enumerate() {
                let c = 4 * h + k;
                let p = _mm256_maddubs_epi16(qk, ld256(y.add(4 + 32 * c)));
                sumi = I::madd16(sumi, p, chunk_scales(scales, c));
            }
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(corr, 5));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

dot_entry!(
    dot_q4_k_avx2,
    dot_q4_k_avx512,
    q4_k_body,
    |n, w: &[u8], a: &[u8]| check_blocks(n, w, a, 256, 144, 292)
);
dot_entry!(
    dot_q5_k_avx2,
    dot_q5_k_avx512,
    q5_k_body,
    |n, w: &[u8], a: &[u8]| check_blocks(n, w, a, 256, 176, 292)
);
dot_entry!(
    dot_q6_k_avx2,
    dot_q6_k_avx512,
    q6_k_body,
    |n, w: &[u8], a: &[u8]| check_blocks(n, w, a, 256, 210, 292)
);
