//! Sentence embeddings from a decoder model, as llama.cpp computes them: the final norm's
//! output of every token (causal attention, as in generation), pooled over the tokens and
//! scaled to unit length (llama-embedding's and llama-server's default normalization).

use crate::arch::Config;
use crate::error::{EngineError, Result};
use crate::Runner;

/// How the tokens' vectors become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Their mean.
    Mean,
    /// The first token's.
    Cls,
    /// The last token's.
    Last,
}

impl Pooling {
    /// llama.cpp's `--pooling` names: `mean`, `cls`, `last`; `none` (per-token vectors)
    /// and `rank` (rerankers) have no single sentence vector and are refused.
    pub fn parse(s: &str) -> Result<Pooling> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "last" => Ok(Pooling::Last),
            "none" | "rank" => Err(EngineError::Invalid(format!("pooling '{s}' gives no single sentence embedding (mean, cls or last)"))),
            other => Err(EngineError::Invalid(format!("unknown pooling '{other}' (mean, cls or last)"))),
        }
    }

    /// What the model's metadata asks for (`pooling_type` 1, 2 or 3), if anything.
    pub fn of_model(c: &Config) -> Option<Pooling> {
        match c.pooling_type? {
            1 => Some(Pooling::Mean),
            2 => Some(Pooling::Cls),
            3 => Some(Pooling::Last),
            _ => None,
        }
    }

    /// Its `--pooling` name.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
}

impl Runner {
    /// The unit-length embedding of `tokens` (a fresh context of their length), pooled.
    pub fn embedding(&self, tokens: &[u32], pooling: Pooling) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Err(EngineError::Invalid("an embedding needs at least one token".into()));
        }
        let rows = match pooling {
            Pooling::Mean => 0..n,
            Pooling::Cls => 0..1,
            Pooling::Last => n - 1..n,
        };
        let mut cache = self.new_cache(n);
        let h = self.forward_hidden(&mut cache, tokens, rows.clone())?;
        let d = self.model.config.n_embd;
        let mut v = vec![0f32; d];
        for row in h.chunks_exact(d) {
            v.iter_mut().zip(row).for_each(|(a, x)| *a += x);
        }
        let inv_rows = 1.0 / rows.len() as f32;
        v.iter_mut().for_each(|a| *a *= inv_rows);
        let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
        v.iter_mut().for_each(|a| *a *= scale);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random_model::tiny_model;

    /// Mean pooling is the mean of the per-token vectors (first and last pooling the ends),
    /// each made unit length; every vector is the final norm's output of a causal pass.
    #[test]
    fn pooling_matches_the_per_token_vectors() {
        let runner = Runner::new(tiny_model(quant::GgmlType::Q8_0), 1).unwrap();
        let tokens = [5u32, 17, 3, 99, 42];
        let d = runner.model.config.n_embd;
        let mut cache = runner.new_cache(tokens.len());
        let all = runner.forward_hidden(&mut cache, &tokens, 0..tokens.len()).unwrap();
        let unit = |v: Vec<f32>| -> Vec<f32> {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect()
        };
        let mean = unit((0..d).map(|i| all.chunks_exact(d).map(|r| r[i]).sum::<f32>() / tokens.len() as f32).collect());
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(&runner.embedding(&tokens, Pooling::Mean).unwrap(), &mean));
        assert!(close(&runner.embedding(&tokens, Pooling::Cls).unwrap(), &unit(all[..d].to_vec())));
        assert!(close(&runner.embedding(&tokens, Pooling::Last).unwrap(), &unit(all[4 * d..].to_vec())));
        // The first token sees only itself (causal): its vector does not depend on the rest.
        assert!(close(&runner.embedding(&tokens[..1], Pooling::Mean).unwrap(), &unit(all[..d].to_vec())));
        assert!(runner.embedding(&[], Pooling::Mean).is_err());
        assert!(Pooling::parse("none").is_err() && Pooling::parse("rank").is_err() && Pooling::parse("avg").is_err());
        assert_eq!(Pooling::parse("last").unwrap(), Pooling::Last);
    }
}
