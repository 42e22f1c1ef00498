//! Architectures: each file declares hyper-parameters and options for the shared
//! decoder block; [`REGISTRY`] is the one place that lists them.

mod gemma3;
mod llama;
mod meta;
mod qwen2;
mod qwen3;
mod qwen3moe;

pub use meta::Meta;

use crate::error::{EngineError, Result};
use crate::plan::{Gating, Layer, Routing};
use crate::weights::TensorSource;

/// How RoPE pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// ggml's "normal" RoPE: adjacent pairs (2i, 2i+1) — llama (weights pre-permuted by the converter).
    Adjacent,
    /// NeoX RoPE: pairs (i, i + d/2) — gemma, qwen.
    Neox,
}

/// The feed-forward gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU(gate) * up.
    Silu,
    /// GELU (tanh approximation)(gate) * up.
    GeluTanh,
}

/// RoPE parameters for one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Frequency base θ.
    pub base: f32,
    /// Position multiplier (1 / linear scaling factor).
    pub freq_scale: f32,
}

/// Everything the forward pass needs to know about a model's shape and options.
#[derive(Debug, Clone)]
pub struct Config {
    /// `general.architecture`.
    pub arch: String,
    /// Number of decoder blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub n_head_kv: usize,
    /// Dimension of each query/key head.
    pub head_dim: usize,
    /// Dimension of each value head.
    pub head_dim_v: usize,
    /// Vocabulary size (rows of the embedding).
    pub n_vocab: usize,
    /// Context the model was trained for.
    pub n_ctx_train: usize,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Rotated dimensions per head (≤ head_dim).
    pub rope_dims: usize,
    /// How RoPE pairs dimensions.
    pub rope_style: RopeStyle,
    /// RoPE for full-attention layers.
    pub rope_global: Rope,
    /// RoPE for sliding-window layers.
    pub rope_local: Rope,
    /// Sliding-window size, if the model has sliding-window layers.
    pub swa_window: Option<usize>,
    /// Per layer: does it use the sliding window?
    pub swa_layers: Vec<bool>,
    /// Multiply embeddings by this (gemma: sqrt(n_embd)).
    pub embed_scale: Option<f32>,
    /// Scale applied to queries before attention.
    pub attn_scale: f32,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Per-head RMSNorm on Q and K (gemma3, qwen3).
    pub qk_norm: bool,
    /// RMSNorm on the attention and feed-forward outputs before the residual add (gemma2/3).
    pub post_norms: bool,
    /// Final logit soft-capping (tanh), if any.
    pub logit_softcap: Option<f32>,
    /// Mixture-of-experts feed-forward parts, if the model has them.
    pub moe: Option<MoeConfig>,
}

/// The mixture-of-experts hyper-parameters.
#[derive(Debug, Clone)]
pub struct MoeConfig {
    /// Experts per layer.
    pub n_expert: usize,
    /// Inner size of each expert.
    pub n_ff_exp: usize,
    /// How the router chooses and weights experts.
    pub routing: Routing,
}

impl MoeConfig {
    /// Expert counts and sizes as llama.cpp reads them (`expert_count`, `expert_used_count`,
    /// `expert_feed_forward_length`, else `feed_forward_length / expert_used_count`), with
    /// the architecture's gating; normalization and scale as the caller sets them.
    pub(crate) fn read(m: &Meta, n_ff: usize, gating: Gating) -> Result<Self> {
        let n_expert = m.usize("expert_count")?;
        let n_used = m.usize("expert_used_count")?;
        if n_expert == 0 || n_used == 0 || n_used > n_expert {
            return Err(EngineError::BadMetadata(format!("{n_used} experts used of {n_expert}")));
        }
        let n_ff_exp = match m.opt_usize("expert_feed_forward_length")? {
            Some(f) if f > 0 => f,
            _ => n_ff / n_used,
        };
        if n_ff_exp == 0 {
            return Err(EngineError::MissingKey(format!("{}.expert_feed_forward_length", m.arch)));
        }
        let routing = Routing { n_used, gating, normalize: false, scale: 1.0 };
        Ok(MoeConfig { n_expert, n_ff_exp, routing })
    }
}

