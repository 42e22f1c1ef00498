//! gpt-oss (llama.cpp's `openai-moe`, file architecture `gpt-oss`): attention with Q/K/V and
//! output biases and a learned sink per head, sliding-window and full layers alternating
//! (the window on even layers), NeoX RoPE with YaRN scaling, and a mixture of experts whose
//! router and experts carry biases: top-k of the router's logits, softmax over the k chosen,
//! the experts' clamped SwiGLU. The norm before the experts is the file's `post_attention_norm`.

use super::{common, swa_layers, Activation, Architecture, Config, Meta, MoeConfig, Rope, RopeStyle};
use crate::error::{EngineError, Result};
use crate::plan::{standard_layer, Gating};

pub(super) const ARCH: Architecture = Architecture { name: "gpt-oss", config, layer: standard_layer };

/// llama.cpp's period when the file gives none: every other layer slides.
const DEFAULT_SWA_PATTERN: usize = 2;

fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Neox, Activation::SwigluOai)?;
    let window = m.usize("attention.sliding_window")?;
    if window == 0 {
        return Err(EngineError::BadMetadata(format!("{}.attention.sliding_window is 0", c.arch)));
    }
    c.swa_window = Some(window);
    c.swa_layers = swa_layers(m, c.n_layer, DEFAULT_SWA_PATTERN)?;
    // Sliding layers keep the full layers' position scale; only the base may differ.
    c.rope_local = Rope { base: m.opt_f32("rope.freq_base_swa")?.unwrap_or(c.rope_global.base), ..c.rope_global };
    c.attn_sinks = true;
    c.attn_output_bias = true;
    c.ffn_norm_name = "post_attention_norm";
    // No renormalization and no scale: llama.cpp reads neither for this architecture.
    let mut moe = MoeConfig::read(m, c.n_ff, Gating::SoftmaxOfTopK)?;
    moe.biases = true;
    c.moe = Some(moe);
    Ok(c)
}
