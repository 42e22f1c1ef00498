//! x86 kernels for the 32-element formats against Q8_0 / Q8_1 activations.
//!
//! Per block the integer sum is exact (same as the scalar reference); only the float
//! accumulation differs (8 lanes, FMA, two accumulators), so results match the scalar
//! kernel to within f32 re-association error.

use std::arch::x86_64::*;

use super::{check_blocks, dot_entry, hsum_ps, ld256, ld_f16, Isa};

/// Runs `$body` (which reads block `$i` and returns the updated `$acc`) over `$nb`
/// blocks with two independent accumulators (hides FMA latency). A macro rather than a
/// closure: closures are separate functions without the caller's target features, and
/// the intrinsics inside them would not be inlined.
macro_rules! blocks2 {
    ($nb:expr, $i:ident, $acc:ident => $body:expr) => {{
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let nb = $nb;
        let mut $i = 0;
        while $i + 2 <= nb {
            acc0 = {
                let $acc = acc0;
                $body
            };
            $i += 1;
            acc1 = {
                let $acc = acc1;
                $body
            };
            $i += 1;
        }
        if $i < nb {
            acc0 = {
                let $acc = acc0;
                $body
            };
        }
        hsum_ps(_mm256_add_ps(acc0, acc1))
    }};
}
pub(super) use blocks2;

/// 16 packed bytes at `p` -> 32 bytes: low nibbles (elements 0..16), then high nibbles.
#[inline(always)]
pub(super) unsafe fn nibbles32(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

#[inline(always)]
pub(super) unsafe fn q8_0_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    blocks2!(n / 32, i, acc => {
        let (x, y) = (w.add(i * 34), a.add(i * 34));
        let d = _mm256_set1_ps(ld_f16(x) * ld_f16(y));
        let (qx, qy) = (ld256(x.add(2)), ld256(y.add(2)));
        // |x| * sign(x)·y: u8 by i8, as the multiply-add instructions want.
        let s = I::dot_u8i8(_mm256_setzero_si256(), _mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc)
    })
}

#[inline(always)]
pub(super) unsafe fn q4_0_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    blocks2!(n / 32, i, acc => {
        let (x, y) = (w.add(i * 18), a.add(i * 34));
        let d = _mm256_set1_ps(ld_f16(x) * ld_f16(y));
        let s = I::dot_u8i8_off(nibbles32(x.add(2)), ld256(y.add(2)), _mm256_set1_epi8(8));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc)
    })
}

/// Q4_1/Q5_1 against Q8_1: `[dx, mx] * [dy, sy]` in one conversion and multiply
/// (the four halves are adjacent pairs), giving `[dx*dy, mx*sy]`.
#[inline(always)]
unsafe fn scales_x1(x: *const u8, y: *const u8) -> __m128 {
    let hx = _mm_cvtsi32_si128((x as *const i32).read_unaligned());
    let hy = _mm_cvtsi32_si128((y as *const i32).read_unaligned());
    _mm_mul_ps(_mm_cvtph_ps(hx), _mm_cvtph_ps(hy))
}

/// Blocks of a "_1" format: `quants(x)` gives the 32 unsigned quants of block `x`.
/// Two independent (acc, min-acc) pairs, in registers (an accumulator array indexed by
/// `i & 1` would live on the stack, a store-to-load chain per block); the min terms
/// `mx*sy` sum in lane 1 of `accm`.
macro_rules! blocks_x1 {
    ($I:ty, $n:expr, $w:expr, $a:expr, $wb:expr, $x:ident => $quants:expr) => {{
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut accm0, mut accm1) = (_mm_setzero_ps(), _mm_setzero_ps());
        let nb = $n / 32;
        let mut i = 0;
        while i < nb {
            let ($x, y) = ($w.add(i * $wb), $a.add(i * 36));
            let ds = scales_x1($x, y);
            let s = <$I>::dot_u8i8(_mm256_setzero_si256(), $quants, ld256(y.add(4)));
            acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), _mm256_cvtepi32_ps(s), acc0);
            accm0 = _mm_add_ps(accm0, ds);
            i += 1;
            if i == nb {
                break;
            }
            let ($x, y) = ($w.add(i * $wb), $a.add(i * 36));
            let ds = scales_x1($x, y);
            let s = <$I>::dot_u8i8(_mm256_setzero_si256(), $quants, ld256(y.add(4)));
            acc1 = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), _mm256_cvtepi32_ps(s), acc1);
            accm1 = _mm_add_ps(accm1, ds);
            i += 1;
        }
        let m = _mm_add_ps(accm0, accm1);
        hsum_ps(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(m))
    }};
}

#[inline(always)]
pub(super) unsafe fn q4_1_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    blocks_x1!(I, n, w, a, 20, x => nibbles32(x.add(4)))
}

/// Q5 quants as unsigned bytes 0..31: nibbles with the fifth bit from `qh`.
#[inline(always)]
unsafe fn q5_bytes<I: Isa>(qh: *const u8, qs: *const u8) -> __m256i {
    let bits = (qh as *const u32).read_unaligned();
    let hi = _mm256_and_si256(I::bits_to_bytes(bits), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles32(qs), hi)
}

#[inline(always)]
pub(super) unsafe fn q5_0_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    blocks2!(n / 32, i, acc => {
        let (x, y) = (w.add(i * 22), a.add(i * 34));
        let d = _mm256_set1_ps(ld_f16(x) * ld_f16(y));
        let s = I::dot_u8i8_off(q5_bytes::<I>(x.add(2), x.add(6)), ld256(y.add(2)), _mm256_set1_epi8(16));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc)
    })
}

#[inline(always)]
pub(super) unsafe fn q5_1_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    blocks_x1!(I, n, w, a, 24, x => q5_bytes::<I>(x.add(4), x.add(8)))
}

dot_entry!(dot_q8_0_avx2, q8_0_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 32, 34, 34)
});
dot_entry!(dot_q4_0_avx2, q4_0_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 32, 18, 34)
});
dot_entry!(dot_q4_1_avx2, q4_1_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 32, 20, 36)
});
dot_entry!(dot_q5_0_avx2, q5_0_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 32, 22, 34)
});
dot_entry!(dot_q5_1_avx2, q5_1_body, |n, w: &[u8], a: &[u8]| {
    check_blocks(n, w, a, 32, 24, 36)
});
