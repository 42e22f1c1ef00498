//! Scalar layouts: dequantizers, quantizers and reference dot kernels per type.

pub(crate) mod float;
pub(crate) mod iq1;
pub(crate) mod iq_grids;
pub(crate) mod iq_quantize;
pub(crate) mod k_quantize;
pub(crate) mod k_quants;
pub(crate) mod legacy;
pub(crate) mod lowbit;
pub(crate) mod nl_quantize;
pub(crate) mod nonlinear;

use crate::{DotFn, GgmlType, QuantError};

type DequantFn = fn(&[u8], &mut [f32]);
type QuantFn = fn(&[f32], &mut [u8]);

fn dequant_fn(ty: GgmlType) -> DequantFn {
    use GgmlType::*;
    match ty {
        F32 => float::dequant_f32,
        F16 => float::dequant_f16,
        BF16 => float::dequant_bf16,
        Q4_0 => legacy::dequant_q4_0,
        Q4_1 => legacy::dequant_q4_1,
        Q5_0 => legacy::dequant_q5_0,
        Q5_1 => legacy::dequant_q5_1,
        Q8_0 => legacy::dequant_q8_0,
        Q8_1 => legacy::dequant_q8_1,
        Q2_K => k_quants::dequant_q2_k,
        Q3_K => k_quants::dequant_q3_k,
        Q4_K => k_quants::dequant_q4_k,
        Q5_K => k_quants::dequant_q5_k,
        Q6_K => k_quants::dequant_q6_k,
        Q8_K => k_quants::dequant_q8_k,
        IQ4_NL => nonlinear::dequant_iq4_nl,
        IQ4_XS => nonlinear::dequant_iq4_xs,
        MXFP4 => nonlinear::dequant_mxfp4,
        NVFP4 => nonlinear::dequant_nvfp4,
        Q1_0 => lowbit::dequant_q1_0,
        Q2_0 => lowbit::dequant_q2_0,
        TQ1_0 => lowbit::dequant_tq1_0,
        TQ2_0 => lowbit::dequant_tq2_0,
        IQ2_XXS => iq_grids::dequant_iq2_xxs,
        IQ2_XS => iq_grids::dequant_iq2_xs,
        IQ2_S => iq_grids::dequant_iq2_s,
        IQ3_XXS => iq_grids::dequant_iq3_xxs,
        IQ3_S => iq_grids::dequant_iq3_s,
        IQ1_S => iq1::dequant_iq1_s,
        IQ1_M => iq1::dequant_iq1_m,
    }
}

fn quant_fn(ty: GgmlType) -> QuantFn {
    use GgmlType::*;
    match ty {
        F32 => float::quant_f32,
        F16 => float::quant_f16,
        BF16 => float::quant_bf16,
        Q4_0 => legacy::quant_q4_0,
        Q4_1 => legacy::quant_q4_1,
        Q5_0 => legacy::quant_q5_0,
        Q5_1 => legacy::quant_q5_1,
        Q8_0 => legacy::quant_q8_0,
        Q8_1 => legacy::quant_q8_1,
        Q2_K => k_quantize::quant_q2_k,
        Q3_K => k_quantize::quant_q3_k,
        Q4_K => k_quantize::quant_q4_k,
        Q5_K => k_quantize::quant_q5_k,
        Q6_K => k_quantize::quant_q6_k,
        Q8_K => k_quants::quant_q8_k,
        IQ4_NL => nl_quantize::quant_iq4_nl,
        IQ4_XS => nl_quantize::quant_iq4_xs,
        MXFP4 => nl_quantize::quant_mxfp4,
        NVFP4 => nl_quantize::quant_nvfp4,
        Q1_0 => lowbit::quant_q1_0,
        Q2_0 => lowbit::quant_q2_0,
        TQ1_0 => lowbit::quant_tq1_0,
        TQ2_0 => lowbit::quant_tq2_0,
        IQ2_XXS => iq_quantize::quant_iq2_xxs,
        IQ2_XS => iq_quantize::quant_iq2_xs,
        IQ2_S => iq_quantize::quant_iq2_s,
        IQ3_XXS => iq_quantize::quant_iq3_xxs,
        IQ3_S => iq_quantize::quant_iq3_s,
        IQ1_S => iq_quantize::quant_iq1_s,
        IQ1_M => iq_quantize::quant_iq1_m,
    }
}

