//! Architectures: each file declares hyper-parameters and options for the shared
//! decoder block; [`REGISTRY`] is the one place that lists them.

mod gemma3;
mod gemma4;
mod gpt_oss;
mod llama;
mod meta;
mod mistral3;
mod phi3;
mod qwen2;
mod qwen3;
mod qwen35;
mod qwen35moe;
mod qwen3moe;

pub use meta::Meta;

use crate::cpu::ops::Yarn;
use crate::error::{EngineError, Result};
use crate::matrix::AttnShape;
use crate::plan::{AttnTemperature, Gating, Layer, Routing};
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
    /// gpt-oss's clamped SwiGLU: `g·σ(α·g) · (u + 1)` with `g = min(gate, limit)`,
    /// `u = clamp(up, ±limit)` ([`SWIGLU_OAI_ALPHA`], [`SWIGLU_OAI_LIMIT`]).
    SwigluOai,
}

/// gpt-oss's SwiGLU slope α (llama.cpp's constant for `LLM_FFN_SWIGLU_OAI_MOE`).
pub const SWIGLU_OAI_ALPHA: f32 = 1.702;
/// gpt-oss's SwiGLU clamp.
pub const SWIGLU_OAI_LIMIT: f32 = 7.0;

/// RoPE parameters for one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Frequency base θ.
    pub base: f32,
    /// Position multiplier (1 / linear scaling factor).
    pub freq_scale: f32,
}

/// `rope.scaling.type`: how positions beyond the training context are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeScalingType {
    /// No scaling: the factor is ignored.
    None,
    /// Positions divided by the factor (llama.cpp's default when the key is absent).
    Linear,
    /// YaRN: interpolation ramped by dimension, magnitude-corrected.
    Yarn,
    /// Phi-3's LongRoPE: per-dimension factors, long or short by context.
    LongRope,
}

/// The RoPE scaling hyper-parameters, as llama.cpp's model loader reads them (`rope.scaling.*`);
/// [`RopeScaling::yarn`] turns them into ggml_rope_ext's parameters as its context does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// `rope.scaling.type`.
    pub kind: RopeScalingType,
    /// `rope.scaling.original_context_length`, else the training context: YaRN's correction
    /// dims and LongRoPE's choice of factors (llama.cpp's `n_ctx_orig_yarn`).
    pub n_ctx_orig: usize,
    /// `rope.scaling.yarn_ext_factor` where the architecture reads it; `None`: 1 for YaRN, else 0.
    pub yarn_ext_factor: Option<f32>,
    /// `rope.scaling.yarn_attn_factor` (only used without YaRN's own magnitude correction).
    pub yarn_attn_factor: f32,
    /// `rope.scaling.yarn_beta_fast` where the architecture reads it (32).
    pub yarn_beta_fast: f32,
    /// `rope.scaling.yarn_beta_slow` where the architecture reads it (1).
    pub yarn_beta_slow: f32,
    /// `rope.scaling.yarn_log_multiplier` where the architecture reads it (0: none).
    pub yarn_log_mul: f32,
    /// `rope.scaling.attn_factor`: a further magnitude scale of cos/sin (Phi-3's LongRoPE).
    pub attn_factor: f32,
}

impl RopeScaling {
    /// ggml_rope_ext's YaRN parameters for a model whose full-attention `freq_scale` is this,
    /// derived as llama.cpp's context does (`llama_context::llama_context`): the extrapolation mix
    /// on for YaRN, the magnitude `mscale(f, 1) / mscale(f, log_mul)` with ggml's own
    /// `1 + 0.1 ln f` divided out, times `rope.scaling.attn_factor`.
    pub fn yarn(&self, freq_scale: f32, n_ctx_train: usize) -> Yarn {
        let ext_factor = self.yarn_ext_factor.filter(|&e| e >= 0.0).unwrap_or(match self.kind {
            RopeScalingType::Yarn => 1.0,
            _ => 0.0,
        });
        let mut attn_factor = self.yarn_attn_factor;
        if ext_factor != 0.0 {
            let mscale = |scale: f32, m: f32| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let factor = 1.0 / freq_scale;
            attn_factor = if self.yarn_log_mul != 0.0 {
                mscale(factor, 1.0) / mscale(factor, self.yarn_log_mul)
            } else {
                mscale(factor, 1.0)
            };
            attn_factor *= 1.0 / (1.0 + 0.1 * factor.ln());
        }
        attn_factor *= self.attn_factor;
        let n_ctx_orig = if self.n_ctx_orig != 0 { self.n_ctx_orig } else { n_ctx_train };
        Yarn { ext_factor, attn_factor, beta_fast: self.yarn_beta_fast, beta_slow: self.yarn_beta_slow, n_ctx_orig }
    }

