//! Perplexity by llama.cpp's method: the text is cut into non-overlapping chunks of
//! `n_ctx` tokens, each chunk starts with BOS (when the model adds one), and only the
//! second half of each chunk is scored.

use crate::error::{EngineError, Result};
use crate::forward::Runner;
use crate::kl_divergence::{encode_row, row_words, BaseHeader, KldStats};
use std::io::{Read, Write};

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
    perplexity_saving(runner, tokens, n_ctx, batch, bos, None, on_chunk)
}

/// [`perplexity`], also writing the scored rows' log-probabilities to `base` in
/// llama-perplexity's `--kl-divergence-base` format (see [`crate::kl_divergence`]).
pub fn perplexity_saving(
    runner: &Runner,
    tokens: &[u32],
    n_ctx: usize,
    batch: usize,
    bos: Option<u32>,
    mut base: Option<&mut dyn Write>,
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
    let io = |e: std::io::Error| EngineError::Invalid(format!("cannot write the log-probabilities: {e}"));
    if let Some(w) = base.as_mut() {
        let header = BaseHeader { n_ctx, n_vocab, n_chunk, tokens: tokens[..n_chunk * n_ctx].to_vec() };
        header.write(w).map_err(io)?;
    }
    let mut row_buf = vec![0u16; row_words(n_vocab)];
    for i in 0..n_chunk {
        let chunk = &tokens[i * n_ctx..(i + 1) * n_ctx];
        let scored_logits = scored_logits(runner, chunk, batch, bos)?;
        if let Some(w) = base.as_mut() {
            let mut bytes = Vec::with_capacity((n_ctx - 1 - first) * row_buf.len() * 2);
            for j in 0..n_ctx - 1 - first {
                encode_row(&scored_logits[j * n_vocab..(j + 1) * n_vocab], chunk[first + j + 1] as usize, &mut row_buf);
                bytes.extend(row_buf.iter().flat_map(|v| v.to_le_bytes()));
            }
            w.write_all(&bytes).map_err(io)?;
        }
        // Row j of scored_logits is position first + j and predicts the token after it.
        for j in 0..n_ctx - 1 - first {
            let row = &scored_logits[j * n_vocab..(j + 1) * n_vocab];
            let target = chunk[first + j + 1] as usize;
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

/// The logits of the second half of one chunk (positions `n_ctx / 2..n_ctx`, `[rows, n_vocab]`),
/// the chunk run from an empty cache in batches of `batch`, its first token replaced by `bos`.
pub fn scored_logits(runner: &Runner, chunk: &[u32], batch: usize, bos: Option<u32>) -> Result<Vec<f32>> {
    let n_ctx = chunk.len();
    let first = n_ctx / 2;
    let mut chunk = chunk.to_vec();
    if let Some(b) = bos {
        chunk[0] = b;
    }
    let mut cache = runner.new_cache(n_ctx);
    let mut scored = Vec::with_capacity((n_ctx - first) * runner.model.config.n_vocab);
    for (b, piece) in chunk.chunks(batch.max(1)).enumerate() {
        let start = b * batch.max(1);
        let lo = first.saturating_sub(start).min(piece.len());
        let logits = runner.forward(&mut cache, piece, lo..piece.len())?;
        scored.extend_from_slice(&logits);
    }
    Ok(scored)
}

/// Score the model against a base file's log-probabilities (`header` already read from
/// `rows`), chunk by chunk as llama-perplexity `--kl-divergence` does; `on_chunk` sees the
/// statistics after each chunk.
pub fn kl_divergence(
    runner: &Runner,
    header: &BaseHeader,
    rows: &mut dyn Read,
    batch: usize,
    bos: Option<u32>,
    on_chunk: &mut dyn FnMut(usize, &KldStats),
) -> Result<KldStats> {
    let n_vocab = runner.model.config.n_vocab;
    if header.n_vocab != n_vocab {
        return Err(EngineError::Invalid(format!(
            "the base log-probabilities are over {} tokens, this model's vocabulary has {n_vocab}: not the same vocabulary",
            header.n_vocab
        )));
    }
    let (n_ctx, first, per_chunk) = (header.n_ctx, header.n_ctx / 2, header.rows_per_chunk());
    let words = row_words(n_vocab);
    let mut bytes = vec![0u8; per_chunk * words * 2];
    let mut stats = KldStats::default();
    for i in 0..header.n_chunk {
        rows.read_exact(&mut bytes)
            .map_err(|_| EngineError::Invalid(format!("the base file ends before chunk {} of {}", i + 1, header.n_chunk)))?;
        let base: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        let chunk = &header.tokens[i * n_ctx..(i + 1) * n_ctx];
        let logits = scored_logits(runner, chunk, batch.min(n_ctx), bos)?;
        for j in 0..per_chunk {
            stats.add(&logits[j * n_vocab..(j + 1) * n_vocab], &base[j * words..(j + 1) * words], chunk[first + j + 1] as usize);
        }
        on_chunk(i + 1, &stats);
    }
    Ok(stats)
}

fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[target] as f64 - max - sum.ln()
}