/// One registry entry: an architecture name and how to read its hyper-parameters.
pub struct Architecture {
    /// `general.architecture` value.
    pub name: &'static str,
    /// Builds the config from metadata.
    pub config: fn(&Meta) -> Result<Config>,
    /// Builds layer `il`'s plan from the file's tensors and the config.
    pub layer: fn(&TensorSource, &Config, usize) -> Result<Layer>,
}

/// Every supported architecture. Adding one is a file plus a line here.
pub static REGISTRY: &[Architecture] = &[llama::ARCH, gemma3::ARCH, qwen2::ARCH, qwen3::ARCH, qwen3moe::ARCH];

/// Find the architecture named in a file's metadata.
pub fn lookup(name: &str) -> Result<&'static Architecture> {
    REGISTRY.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<_> = REGISTRY.iter().map(|a| a.name).collect();
        EngineError::UnsupportedArchitecture(name.to_string(), known.join(", "))
    })
}

/// The hyper-parameters shared by llama-like architectures, with llama.cpp's defaults.
pub(crate) fn common(m: &Meta, rope_style: RopeStyle, activation: Activation) -> Result<Config> {
    let n_embd = m.usize("embedding_length")?;
    let n_head = m.usize("attention.head_count")?;
    let n_head_kv = m.opt_usize("attention.head_count_kv")?.unwrap_or(n_head);
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(EngineError::BadMetadata(format!(
            "{n_head} query heads cannot share {n_head_kv} key/value heads"
        )));
    }
    let head_dim = m.opt_usize("attention.key_length")?.unwrap_or(n_embd / n_head);
    let head_dim_v = m.opt_usize("attention.value_length")?.unwrap_or(head_dim);
    let rope_dims = m.opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
    if head_dim == 0 || rope_dims > head_dim || rope_dims % 2 != 0 {
        return Err(EngineError::BadMetadata(format!(
            "rope dimension count {rope_dims} does not fit head dimension {head_dim}"
        )));
    }
    match m.opt_str("rope.scaling.type")? {
        None | Some("none") | Some("linear") => {}
        Some(other) => {
            return Err(EngineError::BadMetadata(format!("RoPE scaling '{other}' is not supported yet")))
        }
    }
    let factor = match m.opt_f32("rope.scaling.factor")? {
        Some(f) => Some(f),
        None => m.opt_f32("rope.scale_linear")?,
    };
    let freq_scale = match factor {
        Some(f) if f != 0.0 => 1.0 / f,
        _ => 1.0,
    };
    let n_layer = m.usize("block_count")?;
    let n_vocab = match m.opt_usize("vocab_size")? {
        Some(v) => v,
        None => m
            .file
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| EngineError::MissingKey(format!("{}.vocab_size", m.arch)))?,
    };
    let global = Rope { base: m.opt_f32("rope.freq_base")?.unwrap_or(10000.0), freq_scale };
    Ok(Config {
        arch: m.arch.to_string(),
        n_layer,
        n_embd,
        // Required by dense layers (checked there); MoE models may give only the experts' size.
        n_ff: m.opt_usize("feed_forward_length")?.unwrap_or(0),
        n_head,
        n_head_kv,
        head_dim,
        head_dim_v,
        n_vocab,
        n_ctx_train: m.opt_usize("context_length")?.unwrap_or(2048),
        norm_eps: m.opt_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_dims,
        rope_style,
        rope_global: global,
        rope_local: global,
        swa_window: None,
        swa_layers: vec![false; n_layer],
        embed_scale: None,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        activation,
        qk_norm: false,
        post_norms: false,
        logit_softcap: None,
        moe: None,
    })
}
