//! Llama 2/3, Mistral, SmolLM: pre-norm decoder, SiLU-gated MLP, adjacent-pair RoPE.

use super::{common, Activation, Architecture, Config, Meta, RopeStyle};
use crate::error::Result;

pub(super) const ARCH: Architecture = Architecture { name: "llama", config };

fn config(m: &Meta) -> Result<Config> {
    common(m, RopeStyle::Adjacent, Activation::Silu)
}
