//! x86 kernels for the 4-bit codebook formats: IQ4_NL, MXFP4 and NVFP4 against Q8_0,
//! IQ4_XS against Q8_K.
//!
//! The nibbles index a 16-entry table of i8 values with one byte shuffle (`pshufb`); the
//! signed products go through `|w|` times `y` with `w`'s sign (the table values and the
//! activations are at most 127 in magnitude, so AVX2's i16 pair sums cannot saturate).
//! Integer sums per block are exact; only the float accumulation order differs from
//! the scalar reference.

use std::arch::x86_64::*;

use super::legacy::{blocks2, nibbles32};
use super::{check_blocks, dot_entry, hsum_ps, ld256, ld_f16, ld_f32, Isa};
use crate::blocks::nonlinear::{e8m0_half, iq4_xs_scale, ue4m3_half};
use crate::tables::{KVALUES_FP4, KVALUES_IQ4NL};

/// A 32-element codebook format against Q8_0: its table, block bytes, quants offset, scale.
trait Codebook {
    const TABLE: &'static [i8; 16];
    const BYTES: usize;
    const QS: usize;
    unsafe fn scale(x: *const u8) -> f32;
}

struct Iq4Nl;
impl Codebook for Iq4Nl {
    const TABLE: &'static [i8; 16] = &KVALUES_IQ4NL;
    const BYTES: usize = 18;
    const QS: usize = 2;
    #[inline(always)]
    unsafe fn scale(x: *const u8) -> f32 {
        ld_f16(x)
    }
}

struct Mxfp4;
impl Codebook for Mxfp4 {
    const TABLE: &'static [i8; 16] = &KVALUES_FP4;
    const BYTES: usize = 17;
    const QS: usize = 1;
    #[inline(always)]
    unsafe fn scale(x: *const u8) -> f32 {
        e8m0_half(*x)
    }
}

/// The 16 table values in both 128-bit lanes (a `pshufb` lookup table).
#[inline(always)]
unsafe fn table(t: &[i8; 16]) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const __m128i))
}

/// The 32 table values of 16 packed bytes at `p` (low nibbles first).
#[inline(always)]
unsafe fn lookup32(p: *const u8, table: __m256i) -> __m256i {
    _mm256_shuffle_epi8(table, nibbles32(p))
}

/// i32 lanes of sums of four i8 * i8 products (`|x|` times `y` signed like `x`).
#[inline(always)]
pub(super) unsafe fn dot_i8<I: Isa>(acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
    I::dot_u8i8(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline(always)]
unsafe fn codebook_body<I: Isa, C: Codebook>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let t = table(C::TABLE);
    blocks2!(n / 32, i, acc => {
        let (x, y) = (w.add(i * C::BYTES), a.add(i * 34));
        let d = _mm256_set1_ps(ld_f16(y) * C::scale(x));
        let s = dot_i8::<I>(_mm256_setzero_si256(), lookup32(x.add(C::QS), t), ld256(y.add(2)));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc)
    })
}

#[inline(always)]
pub(super) unsafe fn iq4_nl_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    codebook_body::<I, Iq4Nl>(n, w, a)
}

#[inline(always)]
pub(super) unsafe fn mxfp4_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    codebook_body::<I, Mxfp4>(n, w, a)
}

/// NVFP4: per 64 elements two Q8_0 blocks, each covering two 16-element sub-blocks with
/// their own UE4M3 scale: the lower four i32 lanes of a block's sums are its first
/// sub-block, the upper four its second.
#[inline(always)]
unsafe fn nvfp4_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let t = table(&KVALUES_FP4);
    let m4 = _mm_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 64 {
        let x = w.add(i * 36);
        for k in 0..2 {
            let y = a.add((2 * i + k) * 34);
            let raw = _mm_loadu_si128(x.add(4 + 16 * k) as *const __m128i);
            let (lo, hi) = (_mm_and_si128(raw, m4), _mm_and_si128(_mm_srli_epi16(raw, 4), m4));
            // Sub-block 2k: low then high nibbles of bytes 0..8; sub-block 2k + 1: of 8..16.
            let idx = _mm256_set_m128i(_mm_unpackhi_epi64(lo, hi), _mm_unpacklo_epi64(lo, hi));
            let s = dot_i8::<I>(_mm256_setzero_si256(), _mm256_shuffle_epi8(t, idx), ld256(y.add(2)));
            let dy = ld_f16(y);
            let d = _mm256_set_m128(_mm_set1_ps(dy * ue4m3_half(*x.add(2 * k + 1))), _mm_set1_ps(dy * ue4m3_half(*x.add(2 * k))));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
        }
    }
    hsum_ps(acc)
}

/// IQ4_XS: per super-block the eight sub-block sums times their scales `ls - 32`, in
/// integers (i16 pair sums times the scale by `madd`), then one float scale.
#[inline(always)]
unsafe fn iq4_xs_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let t = table(&KVALUES_IQ4NL);
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 256 {
        let (x, y) = (w.add(i * 136), a.add(i * 292));
        let blk = std::slice::from_raw_parts(x, 136);
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            let q = lookup32(x.add(8 + 16 * ib), t);
            let qy = ld256(y.add(4 + 32 * ib));
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(qy, q));
            sumi = I::madd16(sumi, p, _mm256_set1_epi16((iq4_xs_scale(blk, ib) - 32) as i16));
        }
        let d = ld_f16(x) * ld_f32(y);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

// The AVX-512 kernels of the 32-element formats are in `legacy512` (two blocks per vector).
dot_entry!(dot_iq4_nl_avx2, iq4_nl_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 32, 18, 34)
});
dot_entry!(dot_mxfp4_avx2, mxfp4_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 32, 17, 34)
});
dot_entry!(dot_nvfp4_avx2, dot_nvfp4_avx512, nvfp4_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 64, 36, 68)
});
dot_entry!(dot_iq4_xs_avx2, dot_iq4_xs_avx512, iq4_xs_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 256, 136, 292)
});
