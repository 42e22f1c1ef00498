//! AVX-512 VNNI tiled kernels (see `crate::gemm`): the driver and the weight expansion
//! (shared with the AVX2 kernels of `gemm_avx2`).
//!
//! Weight rows are expanded, a slab at a time, into [`Rows`]: one unsigned byte per
//! element (the value plus the format's offset) and per-block scales. The tile
//! kernels (`gemm_tiles`) then compute 4 rows x 16 or 32 tokens per call, reading each
//! 4-byte weight chunk as a broadcast and the tokens' chunks as one panel vector.
// Index loops over (row, group) tiles read better than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::gemm_tiles::{k4_tile, legacy_tile, offset_tile, MR};
use crate::blocks::k_quants::scale_min_k4;
use crate::blocks::nonlinear::{e8m0_half, iq4_xs_scale};
use crate::tables::{KVALUES_FP4, KVALUES_IQ4NL};
use crate::gemm::{ActPanels, GemmFn, PANEL_TOKENS};
use crate::util::rd_f16;
use crate::GgmlType;

/// Rows expanded per slab (kept in L1/L2 while every token block passes over them).
pub(super) const SLAB: usize = 32;
/// Token groups per block (128 tokens: their panels stay in L2 across a slab).
pub(super) const TOKEN_GROUPS: usize = 8;

/// Expanded weight rows (a multiple of [`MR`], padding rows all zero), row-major.
pub(super) struct Rows {
    /// One unsigned byte per element, `k` per row.
    pub q: Vec<u8>,
    /// Per block: the scale (`d`).
    pub f0: Vec<f32>,
    /// Per block: the min (`m` of "_1" formats, `dmin` of K-quants).
    pub f1: Vec<f32>,
    /// Per block, `NI0` integer sub-block scales.
    pub i0: Vec<i32>,
    /// Per block, `NI1` pairs of i16 (mins or scales) for `dpwssd`.
    pub i1: Vec<i32>,
}

/// One weight format: its block geometry, its expansion, its tile kernel.
pub(super) trait Family {
    const TY: GgmlType;
    const NI0: usize;
    const NI1: usize;
    /// Expand one block: `q` gets `block_size` bytes; `i0`/`i1` get `NI0`/`NI1` values.
    fn expand(blk: &[u8], q: &mut [u8], f0: &mut f32, f1: &mut f32, i0: &mut [i32], i1: &mut [i32]);
    /// Rows `r0..r0 + MR` of `w` against token groups `g0..g0 + NR`.
    unsafe fn tile<const NR: usize>(w: &Rows, r0: usize, a: &ActPanels, g0: usize) -> [[__m512; NR]; MR];
}

