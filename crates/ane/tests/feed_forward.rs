//! Whole feed-forward blocks on the ANE through the engine's real Dispatcher (SimDriver):
//! each layer's gate/up/down is one MLP group whose program holds, per bucket, the fused
//! block and its gate/up and down as plain matmuls. Random llama (SiLU) and gemma3 (GELU)
//! models give logits close to the CPU's.and the reference engine's with every block
//! fused; a policy that refuses the block gets separate matmuls from the same programs;
//! faults in the fused op fall back to the CPU; prepare/evict follow the cache's keys.

mod common;

use ane::build::{Act, GroupOp};
use ane::ffi::DriverError;
use ane::plan::PlanConfig;
use ane::sim::SimDriver;
use ane::{AneConfig, AneEngine};
use common::{reference, rel_err, weights, EvalHook, HookedSim, Rng};
use engine::arch::Activation;
use engine::matrix::cache::CacheBudget;
use engine::matrix::fault::FaultyEngine;
use engine::matrix::policy::{Backend, Calibration, CalibrationEntry, PlacementPolicy};
use engine::matrix::reference::ReferenceEngine;
use engine::matrix::{Dispatcher, FeedForward, FusedFeedForward, MatrixEngine, WeightKey};
use engine::random_model::RandomModelSpec;
use engine::weights::Weight;
use engine::{Model, Runner};
use gguf::GgmlType;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A CPU so slow in the cost model that the accelerator takes every op with N ≥ 64.
const SLOW_CPU: (f64, f64) = (1.0, 1.0);

fn tiny(arch: &str) -> Model {
    let spec = RandomModelSpec { arch: arch.into(), ..RandomModelSpec::preset("tiny", GgmlType::Q8_0).unwrap() };
    Model::from_file(Arc::new(gguf::GgufFile::from_bytes(spec.build().unwrap().to_bytes()).unwrap()), &mut |_, _| {}).unwrap()
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7919 + 13) % 512).collect()
}

fn runner(model: Model, engine: Arc<dyn MatrixEngine>, calibration: Option<&Calibration>) -> Runner {
    let policy = PlacementPolicy::new(Backend::Named(engine.name().into()), 64, calibration, SLOW_CPU);
    Runner::with_dispatcher(model, 2, Dispatcher::new(vec![engine], policy, CacheBudget::default(), false).unwrap()).unwrap()
}

fn logits(r: &Runner, tokens: &[u32]) -> Vec<f32> {
    let mut cache = r.new_cache(tokens.len());
    r.forward(&mut cache, tokens, 0..tokens.len()).unwrap()
}

