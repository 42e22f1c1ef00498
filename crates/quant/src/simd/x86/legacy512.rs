//! AVX-512 kernels for the 32-element formats (legacy and codebook): two blocks per
//! 512-bit vector.
//!
//! Same integer sums and per-block scale products as the 256-bit kernels; the pair of
//! block scales is converted and multiplied in one go and spread over the two halves.
//! An odd last block goes through the 256-bit body.

use std::arch::x86_64::*;

use super::legacy::{q4_0_body, q4_1_body, q5_0_body, q5_1_body, q8_0_body};
use super::nonlinear::{iq4_nl_body, mxfp4_body};
use super::{check_blocks, Avx512};
use crate::blocks::nonlinear::e8m0_half;
use crate::tables::{KVALUES_FP4, KVALUES_IQ4NL};

#[inline(always)]
unsafe fn rd16(p: *const u8) -> i32 {
    super::rd_u16(p) as i32
}

#[inline(always)]
unsafe fn rd32(p: *const u8) -> i32 {
    (p as *const i32).read_unaligned()
}

/// Two 256-bit halves -> one 512-bit vector.
#[inline(always)]
unsafe fn cat(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

#[inline(always)]
unsafe fn ld256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Lane `i` of `v` into the low 8 floats, lane `j` into the high 8.
#[inline(always)]
unsafe fn spread(v: __m128, i: i32, j: i32) -> __m512 {
    let idx = _mm512_set_epi32(j, j, j, j, j, j, j, j, i, i, i, i, i, i, i, i);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

/// `[h0, h1, ..]`: the halves at `p0` and `p1` as floats.
#[inline(always)]
unsafe fn h_pair(p0: *const u8, p1: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_insert_epi16::<1>(_mm_cvtsi32_si128(rd16(p0)), rd16(p1)))
}

/// `[dx0*dy0, dx1*dy1, ..]` for two "_0" blocks (f16 scale at offset 0 of each).
#[inline(always)]
unsafe fn d_pair(x0: *const u8, x1: *const u8, y0: *const u8, y1: *const u8) -> __m128 {
    _mm_mul_ps(h_pair(x0, x1), h_pair(y0, y1))
}

/// `[dx0*dy0, mx0*sy0, dx1*dy1, mx1*sy1]` for two "_1" blocks against Q8_1.
#[inline(always)]
unsafe fn dm_pair(x0: *const u8, x1: *const u8, y0: *const u8, y1: *const u8) -> __m128 {
    let hx = _mm_insert_epi32::<1>(_mm_cvtsi32_si128(rd32(x0)), rd32(x1));
    let hy = _mm_insert_epi32::<1>(_mm_cvtsi32_si128(rd32(y0)), rd32(y1));
    _mm_mul_ps(_mm_cvtph_ps(hx), _mm_cvtph_ps(hy))
}

/// The 64 nibbles of two blocks (16 packed bytes each) in element order.
#[inline(always)]
unsafe fn nibbles64(p0: *const u8, p1: *const u8) -> __m512i {
    let q0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(p0 as *const __m128i));
    let q1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(p1 as *const __m128i));
    let t = cat(q0, q1);
    // 128-bit lanes 1 and 3 take the high nibbles.
    let both = _mm512_mask_blend_epi64(0b1100_1100, t, _mm512_srli_epi16(t, 4));
    _mm512_and_si512(both, _mm512_set1_epi8(0x0F))
}

/// The fifth bits of two Q5 blocks as 0x10 bytes.
#[inline(always)]
unsafe fn fifth_bits(qh0: *const u8, qh1: *const u8) -> __m512i {
    let bits = (rd32(qh0) as u32 as u64) | ((rd32(qh1) as u32 as u64) << 32);
    _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(0x10))
}

#[inline(always)]
unsafe fn dot(u: __m512i, s: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
}

