//! Shared helpers of the engine's tests on real models.
#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A test model by file name: fails (never skips) when it is absent.
pub fn model_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

/// A reference fixture produced by scripts/reference/generate.sh.
pub fn fixture(name: &str) -> serde_json::Value {
    let p = root().join("tests/fixtures/reference").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Greedy generation with our engine from prompt ids.
pub fn greedy(runner: &engine::Runner, prompt: &[u32], n: usize, eog: &[u32]) -> (Vec<u32>, Vec<f32>) {
    use engine::sampler::{Sampler, SamplerConfig};
    let mut cache = runner.new_cache(1024);
    let first_logits = engine::generate::prefill(runner, &mut cache, prompt, 512).unwrap();
    let mut sampler = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() });
    let mut out = Vec::new();
    let mut logits = first_logits.clone();
    for _ in 0..n {
        let t = sampler.sample(&logits);
        out.push(t);
        if eog.contains(&t) {
            break;
        }
        logits = runner.forward(&mut cache, &[t], 0..1).unwrap();
    }
    (out, first_logits)
}
