//! Hand-written SIMD kernels, compiled for every target and chosen at run time.

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
