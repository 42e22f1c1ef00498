//! x86 kernels for the grid i-quants against Q8_K: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
//! IQ3_S, IQ1_S, IQ1_M.
//!
//! Per 32-element sub-block the four grid entries (one per 8 elements; IQ3: two 4-byte
//! entries) are loaded by index into one vector; signs become byte masks that negate
//! the activations (`(y ^ m) - m`; Q8 quants are never -128). Magnitudes are below 64,
//! so AVX2's i16 pair sums cannot saturate; the pair sums are then scaled per 16 elements
//! in integers (`madd`). IQ1's ternary grid values are applied with `sign`, its +-1/8
//! shift through sums of the activations. Integer sums are exact; only the float
//! accumulation order differs from the scalar reference.

use std::arch::x86_64::*;

use super::{check_blocks, dot_entry, hsum_ps, ld256, ld_f16, ld_f32, Isa};
use crate::tables::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS};

/// Byte mask of 8 sign bits: byte j is 0xFF when bit j is set.
const SIGN_MASKS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut j = 0;
        while j < 8 {
            if (i >> j) & 1 != 0 {
                t[i] |= 0xFF << (8 * j);
            }
            j += 1;
        }
        i += 1;
    }
    t
};

/// One 32-element sub-block: the grid magnitudes, sign masks, and the scales of its two
/// halves of 16.
struct Sub {
    mags: [u64; 4],
    signs: [u64; 4],
    ls: [i16; 2],
}

/// A grid format: block bytes, the final factor (ggml's 1/8, 1/4, 1), and the decoding of
/// sub-block `ib` of the block at `x` (`x` holds a whole block).
trait Grid {
    const BYTES: usize;
    const FACTOR: f32;
    fn sub(x: &[u8], ib: usize) -> Sub;
}

fn u32_at(x: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([x[o], x[o + 1], x[o + 2], x[o + 3]])
}

/// A 7-bit sign field (the 8th bit makes the count even) as a byte mask.
fn parity_signs(field: u32) -> u64 {
    SIGN_MASKS[KSIGNS_IQ2XS[(field & 127) as usize] as usize]
}

struct Iq2Xxs;
impl Grid for Iq2Xxs {
    const BYTES: usize = 66;
    const FACTOR: f32 = 0.125;
    #[inline(always)]
    fn sub(x: &[u8], ib: usize) -> Sub {
        let aux = u32_at(x, 6 + 8 * ib);
        let ls = (2 * (aux >> 28) + 1) as i16;
        Sub {
            mags: std::array::from_fn(|l| IQ2XXS_GRID[x[2 + 8 * ib + l] as usize]),
            signs: std::array::from_fn(|l| parity_signs(aux >> (7 * l))),
            ls: [ls, ls],
        }
    }
}

struct Iq2Xs;
impl Grid for Iq2Xs {
    const BYTES: usize = 74;
    const FACTOR: f32 = 0.125;
    #[inline(always)]
    fn sub(x: &[u8], ib: usize) -> Sub {
        let q = |l: usize| u16::from_le_bytes([x[2 + 8 * ib + 2 * l], x[3 + 8 * ib + 2 * l]]) as u32;
        let sc = x[66 + ib] as i16;
        Sub {
            mags: std::array::from_fn(|l| IQ2XS_GRID[(q(l) & 511) as usize]),
            signs: std::array::from_fn(|l| parity_signs(q(l) >> 9)),
            ls: [2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1],
        }
    }
}

struct Iq2S;
impl Grid for Iq2S {
    const BYTES: usize = 82;
    const FACTOR: f32 = 0.125;
    #[inline(always)]
    fn sub(x: &[u8], ib: usize) -> Sub {
        let idx = |l: usize| x[2 + 4 * ib + l] as usize | (((x[66 + ib] as usize) << (8 - 2 * l)) & 0x300);
        let sc = x[74 + ib] as i16;
        Sub {
            mags: std::array::from_fn(|l| IQ2S_GRID[idx(l)]),
            signs: std::array::from_fn(|l| SIGN_MASKS[x[34 + 4 * ib + l] as usize]),
            ls: [2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1],
        }
    }
}

