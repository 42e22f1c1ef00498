//! AMX tiled kernels (see `crate::gemm`): the integer products on the tile unit, the
//! scales on AVX-512.
//!
//! The weight rows are expanded exactly as for the VNNI kernels (`gemm::Rows`: one
//! unsigned byte per element, row-major), and the activation panels already have the tile
//! unit's B layout (each 64-byte line holds 4 consecutive bytes of 16 tokens). So one
//! `tdpbusd` multiplies 16 weight rows (an A tile read straight out of the expanded rows,
//! stride `k`) by 16 tokens over one scale group of the format (32 elements; Q6_K's 16),
//! giving the group's exact i32 sums for the 16 x 16 pairs. They go through a 1 KiB
//! scratch to AVX-512 registers whose lanes are the tokens, where the per-group scales
//! are applied with the very operations, in the very order, of the VNNI tiles
//! (`gemm_tiles`): the integer sums being equal, the outputs are the same bits.
//!
//! Tile use: two sets (tmm0-2, tmm3-5), alternately, of the sums (16 x 16 i32), the
//! weights (16 rows x G bytes) and the activations (G/4 lines x 64 bytes). Every call
//! loads its own configuration and releases the tiles, so a thread never carries tile
//! state out of a kernel.
// Index loops over tile rows read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::arch::asm;
use std::arch::x86_64::*;

use super::gemm_tiles::{ld, ldi};
use super::gemm::{
    expand_rows, store, FIq4Nl, FMxfp4, Family, Iq4Xs, Rows, FQ4_0, FQ4_1, FQ5_0, FQ5_1, FQ8_0, K4,
    Q6K, SLAB, TOKEN_GROUPS,
};
use crate::gemm::{ActPanels, GemmFn};
use crate::GgmlType;

/// Weight rows per tile (the tile unit's 16 rows).
const TR: usize = 16;

/// The i32 sums of a block's scale groups (up to 16), one 16 x 16 tile each, written by
/// `tilestored`; two blocks' worth, so that the next block's products are on the tile
/// unit while this block's sums are scaled (reading a tile store back at once stalls).
#[repr(C, align(64))]
struct Sums([[[[i32; 16]; TR]; 16]; 2]);

/// Palette 1: two sets of three tiles (tmm0-2 and tmm3-5, used alternately): sums
/// 16 x 64 bytes, weights 16 rows x `g` bytes, activations g/4 lines x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn for_group(g: usize) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut tile = |t: usize, rows: usize, colsb: usize| {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
            c[48 + t] = rows as u8;
        };
        for set in [0, 3] {
            tile(set, 16, 64);
            tile(set + 1, 16, g);
            tile(set + 2, g / 4, 64);
        }
        TileConfig(c)
    }
}

macro_rules! group_product {
    ($name:ident, $c:literal, $a:literal, $b:literal) => {
        /// `sums` = rows `q[0..16]` (each `k` bytes apart, from the group's first byte)
        /// times the panel lines at `b` (G/4 lines of 64 bytes).
        #[inline(always)]
        unsafe fn $name(q: *const u8, k: usize, b: *const u8, sums: *mut [i32; 16]) {
            asm!(
                concat!("tilezero tmm", $c),
                concat!("tileloadd tmm", $a, ", [{q} + {k}*1]"),
                concat!("tileloadd tmm", $b, ", [{b} + {line}*1]"),
                concat!("tdpbusd tmm", $c, ", tmm", $a, ", tmm", $b),
                concat!("tilestored [{s} + {line}*1], tmm", $c),
                q = in(reg) q,
                k = in(reg) k,
                b = in(reg) b,
                s = in(reg) sums,
                line = in(reg) 64usize,
                options(nostack),
            );
        }
    };
}
group_product!(group_product_0, "0", "1", "2");
group_product!(group_product_1, "3", "4", "5");

/// The products of one block's `groups` scale groups of `ge` elements each (the weights
/// from `q`, row stride `k`; the panel lines from `p`) into `out`, alternating the two
/// tile sets starting with `first`.
#[inline(always)]
unsafe fn block_products(
    q: *const u8,
    k: usize,
    p: *const u8,
    groups: usize,
    ge: usize,
    first: usize,
    out: &mut [[[i32; 16]; TR]; 16],
) {
    for j in 0..groups {
        let (qj, pj, sj) = (q.add(ge * j), p.add(64 * (ge / 4) * j), out[j].as_mut_ptr());
        if (first + j).is_multiple_of(2) {
            group_product_0(qj, k, pj, sj);
        } else {
            group_product_1(qj, k, pj, sj);
        }
    }
}

/// The per-family AMX tile: rows `r0..r0 + 16` of `w` against token group `g`.
trait AmxFamily: Family {
    /// Elements per scale group (one `tdpbusd`).
    const GROUP: usize;
    unsafe fn amx_tile(w: &Rows, r0: usize, a: &ActPanels, g: usize, s: &mut Sums) -> [__m512; TR];
}

