//! ggml tensor formats, bit-exact with ggml's block layouts.
//!
//! Each format has a block layout, a dequantizer, (for some) a quantizer, and the
//! block type its dot product consumes ([`GgmlType::vec_dot_type`]): the activations
//! are quantized once to that type, then every weight row is dotted against them.
//!
//! - [`dequantize_row`] / [`quantize_row`]: scalar, ggml's reference algorithms.
//! - [`quantize_activations`]: the activation quantizer llama.cpp's CPU backend runs on
//!   this architecture (on x86-64 its Q8_0/Q8_1 differ from the reference; see
//!   [`quantize_row_x86`]).
//! - [`dot_kernel`]: the fastest dot kernel for this CPU (SIMD chosen at run time);
//!   [`dot_kernel_scalar`]: the reference kernel it must agree with.
//! - [`rows_dot_kernel`]: many weight rows against one token in one call (decode).
//! - [`gemm_kernel`] / [`ActPanels`]: tiled kernels for many tokens at once (prefill).
//! - [`f16_to_f32_slice`] / [`f32_to_f16_slice`]: fast half conversions.
//! - [`tables`]: the codebooks and grids of the non-linear formats (IQ*, MXFP4, NVFP4),
//!   shared with other back ends.
//!
//! Every type llama.cpp's quantizer writes is here (see [`GgmlType::ALL`]). x86 SIMD dot
//! kernels exist for all weight formats but TQ1_0 (scalar reference); tiled GEMM kernels
//! for the legacy formats, Q4_K..Q6_K, IQ4_NL, IQ4_XS and MXFP4.
#![deny(missing_docs)]

mod activations;
mod amx;
mod blocks;
mod dispatch;
mod gemm;
mod simd;
pub mod tables;
mod types;
mod util;

pub use activations::{quantize_activations, quantize_row_x86};
pub use amx::{amx_support, AmxSupport};
pub use blocks::{dequantize_row, dot_kernel_scalar, quantize_row};
pub use dispatch::{
    dot_kernel, dot_kernel_at, f16_to_f32_slice, f32_to_f16_slice, rows_dot_kernel, simd_level, SimdLevel,
};
pub use gemm::{gemm, gemm_isa, gemm_kernel, gemm_kernel_isa, ActPanels, GemmFn, GemmIsa, PANEL_TOKENS};
pub use types::{GgmlType, QuantError};

/// A dot-product kernel: `n` elements, `w` = n elements of the weight type,
/// `a` = n elements of `ty.vec_dot_type()` (raw block bytes, any alignment).
///
/// Panics if the slice lengths do not match `n` (a programmer error).
/// Q8 activations are expected from [`quantize_row`] or [`quantize_activations`], whose
/// quants lie in -127..=127 for finite input (ggml's quantizers never emit -128; like
/// ggml's, the AVX2 kernels rely on that).
pub type DotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// A row-batch dot kernel: `out[r]` = row `r` of `w` (`out.len()` rows of `n` elements of
/// the weight type) against `a` (`n` elements of `ty.vec_dot_type()`). Bit for bit the
/// [`DotFn`] of the same type on every row; panics on mismatched lengths.
pub type RowsDotFn = fn(n: usize, w: &[u8], a: &[u8], out: &mut [f32]);
