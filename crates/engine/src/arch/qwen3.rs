//! Qwen 3 (dense): the llama block with per-head RMSNorm on Q and K and NeoX-style RoPE.

use super::{common, Activation, Architecture, Config, Meta, RopeStyle};
use crate::error::Result;
use crate::plan::standard_layer;

pub(super) const ARCH: Architecture = Architecture { name: "qwen3", config, layer: standard_layer };

fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Neox, Activation::Silu)?;
    c.qk_norm = true;
    Ok(c)
}
