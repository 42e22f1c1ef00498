//! x86-64 kernels: AVX2 (+FMA, F16C) and AVX-512 (F/BW/VL + VNNI).
//!
//! Kernel bodies are written once, generic over [`Isa`] (the few integer primitives
//! that differ: maddubs+madd vs VNNI dpbusd/dpwssd, bit expansion), marked
//! `#[inline(always)]`, and instantiated inside `#[target_feature]` entry points, so each
//! instantiation is compiled for its feature set (no closures in bodies: a closure is a
//! separate function without the features, and its intrinsics would not inline).
//! The 32-element formats also have 512-bit kernels (`legacy512`, two blocks per vector).
//! Entry points are only handed out after run-time detection ([`has_avx2`],
//! [`has_avx512vnni`]).

/// The tiled GEMM entry points of one instruction set, in the module that invokes it (its
/// `run::<Family>` driver and the weight families in scope): for every family a checked
/// `unsafe fn` running the driver under `$features`, and `$table` mapping weight types to them.
macro_rules! tiled_entries {
    ($(#[$doc:meta])* $table:ident, $features:literal, $available:expr) => {
        tiled_entries!(@one gemm_q4_0, FQ4_0, $features, $available);
        tiled_entries!(@one gemm_q4_1, FQ4_1, $features, $available);
        tiled_entries!(@one gemm_q5_0, FQ5_0, $features, $available);
        tiled_entries!(@one gemm_q5_1, FQ5_1, $features, $available);
        tiled_entries!(@one gemm_q8_0, FQ8_0, $features, $available);
        tiled_entries!(@one gemm_q4_k, K4<false>, $features, $available);
        tiled_entries!(@one gemm_q5_k, K4<true>, $features, $available);
        tiled_entries!(@one gemm_q6_k, Q6K, $features, $available);
        tiled_entries!(@one gemm_iq4_nl, FIq4Nl, $features, $available);
        tiled_entries!(@one gemm_iq4_xs, Iq4Xs, $features, $available);
        tiled_entries!(@one gemm_mxfp4, FMxfp4, $features, $available);

        $(#[$doc])*
        pub(crate) fn $table(ty: GgmlType) -> Option<GemmFn> {
            use GgmlType::*;
            Some(match ty {
                Q4_0 => gemm_q4_0,
                Q4_1 => gemm_q4_1,
                Q5_0 => gemm_q5_0,
                Q5_1 => gemm_q5_1,
                Q8_0 => gemm_q8_0,
                Q4_K => gemm_q4_k,
                Q5_K => gemm_q5_k,
                Q6_K => gemm_q6_k,
                IQ4_NL => gemm_iq4_nl,
                IQ4_XS => gemm_iq4_xs,
                MXFP4 => gemm_mxfp4,
                _ => return None,
            })
        }
    };
    (@one $name:ident, $fam:ty, $features:literal, $available:expr) => {
        unsafe fn $name(w: &[u8], a: &ActPanels, out: *mut f32, ldo: usize) {
            #[target_feature(enable = $features)]
            unsafe fn inner(w: &[u8], a: &ActPanels, out: *mut f32, ldo: usize) {
                run::<$fam>(w, a, out, ldo)
            }
            let ty = <$fam as Family>::TY;
            assert_eq!(a.ty, ty.vec_dot_type(), "gemm: panels are not {}", ty.vec_dot_type().name());
            let rb = ty.bytes_for(a.k as u64).expect("panels hold whole blocks of k") as usize;
            assert!(rb > 0 && w.len().is_multiple_of(rb), "gemm: weights are not whole rows");
            debug_assert!($available);
            // SAFETY: handed out only after run-time detection of `$available`; lengths
            // checked; out per the GemmFn contract.
            unsafe { inner(w, a, out, ldo) }
        }
    };
}

mod act;
mod float;
mod gemm;
mod gemm_amx;
mod gemm_avx2;
mod gemm_tiles;
mod iq_grids;
mod k_low;
mod k_quants;
mod legacy;
mod legacy512;
mod lowbit;
mod nonlinear;
mod rows;

use std::arch::x86_64::*;
use std::sync::OnceLock;

use crate::{DotFn, GgmlType};

/// AVX2 + FMA + F16C, detected once.
pub(crate) fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// AVX2 level plus AVX-512 F/BW/VL/VNNI, detected once.
pub(crate) fn has_avx512vnni() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// Integer primitives whose best form differs between AVX2 and AVX-512 VNNI.
pub(crate) trait Isa {
    /// `acc` + per-i32-lane sums of four u8*i8 products (`u` unsigned, `s` signed).
    /// AVX2 goes through i16 pair sums: callers keep 2*|u|*|s| < 32768.
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// Like `dot_u8i8(0, u - off, s)` for unsigned `u >= 0` and an unsigned offset `off`.
    unsafe fn dot_u8i8_off(u: __m256i, s: __m256i, off: __m256i) -> __m256i;
    /// `acc + madd_epi16(a, b)`.
    unsafe fn madd16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
    /// 32 bits -> 32 bytes of 0xFF (bit set) or 0x00, byte i from bit i.
    unsafe fn bits_to_bytes(bits: u32) -> __m256i;
}

/// AVX2: maddubs + madd, bit expansion by shuffle/compare.
pub(crate) struct Avx2;
/// AVX-512 VNNI (256-bit via VL): dpbusd/dpwssd, bit expansion from a mask register.
pub(crate) struct Avx512;

impl Isa for Avx2 {
    #[inline(always)]
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
        )
    }
    #[inline(always)]
    unsafe fn dot_u8i8_off(u: __m256i, s: __m256i, off: __m256i) -> __m256i {
        let p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, s), _mm256_maddubs_epi16(off, s));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn madd16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
    #[inline(always)]
    unsafe fn bits_to_bytes(bits: u32) -> __m256i {
        // Byte i gets byte i/8 of `bits`, then is OR-ed with a mask that has every bit
        // but bit i%8 set: it is all-ones exactly when that bit was set.
        let shuf = _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
    }
}

