//! Llama 2/3, Mistral, SmolLM: pre-norm decoder, SiLU-gated MLP, adjacent-pair RoPE.

use super::{common, Activation, Architecture, Config, Meta, RopeStyle};
use crate::error::Result;
use crate::plan::standard_layer;

pub(super) const ARCH: Architecture = Architecture { name: "llama", config, layer: standard_layer };

fn config(m: &Meta) -> Result<Config> {
    common(m, RopeStyle::Adjacent, Activation::Silu)
}