    /// Read the YaRN keys that only some architectures read in llama.cpp (mistral3, grok).
    pub(crate) fn read_yarn_keys(&mut self, m: &Meta, ext_and_attn: bool) -> Result<()> {
        if ext_and_attn {
            if let Some(v) = m.opt_f32("rope.scaling.yarn_ext_factor")? {
                self.yarn_ext_factor = Some(v);
            }
            if let Some(v) = m.opt_f32("rope.scaling.yarn_attn_factor")? {
                self.yarn_attn_factor = v;
            }
        }
        if let Some(v) = m.opt_f32("rope.scaling.yarn_beta_fast")? {
            self.yarn_beta_fast = v;
        }
        if let Some(v) = m.opt_f32("rope.scaling.yarn_beta_slow")? {
            self.yarn_beta_slow = v;
        }
        if let Some(v) = m.opt_f32("rope.scaling.yarn_log_multiplier")? {
            self.yarn_log_mul = v;
        }
        Ok(())
    }
}

/// Which per-dimension RoPE frequency factors an architecture loads (llama.cpp's
/// `get_rope_factors`): `rope_freqs.weight` (Llama 3.1) applies always; LongRoPE's
/// `rope_factors_long.weight` when the context exceeds the original one, else `rope_factors_short.weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeFactorTensors {
    /// None (the architecture declares no such tensors).
    None,
    /// `rope_freqs.weight`, if present.
    Freqs,
    /// `rope_factors_long.weight` / `rope_factors_short.weight`, each if present.
    LongShort,
    /// `rope_freqs.weight` of half the full head (gemma4's proportional RoPE), if present,
    /// for full-attention layers only; the rotated pairs take its first entries.
    FreqsOfHead,
}

