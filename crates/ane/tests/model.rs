//! `AneEngine<SimDriver>` serving a real model's matmuls through the engine's
//! Dispatcher: every offloaded op goes MIL → blob → interpreter → surfaces, and the
//! logits must stay close to the CPU's. Also: compile-budget exhaustion falls back to
//! the CPU without losing an output.

mod common;

use ane::sim::SimDriver;
use ane::{AneConfig, AneEngine};
use engine::matrix::cache::CacheBudget;
use engine::matrix::policy::{Backend, PlacementPolicy};
use engine::matrix::reference::ReferenceEngine;
use engine::matrix::{Dispatcher, MatrixEngine};
use engine::{Model, Runner};
use std::sync::Arc;

/// A CPU so slow in the cost model that the accelerator takes every op with N ≥ 64.
const SLOW_CPU: (f64, f64) = (1.0, 1.0);

fn logits(r: &Runner, tokens: &[u32], rows: std::ops::Range<usize>) -> Vec<f32> {
    let mut cache = r.new_cache(tokens.len());
    r.forward(&mut cache, tokens, rows).unwrap()
}

fn compare(name: &str, got: &[f32], cpu: &[f32], vocab: usize, max_diff: f32, min_agree: f32) {
    assert!(got.iter().all(|v| v.is_finite()));
    let diff = got.iter().zip(cpu).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let argmax = |l: &[f32]| l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let rows = cpu.len() / vocab;
    let same = (0..rows).filter(|&t| argmax(&got[t * vocab..][..vocab]) == argmax(&cpu[t * vocab..][..vocab])).count();
    eprintln!("{name}: max logit difference {diff:.3}, argmax agrees on {same}/{rows} rows");
    assert!(diff < max_diff, "{name}: max logit difference {diff}");
    assert!(same as f32 >= min_agree * rows as f32, "{name}: only {same}/{rows} argmaxes agree");
}

#[test]
fn smollm2_through_the_dispatcher() {
    let path = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let load = || Model::load(&path, &mut |_, _| {}).unwrap();
    let tokens: Vec<u32> = (0..100u32).map(|i| (i * 7919 + 13) % 49152).collect();
    let cpu = logits(&Runner::new(load(), 2).unwrap(), &tokens, 0..tokens.len());

    let model = load();
    let ane = Arc::new(AneEngine::for_model(SimDriver::new(), &model, AneConfig::default()).unwrap());
    assert!(ane.planned_programs() <= 10, "{} programs planned", ane.planned_programs());
    let engines: Vec<Arc<dyn MatrixEngine>> = vec![ane.clone()];
    let policy = PlacementPolicy::new(Backend::Named("ane-sim".into()), 64, None, SLOW_CPU);
    let r = Runner::with_dispatcher(model, 2, Dispatcher::new(engines, policy, CacheBudget::default(), false).unwrap()).unwrap();
    let got = logits(&r, &tokens, 0..tokens.len());
    // The CPU quantizes activations to 8 bits; we round them to fp16: compare with both
    // the CPU and the reference engine (f32 weights and activations), which isolates fp16.
    // Measured: under 2 against the AVX-512 kernels, 2.149 against the AVX2 ones (AMD EPYC, no
    // AVX-512), the same before and after the gpt-oss changes; the f32 reference below is the tight check.
    compare("smollm2 vs cpu", &got, &cpu, 49152, 2.5, 0.9);
    let refe: Vec<Arc<dyn MatrixEngine>> = vec![Arc::new(ReferenceEngine::new())];
    let policy = PlacementPolicy::new(Backend::Named("ref".into()), 64, None, SLOW_CPU);
    let rr = Runner::with_dispatcher(load(), 2, Dispatcher::new(refe, policy, CacheBudget::default(), false).unwrap()).unwrap();
    compare("smollm2 vs ref", &got, &logits(&rr, &tokens, 0..tokens.len()), 49152, 0.5, 0.95);
    let s = r.dispatcher.stats.snapshot();
    // 30 layers × 7 weights (gate/up/down counted in the fused blocks) + the 49152-row head (3 output tiles in one function).
    assert_eq!(s["ane-sim"].matmuls, 211, "{s:?}");
    assert_eq!(s["ane-sim"].failures, 0, "{s:?}");
    // Every feed-forward block taken whole, each within its RMSNorm-derived input bound.
    assert_eq!(s["ane-sim"].fused_blocks, 30, "{s:?}");
    assert_eq!(ane.stats().mlp_over_bound, 0);
    assert!(ane.compiles() <= ane.planned_programs());
    // A new prompt length in the same bucket compiles nothing.
    let before = ane.compiles();
    logits(&r, &tokens[..80], 0..80);
    assert_eq!(ane.compiles(), before);
}

#[test]
fn exhausted_compile_budget_falls_back_to_the_cpu() {
    let path = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let load = || Model::load(&path, &mut |_, _| {}).unwrap();
    let tokens: Vec<u32> = (0..64u32).map(|i| (i * 31 + 7) % 49152).collect();
    let cpu = logits(&Runner::new(load(), 2).unwrap(), &tokens, 63..64);
    let model = load();
    let mut cfg = AneConfig::default();
    cfg.plan.max_programs = 2;
    cfg.plan.max_functions = 12; // Q/K/V + output, then the MLP (3 functions per bucket): the budget runs out in layer 2
    let ane = Arc::new(AneEngine::for_model(SimDriver::new(), &model, cfg).unwrap());
    let policy = PlacementPolicy::new(Backend::Auto, 64, None, SLOW_CPU);
    let r = Runner::with_dispatcher(model, 2, Dispatcher::new(vec![ane.clone()], policy, CacheBudget::default(), false).unwrap()).unwrap();
    let got = logits(&r, &tokens, 63..64);
    let s = r.dispatcher.stats.snapshot();
    assert_eq!(ane.compiles(), 2);
    assert!(s["ane-sim"].failures > 0 && s["ane-sim"].matmuls > 0 && s["cpu"].matmuls > 0, "{s:?}");
    // One row: a near-tie may flip its argmax, so only the logits are compared.
    compare("smollm2 (budget 2)", &got, &cpu, 49152, 1.5, 0.0);
}
