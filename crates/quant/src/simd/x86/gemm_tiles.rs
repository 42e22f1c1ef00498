//! The tile kernels: `MR` expanded weight rows x `NR` panels of 16 tokens.
//!
//! For each 4-byte chunk of a block: one panel load per token group, one broadcast
//! per row, `MR * NR` `dpbusd` (u8 weights x i8 activations, exact i32 sums per lane =
//! per token). Then per block (or sub-block) the integer sums are scaled: lanes are
//! tokens, so every scale is one broadcast and the work is shared by 16 tokens.
// Index loops over (row, group) tiles read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::gemm::Rows;
use crate::gemm::ActPanels;

/// Weight rows per tile.
pub(super) const MR: usize = 4;

type Acc<const NR: usize> = [[__m512; NR]; MR];

/// `init[g]` plus the integer sums of `chunks` consecutive 4-byte chunks starting at
/// chunk `c0`, for every (row, group) of the tile.
#[inline(always)]
unsafe fn isums<const NR: usize>(
    q: *const u8,
    k: usize,
    qs: *const __m512i,
    stride: usize,
    c0: usize,
    chunks: usize,
    init: [__m512i; NR],
) -> [[__m512i; NR]; MR] {
    let mut s = [init; MR];
    for c in c0..c0 + chunks {
        let mut av = [_mm512_setzero_si512(); NR];
        for (g, v) in av.iter_mut().enumerate() {
            *v = _mm512_load_si512(qs.add(g * stride + c) as *const _);
        }
        for (r, sr) in s.iter_mut().enumerate() {
            let wv = _mm512_set1_epi32((q.add(r * k + 4 * c) as *const i32).read_unaligned());
            for g in 0..NR {
                sr[g] = _mm512_dpbusd_epi32(sr[g], wv, av[g]);
            }
        }
    }
    s
}

#[inline(always)]
unsafe fn panel_ptr(a: &ActPanels, g0: usize) -> *const __m512i {
    a.qs.as_ptr().add(g0 * (a.k / 4)) as *const __m512i
}

#[inline(always)]
pub(super) unsafe fn ld(p: &[f32; 16]) -> __m512 {
    _mm512_loadu_ps(p.as_ptr())
}

#[inline(always)]
pub(super) unsafe fn ldi(p: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(p.as_ptr() as *const _)
}

/// 32-element formats. `X1`: "_1" formats (`+ m * s`); else the weight bytes carry an
/// offset of `1 << SH`, taken out as `(1 << SH) * sum(a)` per block.
#[inline(always)]
pub(super) unsafe fn legacy_tile<const NR: usize, const X1: bool, const SH: u32>(
    w: &Rows,
    r0: usize,
    a: &ActPanels,
    g0: usize,
) -> Acc<NR> {
    let k = a.k;
    let (nb, stride) = (k / 32, k / 4);
    let q = w.q.as_ptr().add(r0 * k);
    let (dw, mw) = (w.f0.as_ptr().add(r0 * nb), w.f1.as_ptr().add(r0 * nb));
    let qs = panel_ptr(a, g0);
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    for b in 0..nb {
        // The offset correction is the sums' starting value.
        let mut init = [_mm512_setzero_si512(); NR];
        if !X1 {
            for (g, v) in init.iter_mut().enumerate() {
                *v = _mm512_sub_epi32(*v, _mm512_slli_epi32::<SH>(ldi(a.ix.get_unchecked((g0 + g) * nb + b))));
            }
        }
        let s = isums::<NR>(q, k, qs, stride, 8 * b, 8, init);
        for g in 0..NR {
            let i = (g0 + g) * nb + b;
            let da = ld(a.d.get_unchecked(i));
            for r in 0..MR {
                let iv = s[r][g];
                let scale = _mm512_mul_ps(da, _mm512_set1_ps(*dw.add(r * nb + b)));
                acc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iv), scale, acc[r][g]);
                if X1 {
                    acc[r][g] = _mm512_fmadd_ps(_mm512_set1_ps(*mw.add(r * nb + b)), ld(a.fx.get_unchecked(i)), acc[r][g]);
                }
            }
        }
    }
    acc
}

/// Super-block `b`'s integer sums over its `G` equal groups, each times its row's i32
/// scale: `scales` points at row 0's first scale of this block, `row_stride` apart per row.
#[inline(always)]
unsafe fn scaled_group_sums<const NR: usize, const G: usize>(
    q: *const u8,
    k: usize,
    qs: *const __m512i,
    stride: usize,
    b: usize,
    scales: *const i32,
    row_stride: usize,
) -> [[__m512i; NR]; MR] {
    // 64 words of 4 quants per super-block, G groups of 64 / G words.
    let words = 64 / G;
    let mut s1 = [[_mm512_setzero_si512(); NR]; MR];
    for j in 0..G {
        let s = isums::<NR>(q, k, qs, stride, 64 * b + words * j, words, [_mm512_setzero_si512(); NR]);
        for r in 0..MR {
            let scale = _mm512_set1_epi32(*scales.add(r * row_stride + j));
            for g in 0..NR {
                s1[r][g] = _mm512_add_epi32(s1[r][g], _mm512_mullo_epi32(s[r][g], scale));
            }
        }
    }
    s1
}

