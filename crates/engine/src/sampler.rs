//! Token sampling with llama.cpp's default chain order: logit bias → penalties (repeat,
//! frequency, presence) → top-k → top-p → min-p → temperature → draw (or argmax when
//! temp ≤ 0).

/// Sampling settings (llama.cpp's defaults).
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Temperature; ≤ 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Drop tokens below min_p × the top probability (0 = off).
    pub min_p: f32,
    /// Penalty for tokens seen in the last `repeat_last_n` (1 = off).
    pub repeat_penalty: f32,
    /// Window of the repeat, frequency and presence penalties.
    pub repeat_last_n: usize,
    /// Subtracted from a token's logit once per time it appears in the window (0 = off).
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit if it appears in the window at all (0 = off).
    pub presence_penalty: f32,
    /// Added to the logits of these tokens before anything else (-inf bans a token).
    pub logit_bias: Vec<(u32, f32)>,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

/// A seeded sampler; the same seed and logits give the same tokens.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: u64,
    history: Vec<u32>,
}

impl Sampler {
    /// A sampler with its own RNG state.
    pub fn new(cfg: SamplerConfig) -> Self {
        // splitmix64 of the seed, so small seeds still give well-mixed states.
        let mut z = cfg.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Sampler { cfg, rng: (z ^ (z >> 31)) | 1, history: Vec::new() }
    }

    /// Record tokens (e.g. the prompt) for the repeat penalty.
    pub fn accept(&mut self, token: u32) {
        self.history.push(token);
    }

