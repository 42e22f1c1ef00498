//! llama-perplexity's KL-divergence base files and statistics. `--kl-divergence-base FILE`
//! saves a model's log-probabilities over a text; `--kl-divergence` scores another model (or
//! engine) against them. The file is llama.cpp's format, so either tool can write the base
//! and either can compare: "_logits_", then i32 n_ctx, n_vocab, n_chunk, the n_chunk·n_ctx
//! evaluated tokens (i32), then per chunk the rows of its second half but the last, each
//! [`row_words`] u16: the row's scale and minimum log-probability as two f32, then one u16 per
//! token (log-probabilities within 16 nats of the top, quantized linearly).

use crate::error::{EngineError, Result};
use std::fmt::Write as _;
use std::io::{Read, Write};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"_logits_";

/// Log-probabilities more than this many nats below the top are stored as the minimum.
const RANGE: f32 = 16.0;

/// u16 words per stored row: 4 for the two f32, then the vocabulary rounded up to even.
pub fn row_words(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// What a base file starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseHeader {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Vocabulary size of the model that wrote it.
    pub n_vocab: usize,
    /// Chunks stored.
    pub n_chunk: usize,
    /// The evaluated tokens, `n_chunk · n_ctx` (the first of each chunk as tokenized, not BOS).
    pub tokens: Vec<u32>,
}

impl BaseHeader {
    /// Rows stored per chunk: the second half but the last position (which predicts nothing).
    pub fn rows_per_chunk(&self) -> usize {
        self.n_ctx - 1 - self.n_ctx / 2
    }

    /// Write it.
    pub fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        for v in [self.n_ctx, self.n_vocab, self.n_chunk] {
            w.write_all(&(v as i32).to_le_bytes())?;
        }
        let bytes: Vec<u8> = self.tokens.iter().flat_map(|t| (*t as i32).to_le_bytes()).collect();
        w.write_all(&bytes)
    }

    /// Read and check it; `what` names the file in errors.
    pub fn read(r: &mut impl Read, what: &str) -> Result<Self> {
        let bad = |why: String| EngineError::File { path: what.to_string(), what: why };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|e| bad(format!("cannot read the header: {e}")))?;
        if &magic != MAGIC {
            return Err(bad("does not look like a file of log-probabilities (no _logits_ header)".into()));
        }
        let mut word = || -> Result<i32> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| bad(format!("cannot read the header: {e}")))?;
            Ok(i32::from_le_bytes(b))
        };
        let (n_ctx, n_vocab, n_chunk) = (word()?, word()?, word()?);
        if n_ctx < 4 || n_vocab < 1 || n_chunk < 1 || (n_ctx as i64) * (n_chunk as i64) > 1 << 31 {
            return Err(bad(format!("implausible header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}")));
        }
        let n = n_ctx as usize * n_chunk as usize;
        let mut bytes = vec![0u8; n * 4];
        r.read_exact(&mut bytes).map_err(|_| bad(format!("truncated: {n} evaluation tokens expected")))?;
        let tokens: Vec<u32> = bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32).collect();
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= n_vocab as usize) {
            return Err(bad(format!("token {t} is outside its vocabulary of {n_vocab}")));
        }
        Ok(BaseHeader { n_ctx: n_ctx as usize, n_vocab: n_vocab as usize, n_chunk: n_chunk as usize, tokens })
    }
}

/// `max`, `log Σ exp(l − max)` of a row, in llama.cpp's precisions (f32 terms, f64 sum).
fn max_and_log_sum_exp(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    (max, sum.ln() as f32)
}

/// Store one row of logits as a base file holds it (`out`: [`row_words`] words); returns the
/// negative log-likelihood of `target`.
pub fn encode_row(logits: &[f32], target: usize, out: &mut [u16]) -> f64 {
    let (max, lse) = max_and_log_sum_exp(logits);
    let min = logits.iter().copied().fold(f32::INFINITY, f32::min).max(max - RANGE);
    let min_log_prob = min - max - lse;
    let scale = (max - min) / 65535.0;
    let (head, values) = out.split_at_mut(4);
    for (i, f) in [scale, min_log_prob].into_iter().enumerate() {
        let b = f.to_bits();
        head[2 * i] = b as u16;
        head[2 * i + 1] = (b >> 16) as u16;
    }
    values.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (v, &l) in values.iter_mut().zip(logits) {
            // llama.cpp rounds half to even (its magic-number trick).
            *v = if l > min { (inv * (l - min)).round_ties_even() as u16 } else { 0 };
        }
    }
    (max + lse - logits[target]) as f64
}