/// Super-block `b`'s eight i16 pairs per row (mins or scales, `pairs` at row 0, `row_stride`
/// apart) against the token groups' Q8_K bsum pairs (`dpwssd`).
#[inline(always)]
unsafe fn bsum_pair_sums<const NR: usize>(a: &ActPanels, g0: usize, b: usize, pairs: *const i32, row_stride: usize) -> [[__m512i; NR]; MR] {
    let nb = a.k / 256;
    let mut s2 = [[_mm512_setzero_si512(); NR]; MR];
    for p in 0..8 {
        for g in 0..NR {
            let bs = ldi(&a.ix[((g0 + g) * nb + b) * 8 + p]);
            for r in 0..MR {
                s2[r][g] = _mm512_dpwssd_epi32(s2[r][g], _mm512_set1_epi32(*pairs.add(r * row_stride + p)), bs);
            }
        }
    }
    s2
}

/// Q4_K / Q5_K: sub-blocks of 32 with 6-bit scales (`i0`) and mins (`i1`, as pairs
/// against Q8_K's bsum pairs), `d` and `dmin` per super-block.
#[inline(always)]
pub(super) unsafe fn k4_tile<const NR: usize>(w: &Rows, r0: usize, a: &ActPanels, g0: usize) -> Acc<NR> {
    let k = a.k;
    let (nb, stride) = (k / 256, k / 4);
    let q = w.q.as_ptr().add(r0 * k);
    let (d, dmin) = (w.f0.as_ptr().add(r0 * nb), w.f1.as_ptr().add(r0 * nb));
    let (sc, mp) = (w.i0.as_ptr().add(r0 * nb * 8), w.i1.as_ptr().add(r0 * nb * 8));
    let qs = panel_ptr(a, g0);
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    for b in 0..nb {
        let s1 = scaled_group_sums::<NR, 8>(q, k, qs, stride, b, sc.add(b * 8), nb * 8);
        let s2 = bsum_pair_sums::<NR>(a, g0, b, mp.add(b * 8), nb * 8);
        for g in 0..NR {
            let da = ld(&a.d[(g0 + g) * nb + b]);
            for r in 0..MR {
                let dd = _mm512_mul_ps(da, _mm512_set1_ps(*d.add(r * nb + b)));
                let dm = _mm512_mul_ps(da, _mm512_set1_ps(*dmin.add(r * nb + b)));
                acc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[r][g]), dd, acc[r][g]);
                acc[r][g] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(s2[r][g]), dm, acc[r][g]);
            }
        }
    }
    acc
}

/// Formats whose unsigned bytes carry an offset of `1 << SH` and whose `G` equal groups
/// per super-block have signed i32 scales (`i0`): the offset is taken out exactly as
/// `(1 << SH) * sum_g scale_g * bsum_g`, the scales also stored as i16 pairs (`i1`, one
/// per two Q8_K bsums) for `dpwssd`. Q6_K: 16 groups of 16, +32; IQ4_XS: 8 groups of 32
/// (pairs of equal scales), +128.
#[inline(always)]
pub(super) unsafe fn offset_tile<const NR: usize, const G: usize, const SH: u32>(w: &Rows, r0: usize, a: &ActPanels, g0: usize) -> Acc<NR> {
    let k = a.k;
    let (nb, stride) = (k / 256, k / 4);
    let q = w.q.as_ptr().add(r0 * k);
    let d = w.f0.as_ptr().add(r0 * nb);
    let (sc, sp) = (w.i0.as_ptr().add(r0 * nb * G), w.i1.as_ptr().add(r0 * nb * 8));
    let qs = panel_ptr(a, g0);
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    for b in 0..nb {
        let s1 = scaled_group_sums::<NR, G>(q, k, qs, stride, b, sc.add(b * G), nb * G);
        let s2 = bsum_pair_sums::<NR>(a, g0, b, sp.add(b * 8), nb * 8);
        for g in 0..NR {
            let da = ld(&a.d[(g0 + g) * nb + b]);
            for r in 0..MR {
                let dd = _mm512_mul_ps(da, _mm512_set1_ps(*d.add(r * nb + b)));
                let tot = _mm512_sub_epi32(s1[r][g], _mm512_slli_epi32::<SH>(s2[r][g]));
                acc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), dd, acc[r][g]);
            }
        }
    }
    acc
}
