//! Token sampling with llama.cpp's default chain order:
//! repeat penalty → top-k → top-p → min-p → temperature → draw (or argmax when temp ≤ 0).

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
    /// Window of the repeat penalty.
    pub repeat_last_n: usize,
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
        self.apply_repeat_penalty(&mut cand);
        let token = if self.cfg.temperature <= 0.0 {
            argmax(&cand)
        } else {
            self.draw(cand)
        };
        self.accept(token);
        token
    }

    fn apply_repeat_penalty(&self, cand: &mut [(u32, f32)]) {
        let p = self.cfg.repeat_penalty;
        if p == 1.0 || self.cfg.repeat_last_n == 0 {
            return;
        }
        let start = self.history.len().saturating_sub(self.cfg.repeat_last_n);
        let mut seen: Vec<u32> = self.history[start..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            if let Some(c) = cand.get_mut(t as usize) {
                c.1 = if c.1 > 0.0 { c.1 / p } else { c.1 * p };
            }
        }
    }

    fn draw(&mut self, mut cand: Vec<(u32, f32)>) -> u32 {
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
}
