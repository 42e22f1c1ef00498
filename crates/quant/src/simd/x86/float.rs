//! x86 kernels for the float formats: F32, F16 (via F16C), BF16 (via shifts), and
//! the half <-> single slice conversions.
//!
//! The dots accumulate in f32 lanes with FMA (ggml's SIMD path does the same); the
//! scalar reference sums in f64, so the two agree to f32 re-association error.

use std::arch::x86_64::*;

use super::{check_blocks, hsum_ps};
use crate::util::{bf16_bits_to_f32, f16_bits_to_f32, f32_to_f16_bits};

/// Loads 8 elements at element index `i` of a buffer of some element format as f32.
trait Load8 {
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    unsafe fn load16(p: *const u8) -> __m512;
    unsafe fn load16_masked(p: *const u8, k: u16) -> __m512;
    fn scalar(p: &[u8]) -> f32;
}

struct F32;
struct F16;
struct Bf16;

impl Load8 for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const u8, k: u16) -> __m512 {
        _mm512_maskz_loadu_ps(k, p as *const f32)
    }
    fn scalar(p: &[u8]) -> f32 {
        f32::from_le_bytes([p[0], p[1], p[2], p[3]])
    }
}

impl Load8 for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const u8, k: u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p as *const i16))
    }
    fn scalar(p: &[u8]) -> f32 {
        f16_bits_to_f32(u16::from_le_bytes([p[0], p[1]]))
    }
}

impl Load8 for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
    }
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const u8, k: u16) -> __m512 {
        let v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p as *const i16));
        _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
    }
    fn scalar(p: &[u8]) -> f32 {
        bf16_bits_to_f32(u16::from_le_bytes([p[0], p[1]]))
    }
}

#[inline(always)]
unsafe fn dot_body_avx2<T: Load8>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = (i + 8 * k) * T::BYTES;
            *acc = _mm256_fmadd_ps(T::load8(wp.add(o)), T::load8(ap.add(o)), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        let o = i * T::BYTES;
        acc[0] = _mm256_fmadd_ps(T::load8(wp.add(o)), T::load8(ap.add(o)), acc[0]);
        i += 8;
    }
    let mut s = hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    for j in i..n {
        s += T::scalar(&w[j * T::BYTES..]) * T::scalar(&a[j * T::BYTES..]);
    }
    s
}

#[inline(always)]
unsafe fn dot_body_avx512<T: Load8>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = (i + 16 * k) * T::BYTES;
            *acc = _mm512_fmadd_ps(T::load16(wp.add(o)), T::load16(ap.add(o)), *acc);
        }
        i += 64;
    }
    while i + 16 <= n {
        let o = i * T::BYTES;
        acc[0] = _mm512_fmadd_ps(T::load16(wp.add(o)), T::load16(ap.add(o)), acc[0]);
        i += 16;
    }
    if i < n {
        // Masked loads never touch the lanes past the end.
        let k = ((1u32 << (n - i)) - 1) as u16;
        let o = i * T::BYTES;
        acc[1] = _mm512_fmadd_ps(
            T::load16_masked(wp.add(o), k),
            T::load16_masked(ap.add(o), k),
            acc[1],
        );
    }
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ))
}

macro_rules! float_entry {
    ($avx2:ident, $avx512:ident, $t:ty) => {
        float_entry!($avx2, $t);
        pub(crate) fn $avx512(n: usize, w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            unsafe fn inner(n: usize, w: &[u8], a: &[u8]) -> f32 {
                dot_body_avx512::<$t>(n, w, a)
            }
            check_blocks(n, w, a, 1, <$t>::BYTES, <$t>::BYTES);
            // SAFETY: handed out only after run-time detection; lengths checked above.
            unsafe { inner(n, w, a) }
        }
    };
    ($avx2:ident, $t:ty) => {
        pub(crate) fn $avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn inner(n: usize, w: &[u8], a: &[u8]) -> f32 {
                dot_body_avx2::<$t>(n, w, a)
            }
            check_blocks(n, w, a, 1, <$t>::BYTES, <$t>::BYTES);
            // SAFETY: handed out only after run-time detection; lengths checked above.
            unsafe { inner(n, w, a) }
        }
    };
}

float_entry!(dot_f32_avx2, dot_f32_avx512, F32);
// F16 has no AVX-512 variant: 512-bit vcvtph2ps was slower than two 256-bit ones on Zen 4.
float_entry!(dot_f16_avx2, F16);
float_entry!(dot_bf16_avx2, dot_bf16_avx512, Bf16);

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_to_f32_avx2(src: &[u8], dst: &mut [f32]) -> usize {
    let mut i = 0;
    while i + 8 <= dst.len() {
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), F16::load8(src.as_ptr().add(2 * i)));
        i += 8;
    }
    i
}

/// Half bytes -> f32. Caller checked `src.len() == 2 * dst.len()` and AVX2 availability.
pub(crate) fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len());
    // SAFETY: F16C detected by the caller; bounds as asserted.
    let done = unsafe { f16_to_f32_avx2(src, dst) };
    for j in done..dst.len() {
        dst[j] = f16_bits_to_f32(u16::from_le_bytes([src[2 * j], src[2 * j + 1]]));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_to_f16_avx2(src: &[f32], dst: &mut [u8]) -> usize {
    let mut i = 0;
    while i + 8 <= src.len() {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, h);
        i += 8;
    }
    i
}

/// f32 -> half bytes (round to nearest even). Caller checked lengths and AVX2 availability.
pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [u8]) {
    assert_eq!(dst.len(), 2 * src.len());
    // SAFETY: F16C detected by the caller; bounds as asserted.
    let done = unsafe { f32_to_f16_avx2(src, dst) };
    for j in done..src.len() {
        dst[2 * j..2 * j + 2].copy_from_slice(&f32_to_f16_bits(src[j]).to_le_bytes());
    }
}