    fn next_f32(&mut self) -> f32 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Pick the next token from logits and record it.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        for &(t, bias) in &self.cfg.logit_bias {
            if let Some(c) = cand.get_mut(t as usize) {
                c.1 += bias;
            }
        }
        self.apply_penalties(&mut cand);
        let token = if self.cfg.temperature <= 0.0 {
            argmax(&cand)
        } else {
            self.draw(cand)
        };
        self.accept(token);
        token
    }

    /// llama.cpp's penalties sampler: over the last `repeat_last_n` tokens, each seen token's
    /// logit is divided (positive) or multiplied (negative) by the repeat penalty, then
    /// lowered by count × frequency penalty + presence penalty.
    fn apply_penalties(&self, cand: &mut [(u32, f32)]) {
        let (repeat, freq, present) = (self.cfg.repeat_penalty, self.cfg.frequency_penalty, self.cfg.presence_penalty);
        if (repeat == 1.0 && freq == 0.0 && present == 0.0) || self.cfg.repeat_last_n == 0 {
            return;
        }
        let start = self.history.len().saturating_sub(self.cfg.repeat_last_n);
        let mut seen: Vec<u32> = self.history[start..].to_vec();
        seen.sort_unstable();
        for run in seen.chunk_by(|a, b| a == b) {
            if let Some(c) = cand.get_mut(run[0] as usize) {
                c.1 = if c.1 > 0.0 { c.1 / repeat } else { c.1 * repeat };
                c.1 -= run.len() as f32 * freq + present;
            }
        }
    }

    fn draw(&mut self, mut cand: Vec<(u32, f32)>) -> u32 {
        // Banned tokens (a grammar's mask, a bias of -inf) are never drawn, whatever the
        // rounding of the cumulative sum below.
        if cand.iter().any(|c| c.1 > f32::NEG_INFINITY) {
            cand.retain(|c| c.1 > f32::NEG_INFINITY);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.cfg.top_k > 0 {
            cand.truncate(self.cfg.top_k);
        }
        let probs = softmax(&cand);
        let mut keep = cand.len();
        if self.cfg.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.cfg.min_p > 0.0 {
            let floor = probs[0] * self.cfg.min_p;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        cand.truncate(keep.max(1));
        for c in cand.iter_mut() {
            c.1 /= self.cfg.temperature;
        }
        let probs = softmax(&cand);
        let r = self.next_f32();
        let mut cum = 0.0;
        for (c, p) in cand.iter().zip(&probs) {
            cum += p;
            if r < cum {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }
}

/// A sampled token's log-probability under the model's own distribution (the log-softmax
/// of the raw logits, before bias, penalties or truncation, as OpenAI reports it), with the
/// most likely tokens beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The `top` most likely tokens and their log-probabilities, most likely first
    /// (ties by lower id).
    pub top: Vec<(u32, f32)>,
}

/// `token`'s log-probability in `logits`, and the `top` most likely tokens'.
pub fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |l: f32| (l as f64 - log_z) as f32;
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let order = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let top = top.min(ids.len());
    if top > 0 && top < ids.len() {
        ids.select_nth_unstable_by(top - 1, order);
    }
    ids.truncate(top);
    ids.sort_unstable_by(order);
    TokenLogprob {
        token,
        logprob: logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: ids.into_iter().map(|t| (t, lp(logits[t as usize]))).collect(),
    }
}

fn argmax(cand: &[(u32, f32)]) -> u32 {
    // First maximum wins, as llama.cpp's greedy sampler does.
    let mut best = cand[0];
    for &c in &cand[1..] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best.0
}

fn softmax(cand: &[(u32, f32)]) -> Vec<f32> {
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() });
        let l = logits();
        let best = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(s.sample(&l), best as u32);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig { temperature: 5.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..Default::default() });
            (0..50).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_min_p_filters() {
        let l = logits();
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 1, ..Default::default() });
        let g = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() }).sample(&l);
        assert!((0..20).all(|_| s.sample(&l) == g));
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.99, ..Default::default() });
        assert!((0..20).all(|_| s.sample(&l) == g));
    }

    #[test]
    fn repeat_penalty_discourages_seen_tokens() {
        let mut l = vec![0.0f32; 4];
        l[2] = 1.0;
        l[3] = 0.9;
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, repeat_penalty: 1.5, ..Default::default() });
        s.accept(2);
        assert_eq!(s.sample(&l), 3);
    }

    /// The penalties against a plain reading of llama.cpp's formula, on random logits and
    /// histories longer than the window.
    #[test]
    fn penalties_match_the_formula_on_random_inputs() {
        let mut rng = 0x1234_5678_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..50 {
            let n = 32;
            let logits: Vec<f32> = (0..n).map(|_| (next() % 2000) as f32 / 100.0 - 10.0).collect();
            let history: Vec<u32> = (0..(next() % 100)).map(|_| (next() % n as u64) as u32).collect();
            let cfg = SamplerConfig {
                repeat_penalty: 1.0 + (next() % 100) as f32 / 100.0,
                repeat_last_n: 1 + (next() % 80) as usize,
                frequency_penalty: (next() % 100) as f32 / 50.0 - 1.0,
                presence_penalty: (next() % 100) as f32 / 50.0 - 1.0,
                ..Default::default()
            };
            let mut s = Sampler::new(cfg.clone());
            history.iter().for_each(|&t| s.accept(t));
            let mut got: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            s.apply_penalties(&mut got);
            let window = &history[history.len().saturating_sub(cfg.repeat_last_n)..];
            for (t, &l) in logits.iter().enumerate() {
                let count = window.iter().filter(|&&h| h == t as u32).count();
                let want = if count == 0 {
                    l
                } else {
                    let l = if l > 0.0 { l / cfg.repeat_penalty } else { l * cfg.repeat_penalty };
                    l - count as f32 * cfg.frequency_penalty - cfg.presence_penalty
                };
                assert!((got[t].1 - want).abs() < 1e-5, "token {t}: {} vs {want}", got[t].1);
            }
        }
    }

    #[test]
    fn logprobs_are_the_log_softmax_and_top_is_sorted() {
        let l: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 5.0).collect();
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        for token in [0u32, 17, 999] {
            let got = token_logprob(&l, token, 5);
            let want = ((l[token as usize] as f64).exp() / z).ln();
            assert!((got.logprob as f64 - want).abs() < 1e-4, "{} vs {want}", got.logprob);
            let mut sorted: Vec<u32> = (0..1000).collect();
            sorted.sort_by(|a, b| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b)));
            assert_eq!(got.top.iter().map(|t| t.0).collect::<Vec<_>>(), sorted[..5]);
            assert!(got.top.windows(2).all(|w| w[0].1 >= w[1].1));
        }
        assert!(token_logprob(&l, 3, 0).top.is_empty());
        assert_eq!(token_logprob(&l[..3], 1, 10).top.len(), 3);
    }

    #[test]
    fn logit_bias_bans_and_favours_tokens() {
        let l = logits();
        let best = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() }).sample(&l);
        let ban = SamplerConfig { temperature: 0.0, logit_bias: vec![(best, f32::NEG_INFINITY)], ..Default::default() };
        let second = Sampler::new(ban).sample(&l);
        assert_ne!(second, best);
        let favour = SamplerConfig { temperature: 1.0, logit_bias: vec![(5, 100.0)], ..Default::default() };
        let mut s = Sampler::new(favour);
        assert!((0..20).all(|_| s.sample(&l) == 5));
    }
}
