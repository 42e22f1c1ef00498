//! Random-weight GGUF models of any shape, so every shape can be run and benchmarked
//! without downloading a model. Weights are uniform with std 1/sqrt(fan-in), norms are 1,
//! and the vocabulary is a minimal SentencePiece one (control tokens, 256 byte tokens, fillers).

use crate::error::EngineError;
use gguf::{Array, GgmlType, GgufWriter, Value};
use rayon::prelude::*;

/// The shape and type of a generated model.
#[derive(Debug, Clone)]
pub struct RandomModelSpec {
    /// Architecture (one of [`RandomModelSpec::ARCHITECTURES`]).
    pub arch: String,
    /// Decoder blocks.
    pub layers: usize,
    /// Hidden size.
    pub dim: usize,
    /// Feed-forward size.
    pub ff: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size (≥ 260).
    pub vocab: usize,
    /// Type of the matrices.
    pub ty: GgmlType,
    /// Training context written to the metadata.
    pub ctx: usize,
    /// RoPE base.
    pub rope_base: f32,
    /// Seed of the weights.
    pub seed: u64,
    /// Experts per layer of a mixture-of-experts architecture (0: [`DEFAULT_EXPERTS`]);
    /// each expert is `ff` wide.
    pub experts: usize,
    /// Experts each token uses (0: [`DEFAULT_EXPERTS_USED`]).
    pub experts_used: usize,
    /// Scale of the output projection: random weights give nearly flat next-token
    /// distributions; a larger scale peaks them, so that comparisons of logits bite.
    pub output_scale: f32,
    /// RoPE scaling written to the metadata: `none`, `linear`, `yarn` or `longrope`; empty:
    /// the architecture's own (YaRN for mistral3, nothing for the others).
    pub rope_scaling: String,
    /// Its factor (0: [`DEFAULT_ROPE_SCALE`]).
    pub rope_scale: f32,
    /// `rope.scaling.original_context_length` where written (0: an eighth of `ctx`).
    pub rope_orig_ctx: usize,
    /// Rotated dims per head (0: the whole head; half of it for phi3).
    pub rope_dims: usize,
    /// Write Llama 3.1-style per-pair frequency divisors (`rope_freqs.weight`; llama, mistral3).
    pub rope_freqs: bool,
    /// Dimension of each attention head (0: `dim / heads`); written as `attention.key_length`
    /// and `value_length` when it differs (gpt-oss: 64 with dim 2880 and 64 heads).
    pub head_dim: usize,
    /// Type of the experts' matrices (`None`: `ty`; real gpt-oss files: MXFP4).
    pub expert_ty: Option<GgmlType>,
    /// A real vocabulary's `tokenizer.*` metadata (from llama.cpp's `ggml-vocab-*.gguf`, or any
    /// model), written instead of the minimal one; `vocab` must be its token count.
    pub tokenizer: Option<std::sync::Arc<Vec<(String, Value)>>>,
}

/// The RoPE scaling factor when a spec does not say.
pub const DEFAULT_ROPE_SCALE: f32 = 4.0;
/// YaRN keys written beside `rope.scaling.type = yarn`, none of them llama.cpp's defaults, so a
/// reader that takes them where llama.cpp does not (or the reverse) shows: beta_fast, beta_slow,
/// log multiplier.
pub const YARN_KEYS: (f32, f32, f32) = (16.0, 2.0, 0.5);
/// mistral3's `attention.temperature_scale` (Ministral 3's `llama_4_scaling_beta`).
pub const MISTRAL3_TEMPERATURE: f32 = 0.1;
/// The sliding window written to phi3 files, which llama.cpp (and so tandem) ignores: short,
/// so that applying it would show.
pub const PHI3_WINDOW: u32 = 16;

/// Experts per layer when a MoE spec does not say.
pub const DEFAULT_EXPERTS: usize = 8;
/// Experts per token when a MoE spec does not say.
pub const DEFAULT_EXPERTS_USED: usize = 2;

impl RandomModelSpec {
    /// Named shapes of well-known models.
    pub fn preset(name: &str, ty: GgmlType) -> Option<Self> {
        let (layers, dim, ff, heads, kv_heads, vocab, ctx, rope_base) = match name {
            "llama3-8b" => (32, 4096, 14336, 32, 8, 128256, 8192, 500000.0),
            "llama2-7b" => (32, 4096, 11008, 32, 32, 32000, 4096, 10000.0),
            "llama3-1b" => (16, 2048, 8192, 32, 8, 128256, 8192, 500000.0),
            "smollm2-135m" => (30, 576, 1536, 9, 3, 49152, 8192, 100000.0),
            "tiny" => (2, 256, 512, 4, 2, 512, 512, 10000.0),
            _ => return None,
        };
        Some(RandomModelSpec {
            arch: "llama".into(),
            layers,
            dim,
            ff,
            heads,
            kv_heads,
            vocab,
            ty,
            ctx,
            rope_base,
            seed: 1,
            experts: 0,
            experts_used: 0,
            output_scale: 1.0,
            rope_scaling: String::new(),
            rope_scale: 0.0,
            rope_orig_ctx: 0,
            rope_dims: 0,
            rope_freqs: false,
            head_dim: 0,
            expert_ty: None,
            tokenizer: None,
        })
    }