/// The two f32 of a stored row.
fn row_head(row: &[u16]) -> (f32, f32) {
    let f = |i: usize| f32::from_bits(row[2 * i] as u32 | (row[2 * i + 1] as u32) << 16);
    (f(0), f(1))
}

/// Everything llama-perplexity accumulates when comparing against a base.
#[derive(Debug, Default, Clone)]
pub struct KldStats {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    max_p_diff: f32,
    same_top: usize,
    count: usize,
    kld_values: Vec<f32>,
    p_diff_values: Vec<f32>,
}

/// `(mean, its uncertainty)` as llama.cpp estimates them.
fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let f = sum / count as f64;
    let df = sum2 / count as f64 - f * f;
    (f, if df > 0.0 && count > 10 { (df / (count - 1) as f64).sqrt() } else { 0.0 })
}

fn covariance(a: f64, b: f64, ab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (ab / n - (a / n) * (b / n)) / (n - 1.0)
}

/// Linear interpolation between order statistics of sorted `v`.
fn percentile(v: &[f32], fraction: f32) -> f32 {
    if fraction <= 0.0 {
        return v[0];
    }
    if fraction >= 1.0 {
        return v[v.len() - 1];
    }
    let p = fraction * (v.len() - 1) as f32;
    let ip = p as usize;
    let p = p - ip as f32;
    (1.0 - p) * v[ip] + p * v[(ip + 1).min(v.len() - 1)]
}

fn median(v: &[f32]) -> f32 {
    let n = v.len();
    if n % 2 == 0 {
        0.5 * (v[n / 2] + v[n / 2 - 1])
    } else {
        v[n / 2]
    }
}

