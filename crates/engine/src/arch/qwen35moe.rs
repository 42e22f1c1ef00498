//! Qwen 3.5 MoE (llama.cpp's `qwen35moe`) and Qwen3-Next (`qwen3next`): the qwen35 hybrid of Gated DeltaNet and gated
//! attention layers, with a mixture of experts in every layer (softmax router, top-k
//! renormalized, gate/up fused or not) and a
//! shared expert beside them whose output a sigmoid gate scales.

use super::{qwen35, Architecture, Config, Meta, MoeConfig};
use crate::error::Result;
use crate::plan::{dense_ffn_named, layer_with_ffn, moe_ffn, FeedForwardPart, Gating, Layer, SharedExpert};
use crate::weights::TensorSource;

pub(super) const ARCH: Architecture = Architecture { name: "qwen35moe", config, layer };

/// Qwen3-Next (llama.cpp's `qwen3next`): the same blocks, with value heads sharing key heads
/// in consecutive runs (repeat-interleave), β and α from one fused `ssm_ba`, and plain NeoX
/// RoPE over part of each head.
pub(super) const NEXT: Architecture = Architecture { name: "qwen3next", config, layer };

fn config(m: &Meta) -> Result<Config> {
    let mut c = qwen35::config(m)?;
    let mut moe = MoeConfig::read(m, c.n_ff, Gating::Softmax)?;
    // Renormalized, never scaled: llama.cpp reads no expert_weights_scale for this architecture.
    moe.routing.normalize = true;
    c.moe = Some(moe);
    Ok(c)
}

fn layer(src: &TensorSource, c: &Config, il: usize) -> Result<Layer> {
    let moe = c.moe.as_ref().expect("set by config");
    let mut experts = moe_ffn(src, c, moe, il)?;
    if src.has(&format!("blk.{il}.ffn_up_shexp.weight")) {
        experts.shared_expert = Some(SharedExpert {
            mlp: dense_ffn_named(src, c, il, moe.n_ff_shared, "_shexp")?,
            gate: src.vector(&format!("blk.{il}.ffn_gate_inp_shexp.weight"), c.n_embd)?,
        });
    }
    layer_with_ffn(src, c, il, qwen35::mixer(src, c, il)?, FeedForwardPart::Moe(experts))
}
