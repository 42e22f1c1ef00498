//! Qwen 3 MoE: the qwen3 block (QK-norm, NeoX RoPE) with a mixture of experts in place of
//! the dense feed-forward: softmax router, top-k experts, their weights renormalized.

use super::{common, Activation, Architecture, Config, Meta, MoeConfig, RopeStyle};
use crate::error::Result;
use crate::plan::{standard_layer, Gating};

pub(super) const ARCH: Architecture = Architecture { name: "qwen3moe", config, layer: standard_layer };

fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Neox, Activation::Silu)?;
    c.qk_norm = true;
    // llama.cpp always renormalizes qwen3moe's top-k weights and reads no scale for it.
    let mut moe = MoeConfig::read(m, c.n_ff, Gating::Softmax)?;
    moe.routing.normalize = true;
    c.moe = Some(moe);
    Ok(c)
}
