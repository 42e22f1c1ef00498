//! A real GGUF model carried to the GPU machine: the CPU's greedy tokens after a prompt of
//! GPL-3 text against the card's (the prompt's whole stack on the card, in batches of 512;
//! decode on the CPU from the K/V the card wrote), teacher-forced as in the engine's offload
//! parity test: at every step the card's top token must be the CPU's, unless the CPU's own
//! top two are a near-tie.

use crate::common::rel_err;
use cuda::{CudaEngine, CudaOptions};
use engine::matrix::cache::CacheBudget;
use engine::matrix::dispatch::CPU_HINT;
use engine::matrix::policy::{Backend, PlacementPolicy};
use engine::matrix::{Dispatcher, MatrixEngine};
use engine::parity::{follow, greedy_steps, NEAR_TIE};
use engine::{Model, Runner};
use std::path::Path;
use std::sync::Arc;

const STEPS: usize = 32;

/// Returns the number of failures (0 or 1).
pub fn run(path: &Path, text: &Path) -> usize {
    let threads = std::thread::available_parallelism().map_or(16, |n| n.get());
    let gguf = gguf::GgufFile::open(path).expect("model file");
    let tok = tokenizer::Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let text = std::fs::read_to_string(text).expect("prompt text");
    let head: String = text.chars().take(4000).collect();
    let prompt = tok.encode(&head, true, false);
    let load = || Model::load(path, &mut |_, _| {}).expect("model");
    let cpu = Runner::new(load(), threads).expect("runner");
    let engine: Arc<dyn MatrixEngine> = Arc::new(CudaEngine::new(CudaOptions::default()));
    let budget = engine.memory_budget().expect("available");
    let policy = PlacementPolicy::new(Backend::Named("cuda".into()), 64, None, CPU_HINT);
    let d = Dispatcher::new(vec![engine], policy, CacheBudget { memory_bytes: budget, ..Default::default() }, false).expect("dispatcher");
    let gpu = Runner::with_dispatcher(load(), threads, d).expect("runner");
    let want = greedy_steps(&cpu, &prompt, STEPS).expect("CPU greedy");
    let last = |r: &Runner| {
        let mut cache = r.new_cache(prompt.len());
        engine::generate::prefill(r, &mut cache, &prompt, 512).expect("prefill")
    };
    println!("\nreal model {}: {} prompt tokens; last prompt token's logits, card vs CPU: rel err {:.2e}", path.display(), prompt.len(), rel_err(&last(&gpu), &last(&cpu)));
    let a = follow(&gpu, &prompt, &want).expect("card run");
    for (step, got, token, lead) in &a.differences {
        println!("step {step}: card {got}, CPU {token} by a margin of {lead:.3}");
    }
    let (ties, bad) = (a.near_ties, a.differences.len() + usize::from(a.non_finite.is_some()));
    let tokens: Vec<u32> = want.iter().map(|s| s.token).collect();
    let s = gpu.dispatcher.stats.snapshot();
    let blocks = s.get("cuda").map_or(0, |s| s.blocks);
    let ok = bad == 0 && ties <= 3 && blocks > 0;
    println!(
        "real model: {STEPS} teacher-forced greedy steps: {} agree, {ties} near-ties (< {NEAR_TIE} logit), {bad} real differences; cuda blocks {blocks}  {}",
        STEPS - ties - bad,
        if ok { "ok" } else { "FAIL" }
    );
    println!("greedy text (CPU): {:?}", tok.decode(&tokens, false));
    usize::from(!ok)
}
