//! Qwen 2 / 2.5: the llama block with Q/K/V biases and NeoX-style RoPE.

use super::{common, Activation, Architecture, Config, Meta, RopeStyle};
use crate::error::{EngineError, Result};
use crate::plan::{standard_layer, Layer};
use crate::weights::TensorSource;

pub(super) const ARCH: Architecture = Architecture { name: "qwen2", config, layer };

fn config(m: &Meta) -> Result<Config> {
    common(m, RopeStyle::Neox, Activation::Silu)
}

/// The standard layer, whose Q/K/V biases llama.cpp requires for this architecture.
fn layer(src: &TensorSource, c: &Config, il: usize) -> Result<Layer> {
    let l = standard_layer(src, c, il)?;
    let a = l.attention().expect("standard layers attend");
    for (name, bias) in [("attn_q", &a.q_bias), ("attn_k", &a.k_bias), ("attn_v", &a.v_bias)] {
        if bias.is_none() {
            return Err(EngineError::MissingTensor(format!("blk.{il}.{name}.bias")));
        }
    }
    Ok(l)
}
