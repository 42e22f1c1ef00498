//! Llama 2/3, Mistral, SmolLM: pre-norm decoder, SiLU-gated MLP, adjacent-pair RoPE over the
//! whole head (Llama 3.1's `rope_freqs`, or LongRoPE's factors for a `longrope` file).

use super::{common, Activation, Architecture, Config, Meta, RopeFactorTensors, RopeStyle};
use crate::error::{EngineError, Result};
use crate::plan::standard_layer;

pub(super) const ARCH: Architecture = Architecture { name: "llama", config, layer: standard_layer };

fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Adjacent, Activation::Silu)?;
    whole_head_rope(&c)?;
    c.rope_factors = RopeFactorTensors::llama(&c.rope_scaling);
    Ok(c)
}

/// llama.cpp refuses llama-style files whose RoPE covers part of the head.
pub(super) fn whole_head_rope(c: &Config) -> Result<()> {
    if c.rope_dims != c.head_dim {
        return Err(EngineError::BadMetadata(format!(
            "{}.rope.dimension_count {} must equal the head dimension {}",
            c.arch, c.rope_dims, c.head_dim
        )));
    }
    Ok(())
}
