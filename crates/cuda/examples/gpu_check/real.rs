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
use engine::{Model, Runner};
use std::path::Path;
use std::sync::Arc;

/// Logit gap under which two engines may order the top two tokens differently.
const NEAR_TIE: f32 = 1.0;
const STEPS: usize = 32;

fn top2(l: &[f32]) -> (u32, f32) {
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.select_nth_unstable_by(1, |&a, &b| l[b].total_cmp(&l[a]));
    let (a, b) = if l[idx[0]] >= l[idx[1]] { (idx[0], idx[1]) } else { (idx[1], idx[0]) };
    (a as u32, l[a] - l[b])
}

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
    let n_ctx = prompt.len() + STEPS + 1;
    let (mut c_cache, mut g_cache) = (cpu.new_cache(n_ctx), gpu.new_cache(n_ctx));
    let mut c_logits = engine::generate::prefill(&cpu, &mut c_cache, &prompt, 512).expect("prefill");
    let mut g_logits = engine::generate::prefill(&gpu, &mut g_cache, &prompt, 512).expect("prefill");
    println!("\nreal model {}: {} prompt tokens; last prompt token's logits, card vs CPU: rel err {:.2e}", path.display(), prompt.len(), rel_err(&g_logits, &c_logits));
    let (mut ties, mut bad) = (0, 0);
    let mut tokens = Vec::new();
    for step in 0..STEPS {
        let (c_top, c_gap) = top2(&c_logits);
        let (g_top, _) = top2(&g_logits);
        if g_top != c_top {
            if c_gap < NEAR_TIE {
                ties += 1;
            } else {
                bad += 1;
                println!("step {step}: card {g_top}, CPU {c_top} by a margin of {c_gap:.3}");
            }
        }
        tokens.push(c_top);
        c_logits = cpu.forward(&mut c_cache, &[c_top], 0..1).expect("decode");
        g_logits = gpu.forward(&mut g_cache, &[c_top], 0..1).expect("decode");
    }
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
