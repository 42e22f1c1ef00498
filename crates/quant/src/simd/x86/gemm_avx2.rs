//! AVX2 tiled kernels (see `crate::gemm`): the same expanded weight rows (`gemm::Rows`)
//! and activation panels as the AVX-512 VNNI kernels, each 16-token panel line read as
//! two 256-bit halves of 8 tokens.
//!
//! AVX2 has no u8 x i8 dot into i32: `maddubs` gives saturating i16 sums of two
//! products, and `madd` then adds those pairs into i32 lanes while multiplying them by
//! an i16 (1, or the sub-block's scale, which saves a multiply later). The i16 sums of
//! `FLUSH` chunks are added before each `madd`, with `FLUSH` chosen per format so no
//! i16 can overflow: 8 x 2 x 15 x 128 < 2^15 for 4-bit values, 4 chunks for 5-bit, 2 for
//! 6-bit. Formats stored +128 (Q8_0, the codebooks) would saturate a single `maddubs`;
//! their bytes go back to signed values and use |w| x sign(a, w), one chunk per flush.
// Index loops over (row, half) tiles read better than zipped iterators here; no closures
// (a closure would be compiled without the entry point's target features).
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::gemm::{expand_rows, Family, Iq4Xs, Rows, FIq4Nl, FMxfp4, FQ4_0, FQ4_1, FQ5_0, FQ5_1, FQ8_0, K4, Q6K, SLAB, TOKEN_GROUPS};
use super::gemm_tiles::MR;
use crate::gemm::{ActPanels, GemmFn, PANEL_TOKENS};
use crate::GgmlType;

/// Per (row, half of the panel): 8 tokens' float sums.
type Acc = [[__m256; 2]; MR];
/// Per (row, half): 8 tokens' integer sums.
type ISums = [[__m256i; 2]; MR];

/// A format's AVX2 tile: rows `r0..r0 + MR` of the expanded slab against token group `g`.
pub(super) trait Tile256: Family {
    unsafe fn tile256(w: &Rows, r0: usize, a: &ActPanels, g: usize) -> Acc;
}

#[inline(always)]
unsafe fn half_f(p: &[f32; 16], h: usize) -> __m256 {
    _mm256_loadu_ps(p.as_ptr().add(8 * h))
}

#[inline(always)]
unsafe fn half_i(p: &[i32; 16], h: usize) -> __m256i {
    _mm256_loadu_si256(p.as_ptr().add(8 * h) as *const __m256i)
}

/// Group `g`'s first panel line, as bytes.
#[inline(always)]
unsafe fn group_lines(a: &ActPanels, g: usize) -> *const u8 {
    a.qs.as_ptr().add(g * (a.k / 4)) as *const u8
}

/// Adds to `acc` the sums over 4-byte chunks `c0..c0 + chunks` of weight x activation,
/// for every (row, half): each run of `FLUSH` chunks' i16 pair sums goes into i32 through
/// one `madd` with `mul[r]` (an i16 in every lane). `SIGNED`: the bytes are stored +128.
#[inline(always)]
unsafe fn add_sums<const FLUSH: usize, const SIGNED: bool>(
    q: *const u8,
    k: usize,
    lines: *const u8,
    c0: usize,
    chunks: usize,
    mul: &[__m256i; MR],
    acc: &mut ISums,
) {
    const { assert!(!SIGNED || FLUSH == 1, "a signed pair sum may reach 32512: no room to add two") };
    debug_assert!(chunks.is_multiple_of(FLUSH));
    let mut c = c0;
    while c < c0 + chunks {
        let mut p = [[_mm256_setzero_si256(); 2]; MR];
        for cc in c..c + FLUSH {
            let a = [
                _mm256_load_si256(lines.add(64 * cc) as *const __m256i),
                _mm256_load_si256(lines.add(64 * cc + 32) as *const __m256i),
            ];
            for r in 0..MR {
                let wv = _mm256_set1_epi32((q.add(r * k + 4 * cc) as *const i32).read_unaligned());
                if SIGNED {
                    let ws = _mm256_xor_si256(wv, _mm256_set1_epi8(-128));
                    let wa = _mm256_abs_epi8(ws);
                    for h in 0..2 {
                        p[r][h] = _mm256_add_epi16(p[r][h], _mm256_maddubs_epi16(wa, _mm256_sign_epi8(a[h], ws)));
                    }
                } else {
                    for h in 0..2 {
                        p[r][h] = _mm256_add_epi16(p[r][h], _mm256_maddubs_epi16(wv, a[h]));
                    }
                }
            }
        }
        for r in 0..MR {
            for h in 0..2 {
                acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(p[r][h], mul[r]));
            }
        }
        c += FLUSH;
    }
}