impl RopeFactorTensors {
    /// Llama's choice (also mistral3's): LongRoPE's pair for a `longrope` file, else `rope_freqs`.
    pub fn llama(scaling: &RopeScaling) -> Self {
        match scaling.kind {
            RopeScalingType::LongRope => RopeFactorTensors::LongShort,
            _ => RopeFactorTensors::Freqs,
        }
    }
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
    /// Query heads (the first layer's; [`Config::layer_heads`] per layer).
    pub n_head: usize,
    /// Key/value heads (GQA when fewer than query heads; the first layer's).
    pub n_head_kv: usize,
    /// Dimension of each query/key head (full-attention layers).
    pub head_dim: usize,
    /// Dimension of each value head (full-attention layers).
    pub head_dim_v: usize,
    /// Per layer: (query heads, key/value heads): `head_count`/`head_count_kv` may be arrays.
    pub layer_heads: Vec<(usize, usize)>,
    /// Per layer: feed-forward size (`feed_forward_length` may be an array; 0: none given).
    pub layer_n_ff: Vec<usize>,
    /// Query/key head dimension of sliding-window layers (`attention.key_length_swa`).
    pub head_dim_swa: usize,
    /// Value head dimension of sliding-window layers (`attention.value_length_swa`).
    pub head_dim_v_swa: usize,
    /// Rotated dimensions of sliding-window layers (`rope.dimension_count_swa`).
    pub rope_dims_swa: usize,
    /// Layers `0..n_layer_kv` keep keys and values of their own; later ones read an earlier
    /// layer's ([`Config::kv_layer`]; gemma4's `attention.shared_kv_layers`).
    pub n_layer_kv: usize,
    /// Values RMS-normed per head without a weight before caching (gemma4).
    pub v_norm: bool,
    /// `attn_v` may be absent: the keys' projection then serves as values (gemma4).
    pub optional_v: bool,
    /// Width of each layer's slice of the per-layer token embeddings (gemma4's E2B/E4B; 0: none).
    pub n_embd_per_layer: usize,
    /// Per layer: a recurrent (Gated DeltaNet) layer instead of attention (Qwen3.5).
    pub recurrent_layers: Vec<bool>,
    /// The recurrent layers' sizes.
    pub delta: Option<crate::plan::DeltaShape>,
    /// Each query head's projection is followed by a gate's (Qwen3.5's gated attention).
    pub attn_output_gate: bool,
    /// Multi-section RoPE (`rope.dimension_sections`, Qwen3.5's interleaved M-RoPE): for text
    /// every section rotates by the position except the extra one, which stays at position 0.
    pub mrope_sections: Option<[usize; 4]>,
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
    /// RoPE scaling beyond the base and linear factor (YaRN, LongRoPE, magnitude).
    pub rope_scaling: RopeScaling,
    /// Which RoPE frequency-factor tensors the architecture loads.
    pub rope_factors: RopeFactorTensors,
    /// Llama 4-style attention temperature on the queries, growing with the position (mistral3).
    pub attn_temperature: Option<AttnTemperature>,
    /// Gate and up projections fused in one `ffn_up` tensor, gate rows first (phi3).
    pub fused_gate_up: bool,
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
    /// How an embedding model pools its tokens (`pooling_type`: 0 none, 1 mean, 2 CLS, 3 last,
    /// 4 rank), when the file says.
    pub pooling_type: Option<usize>,
    /// Mixture-of-experts feed-forward parts, if the model has them.
    pub moe: Option<MoeConfig>,
    /// Attention sinks (`attn_sinks`, one logit per query head) in every layer (gpt-oss).
    pub attn_sinks: bool,
    /// The attention output projection's bias is required (gpt-oss); otherwise read if present.
    pub attn_output_bias: bool,
    /// Name of the norm before the feed-forward part (`ffn_norm`; gpt-oss: `post_attention_norm`).
    pub ffn_norm_name: &'static str,
}

impl Config {
    /// Layer `il`'s attention shape: its heads, the head sizes and window of its kind of layer.
    pub fn attn_shape(&self, il: usize) -> AttnShape {
        let (n_head, n_head_kv) = self.layer_heads[il];
        let local = self.swa_layers[il];
        AttnShape {
            n_head,
            n_head_kv,
            head_dim: if local { self.head_dim_swa } else { self.head_dim },
            head_dim_v: if local { self.head_dim_v_swa } else { self.head_dim_v },
            window: if local { self.swa_window } else { None },
        }
    }

    /// Rotated dimensions per head of layer `il`.
    pub fn rope_dims_of(&self, il: usize) -> usize {
        if self.swa_layers[il] { self.rope_dims_swa } else { self.rope_dims }
    }

    /// The layer whose cached keys and values layer `il` attends over: itself, or for the
    /// shared tail (`il >= n_layer_kv`) the last layer with a cache of the same kind, as
    /// llama.cpp's gemma3n/gemma4 reuse rule has it (the two layers before the tail are a
    /// sliding one and then a full one).
    pub fn kv_layer(&self, il: usize) -> usize {
        if il < self.n_layer_kv {
            il
        } else {
            self.n_layer_kv - if self.swa_layers[il] { 2 } else { 1 }
        }
    }

    /// Floats of layer `il`'s per-sequence recurrent state: (convolution, delta rule); zeros
    /// for an attention layer.
    pub fn recurrent_widths(&self, il: usize) -> (usize, usize) {
        match (&self.delta, self.recurrent_layers[il]) {
            (Some(d), true) => (d.conv_state_len(), d.ssm_state_len()),
            _ => (0, 0),
        }
    }