#[inline(always)]
unsafe fn lines(a: &ActPanels, g: usize) -> *const u8 {
    a.qs.as_ptr().add(g * (a.k / 4)) as *const u8
}

/// 32-element formats, as `gemm_tiles::legacy_tile`.
#[inline(always)]
unsafe fn legacy<const X1: bool, const SH: u32>(
    w: &Rows,
    r0: usize,
    a: &ActPanels,
    g: usize,
    s: &mut Sums,
) -> [__m512; TR] {
    let k = a.k;
    let nb = k / 32;
    let q = w.q.as_ptr().add(r0 * k);
    let (dw, mw) = (w.f0.as_ptr().add(r0 * nb), w.f1.as_ptr().add(r0 * nb));
    let p = lines(a, g);
    let mut acc = [_mm512_setzero_ps(); TR];
    block_products(q, k, p, 1, 32, 0, &mut s.0[0]);
    for b in 0..nb {
        if b + 1 < nb {
            block_products(
                q.add(32 * (b + 1)),
                k,
                p.add(64 * 8 * (b + 1)),
                1,
                32,
                b + 1,
                &mut s.0[(b + 1) % 2],
            );
        }
        let sums = &s.0[b % 2][0];
        let i = g * nb + b;
        // Offset formats only: Q8_1 panels ("_1" formats) carry no block sums.
        let off = if X1 { _mm512_setzero_si512() } else { _mm512_slli_epi32::<SH>(ldi(a.ix.get_unchecked(i))) };
        let da = ld(a.d.get_unchecked(i));
        for r in 0..TR {
            let mut iv = ldi(&sums[r]);
            if !X1 {
                iv = _mm512_sub_epi32(iv, off);
            }
            let scale = _mm512_mul_ps(da, _mm512_set1_ps(*dw.add(r * nb + b)));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iv), scale, acc[r]);
            if X1 {
                acc[r] = _mm512_fmadd_ps(
                    _mm512_set1_ps(*mw.add(r * nb + b)),
                    ld(a.fx.get_unchecked(i)),
                    acc[r],
                );
            }
        }
    }
    acc
}

/// The products of super-block `b`'s `G` groups into `s` (half `b % 2`).
#[inline(always)]
unsafe fn super_block_products<const G: usize>(
    w: &Rows,
    r0: usize,
    a: &ActPanels,
    g: usize,
    b: usize,
    s: &mut Sums,
) {
    let k = a.k;
    let q = w.q.as_ptr().add(r0 * k + 256 * b);
    let p = lines(a, g).add(64 * 64 * b);
    block_products(q, k, p, G, 256 / G, 0, &mut s.0[b % 2]);
}

/// Super-block `b` from its products (in `s`): per row the scaled sum
/// `sum_j scale_j * sums_j` (scales `i0`, `G` per block) and the pair sums of the `i1`
/// pairs against the Q8_K bsum pairs, as `gemm_tiles::{scaled_group_sums, bsum_pair_sums}`.
/// The next super-block's products are issued first.
#[inline(always)]
unsafe fn super_block<const G: usize>(
    w: &Rows,
    r0: usize,
    a: &ActPanels,
    g: usize,
    b: usize,
    s: &mut Sums,
) -> ([__m512i; TR], [__m512i; TR]) {
    let nb = a.k / 256;
    if b + 1 < nb {
        super_block_products::<G>(w, r0, a, g, b + 1, s);
    }
    let sums = &s.0[b % 2];
    let (sc, pairs) = (
        w.i0.as_ptr().add((r0 * nb + b) * G),
        w.i1.as_ptr().add((r0 * nb + b) * 8),
    );
    let bs: [__m512i; 8] = std::array::from_fn(|p| ldi(&a.ix[(g * nb + b) * 8 + p]));
    let mut s1 = [_mm512_setzero_si512(); TR];
    let mut s2 = [_mm512_setzero_si512(); TR];
    for r in 0..TR {
        for j in 0..G {
            let scale = _mm512_set1_epi32(*sc.add(r * nb * G + j));
            s1[r] = _mm512_add_epi32(s1[r], _mm512_mullo_epi32(ldi(&sums[j][r]), scale));
        }
        for (pi, v) in bs.iter().enumerate() {
            s2[r] = _mm512_dpwssd_epi32(s2[r], _mm512_set1_epi32(*pairs.add(r * nb * 8 + pi)), *v);
        }
    }
    (s1, s2)
}