/// 32-element formats. `X1`: "_1" formats (`+ m * s`); `SIGNED`: bytes stored +128, read
/// back signed; else the bytes carry an offset of `1 << SH`, taken out through the
/// activations' block sums.
#[inline(always)]
unsafe fn legacy_tile<const X1: bool, const SH: i32, const FLUSH: usize, const SIGNED: bool>(
    w: &Rows,
    r0: usize,
    a: &ActPanels,
    g: usize,
) -> Acc {
    let k = a.k;
    let nb = k / 32;
    let q = w.q.as_ptr().add(r0 * k);
    let (dw, mw) = (w.f0.as_ptr().add(r0 * nb), w.f1.as_ptr().add(r0 * nb));
    let lines = group_lines(a, g);
    let ones = [_mm256_set1_epi16(1); MR];
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for b in 0..nb {
        let i = g * nb + b;
        let mut s = [[_mm256_setzero_si256(); 2]; MR];
        if !X1 && !SIGNED {
            let sums = a.ix.get_unchecked(i);
            for h in 0..2 {
                let off = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<SH>(half_i(sums, h)));
                for r in 0..MR {
                    s[r][h] = off;
                }
            }
        }
        add_sums::<FLUSH, SIGNED>(q, k, lines, 8 * b, 8, &ones, &mut s);
        for h in 0..2 {
            let da = half_f(a.d.get_unchecked(i), h);
            for r in 0..MR {
                let scale = _mm256_mul_ps(da, _mm256_set1_ps(*dw.add(r * nb + b)));
                acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][h]), scale, acc[r][h]);
                if X1 {
                    acc[r][h] = _mm256_fmadd_ps(_mm256_set1_ps(*mw.add(r * nb + b)), half_f(a.fx.get_unchecked(i), h), acc[r][h]);
                }
            }
        }
    }
    acc
}

/// Super-block `b`'s `G` equal groups, each group's sums times its row's scale (`scales`
/// at row 0's first scale of this block, `row_stride` apart per row).
#[inline(always)]
unsafe fn scaled_group_sums<const G: usize, const FLUSH: usize, const SIGNED: bool>(
    q: *const u8,
    k: usize,
    lines: *const u8,
    b: usize,
    scales: *const i32,
    row_stride: usize,
) -> ISums {
    let words = 64 / G;
    let mut s = [[_mm256_setzero_si256(); 2]; MR];
    for j in 0..G {
        let mut mul = [_mm256_setzero_si256(); MR];
        for r in 0..MR {
            mul[r] = _mm256_set1_epi16(*scales.add(r * row_stride + j) as i16);
        }
        add_sums::<FLUSH, SIGNED>(q, k, lines, 64 * b + words * j, words, &mul, &mut s);
    }
    s
}

/// Super-block `b`'s eight i16 pairs per row (`pairs` at row 0, `row_stride` apart)
/// against group `g`'s Q8_K bsum pairs.
#[inline(always)]
unsafe fn bsum_pair_sums(a: &ActPanels, g: usize, b: usize, pairs: *const i32, row_stride: usize) -> ISums {
    let nb = a.k / 256;
    let mut s = [[_mm256_setzero_si256(); 2]; MR];
    for p in 0..8 {
        let bs = a.ix.get_unchecked((g * nb + b) * 8 + p);
        for h in 0..2 {
            let bh = half_i(bs, h);
            for r in 0..MR {
                s[r][h] = _mm256_add_epi32(s[r][h], _mm256_madd_epi16(_mm256_set1_epi32(*pairs.add(r * row_stride + p)), bh));
            }
        }
    }
    s
}