/// Checks that `n` elements are whole blocks and that `bytes` is exactly their size.
pub(crate) fn check_lengths(ty: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        return Err(QuantError::BadLength {
            ty: ty.name(),
            what: format!("{n} elements is not a multiple of the block size {bs}"),
        });
    }
    let want = n / bs * ty.block_bytes();
    if bytes != want {
        return Err(QuantError::BadLength {
            ty: ty.name(),
            what: format!("{n} elements need {want} bytes, got {bytes}"),
        });
    }
    Ok(())
}

/// Dequantize `dst.len()` elements (a whole number of blocks) from raw block bytes.
///
/// `src` must be exactly `ty.bytes_for(dst.len())` bytes, at any alignment.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(ty, dst.len(), src.len())?;
    if ty == GgmlType::F16 {
        crate::dispatch::f16_to_f32_fast(src, dst);
    } else {
        dequant_fn(ty)(src, dst);
    }
    Ok(())
}

/// Quantize `src.len()` elements (a whole number of blocks) into `dst`
/// (exactly `ty.bytes_for(n)` bytes), with ggml's reference (`*_ref`) algorithms, except
/// for the grid i-quants (IQ1_*, IQ2_*, IQ3_*): ggml has no reference quantizer for
/// some of them without an importance matrix, and ours (`iq_quantize`) is a simpler
/// nearest-grid-point search whose bytes differ from llama-quantize's.
///
/// Every type this crate knows is supported; the error cases are bad lengths.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(ty, src.len(), dst.len())?;
    quant_fn(ty)(src, dst);
    Ok(())
}

/// The scalar reference dot kernel for weight type `ty` (activations in `ty.vec_dot_type()`).
///
/// Mirrors ggml's `ggml_vec_dot_*_generic` / scalar float dots. Q8_1 and Q8_K are
/// activation-only formats and have no kernel as weights.
pub fn dot_kernel_scalar(ty: GgmlType) -> Result<DotFn, QuantError> {
    use GgmlType::*;
    Ok(match ty {
        F32 => float::dot_f32,
        F16 => float::dot_f16,
        BF16 => float::dot_bf16,
        Q4_0 => legacy::dot_q4_0_q8_0,
        Q4_1 => legacy::dot_q4_1_q8_1,
        Q5_0 => legacy::dot_q5_0_q8_0,
        Q5_1 => legacy::dot_q5_1_q8_1,
        Q8_0 => legacy::dot_q8_0_q8_0,
        Q2_K => k_quants::dot_q2_k_q8_k,
        Q3_K => k_quants::dot_q3_k_q8_k,
        Q4_K => k_quants::dot_q4_k_q8_k,
        Q5_K => k_quants::dot_q5_k_q8_k,
        Q6_K => k_quants::dot_q6_k_q8_k,
        IQ4_NL => nonlinear::dot_iq4_nl_q8_0,
        IQ4_XS => nonlinear::dot_iq4_xs_q8_k,
        MXFP4 => nonlinear::dot_mxfp4_q8_0,
        NVFP4 => nonlinear::dot_nvfp4_q8_0,
        Q1_0 => lowbit::dot_q1_0_q8_0,
        Q2_0 => lowbit::dot_q2_0_q8_0,
        TQ1_0 => lowbit::dot_tq1_0_q8_k,
        TQ2_0 => lowbit::dot_tq2_0_q8_k,
        IQ2_XXS => iq_grids::dot_iq2_xxs_q8_k,
        IQ2_XS => iq_grids::dot_iq2_xs_q8_k,
        IQ2_S => iq_grids::dot_iq2_s_q8_k,
        IQ3_XXS => iq_grids::dot_iq3_xxs_q8_k,
        IQ3_S => iq_grids::dot_iq3_s_q8_k,
        IQ1_S => iq1::dot_iq1_s_q8_k,
        IQ1_M => iq1::dot_iq1_m_q8_k,
        Q8_1 | Q8_K => {
            return Err(QuantError::Unsupported {
                op: "dot (as weight type)",
                ty: ty.name(),
            })
        }
    })
}