    /// Key and value widths layer `il` stores per position (zero for a layer that reads another's).
    pub fn kv_widths(&self, il: usize) -> (usize, usize) {
        if self.kv_layer(il) != il || self.recurrent_layers[il] {
            return (0, 0);
        }
        let s = self.attn_shape(il);
        (s.n_head_kv * s.head_dim, s.n_head_kv * s.head_dim_v)
    }
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
    /// Router and experts carry biases (gpt-oss).
    pub biases: bool,
    /// Width of a shared expert where the file has one (`expert_shared_feed_forward_length`,
    /// else `feed_forward_length`).
    pub n_ff_shared: usize,
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
        // One width for every layer's experts (the key may be an array; layers without experts say 0).
        let widths: Vec<usize> = m.opt_per_layer("expert_feed_forward_length", m.usize("block_count")?)?.unwrap_or_default();
        let mut given = widths.iter().copied().filter(|&f| f > 0);
        let n_ff_exp = match given.next() {
            Some(f) if given.all(|g| g == f) => f,
            Some(_) => return Err(EngineError::BadMetadata(format!("{}.expert_feed_forward_length differs between layers", m.arch))),
            None => n_ff / n_used,
        };
        if n_ff_exp == 0 {
            return Err(EngineError::MissingKey(format!("{}.expert_feed_forward_length", m.arch)));
        }
        let routing = Routing { n_used, gating, normalize: false, scale: 1.0 };
        let n_ff_shared = m.opt_usize("expert_shared_feed_forward_length")?.filter(|&f| f > 0).unwrap_or(n_ff);
        Ok(MoeConfig { n_expert, n_ff_exp, routing, biases: false, n_ff_shared })
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
pub static REGISTRY: &[Architecture] =
    &[llama::ARCH, gemma3::ARCH, gemma4::ARCH, qwen2::ARCH, qwen3::ARCH, qwen35::ARCH, qwen35moe::ARCH, qwen35moe::NEXT, qwen3moe::ARCH, phi3::ARCH, mistral3::ARCH, gpt_oss::ARCH];

/// Find the architecture named in a file's metadata.
pub fn lookup(name: &str) -> Result<&'static Architecture> {
    REGISTRY.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<_> = REGISTRY.iter().map(|a| a.name).collect();
        EngineError::UnsupportedArchitecture(name.to_string(), known.join(", "))
    })
}

/// Which layers use the sliding window, as llama.cpp's `load_swa_pattern` reads it: a per-layer
/// `attention.sliding_window_pattern` array, else its period `p` (the architecture's default
/// when absent): layer `il` slides unless `il % p == p - 1`; `p = 0`: every layer slides.
pub(crate) fn swa_layers(m: &Meta, n_layer: usize, default_pattern: usize) -> Result<Vec<bool>> {
    Ok(match m.opt_bool_array("attention.sliding_window_pattern") {
        Some(flags) if flags.len() == n_layer => flags,
        _ => {
            let p = m.opt_usize("attention.sliding_window_pattern")?.unwrap_or(default_pattern);
            (0..n_layer).map(|il| p == 0 || il % p < p - 1).collect()
        }
    })
}

