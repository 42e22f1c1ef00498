//! Prefill runs beside decode: while a long prompt is prefilled (its large matmuls placed
//! on a matrix engine — here the reference engine), a running stream keeps getting tokens
//! (decode, N = slots, stays on the CPU). /metrics shows both engines.

mod common;

use common::*;
use engine::matrix::cache::CacheBudget;
use engine::matrix::dispatch::CPU_HINT;
use engine::matrix::policy::{Backend, PlacementPolicy};
use engine::matrix::reference::ReferenceEngine;
use engine::matrix::Dispatcher;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn prefill_on_the_matrix_engine_does_not_stall_decode() {
    let model = engine::Model::load(&model_path(SMOL), &mut |_, _| {}).unwrap();
    let tok = tokenizer::Tokenizer::from_gguf(&model.file).unwrap();
    let policy = PlacementPolicy::new(Backend::Named("ref".into()), 32, None, CPU_HINT);
    let dispatcher = Dispatcher::new(vec![Arc::new(ReferenceEngine::new())], policy, CacheBudget::default(), false).unwrap();
    let runner = engine::Runner::with_dispatcher(model, 2, dispatcher).unwrap();
    let mut cfg = config(2, 2, 2048);
    cfg.sched.chunk = 64;
    let srv = server::start(runner, tok, cfg, false).unwrap();
    let a = srv.addr;

    // Client A streams a long generation.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0, "stream": true, "ignore_eos": true});
    let mut c = Conn::open(a, "POST", "/v1/completions", &[], body.to_string().as_bytes());
    c.next_data().unwrap();
    let arrivals = std::thread::spawn(move || {
        let mut times = Vec::new();
        let t0 = Instant::now();
        while let Some(_d) = c.next_data() {
            times.push(Instant::now());
            if t0.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        times
    });
    std::thread::sleep(Duration::from_millis(300));
    // Client B: a ~50-token prompt (the reference engine is plain f32: slow), one token out; its time is nearly all prefill.
    let long_prompt = "The quick brown fox jumps over the lazy dog. ".repeat(5);
    let b0 = Instant::now();
    let r = post(a, "/v1/completions", &json!({"prompt": long_prompt, "max_tokens": 1, "temperature": 0}));
    let b1 = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    let n_prompt = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(n_prompt > 40, "{n_prompt}");
    let metrics = get(a, "/metrics").text();
    srv.shutdown().unwrap();
    let times = arrivals.join().unwrap();
    let during: Vec<&Instant> = times.iter().filter(|&&t| t > b0 && t < b1).collect();
    let prefill = b1 - b0;
    eprintln!("B's prefill of {n_prompt} tokens took {prefill:.2?}; A got {} tokens meanwhile", during.len());
    assert!(during.len() >= 3, "decode stalled during a {prefill:?} prefill: {} tokens", during.len());
    // The prefill's matmuls went to the matrix engine, decode's stayed on the CPU.
    let count = |engine: &str| -> f64 {
        let key = format!("tandem_engine_matmuls_total{{engine=\"{engine}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&key)).map_or(0.0, |v| v.parse().unwrap())
    };
    assert!(count("ref") > 0.0, "no prefill matmul on the matrix engine:\n{metrics}");
    assert!(count("cpu") > 0.0, "no decode matmul on the CPU:\n{metrics}");
}