/// Signed i8 x i8: `|x|` times `y` negated where `x < 0` (no 512-bit sign instruction).
#[inline(always)]
unsafe fn dot_signed(qx: __m512i, qy: __m512i) -> __m512i {
    let sy = _mm512_mask_sub_epi8(qy, _mm512_movepi8_mask(qx), _mm512_setzero_si512(), qy);
    dot(_mm512_abs_epi8(qx), sy)
}

/// A 16-value codebook in every 128-bit lane, for `vpshufb` lookups.
#[inline(always)]
unsafe fn table(t: &[i8; 16]) -> __m512i {
    _mm512_broadcast_i32x4(_mm_loadu_si128(t.as_ptr() as *const __m128i))
}

/// Sum over block pairs of `d * sumi`, where `$body` gives `(d: __m512, sumi: __m512i)`
/// for the pair starting at block `$i`; then the odd block, if any, via `$tail`.
macro_rules! pairs {
    ($n:expr, $i:ident => $body:expr, $tail:expr) => {{
        let nb = $n / 32;
        let mut acc = _mm512_setzero_ps();
        let mut $i = 0;
        while $i + 2 <= nb {
            let (d, s) = $body;
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc);
            $i += 2;
        }
        let mut r = _mm512_reduce_add_ps(acc);
        if $i < nb {
            r += $tail;
        }
        r
    }};
}

#[inline(always)]
pub(super) unsafe fn q8_0(n: usize, w: *const u8, a: *const u8) -> f32 {
    pairs!(n, i => {
        let (x, y) = (w.add(i * 34), a.add(i * 34));
        let d = spread(d_pair(x, x.add(34), y, y.add(34)), 0, 1);
        let qx = cat(ld256(x.add(2)), ld256(x.add(36)));
        let qy = cat(ld256(y.add(2)), ld256(y.add(36)));
        (d, dot_signed(qx, qy))
    }, q8_0_body::<Avx512>(32, w.add(i * 34), a.add(i * 34)))
}

/// IQ4_NL: the nibbles of two blocks looked up in the codebook, signed dot.
#[inline(always)]
unsafe fn iq4_nl(n: usize, w: *const u8, a: *const u8) -> f32 {
    let t = table(&KVALUES_IQ4NL);
    pairs!(n, i => {
        let (x, y) = (w.add(i * 18), a.add(i * 34));
        let d = spread(d_pair(x, x.add(18), y, y.add(34)), 0, 1);
        let q = _mm512_shuffle_epi8(t, nibbles64(x.add(2), x.add(20)));
        (d, dot_signed(q, cat(ld256(y.add(2)), ld256(y.add(36)))))
    }, iq4_nl_body::<Avx512>(32, w.add(i * 18), a.add(i * 34)))
}

/// MXFP4: as IQ4_NL with the FP4 codebook and E8M0 block scales.
#[inline(always)]
unsafe fn mxfp4(n: usize, w: *const u8, a: *const u8) -> f32 {
    let t = table(&KVALUES_FP4);
    pairs!(n, i => {
        let (x, y) = (w.add(i * 17), a.add(i * 34));
        let dx = _mm_setr_ps(e8m0_half(*x), e8m0_half(*x.add(17)), 0.0, 0.0);
        let d = spread(_mm_mul_ps(h_pair(y, y.add(34)), dx), 0, 1);
        let q = _mm512_shuffle_epi8(t, nibbles64(x.add(1), x.add(18)));
        (d, dot_signed(q, cat(ld256(y.add(2)), ld256(y.add(36)))))
    }, mxfp4_body::<Avx512>(32, w.add(i * 17), a.add(i * 34)))
}

#[inline(always)]
pub(super) unsafe fn q4_0(n: usize, w: *const u8, a: *const u8) -> f32 {
    pairs!(n, i => {
        let (x, y) = (w.add(i * 18), a.add(i * 34));
        let d = spread(d_pair(x, x.add(18), y, y.add(34)), 0, 1);
        let q = nibbles64(x.add(2), x.add(20));
        let qy = cat(ld256(y.add(2)), ld256(y.add(36)));
        (d, _mm512_sub_epi32(dot(q, qy), dot(_mm512_set1_epi8(8), qy)))
    }, q4_0_body::<Avx512>(32, w.add(i * 18), a.add(i * 34)))
}