#[inline(always)]
fn nibbles(qs: &[u8], q: &mut [u8]) {
    for j in 0..16 {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
}

#[inline(always)]
fn fifth_bits(qh: &[u8], q: &mut [u8]) {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (j, v) in q.iter_mut().enumerate().take(32) {
        *v |= (((h >> j) & 1) << 4) as u8;
    }
}

macro_rules! legacy_family {
    ($name:ident, $ty:expr, $x1:expr, $sh:expr, |$blk:ident, $q:ident, $f0:ident, $f1:ident| $expand:block) => {
        pub(super) struct $name;
        impl Family for $name {
            const TY: GgmlType = $ty;
            const NI0: usize = 0;
            const NI1: usize = 0;
            #[inline(always)]
            fn expand($blk: &[u8], $q: &mut [u8], $f0: &mut f32, $f1: &mut f32, _: &mut [i32], _: &mut [i32]) {
                $expand
            }
            #[inline(always)]
            unsafe fn tile<const NR: usize>(w: &Rows, r0: usize, a: &ActPanels, g0: usize) -> [[__m512; NR]; MR] {
                legacy_tile::<NR, $x1, $sh>(w, r0, a, g0)
            }
        }
    };
}

legacy_family!(FQ4_0, GgmlType::Q4_0, false, 3, |b, q, f0, _f1| {
    *f0 = rd_f16(b, 0);
    nibbles(&b[2..18], q);
});
legacy_family!(FQ5_0, GgmlType::Q5_0, false, 4, |b, q, f0, _f1| {
    *f0 = rd_f16(b, 0);
    nibbles(&b[6..22], q);
    fifth_bits(&b[2..6], q);
});
legacy_family!(FQ8_0, GgmlType::Q8_0, false, 7, |b, q, f0, _f1| {
    *f0 = rd_f16(b, 0);
    for j in 0..32 {
        q[j] = b[2 + j] ^ 0x80; // i8 + 128
    }
});
/// 16 packed bytes -> 32 codebook values + 128 (low nibbles first), by byte shuffles.
#[inline(always)]
fn codebook(qs: &[u8], table: &[i8; 16], q: &mut [u8]) {
    assert!(qs.len() >= 16 && q.len() >= 32);
    // SAFETY: in bounds (checked above); SSSE3 is part of both the AVX2 and the AVX-512
    // levels, and `expand` runs only inside tiled entry points, handed out after run-time
    // detection.
    unsafe {
        let t = _mm_xor_si128(_mm_loadu_si128(table.as_ptr() as *const __m128i), _mm_set1_epi8(-128));
        let raw = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        let m4 = _mm_set1_epi8(0x0F);
        let lo = _mm_shuffle_epi8(t, _mm_and_si128(raw, m4));
        let hi = _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16(raw, 4), m4));
        _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, lo);
        _mm_storeu_si128(q.as_mut_ptr().add(16) as *mut __m128i, hi);
    }
}

legacy_family!(FIq4Nl, GgmlType::IQ4_NL, false, 7, |b, q, f0, _f1| {
    *f0 = rd_f16(b, 0);
    codebook(&b[2..18], &KVALUES_IQ4NL, q);
});
legacy_family!(FMxfp4, GgmlType::MXFP4, false, 7, |b, q, f0, _f1| {
    *f0 = e8m0_half(b[0]);
    codebook(&b[1..17], &KVALUES_FP4, q);
});
legacy_family!(FQ4_1, GgmlType::Q4_1, true, 0, |b, q, f0, f1| {
    (*f0, *f1) = (rd_f16(b, 0), rd_f16(b, 2));
    nibbles(&b[4..20], q);
});
legacy_family!(FQ5_1, GgmlType::Q5_1, true, 0, |b, q, f0, f1| {
    (*f0, *f1) = (rd_f16(b, 0), rd_f16(b, 2));
    nibbles(&b[8..24], q);
    fifth_bits(&b[4..8], q);
});

/// Q4_K (`Q5 = false`) and Q5_K (`Q5 = true`).
pub(super) struct K4<const Q5: bool>;
impl<const Q5: bool> Family for K4<Q5> {
    const TY: GgmlType = if Q5 { GgmlType::Q5_K } else { GgmlType::Q4_K };
    const NI0: usize = 8;
    const NI1: usize = 8;
    #[inline(always)]
    fn expand(b: &[u8], q: &mut [u8], f0: &mut f32, f1: &mut f32, i0: &mut [i32], i1: &mut [i32]) {
        (*f0, *f1) = (rd_f16(b, 0), rd_f16(b, 2));
        let (sc, m) = scale_min_k4(&b[4..16]);
        for j in 0..8 {
            i0[j] = sc[j] as i32;
            i1[j] = m[j] as i32 | ((m[j] as i32) << 16);
        }
        let ql = if Q5 { &b[48..176] } else { &b[16..144] };
        for j in 0..4 {
            for l in 0..32 {
                let v = ql[32 * j + l];
                q[64 * j + l] = v & 0x0F;
                q[64 * j + 32 + l] = v >> 4;
            }
            if Q5 {
                let qh = &b[16..48];
                for l in 0..32 {
                    q[64 * j + l] |= ((qh[l] >> (2 * j)) & 1) << 4;
                    q[64 * j + 32 + l] |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
                }
            }
        }
    }
    #[inline(always)]
    unsafe fn tile<const NR: usize>(w: &Rows, r0: usize, a: &ActPanels, g0: usize) -> [[__m512; NR]; MR] {
        k4_tile::<NR>(w, r0, a, g0)
    }
}