impl Isa for Avx512 {
    #[inline(always)]
    unsafe fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn dot_u8i8_off(u: __m256i, s: __m256i, off: __m256i) -> __m256i {
        let z = _mm256_setzero_si256();
        _mm256_sub_epi32(_mm256_dpbusd_epi32(z, u, s), _mm256_dpbusd_epi32(z, off, s))
    }
    #[inline(always)]
    unsafe fn madd16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }
    #[inline(always)]
    unsafe fn bits_to_bytes(bits: u32) -> __m256i {
        _mm256_movm_epi8(bits)
    }
}

/// Horizontal sum of 8 floats.
#[inline(always)]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The u16 at `p` (unaligned), zero-extended.
///
/// The load is written in assembly: from a plain `u16` read that goes into a vector
/// register LLVM makes a `pinsrw` into whatever register it likes, and in the dot kernels
/// it picked an accumulator, a false dependency that chained every block's scale behind
/// the previous block's FMA (a third of the AVX2 Q4_0 kernel's speed).
#[inline(always)]
pub(crate) unsafe fn rd_u16(p: *const u8) -> u32 {
    let h: u32;
    std::arch::asm!(
        "movzx {h:e}, word ptr [{p}]",
        p = in(reg) p,
        h = out(reg) h,
        options(pure, readonly, nostack, preserves_flags)
    );
    h
}

/// One half at `p` (unaligned) -> f32 via F16C.
#[inline(always)]
pub(crate) unsafe fn ld_f16(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(rd_u16(p) as i32)))
}

/// One f32 at `p` (unaligned).
#[inline(always)]
pub(crate) unsafe fn ld_f32(p: *const u8) -> f32 {
    (p as *const f32).read_unaligned()
}

/// 32 bytes at `p` (unaligned).
#[inline(always)]
pub(crate) unsafe fn ld256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// For 32-element chunk c: bytes 2c (x8) then 2c+1 (x8), picking its two 16-group scales.
static CHUNK_SCALE_SHUF: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut c = 0;
    while c < 8 {
        let mut k = 0;
        while k < 16 {
            t[c][k] = (2 * c + k / 8) as u8;
            k += 1;
        }
        c += 1;
    }
    t
};

/// Sixteen i8 scales (one per 16 elements of a super-block) -> the i16 multipliers for
/// the 16 pair sums `maddubs` gives for 32-element chunk `c`.
#[inline(always)]
pub(crate) unsafe fn chunk_scales(scales: __m128i, c: usize) -> __m256i {
    let shuf = _mm_loadu_si128(CHUNK_SCALE_SHUF[c].as_ptr() as *const __m128i);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf))
}

/// The AVX2 kernel for a weight type, if there is one.
pub(crate) fn kernel_avx2(ty: GgmlType) -> Option<DotFn> {
    if !has_avx2() {
        return None;
    }
    use GgmlType::*;
    Some(match ty {
        F32 => float::dot_f32_avx2,
        F16 => float::dot_f16_avx2,
        BF16 => float::dot_bf16_avx2,
        Q4_0 => legacy::dot_q4_0_avx2,
        Q4_1 => legacy::dot_q4_1_avx2,
        Q5_0 => legacy::dot_q5_0_avx2,
        Q5_1 => legacy::dot_q5_1_avx2,
        Q8_0 => legacy::dot_q8_0_avx2,
        Q2_K => k_low::dot_q2_k_avx2,
        Q3_K => k_low::dot_q3_k_avx2,
        Q4_K => k_quants::dot_q4_k_avx2,
        Q5_K => k_quants::dot_q5_k_avx2,
        Q6_K => k_quants::dot_q6_k_avx2,
        IQ4_NL => nonlinear::dot_iq4_nl_avx2,
        IQ4_XS => nonlinear::dot_iq4_xs_avx2,
        MXFP4 => nonlinear::dot_mxfp4_avx2,
        NVFP4 => nonlinear::dot_nvfp4_avx2,
        Q1_0 => lowbit::dot_q1_0_avx2,
        Q2_0 => lowbit::dot_q2_0_avx2,
        TQ2_0 => lowbit::dot_tq2_0_avx2,
        IQ2_XXS => iq_grids::dot_iq2_xxs_avx2,
        IQ2_XS => iq_grids::dot_iq2_xs_avx2,
        IQ2_S => iq_grids::dot_iq2_s_avx2,
        IQ3_XXS => iq_grids::dot_iq3_xxs_avx2,
        IQ3_S => iq_grids::dot_iq3_s_avx2,
        IQ1_S => iq_grids::dot_iq1_s_avx2,
        IQ1_M => iq_grids::dot_iq1_m_avx2,
        _ => return None,
    })
}