/// The hyper-parameters shared by llama-like architectures, with llama.cpp's defaults.
pub(crate) fn common(m: &Meta, rope_style: RopeStyle, activation: Activation) -> Result<Config> {
    let n_embd = m.usize("embedding_length")?;
    let n_layer = m.usize("block_count")?;
    if n_layer == 0 {
        return Err(EngineError::BadMetadata(format!("{}.block_count is 0", m.arch)));
    }
    let heads = m.opt_per_layer("attention.head_count", n_layer)?.ok_or_else(|| EngineError::MissingKey(format!("{}.attention.head_count", m.arch)))?;
    let heads_kv = m.opt_per_layer("attention.head_count_kv", n_layer)?.unwrap_or_else(|| heads.clone());
    for (&n_head, &n_head_kv) in heads.iter().zip(&heads_kv) {
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(EngineError::BadMetadata(format!(
                "{n_head} query heads cannot share {n_head_kv} key/value heads"
            )));
        }
    }
    let (n_head, n_head_kv) = (heads[0], heads_kv[0]);
    let head_dim = m.opt_usize("attention.key_length")?.unwrap_or(n_embd / n_head);
    let head_dim_v = m.opt_usize("attention.value_length")?.unwrap_or(head_dim);
    let rope_dims = m.opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
    // Sliding-window layers may have heads and rotations of their own (gemma4).
    let head_dim_swa = m.opt_usize("attention.key_length_swa")?.unwrap_or(head_dim);
    let head_dim_v_swa = m.opt_usize("attention.value_length_swa")?.unwrap_or(head_dim_v);
    let rope_dims_swa = m.opt_usize("rope.dimension_count_swa")?.unwrap_or(rope_dims);
    for (rd, hd) in [(rope_dims, head_dim), (rope_dims_swa, head_dim_swa)] {
        if hd == 0 || rd > hd || rd % 2 != 0 {
            return Err(EngineError::BadMetadata(format!("rope dimension count {rd} does not fit head dimension {hd}")));
        }
    }
    if head_dim_v == 0 || head_dim_v_swa == 0 {
        return Err(EngineError::BadMetadata(format!("{}: value heads of dimension 0", m.arch)));
    }
    let layer_n_ff = m.opt_per_layer("feed_forward_length", n_layer)?.unwrap_or_else(|| vec![0; n_layer]);
    let kind = match m.opt_str("rope.scaling.type")?.unwrap_or("linear") {
        "none" => RopeScalingType::None,
        "linear" => RopeScalingType::Linear,
        "yarn" => RopeScalingType::Yarn,
        "longrope" => RopeScalingType::LongRope,
        other => {
            return Err(EngineError::BadMetadata(format!(
                "{}.rope.scaling.type '{other}' is not one of none, linear, yarn, longrope",
                m.arch
            )))
        }
    };
    let factor = match m.opt_f32("rope.scaling.factor")? {
        Some(f) => Some(f),
        None => m.opt_f32("rope.scale_linear")?,
    };
    // llama.cpp never scales positions when the type says none.
    let freq_scale = match factor {
        Some(f) if f != 0.0 && kind != RopeScalingType::None => 1.0 / f,
        _ => 1.0,
    };
    let n_ctx_train = m.opt_usize("context_length")?.unwrap_or(2048);
    let rope_scaling = RopeScaling {
        kind,
        n_ctx_orig: m.opt_usize("rope.scaling.original_context_length")?.unwrap_or(n_ctx_train),
        yarn_ext_factor: None,
        yarn_attn_factor: 1.0,
        yarn_beta_fast: 32.0,
        yarn_beta_slow: 1.0,
        yarn_log_mul: 0.0,
        attn_factor: m.opt_f32("rope.scaling.attn_factor")?.unwrap_or(1.0),
    };
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
        n_ff: layer_n_ff[0],
        n_head,
        n_head_kv,
        head_dim,
        head_dim_v,
        layer_heads: heads.into_iter().zip(heads_kv).collect(),
        layer_n_ff,
        head_dim_swa,
        head_dim_v_swa,
        rope_dims_swa,
        n_layer_kv: n_layer,
        v_norm: false,
        optional_v: false,
        n_embd_per_layer: 0,
        recurrent_layers: vec![false; n_layer],
        delta: None,
        attn_output_gate: false,
        mrope_sections: None,
        n_vocab,
        n_ctx_train,
        norm_eps: m.opt_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_dims,
        rope_style,
        rope_global: global,
        rope_local: global,
        rope_scaling,
        rope_factors: RopeFactorTensors::None,
        attn_temperature: None,
        fused_gate_up: false,
        swa_window: None,
        swa_layers: vec![false; n_layer],
        embed_scale: None,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        activation,
        qk_norm: false,
        post_norms: false,
        logit_softcap: None,
        pooling_type: m.opt_usize("pooling_type")?,
        moe: None,
        attn_sinks: false,
        attn_output_bias: false,
        ffn_norm_name: "ffn_norm",
    })
}
