//! Phi-3: the llama block with Q/K/V fused in one `attn_qkv` and gate/up in one `ffn_up`
//! (both taken as row views), NeoX RoPE over `rope.dimension_count` dims, LongRoPE's
//! long/short factors chosen by the context and its cos/sin scale (`rope.scaling.attn_factor`).

use super::{common, Activation, Architecture, Config, Meta, RopeFactorTensors, RopeStyle};
use crate::error::Result;
use crate::plan::standard_layer;

pub(super) const ARCH: Architecture = Architecture { name: "phi3", config, layer: standard_layer };

fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Neox, Activation::Silu)?;
    c.fused_gate_up = true;
    c.rope_factors = RopeFactorTensors::LongShort;
    // `attention.sliding_window` is read and then switched off by llama.cpp ("Phi SWA is
    // currently disabled", ggml-org/llama.cpp#13676): every layer attends to the whole context.
    Ok(c)
}