struct Iq3Xxs;
impl Grid for Iq3Xxs {
    const BYTES: usize = 98;
    const FACTOR: f32 = 0.25;
    #[inline(always)]
    fn sub(x: &[u8], ib: usize) -> Sub {
        let aux = u32_at(x, 66 + 4 * ib);
        let g = |k: usize| IQ3XXS_GRID[x[2 + 8 * ib + k] as usize];
        let ls = (2 * (aux >> 28) + 1) as i16;
        Sub {
            mags: std::array::from_fn(|l| g(2 * l) | (g(2 * l + 1) << 32)),
            signs: std::array::from_fn(|l| parity_signs(aux >> (7 * l))),
            ls: [ls, ls],
        }
    }
}

struct Iq3S;
impl Grid for Iq3S {
    const BYTES: usize = 110;
    const FACTOR: f32 = 1.0;
    #[inline(always)]
    fn sub(x: &[u8], ib: usize) -> Sub {
        let g = |k: usize| IQ3S_GRID[x[2 + 8 * ib + k] as usize | (((x[66 + ib] as usize) << (8 - k)) & 256)];
        let ls = 2 * ((x[106 + ib / 2] >> (4 * (ib % 2))) & 0xF) as i16 + 1;
        Sub {
            mags: std::array::from_fn(|l| g(2 * l) | (g(2 * l + 1) << 32)),
            signs: std::array::from_fn(|l| SIGN_MASKS[x[74 + 4 * ib + l] as usize]),
            ls: [ls, ls],
        }
    }
}

#[inline(always)]
unsafe fn vec4(v: [u64; 4]) -> __m256i {
    _mm256_set_epi64x(v[3] as i64, v[2] as i64, v[1] as i64, v[0] as i64)
}

/// The two halves' scales as i16 multipliers of the 16 pair sums.
#[inline(always)]
unsafe fn half_scales(ls: [i16; 2]) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(ls[1]), _mm_set1_epi16(ls[0]))
}

#[inline(always)]
unsafe fn grid_body<I: Isa, G: Grid>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / 256 {
        let (x, y) = (w.add(i * G::BYTES), a.add(i * 292));
        let blk = std::slice::from_raw_parts(x, G::BYTES);
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            let s = G::sub(blk, ib);
            let m = vec4(s.signs);
            let qy = _mm256_sub_epi8(_mm256_xor_si256(ld256(y.add(4 + 32 * ib)), m), m);
            let p = _mm256_maddubs_epi16(vec4(s.mags), qy);
            sumi = I::madd16(sumi, p, half_scales(s.ls));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ld_f16(x) * ld_f32(y)), _mm256_cvtepi32_ps(sumi), acc);
    }
    G::FACTOR * hsum_ps(acc)
}

/// Sum of 8 i32 lanes.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// IQ1_S: per sub-block the grid sums times the scale; the shift via Q8_K's block sums.
#[inline(always)]
unsafe fn iq1_s_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let ones = _mm256_set1_epi8(1);
    let mut sumf = 0f32;
    for i in 0..n / 256 {
        let (x, y) = (w.add(i * 50), a.add(i * 292));
        let (mut sumi, mut sumi1) = (_mm256_setzero_si256(), 0i32);
        for ib in 0..8 {
            let qh = (x.add(34 + 2 * ib) as *const u16).read_unaligned() as usize;
            let g = vec4(std::array::from_fn(|l| IQ1S_GRID[*x.add(2 + 4 * ib + l) as usize | (((qh >> (3 * l)) & 7) << 8)]));
            let ls = 2 * ((qh >> 12) & 7) as i16 + 1;
            let p = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(ld256(y.add(4 + 32 * ib)), g));
            sumi = I::madd16(sumi, p, _mm256_set1_epi16(ls));
            let bsums = (y.add(260 + 4 * ib) as *const i16).read_unaligned() as i32 + (y.add(262 + 4 * ib) as *const i16).read_unaligned() as i32;
            sumi1 += ls as i32 * if qh & 0x8000 != 0 { -bsums } else { bsums };
        }
        sumf += ld_f16(x) * ld_f32(y) * (hsum_i32(sumi) as f32 + 0.125 * sumi1 as f32);
    }
    sumf
}