/// Q4_K / Q5_K, as `gemm_tiles::k4_tile`.
#[inline(always)]
unsafe fn k4(w: &Rows, r0: usize, a: &ActPanels, g: usize, s: &mut Sums) -> [__m512; TR] {
    let nb = a.k / 256;
    let (d, dmin) = (w.f0.as_ptr().add(r0 * nb), w.f1.as_ptr().add(r0 * nb));
    let mut acc = [_mm512_setzero_ps(); TR];
    super_block_products::<8>(w, r0, a, g, 0, s);
    for b in 0..nb {
        let (s1, s2) = super_block::<8>(w, r0, a, g, b, s);
        let da = ld(&a.d[g * nb + b]);
        for r in 0..TR {
            let dd = _mm512_mul_ps(da, _mm512_set1_ps(*d.add(r * nb + b)));
            let dm = _mm512_mul_ps(da, _mm512_set1_ps(*dmin.add(r * nb + b)));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[r]), dd, acc[r]);
            acc[r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(s2[r]), dm, acc[r]);
        }
    }
    acc
}

/// Q6_K (`G` = 16, +32) and IQ4_XS (`G` = 8, +128), as `gemm_tiles::offset_tile`.
#[inline(always)]
unsafe fn offset<const G: usize, const SH: u32>(
    w: &Rows,
    r0: usize,
    a: &ActPanels,
    g: usize,
    s: &mut Sums,
) -> [__m512; TR] {
    let nb = a.k / 256;
    let d = w.f0.as_ptr().add(r0 * nb);
    let mut acc = [_mm512_setzero_ps(); TR];
    super_block_products::<G>(w, r0, a, g, 0, s);
    for b in 0..nb {
        let (s1, s2) = super_block::<G>(w, r0, a, g, b, s);
        let da = ld(&a.d[g * nb + b]);
        for r in 0..TR {
            let dd = _mm512_mul_ps(da, _mm512_set1_ps(*d.add(r * nb + b)));
            let tot = _mm512_sub_epi32(s1[r], _mm512_slli_epi32::<SH>(s2[r]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), dd, acc[r]);
        }
    }
    acc
}

macro_rules! amx_family {
    ($fam:ty, $group:expr, $body:expr) => {
        impl AmxFamily for $fam {
            const GROUP: usize = $group;
            #[inline(always)]
            unsafe fn amx_tile(
                w: &Rows,
                r0: usize,
                a: &ActPanels,
                g: usize,
                s: &mut Sums,
            ) -> [__m512; TR] {
                ($body)(w, r0, a, g, s)
            }
        }
    };
}

amx_family!(FQ4_0, 32, legacy::<false, 3>);
amx_family!(FQ5_0, 32, legacy::<false, 4>);
amx_family!(FQ8_0, 32, legacy::<false, 7>);
amx_family!(FIq4Nl, 32, legacy::<false, 7>);
amx_family!(FMxfp4, 32, legacy::<false, 7>);
amx_family!(FQ4_1, 32, legacy::<true, 0>);
amx_family!(FQ5_1, 32, legacy::<true, 0>);
amx_family!(K4<false>, 32, k4);
amx_family!(K4<true>, 32, k4);
amx_family!(Q6K, 16, offset::<16, 5>);
amx_family!(Iq4Xs, 32, offset::<8, 7>);

#[inline(always)]
unsafe fn run<F: AmxFamily>(w: &[u8], a: &ActPanels, out: *mut f32, ldo: usize) {
    let k = a.k;
    let rb = F::TY.bytes_for(k as u64).expect("k whole blocks") as usize;
    let rows = w.len() / rb;
    let mut buf = Rows {
        q: Vec::new(),
        f0: Vec::new(),
        f1: Vec::new(),
        i0: Vec::new(),
        i1: Vec::new(),
    };
    let mut sums = Box::new(Sums([[[[0; 16]; TR]; 16]; 2]));
    let cfg = TileConfig::for_group(F::GROUP);
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    for s0 in (0..rows).step_by(SLAB) {
        let s1 = (s0 + SLAB).min(rows);
        expand_rows::<F>(w, rb, k, s0..s1, TR, &mut buf);
        let out = out.add(s0);
        for gb in (0..a.groups).step_by(TOKEN_GROUPS) {
            let ge = (gb + TOKEN_GROUPS).min(a.groups);
            for r0 in (0..s1 - s0).step_by(TR) {
                for g in gb..ge {
                    let acc = F::amx_tile(&buf, r0, a, g, &mut sums);
                    for i in (0..TR).step_by(4) {
                        if r0 + i < s1 - s0 {
                            store::<1>(
                                &[[acc[i]], [acc[i + 1]], [acc[i + 2]], [acc[i + 3]]],
                                r0 + i,
                                s1 - s0,
                                g,
                                a.n,
                                out,
                                ldo,
                            );
                        }
                    }
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

tiled_entries!(
    /// The AMX tiled kernel for a weight type (the probe and AVX-512 VNNI checked by the caller).
    gemm_kernel_amx,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    super::has_avx512vnni() && crate::amx_support().is_usable()
);
