//! Gemma 3: scaled embeddings, QK-norm, post-attention and post-MLP norms, GELU-gated MLP,
//! sliding-window layers (every `pattern`-th layer global) with their own RoPE base.

use super::{common, swa_layers, Activation, Architecture, Config, Meta, Rope, RopeStyle};
use crate::error::Result;
use crate::plan::standard_layer;

pub(super) const ARCH: Architecture = Architecture { name: "gemma3", config, layer: standard_layer };

/// llama.cpp's defaults when the file does not say otherwise.
const DEFAULT_SWA_PATTERN: usize = 6;
const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Neox, Activation::GeluTanh)?;
    c.embed_scale = Some((c.n_embd as f32).sqrt());
    c.qk_norm = true;
    c.post_norms = true;
    c.logit_softcap = m.opt_f32("final_logit_softcapping")?.filter(|&s| s > 0.0);
    // The 27B model scales queries by the per-head share of n_embd instead (llama.cpp, gemma_pytorch).
    if c.n_layer == 62 {
        c.attn_scale = 1.0 / ((c.n_embd / c.n_head) as f32).sqrt();
    }
    if let Some(window) = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0) {
        c.swa_window = Some(window);
        c.swa_layers = swa_layers(m, c.n_layer, DEFAULT_SWA_PATTERN)?;
        c.rope_local = Rope {
            base: m.opt_f32("rope.freq_base_swa")?.unwrap_or(DEFAULT_LOCAL_ROPE_BASE),
            freq_scale: 1.0,
        };
    }
    Ok(c)
}
