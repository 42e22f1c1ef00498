//! ggml's x86 `quantize_row_q8_0` / `quantize_row_q8_1` (arch/x86/quants.c), ported
//! instruction for instruction (see `crate::activations` for the arithmetic).

use std::arch::x86_64::*;

/// Q8_0 (`q8_1 = false`) or Q8_1 blocks; lengths checked by the caller
/// (`src.len() == 32 * nb`, `dst.len() == nb * (34 | 36)`).
pub(crate) fn quantize_q8_x86(q8_1: bool, src: &[f32], dst: &mut [u8]) {
    let bb = if q8_1 { 36 } else { 34 };
    let nb = src.len() / 32;
    assert!(src.len() == nb * 32 && dst.len() == nb * bb);
    debug_assert!(super::has_avx2());
    // SAFETY: AVX2/F16C detected by the caller; lengths checked above.
    unsafe { body(q8_1, nb, src.as_ptr(), dst.as_mut_ptr()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn body(q8_1: bool, nb: usize, mut x: *const f32, y: *mut u8) {
    let bb = if q8_1 { 36 } else { 34 };
    let off = if q8_1 { 4 } else { 2 };
    for i in 0..nb {
        let b = y.add(i * bb);
        let v0 = _mm256_loadu_ps(x);
        let v1 = _mm256_loadu_ps(x.add(8));
        let v2 = _mm256_loadu_ps(x.add(16));
        let v3 = _mm256_loadu_ps(x.add(24));
        x = x.add(32);

        let sign = _mm256_set1_ps(-0.0);
        let mut max_abs = _mm256_andnot_ps(sign, v0);
        max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v1));
        max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v2));
        max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v3));
        let mut max4 = _mm_max_ps(_mm256_extractf128_ps::<1>(max_abs), _mm256_castps256_ps128(max_abs));
        max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
        max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
        let max = _mm_cvtss_f32(max4);

        let d = max / 127.0;
        let dh = _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(d))) as u16;
        (b as *mut u16).write_unaligned(dh);
        let id = if max != 0.0 { 127.0 / max } else { 0.0 };
        let mul = _mm256_set1_ps(id);

        // _MM_ROUND_NEAREST (0): round to nearest even.
        const RN: i32 = _MM_FROUND_TO_NEAREST_INT;
        let i0 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v0, mul)));
        let i1 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v1, mul)));
        let i2 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v2, mul)));
        let i3 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v3, mul)));

        if q8_1 {
            let s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2));
            let sum = _mm_cvtsi128_si32(s1);
            let sf = d * sum as f32;
            let sh = _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(sf))) as u16;
            (b.add(2) as *mut u16).write_unaligned(sh);
        }

        let a = _mm256_packs_epi32(i0, i1);
        let c = _mm256_packs_epi32(i2, i3);
        let q = _mm256_packs_epi16(a, c);
        let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(b.add(off) as *mut __m256i, q);
    }
}

/// Q8_K blocks, bit-identical to `quantize_row_q8_K_ref` (ggml's x86 build uses the
/// reference too): the scale from the first element of largest magnitude,
/// `nearest_int` (round half to even, as `cvtps_epi32` under the default rounding
/// mode), `min(127)`, i16 sums of 16. Lengths checked by the caller.
pub(crate) fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    let nb = src.len() / 256;
    assert!(src.len() == nb * 256 && dst.len() == nb * 292);
    debug_assert!(super::has_avx2());
    // SAFETY: AVX2 detected by the caller; lengths checked above.
    unsafe { q8_k_body(nb, src.as_ptr(), dst.as_mut_ptr()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_k_body(nb: usize, src: *const f32, dst: *mut u8) {
    for i in 0..nb {
        let (x, b) = (src.add(i * 256), dst.add(i * 292));
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for j in 0..32 {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x.add(8 * j))));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        if amax == 0.0 {
            std::ptr::write_bytes(b, 0, 292);
            continue;
        }
        // The reference keeps the first element whose |x| is the largest.
        let mut first = 0;
        while (*x.add(first)).abs() != amax {
            first += 1;
        }
        let iscale = -127.0 / *x.add(first);
        let mul = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for j in 0..8 {
            let p = x.add(32 * j);
            let (i0, i1, i2, i3) = (q8k(p, mul, cap), q8k(p.add(8), mul, cap), q8k(p.add(16), mul, cap), q8k(p.add(24), mul, cap));
            for (h, (a, c)) in [(i0, i1), (i2, i3)].into_iter().enumerate() {
                let s = _mm256_add_epi32(a, c);
                let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
                let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2));
                let sum = _mm_cvtsi128_si32(s1) as i16;
                (b.add(260 + 2 * (2 * j + h)) as *mut i16).write_unaligned(sum);
            }
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            _mm256_storeu_si256(b.add(4 + 32 * j) as *mut __m256i, _mm256_permutevar8x32_epi32(packed, perm));
        }
        (b as *mut f32).write_unaligned(1.0 / iscale);
    }
}

/// `min(nearest_int(x * iscale), 127)` for 8 elements (a function, not a closure: it
/// must be inlined into the caller to get its target features).
#[inline(always)]
unsafe fn q8k(p: *const f32, mul: __m256, cap: __m256i) -> __m256i {
    _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), mul)), cap)
}