    /// Take the vocabulary of `file` (every `tokenizer.*` key; its token count becomes `vocab`).
    pub fn with_vocabulary_of(&mut self, file: &gguf::GgufFile) -> Result<(), EngineError> {
        let keys: Vec<(String, Value)> = file.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect();
        let tokens = file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map(|a| a.len());
        match tokens {
            Some(n) if n > 0 => {
                self.vocab = n;
                self.tokenizer = Some(std::sync::Arc::new(keys));
                Ok(())
            }
            _ => Err(EngineError::Invalid("that file has no vocabulary (tokenizer.ggml.tokens)".into())),
        }
    }

    /// The architectures it writes.
    pub const ARCHITECTURES: [&'static str; 12] =
        ["llama", "gemma3", "gemma4", "qwen2", "qwen3", "qwen35", "qwen35moe", "qwen3next", "qwen3moe", "phi3", "mistral3", "gpt-oss"];

    /// The hybrid Gated DeltaNet architectures (Qwen3.5 and Qwen3-Next).
    pub fn is_hybrid(&self) -> bool {
        matches!(self.arch.as_str(), "qwen35" | "qwen35moe" | "qwen3next")
    }

    /// The RoPE scaling type written (`""`: none written).
    pub fn rope_scaling_type(&self) -> &str {
        match (self.rope_scaling.as_str(), self.arch.as_str()) {
            ("", "mistral3" | "gpt-oss") => "yarn",
            (t, _) => t,
        }
    }

    /// The attention head's dimension.
    pub fn head_dim(&self) -> usize {
        if self.head_dim != 0 { self.head_dim } else { self.dim / self.heads.max(1) }
    }

    /// Rotated dims per head.
    pub fn rope_dims(&self) -> usize {
        let hd = self.head_dim();
        match self.rope_dims {
            0 if self.arch == "phi3" => hd / 2,
            0 if self.is_hybrid() => hd / 4,
            0 => hd,
            d => d,
        }
    }

    /// `rope.scaling.original_context_length` (written for YaRN, LongRoPE and phi3).
    pub fn rope_orig_ctx(&self) -> usize {
        if self.rope_orig_ctx == 0 { (self.ctx / 8).max(1) } else { self.rope_orig_ctx }
    }

    /// Whether the file has LongRoPE's long/short factors (phi3; llama and mistral3 when `longrope`).
    pub fn long_short_factors(&self) -> bool {
        self.arch == "phi3" || (self.rope_scaling_type() == "longrope" && matches!(self.arch.as_str(), "llama" | "mistral3"))
    }

    /// Layer `il`'s shape in a gemma4 file, chosen so that every Gemma 4 feature shows:
    /// odd layers full (heads twice as wide, half the KV heads when that divides, no `attn_v`:
    /// the keys serve as values), the rest sliding; the last layers (a quarter, rounded to
    /// pairs) without K/V of their own and with a feed-forward part twice as wide.
    pub fn gemma4_layer(&self, il: usize) -> Gemma4Layer {
        let full = il % 2 == 1;
        let kv_heads = if full && self.kv_heads.is_multiple_of(2) { self.kv_heads / 2 } else { self.kv_heads };
        let n_kv = self.gemma4_layers_with_kv();
        Gemma4Layer {
            swa: !full,
            head_dim: if full { 2 * self.head_dim() } else { self.head_dim() },
            kv_heads,
            own_kv: il < n_kv,
            ff: if il < n_kv { self.ff } else { 2 * self.ff },
        }
    }

    /// gemma4 files: layers with a cache of their own (an even count, so that the last two are
    /// a sliding one and a full one, as llama.cpp's reuse rule needs).
    pub fn gemma4_layers_with_kv(&self) -> usize {
        let n = 2 * self.layers.div_ceil(4);
        if n >= self.layers { self.layers } else { n }
    }

    /// Width of each layer's per-layer input in gemma4 files (a whole number of blocks).
    pub fn gemma4_per_layer_width(&self) -> usize {
        self.ty.block_size().max(64)
    }

    /// qwen35 files: the Gated DeltaNet's sizes (key heads = kv heads, value heads = heads,
    /// both of the attention's head size; a 4-tap convolution).
    pub fn qwen35_delta(&self) -> crate::plan::DeltaShape {
        let hd = self.head_dim();
        let interleaved = self.arch == "qwen3next";
        crate::plan::DeltaShape { n_k_heads: self.kv_heads, n_v_heads: self.heads, head_k_dim: hd, head_v_dim: hd, d_conv: 4, interleaved }
    }

    /// qwen35 files: one full-attention layer in this many (4, or 2 below 4 layers).
    pub fn qwen35_interval(&self) -> usize {
        if self.layers >= 4 { 4 } else { 2 }
    }

    /// `(experts, used)` of a mixture-of-experts architecture, `None` for a dense one.
    pub fn moe(&self) -> Option<(usize, usize)> {
        let or = |v: usize, d: usize| if v == 0 { d } else { v };
        // gemma4 has experts only when asked (its 26B-A4B); the others always.
        let moe = matches!(self.arch.as_str(), "qwen3moe" | "qwen35moe" | "qwen3next" | "gpt-oss") || (self.arch == "gemma4" && self.experts > 0);
        moe.then(|| (or(self.experts, DEFAULT_EXPERTS), or(self.experts_used, DEFAULT_EXPERTS_USED)))
    }

    /// The preset names.
    pub const PRESETS: [&'static str; 5] = ["llama3-8b", "llama2-7b", "llama3-1b", "smollm2-135m", "tiny"];

    fn check(&self) -> Result<(), EngineError> {
        self.check_shape().map_err(EngineError::Invalid)
    }

    fn check_shape(&self) -> Result<(), String> {
        let bs = self.ty.block_size();
        if !Self::ARCHITECTURES.contains(&self.arch.as_str()) {
            return Err(format!("gen-model writes the {} architectures, not '{}'", Self::ARCHITECTURES.join(", "), self.arch));
        }
        if self.heads == 0 || self.kv_heads == 0 || self.heads % self.kv_heads != 0 || (self.head_dim == 0 && self.dim % self.heads != 0) {
            return Err(format!("{} heads and {} kv heads do not divide dim {}", self.heads, self.kv_heads, self.dim));
        }
        if self.head_dim() % 2 != 0 {
            return Err("the head dimension must be even".into());
        }
        let q_dim = self.heads * self.head_dim();
        if self.dim % bs != 0 || self.ff % bs != 0 || q_dim % bs != 0 {
            return Err(format!("dim {}, ff {} and heads × head dim {q_dim} must be multiples of {}'s block size {bs}", self.dim, self.ff, self.ty.name()));
        }
        if let Some(et) = self.expert_ty {
            let ebs = et.block_size();
            if self.dim % ebs != 0 || self.ff % ebs != 0 {
                return Err(format!("dim {} and ff {} must be multiples of {}'s block size {ebs}", self.dim, self.ff, et.name()));
            }
            quant::quantize_row(et, &vec![0.0; ebs], &mut vec![0u8; et.block_bytes()])
                .map_err(|e| format!("cannot write {} expert weights: {e}", et.name()))?;
        }
        if self.tokenizer.is_none() && self.vocab < 260 {
            return Err("vocab must be at least 260 (3 control + 256 byte tokens + 1)".into());
        }
        if let Some((e, k)) = self.moe() {
            if k > e {
                return Err(format!("{k} experts used of {e}"));
            }
        }
        if !(self.output_scale.is_finite() && self.output_scale > 0.0) {
            return Err(format!("output scale {} must be positive", self.output_scale));
        }
        if self.layers == 0 {
            return Err("layers must be at least 1".into());
        }
        let (hd, rd) = (self.head_dim(), self.rope_dims());
        if rd == 0 || rd > hd || rd % 2 != 0 {
            return Err(format!("{rd} RoPE dims do not fit the head dimension {hd} (even, at most the head)"));
        }
        if rd != hd && matches!(self.arch.as_str(), "llama" | "mistral3") {
            return Err(format!("{} rotates the whole head ({hd} dims; llama.cpp refuses {rd})", self.arch));
        }
        if !matches!(self.rope_scaling_type(), "" | "none" | "linear" | "yarn" | "longrope") {
            return Err(format!("RoPE scaling '{}' is not one of none, linear, yarn, longrope", self.rope_scaling));
        }
        if self.rope_freqs && (!matches!(self.arch.as_str(), "llama" | "mistral3") || self.long_short_factors()) {
            return Err("rope_freqs.weight is read by llama and mistral3 files without LongRoPE factors".into());
        }
        if !(self.rope_scale >= 0.0 && self.rope_scale.is_finite()) {
            return Err(format!("RoPE scale {} must be positive", self.rope_scale));
        }
        quant::quantize_row(self.ty, &vec![0.0; bs], &mut vec![0u8; self.ty.block_bytes()])
            .map_err(|e| format!("cannot write {} weights: {e}", self.ty.name()))
    }

    /// Build the file in memory.
    pub fn build(&self) -> Result<GgufWriter, EngineError> {
        self.check()?;
        let mut w = GgufWriter::new();
        let a = self.arch.as_str();
        let key = |k: &str| format!("{a}.{k}");
        w.set("general.architecture", Value::String(a.into()))
            .set("general.name", Value::String(format!("tandem random {a} {}L {}d", self.layers, self.dim)))
            .set(&key("block_count"), Value::U32(self.layers as u32))
            .set(&key("context_length"), Value::U32(self.ctx as u32))
            .set(&key("embedding_length"), Value::U32(self.dim as u32))
            .set(&key("feed_forward_length"), Value::U32(self.ff as u32))
            .set(&key("attention.head_count"), Value::U32(self.heads as u32))
            .set(&key("attention.head_count_kv"), Value::U32(self.kv_heads as u32))
            .set(&key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
            .set(&key("rope.freq_base"), Value::F32(self.rope_base))
            .set(&key("vocab_size"), Value::U32(self.vocab as u32));
        if a == "gemma3" {
            // Sliding-window layers (every other one) with their own RoPE base, as Gemma 3 has.
            w.set(&key("attention.sliding_window"), Value::U32(SWA_WINDOW))
                .set(&key("attention.sliding_window_pattern"), Value::U32(2))
                .set(&key("rope.freq_base_swa"), Value::F32(self.rope_base / 100.0));
        }
        if a == "gpt-oss" {
            // gpt-oss's window; its alternation is llama.cpp's default for the architecture (no key).
            w.set(&key("attention.sliding_window"), Value::U32(SWA_WINDOW));
        }
        if self.is_hybrid() {
            let s = self.qwen35_delta();
            let pairs = self.rope_dims() / 2;
            let sections = vec![(pairs + 2) / 3, (pairs + 1) / 3, pairs / 3, 0].into_iter().map(|v| v as i32).collect();
            w.set(&key("ssm.conv_kernel"), Value::U32(s.d_conv as u32))
                .set(&key("ssm.state_size"), Value::U32(s.head_k_dim as u32))
                .set(&key("ssm.group_count"), Value::U32(s.n_k_heads as u32))
                .set(&key("ssm.time_step_rank"), Value::U32(s.n_v_heads as u32))
                .set(&key("ssm.inner_size"), Value::U32(s.value_dim() as u32))
                .set(&key("full_attention_interval"), Value::U32(self.qwen35_interval() as u32));
            if a != "qwen3next" {
                w.set(&key("rope.dimension_sections"), Value::Array(Array::I32(sections)));
            }
        }
        if a == "gemma4" {
            self.add_gemma4_metadata(&mut w);
        } else if self.head_dim() * self.heads != self.dim {
            w.set(&key("attention.key_length"), Value::U32(self.head_dim() as u32))
                .set(&key("attention.value_length"), Value::U32(self.head_dim() as u32));
        }
        self.add_rope_metadata(&mut w);
        if let Some((e, k)) = self.moe() {
            w.set(&key("expert_count"), Value::U32(e as u32))
                .set(&key("expert_used_count"), Value::U32(k as u32))
                .set(&key("expert_feed_forward_length"), Value::U32(self.ff as u32));
            if a == "qwen35moe" || a == "qwen3next" {
                w.set(&key("expert_shared_feed_forward_length"), Value::U32(self.ff as u32));
            }
        }
        self.add_vocab(&mut w);

        let hd = self.head_dim();
        let (q_dim, kv) = (self.heads * hd, self.kv_heads * hd);
        // (name, cols, rows, experts): one slab of `rows` per expert in a 3-D expert tensor.
        let mut mats: Vec<(String, usize, usize, usize)> = vec![
            ("token_embd.weight".into(), self.dim, self.vocab, 1),
            ("output.weight".into(), self.dim, self.vocab, 1),
        ];
        // MoE routers stay F32, as llama.cpp's quantizer leaves them.
        let mut routers: Vec<(String, usize, usize)> = Vec::new();
        let mut vecs: Vec<(String, usize)> = vec![("output_norm.weight".into(), self.dim)];
        let mut biases: Vec<(String, Vec<usize>, f32)> = Vec::new();
        // F32 tensors uniform in [lo, hi] (Gated DeltaNet's convolution taps, decay bias and rate).
        let mut ranges: Vec<(String, Vec<usize>, f32, f32)> = Vec::new();
        for l in 0..self.layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            if a == "phi3" {
                // Fused Q/K/V and gate/up, as Phi-3's converter writes them.
                mats.extend([
                    (n("attn_qkv"), self.dim, q_dim + 2 * kv, 1),
                    (n("attn_output"), q_dim, self.dim, 1),
                    (n("ffn_up"), self.dim, 2 * self.ff, 1),
                    (n("ffn_down"), self.ff, self.dim, 1),
                ]);
            } else if self.is_hybrid() && (l + 1) % self.qwen35_interval() != 0 {
                let s = self.qwen35_delta();
                let (cd, vd, hv) = (s.conv_dim(), s.value_dim(), s.n_v_heads);
                mats.extend([(n("attn_qkv"), self.dim, cd, 1), (n("attn_gate"), self.dim, vd, 1)]);
                if a == "qwen3next" {
                    // β and α in one projection, grouped by key head.
                    mats.push((n("ssm_ba"), self.dim, 2 * hv, 1));
                } else {
                    mats.extend([(n("ssm_beta"), self.dim, hv, 1), (n("ssm_alpha"), self.dim, hv, 1)]);
                }
                mats.push((n("ssm_out"), vd, self.dim, 1));
                vecs.push((n("ssm_norm"), s.head_v_dim));
                let t = |s: &str| format!("blk.{l}.{s}");
                ranges.extend([
                    (n("ssm_conv1d"), vec![s.d_conv, cd], -0.6, 0.6),
                    (t("ssm_dt.bias"), vec![hv], -1.0, 1.0),
                    // -exp(A_log): every head decays, at its own rate.
                    (t("ssm_a"), vec![hv], -1.5, -0.1),
                ]);
            } else if self.is_hybrid() {
                // Gated attention: each query head's rows, then its gate's.
                mats.extend([
                    (n("attn_q"), self.dim, 2 * q_dim, 1),
                    (n("attn_k"), self.dim, kv, 1),
                    (n("attn_v"), self.dim, kv, 1),
                    (n("attn_output"), q_dim, self.dim, 1),
                ]);
                vecs.extend([(n("attn_q_norm"), hd), (n("attn_k_norm"), hd)]);
            } else if a == "gemma4" {
                let g = self.gemma4_layer(l);
                let (q_dim, kv) = (self.heads * g.head_dim, g.kv_heads * g.head_dim);
                mats.extend([(n("attn_q"), self.dim, q_dim, 1), (n("attn_output"), q_dim, self.dim, 1)]);
                vecs.push((n("attn_q_norm"), g.head_dim));
                if g.own_kv {
                    mats.push((n("attn_k"), self.dim, kv, 1));
                    vecs.push((n("attn_k_norm"), g.head_dim));
                    if g.swa {
                        mats.push((n("attn_v"), self.dim, kv, 1));
                    }
                }
                mats.extend([
                    (n("ffn_gate"), self.dim, g.ff, 1),
                    (n("ffn_up"), self.dim, g.ff, 1),
                    (n("ffn_down"), g.ff, self.dim, 1),
                    (n("inp_gate"), self.dim, self.gemma4_per_layer_width(), 1),
                    (n("proj"), self.gemma4_per_layer_width(), self.dim, 1),
                ]);
                vecs.extend([(n("post_attention_norm"), self.dim), (n("post_ffw_norm"), self.dim), (n("post_norm"), self.dim)]);
                vecs.push((n("layer_output_scale"), 1));
                if let Some((e, _)) = self.moe() {
                    // 26B-A4B's experts beside the dense MLP: gate/up fused, per-expert scales.
                    routers.push((n("ffn_gate_inp"), self.dim, e));
                    mats.extend([(n("ffn_gate_up_exps"), self.dim, 2 * self.ff, e), (n("ffn_down_exps"), self.ff, self.dim, e)]);
                    let s = |name: &str| format!("blk.{l}.{name}");
                    vecs.extend([
                        (n("pre_ffw_norm_2"), self.dim),
                        (n("post_ffw_norm_1"), self.dim),
                        (n("post_ffw_norm_2"), self.dim),
                        (s("ffn_gate_inp.scale"), self.dim),
                        (s("ffn_down_exps.scale"), e),
                    ]);
                }
            } else {
                mats.extend([
                    (n("attn_q"), self.dim, q_dim, 1),
                    (n("attn_k"), self.dim, kv, 1),
                    (n("attn_v"), self.dim, kv, 1),
                    (n("attn_output"), q_dim, self.dim, 1),
                ]);
            }
            match self.moe() {
                _ if a == "gemma4" => {}
                None if a == "phi3" => {}
                None => mats.extend([
                    (n("ffn_gate"), self.dim, self.ff, 1),
                    (n("ffn_up"), self.dim, self.ff, 1),
                    (n("ffn_down"), self.ff, self.dim, 1),
                ]),
                Some((e, _)) => {
                    routers.push((n("ffn_gate_inp"), self.dim, e));
                    mats.extend([
                        (n("ffn_gate_exps"), self.dim, self.ff, e),
                        (n("ffn_up_exps"), self.dim, self.ff, e),
                        (n("ffn_down_exps"), self.ff, self.dim, e),
                    ]);
                    if a == "qwen35moe" || a == "qwen3next" {
                        // The shared expert and its gate (one weight per input feature).
                        mats.extend([
                            (n("ffn_gate_shexp"), self.dim, self.ff, 1),
                            (n("ffn_up_shexp"), self.dim, self.ff, 1),
                            (n("ffn_down_shexp"), self.ff, self.dim, 1),
                        ]);
                        biases.push((n("ffn_gate_inp_shexp"), vec![self.dim], 0.2));
                    }
                }
            }
            // gpt-oss's norm before the experts is named after the attention, as its converter writes it.
            let ffn_norm = if a == "gpt-oss" || self.is_hybrid() { "post_attention_norm" } else { "ffn_norm" };
            vecs.extend([(n("attn_norm"), self.dim), (n(ffn_norm), self.dim)]);
            if a == "gpt-oss" {
                let b = |s: &str| format!("blk.{l}.{s}.bias");
                let e = self.moe().map_or(0, |m| m.0);
                // (name, shape, amplitude): biases small beside the products; sinks on the scores' scale.
                biases.extend([
                    (b("attn_q"), vec![q_dim], 0.2),
                    (b("attn_k"), vec![kv], 0.2),
                    (b("attn_v"), vec![kv], 0.2),
                    (b("attn_output"), vec![self.dim], 0.2),
                    (n("attn_sinks"), vec![self.heads], 2.0),
                    (b("ffn_gate_inp"), vec![e], 0.5),
                    (b("ffn_gate_exps"), vec![self.ff, e], 0.5),
                    (b("ffn_up_exps"), vec![self.ff, e], 0.5),
                    (b("ffn_down_exps"), vec![self.dim, e], 0.2),
                ]);
            }
            if a == "gemma3" || (a.starts_with("qwen3") && !self.is_hybrid()) {
                vecs.extend([(n("attn_q_norm"), hd), (n("attn_k_norm"), hd)]);
            }
            if a == "gemma3" {
                vecs.extend([(n("post_attention_norm"), self.dim), (n("post_ffw_norm"), self.dim)]);
            }
            if a == "qwen2" {
                let b = |s: &str| format!("blk.{l}.{s}.bias");
                vecs.extend([(b("attn_q"), self.dim), (b("attn_k"), kv), (b("attn_v"), kv)]);
            }
        }
        if a == "gemma4" {
            let width = self.gemma4_per_layer_width() * self.layers;
            mats.extend([
                ("per_layer_token_embd.weight".into(), width, self.vocab, 1),
                ("per_layer_model_proj.weight".into(), self.dim, width, 1),
            ]);
            vecs.push(("per_layer_proj_norm.weight".into(), self.gemma4_per_layer_width()));
        }
        let datas: Vec<Vec<u8>> = mats
            .par_iter()
            .enumerate()
            .map(|(i, (name, cols, rows, e))| {
                let scale = if name == "output.weight" { self.output_scale } else { 1.0 };
                self.random_matrix(i as u64, self.matrix_type(name), *cols, rows * e, scale)
            })
            .collect();
        let add = |w: &mut GgufWriter, name: &str, shape: &[u64], ty: GgmlType, data: Vec<u8>| {
            w.add_tensor(name, shape, ty, data).map(|_| ()).map_err(|e| EngineError::Invalid(e.to_string()))
        };
        for ((name, cols, rows, e), data) in mats.iter().zip(datas) {
            let shape = [*cols as u64, *rows as u64, *e as u64];
            add(&mut w, name, if *e == 1 { &shape[..2] } else { &shape }, self.matrix_type(name), data)?;
        }
        for (i, (name, cols, rows)) in routers.iter().enumerate() {
            let data = self.random_matrix((mats.len() + i) as u64, GgmlType::F32, *cols, *rows, 1.0);
            add(&mut w, name, &[*cols as u64, *rows as u64], GgmlType::F32, data)?;
        }
        for (name, factors) in self.rope_factor_tensors() {
            let data = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
            add(&mut w, &name, &[factors.len() as u64], GgmlType::F32, data)?;
        }
        for (i, (name, shape, lo, hi)) in ranges.into_iter().enumerate() {
            let mut st = splitmix(self.seed ^ 0x7373_6d00 ^ ((i as u64) << 32));
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n)
                .flat_map(|_| {
                    st = splitmix(st);
                    (lo + (hi - lo) * (st >> 40) as f32 / (1u64 << 24) as f32).to_le_bytes()
                })
                .collect();
            let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            add(&mut w, &name, &dims, GgmlType::F32, data)?;
        }
        // Biases and sinks uniform in [-amp, amp], F32 as converters write them.
        for (i, (name, shape, amp)) in biases.into_iter().enumerate() {
            let mut st = splitmix(self.seed ^ 0x6269_6173 ^ ((i as u64) << 32));
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n)
                .flat_map(|_| {
                    st = splitmix(st);
                    (((st >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp).to_le_bytes()
                })
                .collect();
            let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            add(&mut w, &name, &dims, GgmlType::F32, data)?;
        }
        // Norm weights around 1 (never all equal: an engine reading the wrong one must show).
        for (i, (name, n)) in vecs.into_iter().enumerate() {
            let mut st = splitmix(self.seed ^ 0x6e6f_726d ^ ((i as u64) << 32));
            // Gemma 4 does not scale its scores (the QK-norm's weights do): with weights
            // around 1, scores of unit-RMS heads would reach ±head_dim and every softmax
            // would be one-hot, so a rounding difference would flip it. Around head_dim^-1/4
            // each, the scores are of order one, as trained weights make them.
            let qk = self.arch == "gemma4" && (name.ends_with("attn_q_norm.weight") || name.ends_with("attn_k_norm.weight"));
            let scale = if qk { (n as f32).powf(-0.25) } else { 1.0 };
            let data: Vec<u8> = (0..n)
                .flat_map(|_| {
                    st = splitmix(st);
                    ((0.5 + (st >> 40) as f32 / (1u64 << 24) as f32) * scale).to_le_bytes()
                })
                .collect();
            w.add_tensor(&name, &[n as u64], GgmlType::F32, data).map_err(|e| EngineError::Invalid(e.to_string()))?;
        }
        Ok(w)
    }

    /// The type of the matrix `name` (the experts' may differ).
    fn matrix_type(&self, name: &str) -> GgmlType {
        match self.expert_ty {
            Some(t) if name.contains("_exps.") => t,
            _ => self.ty,
        }
    }

    /// Gemma 4's keys: head sizes of both kinds of layer, per-layer KV heads and feed-forward
    /// widths, the sliding pattern and window, shared-KV layers, per-layer input width.
    fn add_gemma4_metadata(&self, w: &mut GgufWriter) {
        let key = |k: &str| format!("gemma4.{k}");
        let layers: Vec<Gemma4Layer> = (0..self.layers).map(|il| self.gemma4_layer(il)).collect();
        let full_dim = 2 * self.head_dim() as u32;
        let ints = |f: &dyn Fn(&Gemma4Layer) -> usize| Value::Array(Array::I32(layers.iter().map(|g| f(g) as i32).collect()));
        w.set(&key("attention.key_length"), Value::U32(full_dim))
            .set(&key("attention.value_length"), Value::U32(full_dim))
            .set(&key("attention.key_length_swa"), Value::U32(self.head_dim() as u32))
            .set(&key("rope.dimension_count"), Value::U32(full_dim))
            .set(&key("rope.dimension_count_swa"), Value::U32(self.head_dim() as u32))
            .set(&key("attention.value_length_swa"), Value::U32(self.head_dim() as u32))
            .set(&key("attention.head_count_kv"), ints(&|g| g.kv_heads))
            .set(&key("feed_forward_length"), ints(&|g| g.ff))
            .set(&key("attention.sliding_window"), Value::U32(SWA_WINDOW))
            .set(&key("attention.sliding_window_pattern"), Value::Array(Array::Bool(layers.iter().map(|g| g.swa).collect())))
            .set(&key("attention.shared_kv_layers"), Value::U32((self.layers - self.gemma4_layers_with_kv()) as u32))
            .set(&key("rope.freq_base_swa"), Value::F32(self.rope_base / 100.0))
            .set(&key("embedding_length_per_layer_input"), Value::U32(self.gemma4_per_layer_width() as u32))
            .set(&key("final_logit_softcapping"), Value::F32(30.0));
    }

    /// The RoPE keys beyond the base: scaling type, factor, original context and YaRN's keys,
    /// rotated dims, LongRoPE's magnitude, mistral3's temperature, phi3's (ignored) window.
    fn add_rope_metadata(&self, w: &mut GgufWriter) {
        let key = |k: &str| format!("{}.{k}", self.arch);
        let (hd, rd) = (self.head_dim(), self.rope_dims());
        let factor = if self.rope_scale == 0.0 { DEFAULT_ROPE_SCALE } else { self.rope_scale };
        let orig = self.rope_orig_ctx();
        if rd != hd || self.arch == "phi3" {
            w.set(&key("rope.dimension_count"), Value::U32(rd as u32));
        }
        let kind = self.rope_scaling_type();
        if !kind.is_empty() {
            w.set(&key("rope.scaling.type"), Value::String(kind.into()));
        }
        if matches!(kind, "linear" | "yarn") {
            w.set(&key("rope.scaling.factor"), Value::F32(factor));
        }
        if kind == "yarn" {
            let (fast, slow, log_mul) = YARN_KEYS;
            w.set(&key("rope.scaling.yarn_beta_fast"), Value::F32(fast))
                .set(&key("rope.scaling.yarn_beta_slow"), Value::F32(slow))
                .set(&key("rope.scaling.yarn_log_multiplier"), Value::F32(log_mul));
        }
        if matches!(kind, "yarn" | "longrope") || self.arch == "phi3" {
            w.set(&key("rope.scaling.original_context_length"), Value::U32(orig as u32));
        }
        if self.long_short_factors() {
            // Phi-3's converter: sqrt(1 + ln(ctx / orig) / ln(orig)) beyond the original context.
            let scale = self.ctx as f64 / orig as f64;
            let attn = if scale > 1.0 { (1.0 + scale.ln() / (orig as f64).ln()).sqrt() } else { 1.0 };
            w.set(&key("rope.scaling.attn_factor"), Value::F32(attn as f32));
        }
        if self.arch == "phi3" {
            w.set(&key("attention.sliding_window"), Value::U32(PHI3_WINDOW));
        }
        if self.arch == "mistral3" {
            w.set(&key("attention.temperature_scale"), Value::F32(MISTRAL3_TEMPERATURE));
        }
    }

    /// Per-pair RoPE frequency divisors the file holds: LongRoPE's long (growing to 8 over the
    /// low frequencies) and short (near 1) factors, or Llama 3.1's `rope_freqs` (1 to 8).
    fn rope_factor_tensors(&self) -> Vec<(String, Vec<f32>)> {
        let pairs = self.rope_dims() / 2;
        let ramp = |lo: f32, hi: f32| -> Vec<f32> {
            (0..pairs).map(|i| lo + (hi - lo) * (i as f32 / (pairs - 1).max(1) as f32).powi(2)).collect()
        };
        let mut out = Vec::new();
        if self.long_short_factors() {
            out.push(("rope_factors_long.weight".to_string(), ramp(1.0, 8.0)));
            out.push(("rope_factors_short.weight".to_string(), ramp(1.0, 1.5)));
        }
        if self.rope_freqs {
            out.push(("rope_freqs.weight".to_string(), ramp(1.0, 8.0)));
        }
        if self.arch == "gemma4" {
            // Proportional RoPE on the full layers: a quarter of the pairs rotate (slowed
            // down a little), the rest stand still (a divisor of 1e30), as Gemma 4's converter writes.
            let pairs = self.gemma4_layer(1).head_dim / 2;
            let f = (0..pairs).map(|i| if i < pairs / 4 { 1.0 + i as f32 / pairs as f32 } else { 1e30 }).collect();
            out.push(("rope_freqs.weight".to_string(), f));
        }
        out
    }

    fn random_matrix(&self, index: u64, ty: GgmlType, cols: usize, rows: usize, scale: f32) -> Vec<u8> {
        let row_bytes = ty.bytes_for(cols as u64).expect("checked") as usize;
        let amp = scale * (3.0 / cols as f32).sqrt(); // uniform [-a, a] has std a/sqrt(3) = 1/sqrt(cols)
        let mut out = vec![0u8; rows * row_bytes];
        out.par_chunks_mut(row_bytes).enumerate().for_each_init(
            || vec![0f32; cols],
            |buf, (r, dst)| {
                let mut s = splitmix(self.seed ^ (index << 40) ^ r as u64);
                for v in buf.iter_mut() {
                    s = splitmix(s);
                    *v = ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp;
                }
                quant::quantize_row(ty, buf, dst).expect("type checked");
            },
        );
        out
    }

    fn add_vocab(&self, w: &mut GgufWriter) {
        if let Some(keys) = &self.tokenizer {
            for (k, v) in keys.iter() {
                w.set(k, v.clone());
            }
            return;
        }
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![2i32, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        if self.arch == "phi3" {
            // llama.cpp sets attributes on Phi-3's end-of-text token by name and refuses a
            // "phi3"-named vocabulary without it.
            tokens.push("<|endoftext|>".into());
            types.push(3);
        }
        for i in 0..self.vocab - tokens.len() {
            tokens.push(format!("\u{2581}w{i}"));
            types.push(1);
        }
        let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
        w.set("tokenizer.ggml.model", Value::String("llama".into()))
            .set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
            .set("tokenizer.ggml.scores", Value::Array(Array::F32(scores)))
            .set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
            .set("tokenizer.ggml.bos_token_id", Value::U32(1))
            .set("tokenizer.ggml.eos_token_id", Value::U32(2))
            .set("tokenizer.ggml.unknown_token_id", Value::U32(0))
            .set("tokenizer.ggml.add_bos_token", Value::Bool(true));
    }
}

/// One layer of a generated gemma4 file ([`RandomModelSpec::gemma4_layer`]).
#[derive(Debug, Clone, Copy)]
pub struct Gemma4Layer {
    /// Sliding-window layer.
    pub swa: bool,
    /// Head size.
    pub head_dim: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Has keys and values of its own (else reads an earlier layer's).
    pub own_kv: bool,
    /// Feed-forward width.
    pub ff: usize,
}

/// The sliding window of generated gemma3 models: short, so tests' prompts cross it.
pub const SWA_WINDOW: u32 = 128;

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `tiny` preset's model with every matrix in `ty`, loaded (unit tests).
#[cfg(test)]
pub(crate) fn tiny_model(ty: quant::GgmlType) -> crate::Model {
    let spec = RandomModelSpec::preset("tiny", ty).expect("the tiny preset exists");
    let file = gguf::GgufFile::from_bytes(spec.build().expect("a tiny model").to_bytes()).expect("its bytes parse");
    crate::Model::from_file(std::sync::Arc::new(file), &mut |_, _| {}).expect("it loads")
}
