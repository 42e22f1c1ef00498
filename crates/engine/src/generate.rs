//! Prompt → tokens: prefill in batches, then decode one token at a time.

use crate::error::{EngineError, Result};
use crate::forward::Runner;
use crate::kv_cache::KvCache;
use crate::sampler::Sampler;
use std::time::{Duration, Instant};

/// Timings of one generation.
#[derive(Debug, Default, Clone)]
pub struct GenerationStats {
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Time spent on the prompt.
    pub prompt_time: Duration,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time spent generating.
    pub generation_time: Duration,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    /// Generated tokens per second.
    pub fn generation_tps(&self) -> f64 {
        self.generated_tokens as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token was sampled.
    EndOfGeneration,
    /// The requested number of tokens was reached.
    Length,
    /// The context is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

/// Run the prompt through the model in batches of `batch` tokens; return the logits of its last token.
pub fn prefill(runner: &Runner, cache: &mut KvCache, prompt: &[u32], batch: usize) -> Result<Vec<f32>> {
    if prompt.is_empty() {
        return Err(EngineError::Invalid("the prompt is empty (no tokens to start from)".into()));
    }
    let needed = cache.len() + prompt.len();
    if needed > cache.n_ctx() {
        return Err(EngineError::ContextFull { tokens: needed, ctx: cache.n_ctx() });
    }
    let mut logits = Vec::new();
    let chunks: Vec<&[u32]> = prompt.chunks(batch.max(1)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let rows = if i + 1 == chunks.len() { chunk.len() - 1..chunk.len() } else { 0..0 };
        logits = runner.forward(cache, chunk, rows)?;
    }
    Ok(logits)
}

/// Generate up to `n_predict` tokens (negative: until end of generation or a full context)
/// after `prompt`, calling `on_token` for each; it returns false to stop.
pub fn generate(
    runner: &Runner,
    cache: &mut KvCache,
    prompt: &[u32],
    batch: usize,
    n_predict: i64,
    sampler: &mut Sampler,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(StopReason, GenerationStats)> {
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let t0 = Instant::now();
    let mut logits = prefill(runner, cache, prompt, batch)?;
    stats.prompt_time = t0.elapsed();
    for &t in prompt {
        sampler.accept(t);
    }
    let t1 = Instant::now();
    let reason = loop {
        if n_predict >= 0 && stats.generated_tokens as i64 >= n_predict {
            break StopReason::Length;
        }
        let token = sampler.sample(&logits);
        if is_eog(token) {
            break StopReason::EndOfGeneration;
        }
        stats.generated_tokens += 1;
        if !on_token(token) {
            break StopReason::Cancelled;
        }
        if cache.len() >= cache.n_ctx() {
            break StopReason::ContextFull;
        }
        if n_predict >= 0 && stats.generated_tokens as i64 >= n_predict {
            break StopReason::Length;
        }
        logits = runner.forward(cache, &[token], 0..1)?;
    };
    stats.generation_time = t1.elapsed();
    Ok((reason, stats))
}