pub(super) struct Q6K;
impl Family for Q6K {
    const TY: GgmlType = GgmlType::Q6_K;
    const NI0: usize = 16;
    const NI1: usize = 8;
    #[inline(always)]
    fn expand(b: &[u8], q: &mut [u8], f0: &mut f32, _f1: &mut f32, i0: &mut [i32], i1: &mut [i32]) {
        *f0 = rd_f16(b, 208);
        let sc = |g: usize| b[192 + g] as i8 as i32;
        for g in 0..16 {
            i0[g] = sc(g);
        }
        for p in 0..8 {
            i1[p] = (sc(2 * p) & 0xFFFF) | (sc(2 * p + 1) << 16);
        }
        for h in 0..2 {
            let (ql, qh, y) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..160 + 32 * h], &mut q[128 * h..]);
            for l in 0..32 {
                y[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                y[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
    }
    #[inline(always)]
    unsafe fn tile<const NR: usize>(w: &Rows, r0: usize, a: &ActPanels, g0: usize) -> [[__m512; NR]; MR] {
        offset_tile::<NR, 16, 5>(w, r0, a, g0)
    }
}

/// IQ4_XS: eight sub-blocks of 32 with scales `ls - 32`, values stored +128.
pub(super) struct Iq4Xs;
impl Family for Iq4Xs {
    const TY: GgmlType = GgmlType::IQ4_XS;
    const NI0: usize = 8;
    const NI1: usize = 8;
    #[inline(always)]
    fn expand(b: &[u8], q: &mut [u8], f0: &mut f32, _f1: &mut f32, i0: &mut [i32], i1: &mut [i32]) {
        *f0 = rd_f16(b, 0);
        for ib in 0..8 {
            let ls = iq4_xs_scale(b, ib) - 32;
            i0[ib] = ls;
            i1[ib] = (ls & 0xFFFF) | (ls << 16);
            codebook(&b[8 + 16 * ib..24 + 16 * ib], &KVALUES_IQ4NL, &mut q[32 * ib..32 * ib + 32]);
        }
    }
    #[inline(always)]
    unsafe fn tile<const NR: usize>(w: &Rows, r0: usize, a: &ActPanels, g0: usize) -> [[__m512; NR]; MR] {
        offset_tile::<NR, 8, 7>(w, r0, a, g0)
    }
}

/// Expand rows `rows` of `w` (`rb` bytes each) into `dst`, padded with zero rows to a
/// multiple of `tile_rows`.
#[inline(always)]
pub(super) fn expand_rows<F: Family>(w: &[u8], rb: usize, k: usize, rows: std::ops::Range<usize>, tile_rows: usize, dst: &mut Rows) {
    let (bs, bb) = (F::TY.block_size(), F::TY.block_bytes());
    let nb = k / bs;
    let n = rows.len();
    let pad = n.next_multiple_of(tile_rows);
    dst.q.clear();
    dst.q.resize(pad * k, 0);
    for v in [&mut dst.f0, &mut dst.f1] {
        v.clear();
        v.resize(pad * nb, 0.0);
    }
    dst.i0.clear();
    dst.i0.resize(pad * nb * F::NI0, 0);
    dst.i1.clear();
    dst.i1.resize(pad * nb * F::NI1, 0);
    for (i, r) in rows.enumerate() {
        let row = &w[r * rb..(r + 1) * rb];
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let j = i * nb + b;
            F::expand(
                blk,
                &mut dst.q[i * k + b * bs..i * k + (b + 1) * bs],
                &mut dst.f0[j],
                &mut dst.f1[j],
                &mut dst.i0[j * F::NI0..(j + 1) * F::NI0],
                &mut dst.i1[j * F::NI1..(j + 1) * F::NI1],
            );
        }
    }
}

/// Writes a tile's accumulators: rows `r0..r0 + MR` (those below `rows`), token groups
/// `g0..g0 + NR` (tokens below `n`). Full tiles are transposed in registers and written
/// as one 16-byte store per token (4 consecutive rows).
#[inline(always)]
pub(super) unsafe fn store<const NR: usize>(acc: &[[__m512; NR]; MR], r0: usize, rows: usize, g0: usize, n: usize, out: *mut f32, ldo: usize) {
    const { assert!(MR == 4) };
    for g in 0..NR {
        let t0 = (g0 + g) * PANEL_TOKENS;
        if r0 + MR <= rows && t0 + PANEL_TOKENS <= n {
            let (a0, a1, a2, a3) = (acc[0][g], acc[1][g], acc[2][g], acc[3][g]);
            let (l01, h01) = (_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
            let (l23, h23) = (_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
            // u[j] lane i = rows 0..4 of token 4i + j.
            let u = [
                _mm512_shuffle_ps::<0x44>(l01, l23),
                _mm512_shuffle_ps::<0xEE>(l01, l23),
                _mm512_shuffle_ps::<0x44>(h01, h23),
                _mm512_shuffle_ps::<0xEE>(h01, h23),
            ];
            let p = out.add(t0 * ldo + r0);
            for (j, v) in u.iter().enumerate() {
                _mm_storeu_ps(p.add(j * ldo), _mm512_castps512_ps128(*v));
                _mm_storeu_ps(p.add((4 + j) * ldo), _mm512_extractf32x4_ps::<1>(*v));
                _mm_storeu_ps(p.add((8 + j) * ldo), _mm512_extractf32x4_ps::<2>(*v));
                _mm_storeu_ps(p.add((12 + j) * ldo), _mm512_extractf32x4_ps::<3>(*v));
            }
            continue;
        }
        let mut tmp = [0f32; PANEL_TOKENS];
        for (r, acc_r) in acc.iter().enumerate().take(rows.saturating_sub(r0).min(MR)) {
            _mm512_storeu_ps(tmp.as_mut_ptr(), acc_r[g]);
            for (l, x) in tmp.iter().enumerate().take(n.saturating_sub(t0).min(PANEL_TOKENS)) {
                *out.add((t0 + l) * ldo + r0 + r) = *x;
            }
        }
    }
}

#[inline(always)]
unsafe fn run<F: Family>(w: &[u8], a: &ActPanels, out: *mut f32, ldo: usize) {
    let k = a.k;
    let rb = F::TY.bytes_for(k as u64).expect("k whole blocks") as usize;
    let rows = w.len() / rb;
    let mut buf = Rows { q: Vec::new(), f0: Vec::new(), f1: Vec::new(), i0: Vec::new(), i1: Vec::new() };
    for s0 in (0..rows).step_by(SLAB) {
        let s1 = (s0 + SLAB).min(rows);
        expand_rows::<F>(w, rb, k, s0..s1, MR, &mut buf);
        let out = out.add(s0);
        for gb in (0..a.groups).step_by(TOKEN_GROUPS) {
            let ge = (gb + TOKEN_GROUPS).min(a.groups);
            for r0 in (0..s1 - s0).step_by(MR) {
                let mut g = gb;
                while g + 2 <= ge {
                    store(&F::tile::<2>(&buf, r0, a, g), r0, s1 - s0, g, a.n, out, ldo);
                    g += 2;
                }
                if g < ge {
                    store(&F::tile::<1>(&buf, r0, a, g), r0, s1 - s0, g, a.n, out, ldo);
                }
            }
        }
    }
}

tiled_entries!(
    /// The tiled kernel for a weight type (AVX-512 VNNI checked by the caller).
    gemm_kernel,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    super::has_avx512vnni()
);