/// The AVX-512 kernel for a weight type, if there is one (else use the AVX2 one).
pub(crate) fn kernel_avx512(ty: GgmlType) -> Option<DotFn> {
    if !has_avx512vnni() {
        return None;
    }
    use GgmlType::*;
    Some(match ty {
        F32 => float::dot_f32_avx512,
        // F16 stays on the AVX2 kernel: 512-bit vcvtph2ps was slower on the Zen 4 we measured.
        BF16 => float::dot_bf16_avx512,
        Q4_0 => legacy512::dot_q4_0,
        Q4_1 => legacy512::dot_q4_1,
        Q5_0 => legacy512::dot_q5_0,
        Q5_1 => legacy512::dot_q5_1,
        Q8_0 => legacy512::dot_q8_0,
        Q2_K => k_low::dot_q2_k_avx512,
        Q3_K => k_low::dot_q3_k_avx512,
        Q4_K => k_quants::dot_q4_k_avx512,
        Q5_K => k_quants::dot_q5_k_avx512,
        Q6_K => k_quants::dot_q6_k_avx512,
        IQ4_NL => legacy512::dot_iq4_nl,
        IQ4_XS => nonlinear::dot_iq4_xs_avx512,
        MXFP4 => legacy512::dot_mxfp4,
        NVFP4 => nonlinear::dot_nvfp4_avx512,
        Q1_0 => lowbit::dot_q1_0_avx512,
        Q2_0 => lowbit::dot_q2_0_avx512,
        TQ2_0 => lowbit::dot_tq2_0_avx512,
        IQ2_XXS => iq_grids::dot_iq2_xxs_avx512,
        IQ2_XS => iq_grids::dot_iq2_xs_avx512,
        IQ2_S => iq_grids::dot_iq2_s_avx512,
        IQ3_XXS => iq_grids::dot_iq3_xxs_avx512,
        IQ3_S => iq_grids::dot_iq3_s_avx512,
        IQ1_S => iq_grids::dot_iq1_s_avx512,
        IQ1_M => iq_grids::dot_iq1_m_avx512,
        _ => return None,
    })
}

pub(crate) use act::{quantize_q8_k, quantize_q8_x86};
pub(crate) use gemm::gemm_kernel;
pub(crate) use gemm_amx::gemm_kernel_amx;
pub(crate) use gemm_avx2::gemm_kernel_avx2;
pub(crate) use rows::rows_kernel;
pub(crate) use float::{f16_to_f32, f32_to_f16};

/// Declares a safe `DotFn` for each ISA flavour around a generic `unsafe` body:
/// lengths are checked here, the body then reads within bounds. `body<Fmt>` instantiates
/// a body generic over the ISA and a format type (`body::<Isa, Fmt>`).
macro_rules! dot_entry {
    ($avx2:ident, $avx512:ident, $body:ident $(<$fmt:ty>)?, $check:expr) => {
        dot_entry!($avx2, $body $(<$fmt>)?, $check);
        dot_entry!(@one $avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", Avx512, has_avx512vnni, $body [$($fmt)?], $check);
    };
    ($avx2:ident, $body:ident $(<$fmt:ty>)?, $check:expr) => {
        dot_entry!(@one $avx2, "avx2,fma,f16c", Avx2, has_avx2, $body [$($fmt)?], $check);
    };
    (@one $name:ident, $features:literal, $isa:ident, $has:ident, $body:ident [$($fmt:ty)?], $check:expr) => {
        pub(crate) fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            #[target_feature(enable = $features)]
            unsafe fn inner(n: usize, w: &[u8], a: &[u8]) -> f32 {
                $body::<$crate::simd::x86::$isa $(, $fmt)?>(n, w.as_ptr(), a.as_ptr())
            }
            ($check)(n, w, a);
            debug_assert!($crate::simd::x86::$has());
            // SAFETY: handed out only after run-time detection; lengths checked above.
            unsafe { inner(n, w, a) }
        }
    };
}
pub(crate) use dot_entry;

/// Length check shared by block kernels: n whole blocks, both buffers exact.
#[inline(always)]
pub(crate) fn check_blocks(n: usize, w: &[u8], a: &[u8], qk: usize, wb: usize, ab: usize) {
    assert!(n.is_multiple_of(qk), "dot: n={n} not a multiple of {qk}");
    assert!(
        w.len() == n / qk * wb && a.len() == n / qk * ab,
        "dot: bad lengths"
    );
}
