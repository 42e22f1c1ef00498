//! A loaded model: its config and weight views, read by the standard llama.cpp tensor names.

use crate::arch::{self, Config, Meta};
use crate::error::{EngineError, Result};
use crate::weights::{TensorSource, Weight};
use gguf::GgufFile;
use std::path::Path;
use std::sync::Arc;

/// One decoder block's weights.
pub struct Layer {
    /// RMSNorm before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection.
    pub wq: Weight,
    /// Key projection.
    pub wk: Weight,
    /// Value projection.
    pub wv: Weight,
    /// Attention output projection.
    pub wo: Weight,
    /// Optional Q/K/V biases (qwen2).
    pub bq: Option<Vec<f32>>,
    /// Key bias.
    pub bk: Option<Vec<f32>>,
    /// Value bias.
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm weights on Q and K.
    pub q_norm: Option<Vec<f32>>,
    /// Per-head RMSNorm on K.
    pub k_norm: Option<Vec<f32>>,
    /// RMSNorm on the attention output (gemma).
    pub post_attn_norm: Option<Vec<f32>>,
    /// RMSNorm before the MLP.
    pub ffn_norm: Vec<f32>,
    /// MLP gate.
    pub w_gate: Weight,
    /// MLP up.
    pub w_up: Weight,
    /// MLP down.
    pub w_down: Weight,
    /// RMSNorm on the MLP output (gemma).
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// A model ready to run: config, weights (views into the mmap), and the file.
pub struct Model {
    /// Hyper-parameters and options.
    pub config: Config,
    /// Token embeddings, one row per token.
    pub tok_embd: Weight,
    /// Decoder blocks.
    pub layers: Vec<Layer>,
    /// Final RMSNorm.
    pub output_norm: Vec<f32>,
    /// Vocabulary projection (the embedding itself when tied).
    pub output: Weight,
    /// Llama 3.1-style per-dimension RoPE frequency divisors.
    pub rope_freqs: Option<Vec<f32>>,
    /// The file everything maps into.
    pub file: Arc<GgufFile>,
}

impl Model {
    /// Open a GGUF file and load the model it holds. `progress` is called with (done, total) layers.
    pub fn load(path: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Model> {
        let file = Arc::new(GgufFile::open(path)?);
        Self::from_file(file, progress)
    }

    /// Load from an already open file.
    pub fn from_file(file: Arc<GgufFile>, progress: &mut dyn FnMut(usize, usize)) -> Result<Model> {
        let arch_name = file
            .architecture()
            .ok_or_else(|| EngineError::MissingKey("general.architecture".into()))?
            .to_string();
        let arch = arch::lookup(&arch_name)?;
        let config = (arch.config)(&Meta { file: &file, arch: &arch_name })?;
        if file.tensors().is_empty() {
            return Err(EngineError::Invalid(
                "this file holds no tensors (vocab-only): it can tokenize but not generate".into(),
            ));
        }
        let src = TensorSource::new(file.clone());
        let c = &config;
        let tok_embd = src.matrix("token_embd.weight", c.n_embd, c.n_vocab)?;
        let output = match src.optional_matrix("output.weight", c.n_embd, c.n_vocab)? {
            Some(w) => w,
            None => tok_embd.clone(),
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            progress(il, c.n_layer);
            layers.push(load_layer(&src, c, il)?);
        }
        progress(c.n_layer, c.n_layer);
        let rope_freqs = src.optional_vector("rope_freqs.weight", c.rope_dims / 2)?;
        Ok(Model {
            output_norm: src.vector("output_norm.weight", c.n_embd)?,
            config,
            tok_embd,
            layers,
            output,
            rope_freqs,
            file,
        })
    }
}

fn load_layer(src: &TensorSource, c: &Config, il: usize) -> Result<Layer> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let b = |s: &str| format!("blk.{il}.{s}.bias");
    let q_out = c.n_head * c.head_dim;
    let k_out = c.n_head_kv * c.head_dim;
    let v_out = c.n_head_kv * c.head_dim_v;
    let required_if = |flag: bool, name: String, len: usize| -> Result<Option<Vec<f32>>> {
        if flag {
            src.vector(&name, len).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(Layer {
        attn_norm: src.vector(&n("attn_norm"), c.n_embd)?,
        wq: src.matrix(&n("attn_q"), c.n_embd, q_out)?,
        wk: src.matrix(&n("attn_k"), c.n_embd, k_out)?,
        wv: src.matrix(&n("attn_v"), c.n_embd, v_out)?,
        wo: src.matrix(&n("attn_output"), c.n_head * c.head_dim_v, c.n_embd)?,
        bq: src.optional_vector(&b("attn_q"), q_out)?,
        bk: src.optional_vector(&b("attn_k"), k_out)?,
        bv: src.optional_vector(&b("attn_v"), v_out)?,
        q_norm: required_if(c.qk_norm, n("attn_q_norm"), c.head_dim)?,
        k_norm: required_if(c.qk_norm, n("attn_k_norm"), c.head_dim)?,
        post_attn_norm: required_if(c.post_norms, n("post_attention_norm"), c.n_embd)?,
        ffn_norm: src.vector(&n("ffn_norm"), c.n_embd)?,
        w_gate: src.matrix(&n("ffn_gate"), c.n_embd, c.n_ff)?,
        w_up: src.matrix(&n("ffn_up"), c.n_embd, c.n_ff)?,
        w_down: src.matrix(&n("ffn_down"), c.n_ff, c.n_embd)?,
        post_ffn_norm: required_if(c.post_norms, n("post_ffw_norm"), c.n_embd)?,
    })
}
