//! A loaded model: its config and weight views, read by the standard llama.cpp tensor names.

use crate::arch::{self, Config, Meta};
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
            layers.push((arch.layer)(&src, c, il)?);
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