#[inline(always)]
pub(super) unsafe fn q5_0(n: usize, w: *const u8, a: *const u8) -> f32 {
    pairs!(n, i => {
        let (x, y) = (w.add(i * 22), a.add(i * 34));
        let d = spread(d_pair(x, x.add(22), y, y.add(34)), 0, 1);
        let q = _mm512_or_si512(nibbles64(x.add(6), x.add(28)), fifth_bits(x.add(2), x.add(24)));
        let qy = cat(ld256(y.add(2)), ld256(y.add(36)));
        (d, _mm512_sub_epi32(dot(q, qy), dot(_mm512_set1_epi8(16), qy)))
    }, q5_0_body::<Avx512>(32, w.add(i * 22), a.add(i * 34)))
}

/// "_1" formats: like `pairs!` plus the `m*s` terms, summed from lanes 1 and 3.
macro_rules! pairs_x1 {
    ($n:expr, $w:expr, $a:expr, $wb:expr, $i:ident, $x:ident => $quants:expr, $tail:expr) => {{
        let nb = $n / 32;
        let (mut acc, mut accm) = (_mm512_setzero_ps(), _mm_setzero_ps());
        let mut $i = 0;
        while $i + 2 <= nb {
            let ($x, y) = ($w.add($i * $wb), $a.add($i * 36));
            let dm = dm_pair($x, $x.add($wb), y, y.add(36));
            accm = _mm_add_ps(accm, dm);
            let qy = cat(ld256(y.add(4)), ld256(y.add(40)));
            acc = _mm512_fmadd_ps(spread(dm, 0, 2), _mm512_cvtepi32_ps(dot($quants, qy)), acc);
            $i += 2;
        }
        let m = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
        let mut r = _mm512_reduce_add_ps(acc) + _mm_cvtss_f32(_mm_movehdup_ps(m));
        if $i < nb {
            r += $tail;
        }
        r
    }};
}

#[inline(always)]
pub(super) unsafe fn q4_1(n: usize, w: *const u8, a: *const u8) -> f32 {
    pairs_x1!(n, w, a, 20, i, x => nibbles64(x.add(4), x.add(24)),
        q4_1_body::<Avx512>(32, w.add(i * 20), a.add(i * 36)))
}

#[inline(always)]
pub(super) unsafe fn q5_1(n: usize, w: *const u8, a: *const u8) -> f32 {
    pairs_x1!(n, w, a, 24, i, x => _mm512_or_si512(nibbles64(x.add(8), x.add(32)), fifth_bits(x.add(4), x.add(28))),
        q5_1_body::<Avx512>(32, w.add(i * 24), a.add(i * 36)))
}

macro_rules! entry {
    ($name:ident, $body:ident, $wb:expr, $ab:expr) => {
        pub(crate) fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            unsafe fn inner(n: usize, w: *const u8, a: *const u8) -> f32 {
                $body(n, w, a)
            }
            check_blocks(n, w, a, 32, $wb, $ab);
            // SAFETY: handed out only after run-time detection; lengths checked above.
            unsafe { inner(n, w.as_ptr(), a.as_ptr()) }
        }
    };
}

entry!(dot_q8_0, q8_0, 34, 34);
entry!(dot_q4_0, q4_0, 18, 34);
entry!(dot_q5_0, q5_0, 22, 34);
entry!(dot_q4_1, q4_1, 20, 36);
entry!(dot_q5_1, q5_1, 24, 36);
entry!(dot_iq4_nl, iq4_nl, 18, 34);
entry!(dot_mxfp4, mxfp4, 17, 34);
