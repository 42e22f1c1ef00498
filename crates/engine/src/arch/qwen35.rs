//! Qwen 3.5 (llama.cpp's `qwen35`): a hybrid of Gated DeltaNet layers (linear attention with
//! a recurrent state) and gated full-attention layers — every `full_attention_interval`-th
//! layer attends (or as `attention.recurrent_layers` lists), the others recur. Attention
//! layers: QK-norm, a sigmoid output gate from the query projection, interleaved M-RoPE over
//! part of each head (for text, NeoX RoPE). The norm before the MLP is the file's
//! `post_attention_norm`; the MLP is SiLU-gated.

use super::{common, Activation, Architecture, Config, Meta, RopeStyle};
use crate::error::{EngineError, Result};
use crate::plan::{dense_ffn, layer_with_ffn, standard_attention, BetaAlpha, DeltaNet, DeltaShape, FeedForwardPart, Layer, Mixer};
use crate::weights::TensorSource;

pub(super) const ARCH: Architecture = Architecture { name: "qwen35", config, layer };

/// llama.cpp's default: one full-attention layer in four.
const DEFAULT_FULL_ATTENTION_INTERVAL: usize = 4;

pub(super) fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Neox, Activation::Silu)?;
    c.qk_norm = true;
    c.attn_output_gate = true;
    c.ffn_norm_name = "post_attention_norm";
    c.recurrent_layers = match m.opt_bool_array("attention.recurrent_layers").filter(|r| r.len() == c.n_layer) {
        Some(flags) => flags,
        None => {
            let every = m.opt_usize("full_attention_interval")?.unwrap_or(DEFAULT_FULL_ATTENTION_INTERVAL);
            if every == 0 {
                return Err(EngineError::BadMetadata(format!("{}.full_attention_interval is 0", c.arch)));
            }
            (0..c.n_layer).map(|il| (il + 1) % every != 0).collect()
        }
    };
    c.delta = Some(delta_shape(m)?);
    // Qwen3.5's M-RoPE sections (qwen3next rotates by plain NeoX RoPE).
    if m.arch.starts_with("qwen35") {
        c.mrope_sections = m.opt_per_layer("rope.dimension_sections", 4)?.map(|s| [s[0], s[1], s[2], s[3]]);
    }
    Ok(c)
}

/// The Gated DeltaNet sizes from the `ssm.*` keys, as llama.cpp derives them.
pub(super) fn delta_shape(m: &Meta) -> Result<DeltaShape> {
    let d_inner = m.usize("ssm.inner_size")?;
    let shape = DeltaShape {
        n_k_heads: m.usize("ssm.group_count")?,
        n_v_heads: m.usize("ssm.time_step_rank")?,
        head_k_dim: m.usize("ssm.state_size")?,
        head_v_dim: 0,
        d_conv: m.usize("ssm.conv_kernel")?,
        interleaved: m.arch == "qwen3next",
    };
    let bad = |what: String| Err(EngineError::BadMetadata(format!("{}: {what}", m.arch)));
    if shape.n_k_heads == 0 || shape.n_v_heads == 0 || !shape.n_v_heads.is_multiple_of(shape.n_k_heads) {
        return bad(format!("{} value heads cannot share {} key heads", shape.n_v_heads, shape.n_k_heads));
    }
    if d_inner % shape.n_v_heads != 0 || d_inner / shape.n_v_heads != shape.head_k_dim || shape.d_conv == 0 {
        return bad(format!("ssm.inner_size {d_inner} over {} heads does not give state_size {} (or conv_kernel is 0)", shape.n_v_heads, shape.head_k_dim));
    }
    Ok(DeltaShape { head_v_dim: d_inner / shape.n_v_heads, ..shape })
}

fn layer(src: &TensorSource, c: &Config, il: usize) -> Result<Layer> {
    layer_with_ffn(src, c, il, mixer(src, c, il)?, FeedForwardPart::Dense(dense_ffn(src, c, il)?))
}

/// Layer `il`'s token mixer: a Gated DeltaNet or gated attention.
pub(super) fn mixer(src: &TensorSource, c: &Config, il: usize) -> Result<Mixer> {
    Ok(match (c.recurrent_layers[il], c.delta) {
        (true, Some(shape)) => Mixer::DeltaNet(delta_net(src, c, il, shape)?),
        _ => Mixer::Attention(standard_attention(src, c, il)?),
    })
}

fn delta_net(src: &TensorSource, c: &Config, il: usize, shape: DeltaShape) -> Result<DeltaNet> {
    let n = |s: &str| format!("blk.{il}.{s}");
    if !src.has(&n("attn_qkv.weight")) && src.has(&n("ssm_in.weight")) {
        return Err(EngineError::Invalid(format!(
            "blk.{il}.ssm_in: this file has the legacy fused q/k/v/z projection of early Qwen3-Next conversions; convert it again with a current llama.cpp (attn_qkv + attn_gate)"
        )));
    }
    let (d, cd, vd, hv) = (c.n_embd, shape.conv_dim(), shape.value_dim(), shape.n_v_heads);
    // ssm_conv1d is [d_conv, conv_dim] in GGUF order: one row of taps per channel, as used.
    let conv = src.vector_of_shape(&n("ssm_conv1d.weight"), &[shape.d_conv, cd])?;
    Ok(DeltaNet {
        qkv: src.matrix(&n("attn_qkv.weight"), d, cd)?,
        gate: src.matrix(&n("attn_gate.weight"), d, vd)?,
        beta_alpha: match src.has(&n("ssm_ba.weight")) {
            true => BetaAlpha::Fused(src.matrix(&n("ssm_ba.weight"), d, 2 * hv)?),
            false => BetaAlpha::Separate { beta: src.matrix(&n("ssm_beta.weight"), d, hv)?, alpha: src.matrix(&n("ssm_alpha.weight"), d, hv)? },
        },
        conv,
        dt_bias: src.vector(&n("ssm_dt.bias"), hv)?,
        a: src.vector(&n("ssm_a"), hv)?,
        norm: src.vector(&n("ssm_norm.weight"), shape.head_v_dim)?,
        output: src.matrix(&n("ssm_out.weight"), vd, d)?,
        shape,
    })
}