/// The CPU's logits and the exact reference engine's for `tokens` on a tiny `arch` model.
fn cpu_and_reference(arch: &str, tokens: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let cpu = logits(&Runner::new(tiny(arch), 2).unwrap(), tokens);
    (cpu, logits(&runner(tiny(arch), Arc::new(ReferenceEngine::new()), None), tokens))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert!(a.iter().all(|v| v.is_finite()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn random_models_take_whole_blocks_through_the_dispatcher() {
    // 150 tokens: bucket 256; a second prompt of 70 tokens: bucket 128, same programs.
    for arch in ["llama", "gemma3"] {
        let tokens = prompt(150);
        let (cpu, refe) = cpu_and_reference(arch, &tokens);
        let model = tiny(arch);
        let ane = Arc::new(AneEngine::for_model(SimDriver::new(), &model, AneConfig::default()).unwrap());
        let planned = ane.planned_programs();
        let r = runner(model, ane.clone(), None);
        let fused = logits(&r, &tokens);
        let s = r.dispatcher.stats.snapshot()["ane-sim"].clone();
        // 2 layers × 7 weights + the head, every block fused, nothing recomputed.
        assert_eq!((s.matmuls, s.fused_blocks, s.failures), (15, 2, 0), "{arch}: {s:?}");
        assert_eq!(ane.stats().mlp_over_bound, 0);
        // The unfused plan for comparison.
        let model = tiny(arch);
        let cfg = AneConfig { fuse_mlp: false, ..AneConfig::default() };
        let split_engine = Arc::new(AneEngine::for_model(SimDriver::new(), &model, cfg).unwrap());
        let split_planned = split_engine.planned_programs();
        let rs = runner(model, split_engine, None);
        let split = logits(&rs, &tokens);
        assert_eq!(rs.dispatcher.stats.snapshot()["ane-sim"].fused_blocks, 0);
        let (d_cpu, d_ref, d_split) = (max_diff(&fused, &cpu), max_diff(&fused, &refe), max_diff(&fused, &split));
        eprintln!(
            "{arch}: fused vs cpu {d_cpu:.4}, vs ref {d_ref:.4}, vs unfused ane {d_split:.4} (unfused vs ref {:.4}); programs {planned} fused, {split_planned} unfused",
            max_diff(&split, &refe)
        );
        // The CPU quantizes activations to 8 bits: the engine may sit as far from it as the
        // exact reference does (plus a little), no further.
        let cpu_noise = max_diff(&cpu, &refe);
        assert!(d_ref < 0.05 && d_cpu < cpu_noise + 0.05 && d_split < 0.05, "{arch}: {d_cpu} (cpu vs ref {cpu_noise}) {d_ref} {d_split}");
        assert!(planned <= 100 && ane.compiles() <= planned);
        // Another bucket: the same programs hold its functions, nothing compiles.
        let before = ane.compiles();
        let short = logits(&r, &prompt(70));
        assert_eq!(ane.compiles(), before);
        let (cpu_short, ref_short) = cpu_and_reference(arch, &prompt(70));
        assert!(max_diff(&short, &cpu_short) < max_diff(&cpu_short, &ref_short) + 0.05);
        assert_eq!(r.dispatcher.stats.snapshot()["ane-sim"].fused_blocks, 4);
    }
}

#[test]
fn a_refused_block_runs_as_matmuls_on_the_same_programs() {
    // Calibration says the gate/up group never pays on the ANE: the dispatcher runs gate/up
    // on the CPU, the activation on the CPU, and down (a plain matmul) on the ANE's MLP program.
    let model = tiny("llama");
    let (dim, ff) = (model.config.n_embd, model.config.n_ff);
    let cal = Calibration {
        machine: "test".into(),
        entries: vec![CalibrationEntry { engine: "ane-sim".into(), m: 2 * ff, k: dim, ty: GgmlType::Q8_0.name().into(), crossover_n: None, timings: vec![] }],
    };
    let tokens = prompt(100);
    let cpu = logits(&Runner::new(tiny("llama"), 2).unwrap(), &tokens);
    let ane = Arc::new(AneEngine::for_model(SimDriver::new(), &model, AneConfig::default()).unwrap());
    let r = runner(model, ane.clone(), Some(&cal));
    let got = logits(&r, &tokens);
    let s = r.dispatcher.stats.snapshot();
    assert_eq!((s["ane-sim"].fused_blocks, s["ane-sim"].failures), (0, 0), "{s:?}");
    assert_eq!((s["ane-sim"].matmuls, s["cpu"].matmuls), (11, 4), "{s:?}");
    assert!(ane.compiles() <= ane.planned_programs());
    let d = max_diff(&got, &cpu);
    // Against the CPU's own distance from the exact reference (its 8-bit activations).
    let refe = logits(&runner(tiny("llama"), Arc::new(ReferenceEngine::new()), None), &tokens);
    let noise = max_diff(&cpu, &refe);
    eprintln!("refused blocks: max logit difference vs cpu {d:.4} (cpu vs exact reference {noise:.4})");
    assert!(d < noise + 0.05, "{d} vs {noise}");
}

fn mlp_weights(dim: usize, ff: usize) -> Vec<Weight> {
    weights(&[("gate", ff, dim, GgmlType::F32), ("up", ff, dim, GgmlType::Q8_0), ("down", dim, ff, GgmlType::F32)], 9, 0.5)
}

fn ffn(ws: &[Weight], activation: Activation) -> FeedForward<'_> {
    FeedForward { gate: &ws[0], up: &ws[1], down: &ws[2], activation, biases: None }
}

#[test]
fn mlp_weights_serve_plain_matmuls_and_whole_blocks() {
    let (dim, ff, n) = (96, 160, 70);
    let ws = mlp_weights(dim, ff);
    let x = Rng(5).vec(n * dim, 1.0);
    let cfg = AneConfig { plan: PlanConfig { buckets: vec![64, 128], ..PlanConfig::default() }, ..AneConfig::default() };
    let ane = Arc::new(AneEngine::new(SimDriver::new(), cfg));
    ane.add_groups_bounded(vec![(ws.clone(), GroupOp::Mlp(Act::Silu), Some(16.0))]).unwrap();
    assert_eq!(ane.planned_programs(), 1);
    let policy = PlacementPolicy::new(Backend::Named("ane-sim".into()), 64, None, SLOW_CPU);
    let d = Dispatcher::new(vec![ane.clone() as Arc<dyn MatrixEngine>], policy, CacheBudget::default(), false).unwrap();
    // Gate/up together and down alone, as the unfused block asks for them.
    let (mut g, mut u) = (vec![0f32; n * ff], vec![0f32; n * ff]);
    d.matmul_group(&[&ws[0], &ws[1]], &x, &mut [&mut g, &mut u]);
    assert!(rel_err(&g, &reference(&ws[0], &x, n)) < 2e-3 && rel_err(&u, &reference(&ws[1], &x, n)) < 2e-3);
    let mut y = vec![0f32; n * dim];
    d.matmul(&ws[2], &g, &mut y);
    assert!(rel_err(&y, &reference(&ws[2], &g, n)) < 2e-3);
    // The whole block, from the same program (nothing compiles), close to the CPU's.
    let mut fused = vec![0f32; n * dim];
    d.feed_forward(&ffn(&ws, Activation::Silu), &x, &mut fused);
    let mut cpu = vec![0f32; n * dim];
    Dispatcher::cpu_only().feed_forward(&ffn(&ws, Activation::Silu), &x, &mut cpu);
    assert!(rel_err(&fused, &cpu) < 1e-2, "{}", rel_err(&fused, &cpu));
    let s = d.stats.snapshot()["ane-sim"].clone();
    assert_eq!((s.matmuls, s.fused_blocks, s.failures), (6, 1, 0), "{s:?}");
    assert_eq!(ane.compiles(), 1);
    // Cache accounting: gate, up and down prepared for bucket 128, each its share of the blob.
    assert_eq!(d.cache().entries("ane-sim"), 3);
    assert_eq!(d.cache().used("ane-sim"), (3 * 2 * ff * dim).div_ceil(2));
    // An input beyond the program's bound runs as gate/up, host activation, down.
    let big: Vec<f32> = x.iter().map(|v| v * 8.0).collect();
    let mut out = vec![0f32; n * dim];
    d.feed_forward(&ffn(&ws, Activation::Silu), &big, &mut out);
    Dispatcher::cpu_only().feed_forward(&ffn(&ws, Activation::Silu), &big, &mut cpu);
    assert!(rel_err(&out, &cpu) < 1e-2);
    assert_eq!(ane.stats().mlp_over_bound, 1);
    assert_eq!(d.stats.snapshot()["ane-sim"].failures, 0);
}

#[test]
fn prepare_and_evict_follow_the_cache_keys() {
    let (dim, ff, n) = (64, 96, 40);
    let ws = mlp_weights(dim, ff);
    let x = Rng(7).vec(n * dim, 1.0);
    let cfg = AneConfig { plan: PlanConfig { buckets: vec![64], ..PlanConfig::default() }, ..AneConfig::default() };
    let e = AneEngine::new(SimDriver::new(), cfg);
    e.add_groups(vec![(ws.clone(), GroupOp::Mlp(Act::GeluTanh))]).unwrap();
    let keys: Vec<WeightKey> = ws.iter().map(WeightKey::of).collect();
    for (k, w) in keys.iter().zip(&ws) {
        assert_eq!(e.prepare(k, w, 64).unwrap(), (2 * w.rows * w.cols).div_ceil(1));
    }
    let f = ffn(&ws, Activation::GeluTanh);
    let mut out = vec![0f32; n * dim];
    e.feed_forward(&f, 64, &x, n, &mut out).unwrap();
    let mut cpu = vec![0f32; n * dim];
    Dispatcher::cpu_only().feed_forward(&f, &x, &mut cpu);
    assert!(rel_err(&out, &cpu) < 1e-2);
    // The block asked with another activation than planned is refused, not miscomputed.
    assert!(e.feed_forward(&ffn(&ws, Activation::Silu), 64, &x, n, &mut out).is_err());
    // The program stays loaded while any of the three is held for the bucket.
    e.evict(&keys[0], 64);
    e.evict(&keys[1], 64);
    e.feed_forward(&f, 64, &x, n, &mut out).unwrap();
    e.evict(&keys[2], 64);
    let err = e.feed_forward(&f, 64, &x, n, &mut out).unwrap_err();
    assert!(err.what.contains("not loaded"), "{err}");
    for (k, w) in keys.iter().zip(&ws) {
        e.prepare(k, w, 64).unwrap();
    }
    e.feed_forward(&f, 64, &x, n, &mut out).unwrap();
    assert_eq!(e.compiles(), 2);
    // A non-finite output is a failure (the dispatcher then recomputes on the CPU).
    let mut bad = x.clone();
    bad[5] = f32::NAN;
    let err = e.feed_forward(&f, 64, &bad, n, &mut out).unwrap_err();
    assert!(err.what.contains("non-finite"), "{err}");
    // Weights not planned as one MLP: the block still runs on the engine, as separate matmuls.
    let e2 = AneEngine::new(SimDriver::new(), AneConfig { plan: PlanConfig { buckets: vec![64], ..PlanConfig::default() }, ..AneConfig::default() });
    for (k, w) in keys.iter().zip(&ws) {
        e2.prepare(k, w, 64).unwrap();
    }
    e2.feed_forward(&f, 64, &x, n, &mut out).unwrap();
    assert!(rel_err(&out, &cpu) < 1e-2);
}

/// An evaluation hook under which the fused MLP functions fail: in a program holding one MLP group, the
/// procedures are (per bucket) the fused block, gate/up, down.
struct FusedFails {
    failed: AtomicUsize,
}

impl EvalHook for FusedFails {
    fn before(&self, procedure: usize) -> Option<Result<(), DriverError>> {
        if procedure.is_multiple_of(3) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Some(Err(DriverError("injected: fused MLP evaluation failed".into())));
        }
        None
    }
}

#[test]
fn faults_in_the_fused_op_fall_back_to_the_cpu() {
    // A driver whose fused evaluation fails: the dispatcher recomputes the block on the CPU,
    // bit for bit what the CPU computes, and counts one failure.
    let (dim, ff, n) = (96, 160, 70);
    let ws = mlp_weights(dim, ff);
    let x = Rng(11).vec(n * dim, 1.0);
    let ane = Arc::new(AneEngine::new(HookedSim::new("ane-sim", FusedFails { failed: AtomicUsize::new(0) }), AneConfig::default()));
    ane.add_groups(vec![(ws.clone(), GroupOp::Mlp(Act::Silu))]).unwrap();
    let policy = PlacementPolicy::new(Backend::Named("ane-sim".into()), 64, None, SLOW_CPU);
    let d = Dispatcher::new(vec![ane.clone() as Arc<dyn MatrixEngine>], policy, CacheBudget::default(), false).unwrap();
    let f = ffn(&ws, Activation::Silu);
    let (mut got, mut cpu) = (vec![f32::NAN; n * dim], vec![0f32; n * dim]);
    d.feed_forward(&f, &x, &mut got);
    Dispatcher::cpu_only().feed_forward(&f, &x, &mut cpu);
    assert_eq!(got, cpu);
    assert_eq!(ane.driver().failed.load(Ordering::SeqCst), 1);
    let s = d.stats.snapshot();
    assert_eq!((s["ane-sim"].fused_blocks, s["ane-sim"].failures), (0, 1), "{s:?}");

    // Injected faults on a whole model, every 2nd engine op (the output of layer 0, Q/K/V and
    // the block of layer 1 fail): logits stay close to the CPU's.
    let model = tiny("gemma3");
    let tokens = prompt(100);
    let cpu = logits(&Runner::new(tiny("gemma3"), 2).unwrap(), &tokens);
    let inner = Arc::new(AneEngine::for_model(SimDriver::new(), &model, AneConfig::default()).unwrap());
    let faulty = Arc::new(FaultyEngine::new(inner, 2));
    let r = runner(model, faulty, None);
    let got = logits(&r, &tokens);
    let s = r.dispatcher.stats.snapshot();
    let e = &s["ane-sim+faults"];
    assert!(e.failures == 3 && e.fused_blocks == 1 && s["cpu"].matmuls > 0, "{s:?}");
    let d = max_diff(&got, &cpu);
    eprintln!("faults every 2nd op: {} failures, {} fused blocks, max logit difference vs cpu {d:.4}", e.failures, e.fused_blocks);
    assert!(d < 0.1, "{d}");
}

#[test]
fn qwen_layers_run_through_ane_sim_like_the_exact_reference() {
    // Q/K/V biases (qwen2) and QK-norm (qwen3) stay on the host; the engine takes every matmul
    // and fused block, and lands where the exact reference engine does.
    for arch in ["qwen2", "qwen3"] {
        let tokens = prompt(100);
        let (cpu, refe) = cpu_and_reference(arch, &tokens);
        let model = tiny(arch);
        let ane = Arc::new(AneEngine::for_model(SimDriver::new(), &model, AneConfig::default()).unwrap());
        let r = runner(model, ane, None);
        let got = logits(&r, &tokens);
        let s = r.dispatcher.stats.snapshot()["ane-sim"].clone();
        assert_eq!((s.matmuls, s.fused_blocks, s.failures), (15, 2, 0), "{arch}: {s:?}");
        let (d_ref, d_cpu, cpu_noise) = (max_diff(&got, &refe), max_diff(&got, &cpu), max_diff(&cpu, &refe));
        eprintln!("{arch}: ane-sim vs ref {d_ref:.4}, vs cpu {d_cpu:.4} (cpu vs ref {cpu_noise:.4})");
        assert!(d_ref < 0.05 && d_cpu < cpu_noise + 0.05, "{arch}: {d_ref} {d_cpu} {cpu_noise}");
    }
}