/// Q4_K / Q5_K: sub-blocks of 32 with 6-bit scales (`i0`) and mins (`i1` pairs against
/// the bsum pairs), `d` and `dmin` per super-block.
#[inline(always)]
unsafe fn k4_tile<const FLUSH: usize>(w: &Rows, r0: usize, a: &ActPanels, g: usize) -> Acc {
    let k = a.k;
    let nb = k / 256;
    let q = w.q.as_ptr().add(r0 * k);
    let (d, dmin) = (w.f0.as_ptr().add(r0 * nb), w.f1.as_ptr().add(r0 * nb));
    let (sc, mp) = (w.i0.as_ptr().add(r0 * nb * 8), w.i1.as_ptr().add(r0 * nb * 8));
    let lines = group_lines(a, g);
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for b in 0..nb {
        let s1 = scaled_group_sums::<8, FLUSH, false>(q, k, lines, b, sc.add(b * 8), nb * 8);
        let s2 = bsum_pair_sums(a, g, b, mp.add(b * 8), nb * 8);
        for h in 0..2 {
            let da = half_f(a.d.get_unchecked(g * nb + b), h);
            for r in 0..MR {
                let dd = _mm256_mul_ps(da, _mm256_set1_ps(*d.add(r * nb + b)));
                let dm = _mm256_mul_ps(da, _mm256_set1_ps(*dmin.add(r * nb + b)));
                acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1[r][h]), dd, acc[r][h]);
                acc[r][h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(s2[r][h]), dm, acc[r][h]);
            }
        }
    }
    acc
}

/// Super-block formats with `G` equal groups of signed i32 scales (`i0`). Unsigned
/// (Q6_K, +32): the offset goes out as `(1 << SH) * sum_g scale_g * bsum_g` through the
/// scale pairs (`i1`); `SIGNED` (IQ4_XS, +128): the bytes are read back signed.
#[inline(always)]
unsafe fn offset_tile<const G: usize, const SH: i32, const FLUSH: usize, const SIGNED: bool>(
    w: &Rows,
    r0: usize,
    a: &ActPanels,
    g: usize,
) -> Acc {
    let k = a.k;
    let nb = k / 256;
    let q = w.q.as_ptr().add(r0 * k);
    let d = w.f0.as_ptr().add(r0 * nb);
    let (sc, sp) = (w.i0.as_ptr().add(r0 * nb * G), w.i1.as_ptr().add(r0 * nb * 8));
    let lines = group_lines(a, g);
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for b in 0..nb {
        let mut s = scaled_group_sums::<G, FLUSH, SIGNED>(q, k, lines, b, sc.add(b * G), nb * G);
        if !SIGNED {
            let s2 = bsum_pair_sums(a, g, b, sp.add(b * 8), nb * 8);
            for r in 0..MR {
                for h in 0..2 {
                    s[r][h] = _mm256_sub_epi32(s[r][h], _mm256_slli_epi32::<SH>(s2[r][h]));
                }
            }
        }
        for h in 0..2 {
            let da = half_f(a.d.get_unchecked(g * nb + b), h);
            for r in 0..MR {
                let dd = _mm256_mul_ps(da, _mm256_set1_ps(*d.add(r * nb + b)));
                acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r][h]), dd, acc[r][h]);
            }
        }
    }
    acc
}

macro_rules! tile256 {
    ($fam:ty, $body:ident :: <$($p:tt),*>) => {
        impl Tile256 for $fam {
            #[inline(always)]
            unsafe fn tile256(w: &Rows, r0: usize, a: &ActPanels, g: usize) -> Acc {
                $body::<$($p),*>(w, r0, a, g)
            }
        }
    };
}

