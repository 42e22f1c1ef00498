//! Run-time choice of SIMD kernels: CPU detection once, then a table per level.

use std::sync::OnceLock;

use crate::blocks::dot_kernel_scalar;
use crate::{DotFn, GgmlType, QuantError, RowsDotFn};

/// An instruction-set level with its own kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Portable Rust, available everywhere.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (on top of AVX2/FMA/F16C).
    Avx512Vnni,
    /// aarch64 NEON.
    Neon,
}

impl SimdLevel {
    /// Every level, best first.
    pub const ALL: [SimdLevel; 4] = [Self::Avx512Vnni, Self::Avx2, Self::Neon, Self::Scalar];

    /// The name used in logs ("avx512vnni", "avx2", "neon", "scalar").
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512vnni",
            Self::Neon => "neon",
        }
    }

    /// Whether this CPU can run this level's kernels.
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => crate::simd::x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => crate::simd::x86::has_avx512vnni(),
            #[cfg(target_arch = "aarch64")]
            Self::Neon => crate::simd::neon::HAS_KERNELS,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The levels this CPU can run, best first (always ends with `Scalar`).
    pub fn available() -> Vec<SimdLevel> {
        Self::ALL.into_iter().filter(|l| l.is_available()).collect()
    }

    /// The best level for this CPU, detected once.
    pub fn detected() -> SimdLevel {
        static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            Self::ALL
                .into_iter()
                .find(|l| l.is_available())
                .unwrap_or(Self::Scalar)
        })
    }
}

/// Which SIMD level was detected ("avx512vnni", "avx2", "neon", "scalar"), for logs.
pub fn simd_level() -> &'static str {
    SimdLevel::detected().name()
}

/// The fastest dot kernel for this weight type on this CPU (detection cached).
///
/// Errors for types that are not weight types (Q8_1, Q8_K).
pub fn dot_kernel(ty: GgmlType) -> Result<DotFn, QuantError> {
    dot_kernel_at(SimdLevel::detected(), ty)
}

/// The dot kernel of one given level, falling back to lower levels (and finally the
/// scalar reference) for types that level has no kernel for. Errors when this CPU
/// cannot run `level`. Used by tests and benchmarks to compare levels.
pub fn dot_kernel_at(level: SimdLevel, ty: GgmlType) -> Result<DotFn, QuantError> {
    let scalar = dot_kernel_scalar(ty)?;
    if !level.is_available() {
        return Err(QuantError::Unsupported {
            op: "dot kernel on this CPU",
            ty: level.name(),
        });
    }
    let simd: Option<DotFn> = match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Vnni => {
            crate::simd::x86::kernel_avx512(ty).or_else(|| crate::simd::x86::kernel_avx2(ty))
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => crate::simd::x86::kernel_avx2(ty),
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => crate::simd::neon::kernel(ty),
        _ => None,
    };
    Ok(simd.unwrap_or(scalar))
}

/// The row-batch form of [`dot_kernel`] for this weight type on this CPU, where there is
/// one (the main decode formats: Q4_0..Q8_0 and Q4_K..Q6_K on AVX2, the K-quants on
/// AVX-512); callers fall back to [`dot_kernel`] row by row.
pub fn rows_dot_kernel(ty: GgmlType) -> Option<RowsDotFn> {
    #[cfg(target_arch = "x86_64")]
    return crate::simd::x86::rows_kernel(ty);
    #[allow(unreachable_code)]
    {
        let _ = ty;
        None
    }
}

/// IEEE half bytes (little endian, any alignment) -> f32, exactly. `src.len() == 2 * dst.len()`.
pub fn f16_to_f32_slice(src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        2 * dst.len(),
        "f16_to_f32_slice: length mismatch"
    );
    f16_to_f32_fast(src, dst);
}

/// f32 -> IEEE half bytes (little endian), round to nearest even. `dst.len() == 2 * src.len()`.
pub fn f32_to_f16_slice(src: &[f32], dst: &mut [u8]) {
    assert_eq!(
        dst.len(),
        2 * src.len(),
        "f32_to_f16_slice: length mismatch"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::simd::x86::has_avx2() {
        return crate::simd::x86::f32_to_f16(src, dst);
    }
    crate::blocks::float::quant_f16(src, dst);
}

/// Lengths already checked by the caller.
pub(crate) fn f16_to_f32_fast(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::x86::has_avx2() {
        return crate::simd::x86::f16_to_f32(src, dst);
    }
    crate::blocks::float::dequant_f16(src, dst);
}
