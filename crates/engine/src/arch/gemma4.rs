//! Gemma 4, as llama.cpp's `gemma4` graph runs it: Gemma 3's block (scaled embeddings,
//! QK-norm, post-norms, GELU MLP, sliding-window layers by a per-layer pattern) with
//! - heads of their own size on sliding-window layers (`key_length_swa`), and KV heads per layer;
//! - values RMS-normed per head without a weight; `attn_v` optional (the keys' projection
//!   serves as values); no query scaling (the QK-norm does it);
//! - `rope_freqs` (proportional RoPE) on the full layers only;
//! - a tail of layers without K/V of their own (`shared_kv_layers`), reading the last
//!   cached layer of their kind;
//! - per-layer feed-forward widths; a per-layer output scale;
//! - per-layer token inputs (E2B/E4B: `embedding_length_per_layer_input`);
//! - mixture-of-experts layers (26B-A4B: wherever the file has a router): a dense MLP beside
//!   the experts, each with norms of its own, the router fed the stream's plain RMS norm
//!   times `ffn_gate_inp.scale` ÷ √n_embd, softmax gating with the top-k renormalized,
//!   GELU experts (gate/up fused or not), per-expert output scales.

use super::{common, Activation, Architecture, Config, Meta, MoeConfig, Rope, RopeFactorTensors, RopeStyle};
use crate::error::{EngineError, Result};
use crate::plan::{dense_ffn, expert_gate_up, layer_with_ffn, standard_attention, DenseFfn, FeedForwardPart, Gating, Layer, Mixer, MoeFfn, PerLayerInput, SharedMlp};
use crate::weights::TensorSource;

pub(super) const ARCH: Architecture = Architecture { name: "gemma4", config, layer };

/// llama.cpp's sliding-window RoPE base when the file gives none.
const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

fn config(m: &Meta) -> Result<Config> {
    let mut c = common(m, RopeStyle::Neox, Activation::GeluTanh)?;
    if m.opt_usize("expert_count")?.unwrap_or(0) > 0 {
        let mut moe = MoeConfig::read(m, c.n_ff, Gating::Softmax)?;
        moe.routing.normalize = true;
        c.moe = Some(moe);
    }
    if c.head_dim != c.head_dim_v || c.head_dim_swa != c.head_dim_v_swa {
        return Err(EngineError::BadMetadata("gemma4 needs keys and values of one head size".into()));
    }
    c.embed_scale = Some((c.n_embd as f32).sqrt());
    c.qk_norm = true;
    c.post_norms = true;
    c.v_norm = true;
    c.optional_v = true;
    c.attn_scale = 1.0;
    c.logit_softcap = m.opt_f32("final_logit_softcapping")?.filter(|&s| s > 0.0);
    c.swa_window = Some(m.usize("attention.sliding_window")?);
    c.swa_layers = m.opt_bool_array("attention.sliding_window_pattern").filter(|p| p.len() == c.n_layer).ok_or_else(|| {
        EngineError::BadMetadata(format!("gemma4.attention.sliding_window_pattern: one flag per layer ({}) required", c.n_layer))
    })?;
    c.rope_local = Rope { base: m.opt_f32("rope.freq_base_swa")?.unwrap_or(DEFAULT_LOCAL_ROPE_BASE), freq_scale: 1.0 };
    c.rope_factors = RopeFactorTensors::FreqsOfHead;
    let shared = m.opt_usize("attention.shared_kv_layers")?.unwrap_or(0);
    if shared > 0 {
        // The reuse rule reads the last two cached layers: a sliding one, then a full one.
        let n_kv = c.n_layer.checked_sub(shared).filter(|&n| n >= 2).ok_or_else(|| {
            EngineError::BadMetadata(format!("{shared} shared-KV layers leave fewer than 2 of {} with a cache", c.n_layer))
        })?;
        if !c.swa_layers[n_kv - 2] || c.swa_layers[n_kv - 1] {
            return Err(EngineError::BadMetadata(
                "gemma4's shared-KV layers need the last two cached layers to be a sliding one, then a full one".into(),
            ));
        }
        c.n_layer_kv = n_kv;
    }
    c.n_embd_per_layer = m.opt_usize("embedding_length_per_layer_input")?.unwrap_or(0);
    Ok(c)
}

fn layer(src: &TensorSource, c: &Config, il: usize) -> Result<Layer> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let mlp = dense_ffn(src, c, il)?;
    let ffn = match &c.moe {
        Some(moe) if src.has(&n("ffn_gate_inp")) => FeedForwardPart::Moe(experts(src, c, moe, il, mlp)?),
        _ => FeedForwardPart::Dense(mlp),
    };
    let mut l = layer_with_ffn(src, c, il, Mixer::Attention(standard_attention(src, c, il)?), ffn)?;
    if c.n_embd_per_layer > 0 {
        let w = c.n_embd_per_layer;
        l.per_layer = Some(PerLayerInput {
            gate: src.matrix(&n("inp_gate"), c.n_embd, w)?,
            proj: src.matrix(&n("proj"), w, c.n_embd)?,
            post_norm: src.vector(&n("post_norm"), c.n_embd)?,
        });
    }
    l.out_scale = src.optional_vector(&n("layer_output_scale"), 1)?.map(|s| s[0]);
    Ok(l)
}

/// Layer `il`'s experts beside its dense MLP `mlp`.
fn experts(src: &TensorSource, c: &Config, moe: &MoeConfig, il: usize, mlp: DenseFfn) -> Result<MoeFfn> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let (d, e, ff) = (c.n_embd, moe.n_expert, moe.n_ff_exp);
    let (gates, ups) = expert_gate_up(src, c, il, ff, e)?;
    let downs = src.experts(&n("ffn_down_exps"), ff, d, e)?;
    let experts = gates
        .into_iter()
        .zip(ups)
        .zip(downs)
        .map(|((gate, up), down)| DenseFfn { gate, up, down, activation: c.activation, biases: None })
        .collect();
    let scale = 1.0 / (d as f32).sqrt();
    let router_input_scale = src.vector(&format!("blk.{il}.ffn_gate_inp.scale"), d)?.into_iter().map(|s| s * scale).collect();
    let shared = SharedMlp {
        mlp,
        post_norm: src.vector(&n("post_ffw_norm_1"), d)?,
        experts_norm: src.vector(&n("pre_ffw_norm_2"), d)?,
        experts_post_norm: src.vector(&n("post_ffw_norm_2"), d)?,
        router_input_scale,
    };
    Ok(MoeFfn {
        router: src.matrix(&n("ffn_gate_inp"), d, e)?,
        router_bias: None,
        experts,
        routing: moe.routing,
        expert_scales: src.optional_vector(&format!("blk.{il}.ffn_down_exps.scale"), e)?,
        shared: Some(shared),
        shared_expert: None,
    })
}
