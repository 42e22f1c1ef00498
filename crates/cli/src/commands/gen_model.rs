//! `tandem gen-model`: a GGUF file with random weights of any shape.

use anyhow::{anyhow, Result};
use engine::random_model::RandomModelSpec;
use gguf::GgmlType;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Start from a named shape (llama3-8b, llama2-7b, llama3-1b, smollm2-135m, tiny); flags override it.
    #[arg(long)]
    preset: Option<String>,
    /// Architecture: llama, gemma3, gemma4, qwen2, qwen3, qwen35, qwen35moe, qwen3moe, phi3, mistral3, gpt-oss.
    #[arg(long, default_value = "llama")]
    arch: String,
    /// Decoder blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Hidden size.
    #[arg(long)]
    dim: Option<usize>,
    /// Feed-forward size.
    #[arg(long)]
    ff: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads.
    #[arg(long = "kv-heads")]
    kv_heads: Option<usize>,
    /// Dimension of each attention head (default dim / heads; gpt-oss-20b: 64 with dim 2880).
    #[arg(long = "head-dim")]
    head_dim: Option<usize>,
    /// Vocabulary size (of the minimal generated vocabulary).
    #[arg(long)]
    vocab: Option<usize>,
    /// Take the vocabulary (every tokenizer.* key) of this GGUF instead: llama.cpp's
    /// models/ggml-vocab-*.gguf or any model of the family; its size sets --vocab.
    #[arg(long = "vocab-from", value_name = "GGUF", conflicts_with = "vocab")]
    vocab_from: Option<PathBuf>,
    /// Weight type: any ggml type tandem quantizes (q4_0 … q8_0, q2_k … q6_k, iq4_nl, iq4_xs, mxfp4, the other i-quants, tq1_0, tq2_0, f16, bf16, f32).
    #[arg(long = "type", default_value = "q4_k")]
    ty: String,
    /// Training context written to the metadata.
    #[arg(long)]
    ctx: Option<usize>,
    /// Type of the experts' matrices (default: --type; gpt-oss files have mxfp4 experts).
    #[arg(long = "expert-type")]
    expert_type: Option<String>,
    /// Experts per layer (mixture-of-experts architectures: qwen3moe, qwen35moe, gpt-oss, default 8; gemma4: none unless given).
    #[arg(long)]
    experts: Option<usize>,
    /// Experts each token uses (default 2).
    #[arg(long = "experts-used")]
    experts_used: Option<usize>,
    /// Scale of the output projection (peaks the next-token distributions; 1 = std 1/sqrt(dim)).
    #[arg(long = "output-scale", default_value_t = 1.0)]
    output_scale: f32,
    /// RoPE scaling written to the metadata: none, linear, yarn or longrope (default: the
    /// architecture's own — YaRN for mistral3 and gpt-oss, nothing for the others).
    #[arg(long = "rope-scaling")]
    rope_scaling: Option<String>,
    /// RoPE scaling factor (linear, yarn; default 4).
    #[arg(long = "rope-scale")]
    rope_scale: Option<f32>,
    /// rope.scaling.original_context_length (yarn, longrope, phi3; default ctx / 8).
    #[arg(long = "rope-orig-ctx")]
    rope_orig_ctx: Option<usize>,
    /// Rotated dims per head (default: the whole head; half of it for phi3).
    #[arg(long = "rope-dims")]
    rope_dims: Option<usize>,
    /// Write Llama 3.1-style rope_freqs.weight (llama, mistral3).
    #[arg(long = "rope-freqs")]
    rope_freqs: bool,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    let ty = GgmlType::from_name(&a.ty).ok_or_else(|| anyhow!("unknown weight type '{}'", a.ty))?;
    let mut spec = match &a.preset {
        Some(p) => RandomModelSpec::preset(p, ty).ok_or_else(|| {
            anyhow!("unknown preset '{p}' (known: {})", RandomModelSpec::PRESETS.join(", "))
        })?,
        None => RandomModelSpec::preset("tiny", ty).expect("tiny exists"),
    };
    spec.arch = a.arch;
    spec.seed = a.seed;
    if let Some(v) = a.layers { spec.layers = v; }
    if let Some(v) = a.dim { spec.dim = v; }
    if let Some(v) = a.ff { spec.ff = v; }
    if let Some(v) = a.heads { spec.heads = v; }
    spec.kv_heads = a.kv_heads.unwrap_or(if a.heads.is_some() { spec.heads } else { spec.kv_heads });
    if let Some(v) = a.vocab { spec.vocab = v; }
    if let Some(path) = &a.vocab_from {
        let file = gguf::GgufFile::open(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        spec.with_vocabulary_of(&file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(v) = a.ctx { spec.ctx = v; }
    spec.output_scale = a.output_scale;
    if let Some(v) = a.head_dim { spec.head_dim = v; }
    if let Some(t) = &a.expert_type {
        spec.expert_ty = Some(GgmlType::from_name(t).ok_or_else(|| anyhow!("unknown expert weight type '{t}'"))?);
    }
    if let Some(v) = a.experts { spec.experts = v; }
    if let Some(v) = a.experts_used { spec.experts_used = v; }
    if let Some(v) = a.rope_scaling { spec.rope_scaling = v; }
    if let Some(v) = a.rope_scale { spec.rope_scale = v; }
    if let Some(v) = a.rope_orig_ctx { spec.rope_orig_ctx = v; }
    if let Some(v) = a.rope_dims { spec.rope_dims = v; }
    spec.rope_freqs = a.rope_freqs;
    let t0 = std::time::Instant::now();
    let writer = spec.build()?;
    writer.write_file(&a.output).map_err(|e| anyhow!("cannot write {}: {e}", a.output.display()))?;
    let vocab = a.vocab_from.as_ref().map_or("generated".to_string(), |p| p.display().to_string());
    eprintln!(
        "wrote {} ({} {}L dim {} ff {} heads {}/{} {} vocab {} ({vocab})) in {:.1} s",
        a.output.display(), spec.arch, spec.layers, spec.dim, spec.ff, spec.heads, spec.kv_heads, spec.ty.name(), spec.vocab,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