/// IQ1_M: scales per 16 elements, a shift sign per group of 8 (activations signed by it).
#[inline(always)]
unsafe fn iq1_m_body<I: Isa>(n: usize, w: *const u8, a: *const u8) -> f32 {
    let ones = _mm256_set1_epi8(1);
    let mut sumf = 0f32;
    for i in 0..n / 256 {
        let (x, y) = (w.add(i * 56), a.add(i * 292));
        let blk = std::slice::from_raw_parts(x, 56);
        let sc = |k: usize| u16::from_le_bytes([blk[48 + 2 * k], blk[49 + 2 * k]]);
        let h = (sc(0) >> 12) | ((sc(1) >> 8) & 0x00F0) | ((sc(2) >> 4) & 0x0F00) | (sc(3) & 0xF000);
        let (mut sum1, mut sum2) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for ib in 0..8 {
            let nib = |l: usize| (blk[32 + 2 * ib + l / 2] >> (4 * (l % 2))) as usize & 0xF;
            let g = vec4(std::array::from_fn(|l| IQ1S_GRID[blk[4 * ib + l] as usize | ((nib(l) & 7) << 8)]));
            let shift = vec4(std::array::from_fn(|l| if nib(l) & 8 != 0 { u64::MAX } else { 0x0101_0101_0101_0101 }));
            let s = (sc(ib / 2) >> (6 * (ib % 2))) as i16;
            let scales = half_scales([2 * (s & 7) + 1, 2 * ((s >> 3) & 7) + 1]);
            let qy = ld256(y.add(4 + 32 * ib));
            sum1 = I::madd16(sum1, _mm256_maddubs_epi16(ones, _mm256_sign_epi8(qy, g)), scales);
            sum2 = I::madd16(sum2, _mm256_maddubs_epi16(ones, _mm256_sign_epi8(qy, shift)), scales);
        }
        let d = crate::util::f16_bits_to_f32(h);
        sumf += d * ld_f32(y) * (hsum_i32(sum1) as f32 + 0.125 * hsum_i32(sum2) as f32);
    }
    sumf
}

macro_rules! grid_entries {
    ($(($avx2:ident, $avx512:ident, $body:ident $(<$fmt:ty>)?, $bytes:expr)),* $(,)?) => {$(
        dot_entry!($avx2, $avx512, $body $(<$fmt>)?, |n, w: &[u8], a: &[u8]| check_blocks(n, w, a, 256, $bytes, 292));
    )*};
}

grid_entries!(
    (dot_iq2_xxs_avx2, dot_iq2_xxs_avx512, grid_body<Iq2Xxs>, 66),
    (dot_iq2_xs_avx2, dot_iq2_xs_avx512, grid_body<Iq2Xs>, 74),
    (dot_iq2_s_avx2, dot_iq2_s_avx512, grid_body<Iq2S>, 82),
    (dot_iq3_xxs_avx2, dot_iq3_xxs_avx512, grid_body<Iq3Xxs>, 98),
    (dot_iq3_s_avx2, dot_iq3_s_avx512, grid_body<Iq3S>, 110),
    (dot_iq1_s_avx2, dot_iq1_s_avx512, iq1_s_body, 50),
    (dot_iq1_m_avx2, dot_iq1_m_avx512, iq1_m_body, 56),
);