impl KldStats {
    /// Score one row of logits against its stored base row; `target` is the next token.
    pub fn add(&mut self, logits: &[f32], base: &[u16], target: usize) {
        let (scale, min_log_prob) = row_head(base);
        let base = &base[4..];
        let mut imax = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[imax] {
                imax = i;
            }
        }
        let (max, lse) = max_and_log_sum_exp(logits);
        let nll = max + lse - logits[target];
        let nll_base = -(scale * base[target] as f32 + min_log_prob);
        self.sum_nll += nll as f64;
        self.sum_nll2 += (nll * nll) as f64;
        self.sum_nll_base += nll_base as f64;
        self.sum_nll_base2 += (nll_base * nll_base) as f64;
        self.sum_nll_nll_base += (nll * nll_base) as f64;
        let top = max + lse;
        let (mut kld, mut imax_base, mut base_max) = (0f64, 0usize, 0f32);
        for (i, &l) in logits.iter().enumerate() {
            let p_log_base = scale * base[i] as f32 + min_log_prob;
            if i == 0 || p_log_base > base_max {
                base_max = p_log_base;
                imax_base = i;
            }
            if p_log_base > -RANGE {
                kld += (p_log_base.exp() * (p_log_base - l + top)) as f64;
            }
        }
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        self.count += 1;
        self.same_top += (imax == imax_base) as usize;
        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.sum_p_diff += p_diff as f64;
        let p_diff2 = (p_diff * p_diff) as f64;
        self.sum_p_diff2 += p_diff2;
        self.sum_p_diff4 += p_diff2 * p_diff2;
        self.max_p_diff = self.max_p_diff.max(p_diff.abs());
        self.kld_values.push(kld as f32);
        self.p_diff_values.push(p_diff);
    }

    /// Mean KL divergence (nats per token).
    pub fn mean_kld(&self) -> f64 {
        mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count).0
    }

    /// Share of rows whose most likely token is the base's.
    pub fn same_top(&self) -> f64 {
        self.same_top as f64 / self.count.max(1) as f64
    }

    /// llama-perplexity's running line after chunk `chunk` (1-based).
    pub fn chunk_line(&self, chunk: usize) -> String {
        let n = self.count;
        let (log_ppl, log_ppl_unc) = mean_and_uncertainty(self.sum_nll, self.sum_nll2, n);
        let (log_base, log_base_unc) = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n);
        let cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n);
        let ratio_unc = (log_ppl_unc * log_ppl_unc + log_base_unc * log_base_unc - 2.0 * cov).sqrt();
        let (kld, kld_unc) = mean_and_uncertainty(self.sum_kld, self.sum_kld2, n);
        let (mse, mse_unc) = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n);
        let rms = mse.sqrt();
        let top = self.same_top();
        let top_unc = (top * (1.0 - top) / (n as f64 - 1.0)).sqrt();
        format!(
            "{chunk:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {kld:10.5} ± {kld_unc:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
            log_ppl.exp(),
            log_ppl.exp() * log_ppl_unc,
            log_ppl - log_base,
            ratio_unc,
            100.0 * rms,
            100.0 * 0.5 / rms * mse_unc,
            100.0 * top,
            100.0 * top_unc
        )
    }

    /// llama-perplexity's closing statistics (none for fewer than 100 rows, as there).
    pub fn report(&self) -> String {
        let n = self.count;
        let mut s = String::new();
        if n < 100 {
            return s;
        }
        let mut kv = self.kld_values.clone();
        let mut pv = self.p_diff_values.clone();
        kv.sort_by(f32::total_cmp);
        pv.sort_by(f32::total_cmp);
        let (log_ppl, log_ppl_unc) = mean_and_uncertainty(self.sum_nll, self.sum_nll2, n);
        let (ppl, ppl_unc) = (log_ppl.exp(), log_ppl.exp() * log_ppl_unc);
        let (log_base, log_base_unc) = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n);
        let (base, base_unc) = (log_base.exp(), log_base.exp() * log_base_unc);
        let cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n);
        let ratio = log_ppl - log_base;
        let ratio_unc = (log_ppl_unc * log_ppl_unc + log_base_unc * log_base_unc - 2.0 * cov).sqrt();
        let diff_unc = (ppl_unc * ppl_unc + base_unc * base_unc - 2.0 * ppl * base * cov).sqrt();
        let _ = writeln!(s, "====== Perplexity statistics ======");
        let _ = writeln!(s, "Mean PPL(Q)                   : {ppl:10.6} ± {ppl_unc:10.6}");
        let _ = writeln!(s, "Mean PPL(base)                : {base:10.6} ± {base_unc:10.6}");
        let _ = writeln!(s, "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%", 100.0 * cov / (log_ppl_unc * log_base_unc));
        let _ = writeln!(s, "Mean ln(PPL(Q)/PPL(base))     : {ratio:10.6} ± {ratio_unc:10.6}");
        let _ = writeln!(s, "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}", ratio.exp(), ratio.exp() * ratio_unc);
        let _ = writeln!(s, "Mean PPL(Q)-PPL(base)         : {:10.6} ± {diff_unc:10.6}", ppl - base);
        let _ = writeln!(s);
        let _ = writeln!(s, "====== KL divergence statistics ======");
        let (kld, kld_unc) = mean_and_uncertainty(self.sum_kld, self.sum_kld2, n);
        let _ = writeln!(s, "Mean    KLD: {kld:10.6} ± {kld_unc:10.6}");
        let _ = writeln!(s, "Maximum KLD: {:10.6}", kv[kv.len() - 1]);
        for (label, f) in [("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900)] {
            let _ = writeln!(s, "{label}   KLD: {:10.6}", percentile(&kv, f));
        }
        let _ = writeln!(s, "Median  KLD: {:10.6}", median(&kv));
        for (label, f) in [("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010), (" 0.1%", 0.001)] {
            let _ = writeln!(s, "{label}   KLD: {:10.6}", percentile(&kv, f));
        }
        let _ = writeln!(s, "Minimum KLD: {:10.6}", kv[0]);
        let _ = writeln!(s);
        let _ = writeln!(s, "====== Token probability statistics ======");
        let (pd, pd_unc) = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n);
        let _ = writeln!(s, "Mean    Δp: {:6.3} ± {:5.3} %", 100.0 * pd, 100.0 * pd_unc);
        let _ = writeln!(s, "Maximum Δp: {:6.3}%", 100.0 * pv[pv.len() - 1]);
        for (label, f) in [("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900), ("75.0%", 0.750)] {
            let _ = writeln!(s, "{label}   Δp: {:6.3}%", 100.0 * percentile(&pv, f));
        }
        let _ = writeln!(s, "Median  Δp: {:6.3}%", 100.0 * median(&pv));
        for (label, f) in [("25.0%", 0.250), ("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010), (" 0.1%", 0.001)] {
            let _ = writeln!(s, "{label}   Δp: {:6.3}%", 100.0 * percentile(&pv, f));
        }
        let _ = writeln!(s, "Minimum Δp: {:6.3}%", 100.0 * pv[0]);
        let (mse, mse_unc) = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n);
        let _ = writeln!(s, "RMS Δp    : {:6.3} ± {:5.3} %", 100.0 * mse.sqrt(), 100.0 * 0.5 / mse.sqrt() * mse_unc);
        let top = self.same_top();
        let _ = writeln!(s, "Same top p: {:6.3} ± {:5.3} %", 100.0 * top, 100.0 * (top * (1.0 - top) / (n as f64 - 1.0)).sqrt());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 50.0 - 10.0).collect()
    }

    #[test]
    fn header_round_trips_and_bad_files_are_named_errors() {
        let h = BaseHeader { n_ctx: 8, n_vocab: 5, n_chunk: 2, tokens: (0..16).map(|i| i % 5).collect() };
        let mut bytes = Vec::new();
        h.write(&mut bytes).unwrap();
        assert_eq!(&bytes[..8], b"_logits_");
        assert_eq!(bytes.len(), 8 + 12 + 16 * 4);
        assert_eq!(BaseHeader::read(&mut &bytes[..], "f").unwrap(), h);
        assert_eq!(h.rows_per_chunk(), 3);
        let mut bad = bytes.clone();
        bad[0] = b'x';
        assert!(BaseHeader::read(&mut &bad[..], "f").unwrap_err().to_string().contains("_logits_"));
        assert!(BaseHeader::read(&mut &bytes[..30], "f").unwrap_err().to_string().contains("truncated"));
        let mut big = bytes.clone();
        big[8 + 12] = 9; // a token outside the vocabulary
        assert!(BaseHeader::read(&mut &big[..], "f").unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn rows_pad_to_even_and_decode_within_one_step() {
        assert_eq!(row_words(5), 10);
        assert_eq!(row_words(6), 10);
        let logits = row(101, 7);
        let mut out = vec![0xffff; row_words(101)];
        let nll = encode_row(&logits, 3, &mut out);
        assert_eq!(out[out.len() - 1], 0, "the padding word is zero");
        let (scale, min_lp) = row_head(&out);
        let (max, lse) = max_and_log_sum_exp(&logits);
        for (i, &l) in logits.iter().enumerate() {
            let exact = l - max - lse;
            let stored = scale * out[4 + i] as f32 + min_lp;
            if exact > min_lp {
                assert!((stored - exact).abs() <= scale, "token {i}: {stored} vs {exact}");
            } else {
                assert_eq!(out[4 + i], 0);
            }
        }
        assert!((nll - (max + lse - logits[3]) as f64).abs() < 1e-6);
    }

    #[test]
    fn a_row_against_its_own_base_diverges_by_rounding_only() {
        let mut s = KldStats::default();
        for seed in 0..200 {
            let logits = row(257, seed);
            let mut base = vec![0; row_words(257)];
            encode_row(&logits, seed as usize % 257, &mut base);
            s.add(&logits, &base, seed as usize % 257);
        }
        assert!(s.mean_kld().abs() < 1e-4, "{}", s.mean_kld());
        assert_eq!(s.same_top(), 1.0);
        // Token 0 made the most likely one: another distribution.
        let top = row(257, 1).iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let shifted: Vec<f32> = row(257, 1).iter().enumerate().map(|(i, v)| if i == 0 { top + 2.0 } else { *v }).collect();
        let mut base = vec![0; row_words(257)];
        encode_row(&row(257, 1), 0, &mut base);
        let mut t = KldStats::default();
        t.add(&shifted, &base, 0);
        assert!(t.mean_kld() > 1e-3, "a changed distribution diverges: {}", t.mean_kld());
        assert!(s.report().contains("Mean    KLD:") && s.chunk_line(1).starts_with("   1"));
    }
}
