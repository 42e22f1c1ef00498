//! A loaded model: its config and weight views, read by the standard llama.cpp tensor names.

use crate::arch::{self, Config, Meta, RopeFactorTensors};
use crate::plan::Layer;
use crate::error::{EngineError, Result};
use crate::weights::{TensorSource, Weight};
use gguf::GgufFile;
use std::path::Path;
use std::sync::Arc;

/// A model ready to run: config, weights (views into the mmap), and the file.
pub struct Model {
    /// Hyper-parameters and options.
    pub config: Config,
    /// Token embeddings, one row per token.
    pub tok_embd: Weight,
    /// Decoder blocks, as the architecture planned them.
    pub layers: Vec<Layer>,
    /// Final RMSNorm.
    pub output_norm: Vec<f32>,
    /// Vocabulary projection (the embedding itself when tied).
    pub output: Weight,
    /// Per-dimension RoPE frequency divisors (Llama 3.1, LongRoPE), as the architecture loads them.
    pub rope_factors: RopeFactors,
    /// Per-layer token inputs (gemma4 E2B/E4B).
    pub per_layer: Option<PerLayerEmbeddings>,
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
            layers.push((arch.layer)(&src, c, il)?);
        }
        progress(c.n_layer, c.n_layer);
        let pairs = c.rope_dims / 2;
        let rope_factors = match c.rope_factors {
            RopeFactorTensors::None => RopeFactors::default(),
            RopeFactorTensors::Freqs => {
                RopeFactors { freqs: src.optional_vector("rope_freqs.weight", pairs)?, ..Default::default() }
            }
            RopeFactorTensors::FreqsOfHead => {
                let freqs = src.optional_vector("rope_freqs.weight", c.head_dim / 2)?.map(|mut f| {
                    f.truncate(pairs);
                    f
                });
                RopeFactors { freqs, ..Default::default() }
            }
            RopeFactorTensors::LongShort => RopeFactors {
                long: src.optional_vector("rope_factors_long.weight", pairs)?,
                short: src.optional_vector("rope_factors_short.weight", pairs)?,
                ..Default::default()
            },
        };
        let rope_factors = match c.mrope_sections {
            Some(sections) if rope_factors.freqs.is_none() => RopeFactors { freqs: mrope_text_factors(sections, pairs), ..rope_factors },
            _ => rope_factors,
        };
        let per_layer = match c.n_embd_per_layer {
            0 => None,
            width => Some(PerLayerEmbeddings {
                tok_embd: src.matrix("per_layer_token_embd.weight", width * c.n_layer, c.n_vocab)?,
                model_proj: src.matrix("per_layer_model_proj.weight", c.n_embd, width * c.n_layer)?,
                proj_norm: src.vector("per_layer_proj_norm.weight", width)?,
                width,
            }),
        };
        Ok(Model {
            output_norm: src.vector("output_norm.weight", c.n_embd)?,
            per_layer,
            config,
            tok_embd,
            layers,
            output,
            rope_factors,
            file,
        })
    }
}

/// Interleaved M-RoPE (ggml's IMROPE) for text, as frequency divisors: text positions are
/// `[p, p, p, 0]`, so pairs of the time, height and width sections rotate as NeoX RoPE by p and
/// pairs of the extra section (position 0) not at all (an infinite divisor). `None` when every
/// pair rotates.
fn mrope_text_factors(sections: [usize; 4], pairs: usize) -> Option<Vec<f32>> {
    let total: usize = sections.iter().sum();
    if total == 0 {
        return None;
    }
    let [t, h, w, _] = sections;
    let still = |pair: usize| {
        let s = pair % total;
        let in_thw = (s % 3 == 1 && s < 3 * h) || (s % 3 == 2 && s < 3 * w) || (s.is_multiple_of(3) && s < 3 * t);
        !in_thw
    };
    (0..pairs).any(still).then(|| (0..pairs).map(|p| if still(p) { f32::INFINITY } else { 1.0 }).collect())
}

/// Gemma 4's per-layer token inputs (E2B/E4B): for each token, every layer's input to its
/// per-layer block ([`crate::plan::PerLayerInput`]), from a second embedding table and a
/// projection of the token's (scaled) embedding.
pub struct PerLayerEmbeddings {
    /// `per_layer_token_embd`: one row of `n_layer · width` per token.
    pub tok_embd: Weight,
    /// `per_layer_model_proj`: `[n_layer · width, n_embd]`.
    pub model_proj: Weight,
    /// `per_layer_proj_norm`: RMSNorm of each layer's slice of the projection.
    pub proj_norm: Vec<f32>,
    /// Each layer's slice.
    pub width: usize,
}

/// Per-dimension RoPE frequency divisors of a model.
#[derive(Debug, Clone, Default)]
pub struct RopeFactors {
    /// `rope_freqs.weight` (Llama 3.1): whatever the context.
    pub freqs: Option<Vec<f32>>,
    /// `rope_factors_long.weight` (LongRoPE): for contexts beyond the original one.
    pub long: Option<Vec<f32>>,
    /// `rope_factors_short.weight`: for contexts within it.
    pub short: Option<Vec<f32>>,
}

impl RopeFactors {
    /// The factors for a sequence context of `n_ctx` positions, as llama.cpp's
    /// `get_rope_factors` picks them: `rope_freqs` if present, else long beyond `n_ctx_orig`, else short.
    pub fn for_context(&self, n_ctx: usize, n_ctx_orig: usize) -> Option<&[f32]> {
        match &self.freqs {
            Some(f) => Some(f),
            None if n_ctx > n_ctx_orig => self.long.as_deref(),
            None => self.short.as_deref(),
        }
    }

    /// Whether the choice depends on the context (LongRoPE).
    pub fn by_context(&self) -> bool {
        self.freqs.is_none() && self.long != self.short
    }
}
