//! Mistral 3 (Ministral 3, Mistral Small 3.1 text): the llama block with YaRN (its beta and
//! log-multiplier keys read, as llama.cpp reads them for this architecture only) and Llama
//! 4-style attention temperature: queries scaled by `ln(floor(p / n_ctx_orig) + 1) · β + 1`.

use super::{common, llama::whole_head_rope, Activation, Architecture, Config, Meta, RopeFactorTensors, RopeStyle};
use crate::error::{EngineError, Result};
use crate::plan::{standard_layer, AttnTemperature};

pub(super) const ARCH: Architecture = Architecture { name: "mistral3", config, layer: standard_layer };

fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Adjacent, Activation::Silu)?;
    whole_head_rope(&c)?;
    c.rope_scaling.read_yarn_keys(m, false)?;
    c.rope_factors = RopeFactorTensors::llama(&c.rope_scaling);
    if let Some(scale) = m.opt_f32("attention.temperature_scale")?.filter(|&s| s != 0.0) {
        // llama.cpp steps the temperature every original context length.
        let floor_scale = c.rope_scaling.n_ctx_orig;
        if floor_scale == 0 {
            return Err(EngineError::BadMetadata(format!(
                "{}.attention.temperature_scale needs a non-zero original context length",
                c.arch
            )));
        }
        c.attn_temperature = Some(AttnTemperature { scale, floor_scale, offset: 0.0 });
    }
    if m.opt_usize("expert_count")?.unwrap_or(0) > 0 {
        return Err(EngineError::BadMetadata(format!("{} with experts is not supported yet", c.arch)));
    }
    Ok(c)
}
