//! Perplexity by llama.cpp's method: the text is cut into non-overlapping chunks of
//! `n_ctx` tokens, each chunk starts with BOS (when the model adds one), and only the
//! second half of each chunk is scored.

use crate::error::{EngineError, Result};
use crate::forward::Runner;

/// Running result after each chunk.
#[derive(Debug, Clone, Copy)]
pub struct PerplexityResult {
    /// Chunks scored so far.
    pub chunks: usize,
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// llama.cpp's ± estimate: ppl × stddev(nll) / sqrt(count − 1).
    pub ppl_err: f64,
}

/// Score `tokens` (already tokenized with BOS as the model wants); `on_chunk` sees the running result.
pub fn perplexity(
    runner: &Runner,
    tokens: &[u32],
    n_ctx: usize,
    batch: usize,
    bos: Option<u32>,
    on_chunk: &mut dyn FnMut(PerplexityResult),
) -> Result<PerplexityResult> {
    if n_ctx < 4 {
        return Err(EngineError::Invalid(format!("context {n_ctx} is too small for perplexity")));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(EngineError::Invalid(format!(
            "you need at least {} tokens to evaluate perplexity with a context of {n_ctx} (the text has {})",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let n_chunk = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut result = PerplexityResult { chunks: 0, ppl: f64::NAN, ppl_err: f64::NAN };
    let n_vocab = runner.model.config.n_vocab;
    for i in 0..n_chunk {
        let mut chunk = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut cache = runner.new_cache(n_ctx);
        let mut scored_logits = Vec::with_capacity((n_ctx - first) * n_vocab);
        for (b, piece) in chunk.chunks(batch.max(1)).enumerate() {
            let start = b * batch.max(1);
            let lo = first.saturating_sub(start).min(piece.len());
            let logits = runner.forward(&mut cache, piece, lo..piece.len())?;
            scored_logits.extend_from_slice(&logits);
        }
        // Row j of scored_logits is position first + j and predicts the token after it.
        for j in 0..n_ctx - 1 - first {
            let row = &scored_logits[j * n_vocab..(j + 1) * n_vocab];
            let target = tokens[i * n_ctx + first + j + 1] as usize;
            let v = -log_softmax_at(row, target);
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        let mean = nll / count as f64;
        let var = nll2 / count as f64 - mean * mean;
        let ppl = mean.exp();
        let err = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
        result = PerplexityResult { chunks: i + 1, ppl, ppl_err: err };
        on_chunk(result);
    }
    Ok(result)
}

fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[target] as f64 - max - sum.ln()
}
