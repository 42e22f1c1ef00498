//! Prompt → tokens → text, the one loop `tandem run`, `tandem chat` and the server's slots share:
//!
//! * [`prefill`] / [`prefill_while`] run a prompt in equal chunks of at most `batch` tokens
//!   ([`chunk_size`]), so no short tail chunk takes a different CPU kernel than another
//!   caller's split of the same prompt would;
//! * [`Generation`] is one request's per-token state machine: given logits it samples and
//!   decides (stream this text and feed this token, or stop and why), with the stop rules,
//!   stop strings and UTF-8-safe streaming in one place. It never runs the model, so the
//!   server can batch many requests' forward passes;
//! * [`generate`] drives both for one request on one cache (the CLI's loop).

mod step;
mod stop;

pub use step::{Generation, Step, StopRules, TokenConstraint};

use crate::error::{EngineError, Result};
use crate::forward::Runner;
use crate::kv_cache::KvCache;
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
    /// A stop string was generated.
    StopString,
    /// The requested number of tokens was reached.
    Length,
    /// The context is full.
    ContextFull,
    /// The caller asked to stop.
    Cancelled,
    /// The output constraint (grammar, JSON schema) failed; see
    /// [`Generation::constraint_error`].
    ConstraintFailed,
}

/// The size of the fewest equal chunks of at most `max` that `len` items split into
/// (`items.chunks(chunk_size(items.len(), max))`). Equal, because a short tail chunk can
/// take another kernel (e.g. the CPU's per-row dots instead of its tiled ones) and so
/// other float sums than the same tokens split by someone else.
pub fn chunk_size(len: usize, max: usize) -> usize {
    let max = max.max(1);
    len.div_ceil(len.div_ceil(max).max(1)).max(1)
}

/// Run the prompt through the model in equal chunks of at most `batch` tokens; return the
/// logits of its last token.
pub fn prefill(runner: &Runner, cache: &mut KvCache, prompt: &[u32], batch: usize) -> Result<Vec<f32>> {
    let logits = prefill_while(runner, cache, prompt, batch, &mut || true)?;
    Ok(logits.expect("a prefill that is never cancelled finishes"))
}

/// [`prefill`], asking `keep_going` before each chunk: None when it said no (the cache then
/// holds the chunks run so far).
pub fn prefill_while(
    runner: &Runner,
    cache: &mut KvCache,
    prompt: &[u32],
    batch: usize,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<Option<Vec<f32>>> {
    if prompt.is_empty() {
        return Err(EngineError::Invalid("the prompt is empty (no tokens to start from)".into()));
    }
    let needed = cache.len() + prompt.len();
    if needed > cache.n_ctx() {
        return Err(EngineError::ContextFull { tokens: needed, ctx: cache.n_ctx() });
    }
    let size = chunk_size(prompt.len(), batch);
    let last = (prompt.len() - 1) / size;
    let mut logits = Vec::new();
    for (i, chunk) in prompt.chunks(size).enumerate() {
        if !keep_going() {
            return Ok(None);
        }
        let rows = if i == last { chunk.len() - 1..chunk.len() } else { 0..0 };
        logits = runner.forward(cache, chunk, rows)?;
    }
    Ok(Some(logits))
}

/// Prefill `prompt`, then step `gen` and run its tokens one at a time until it stops,
/// handing each piece of text to `on_text` (false: stop, [`StopReason::Cancelled`]).
pub fn generate(
    runner: &Runner,
    cache: &mut KvCache,
    prompt: &[u32],
    batch: usize,
    gen: &mut Generation,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<(StopReason, GenerationStats)> {
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let t0 = Instant::now();
    let mut logits = prefill(runner, cache, prompt, batch)?;
    stats.prompt_time = t0.elapsed();
    gen.accept_prompt(prompt);
    let t1 = Instant::now();
    let first = gen.tokens().len();
    let reason = loop {
        match gen.step(&logits, cache) {
            Step::Continue { token, text } => {
                if !on_text(&text) {
                    break StopReason::Cancelled;
                }
                logits = runner.forward(cache, &[token], 0..1)?;
            }
            Step::Done { reason, text } => {
                on_text(&text);
                break reason;
            }
        }
    };
    stats.generated_tokens = gen.tokens().len() - first;
    stats.generation_time = t1.elapsed();
    Ok((reason, stats))
}

#[cfg(test)]
mod tests {
    use super::chunk_size;

    #[test]
    fn chunks_are_equal_and_at_most_max() {
        for len in 1..300 {
            for max in 1..70 {
                let size = chunk_size(len, max);
                let n = len.div_ceil(size);
                assert!(size <= max, "len {len} max {max}: size {size}");
                assert_eq!(n, len.div_ceil(max), "len {len} max {max}: fewest chunks");
                // The tail is short of the others by less than one token per chunk.
                assert!(size * n - len < n, "len {len} max {max}: size {size} leaves a short tail");
            }
        }
        assert_eq!(chunk_size(0, 8), 1);
        assert_eq!(chunk_size(5, 0), 1);
        assert_eq!(chunk_size(600, 512), 300);
    }
}