tile256!(FQ4_0, legacy_tile::<false, 3, 8, false>);
tile256!(FQ4_1, legacy_tile::<true, 0, 8, false>);
tile256!(FQ5_0, legacy_tile::<false, 4, 4, false>);
tile256!(FQ5_1, legacy_tile::<true, 0, 4, false>);
tile256!(FQ8_0, legacy_tile::<false, 7, 1, true>);
tile256!(FIq4Nl, legacy_tile::<false, 7, 1, true>);
tile256!(FMxfp4, legacy_tile::<false, 7, 1, true>);
tile256!(K4<false>, k4_tile::<8>);
tile256!(K4<true>, k4_tile::<4>);
tile256!(Q6K, offset_tile::<16, 5, 2, false>);
tile256!(Iq4Xs, offset_tile::<8, 7, 1, true>);

/// Writes a tile: rows `r0..r0 + MR` (those below `rows`), the 16 tokens of group `g`
/// (those below `n`). A full tile is transposed in registers into one 16-byte store per
/// token (4 consecutive rows).
#[inline(always)]
unsafe fn store(acc: &Acc, r0: usize, rows: usize, g: usize, n: usize, out: *mut f32, ldo: usize) {
    const { assert!(MR == 4) };
    for h in 0..2 {
        let t0 = g * PANEL_TOKENS + 8 * h;
        if r0 + MR <= rows && t0 + 8 <= n {
            let (a0, a1, a2, a3) = (acc[0][h], acc[1][h], acc[2][h], acc[3][h]);
            let (l01, h01) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
            let (l23, h23) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
            // u[j]: rows 0..4 of token j (low 128 bits) and of token 4 + j (high).
            let u = [
                _mm256_shuffle_ps::<0x44>(l01, l23),
                _mm256_shuffle_ps::<0xEE>(l01, l23),
                _mm256_shuffle_ps::<0x44>(h01, h23),
                _mm256_shuffle_ps::<0xEE>(h01, h23),
            ];
            let p = out.add(t0 * ldo + r0);
            for (j, v) in u.iter().enumerate() {
                _mm_storeu_ps(p.add(j * ldo), _mm256_castps256_ps128(*v));
                _mm_storeu_ps(p.add((4 + j) * ldo), _mm256_extractf128_ps::<1>(*v));
            }
            continue;
        }
        let mut tmp = [0f32; 8];
        for (r, acc_r) in acc.iter().enumerate().take(rows.saturating_sub(r0).min(MR)) {
            _mm256_storeu_ps(tmp.as_mut_ptr(), acc_r[h]);
            for (l, x) in tmp.iter().enumerate().take(n.saturating_sub(t0).min(8)) {
                *out.add((t0 + l) * ldo + r0 + r) = *x;
            }
        }
    }
}

/// The driver: slabs of expanded rows, blocks of token groups, 4-row tiles.
#[inline(always)]
unsafe fn run<F: Tile256>(w: &[u8], a: &ActPanels, out: *mut f32, ldo: usize) {
    let k = a.k;
    let rb = F::TY.bytes_for(k as u64).expect("k whole blocks") as usize;
    let rows = w.len() / rb;
    let mut buf = Rows { q: Vec::new(), f0: Vec::new(), f1: Vec::new(), i0: Vec::new(), i1: Vec::new() };
    for s0 in (0..rows).step_by(SLAB) {
        let s1 = (s0 + SLAB).min(rows);
        expand_rows::<F>(w, rb, k, s0..s1, MR, &mut buf);
        let out = out.add(s0);
        for gb in (0..a.groups).step_by(TOKEN_GROUPS) {
            for r0 in (0..s1 - s0).step_by(MR) {
                for g in gb..(gb + TOKEN_GROUPS).min(a.groups) {
                    store(&F::tile256(&buf, r0, a, g), r0, s1 - s0, g, a.n, out, ldo);
                }
            }
        }
    }
}

tiled_entries!(
    /// The AVX2 tiled kernel for a weight type (AVX2 checked by the caller).
    gemm_kernel_avx2,
    "avx2,fma,f16c",
    super::has_avx2()
);
