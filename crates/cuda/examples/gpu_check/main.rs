//! On a GPU machine: every supported weight format × shapes against the CPU reference,
//! a whole (tiny, random) model through the dispatcher, the conformance suite every engine
//! runs (`engine::conformance`), then the matmul benchmark.
//!
//!     gpu_check [--check] [--conformance] [--bench] [--e2e [--e2e-q4k]] [--quick] [--kernel-cache DIR]      (no flag: all four)
//!     gpu_check --bench-mv         (decode matrix-vector kernels alone, 8B shapes, GB/s)
//!     gpu_check --real MODEL.gguf      (a real model: teacher-forced greedy tokens, card vs CPU)
//!
//! Exits non-zero when any check fails or the engine is unavailable.

mod bench;
mod common;
mod e2e;
mod kernels;
mod real;

use engine::matrix::{AttentionOp, FusedFeedForward};
use common::*;
use cuda::{CudaEngine, CudaOptions};
use engine::matrix::cache::CacheBudget;
use engine::matrix::policy::{Backend, PlacementPolicy};
use engine::matrix::reference::ReferenceEngine;
use engine::arch::Activation;
use engine::matrix::{Availability, Dispatcher, FeedForward, MatrixEngine};
use engine::random_model::RandomModelSpec;
use engine::{Model, Runner};
use quant::GgmlType;
use std::process::ExitCode;
use std::sync::Arc;

const TOL: f64 = 1e-2;

const FORMATS: [GgmlType; 13] = [
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q5_K,
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    let quick = has("--quick");
    let (check, conformance, bench, e2e) = match (has("--check"), has("--conformance"), has("--bench"), has("--e2e")) {
        (false, false, false, false) => (true, true, true, true),
        other => other,
    };
    // --kernel-cache DIR: the compiled kernels come from (and go to) DIR.
    let kernel_cache = args.iter().position(|a| a == "--kernel-cache").and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from);
    if let Some(model) = args.iter().position(|a| a == "--real").and_then(|i| args.get(i + 1)) {
        let text = std::path::Path::new("tests/fixtures/reference/GPL-3.txt");
        return if real::run(std::path::Path::new(model), text) == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let t = std::time::Instant::now();
    if has("--bench-mv") {
        let engine = CudaEngine::new(CudaOptions { kernel_cache: kernel_cache.clone(), ..Default::default() });
        return if bench::matvec_kernels(&engine) { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let engine = CudaEngine::new(CudaOptions { kernel_cache: kernel_cache.clone(), ..Default::default() });
    let _ = engine.availability();
    println!("start-up (context, cuBLAS, kernels): {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    if let Availability::Unavailable(why) = engine.availability() {
        eprintln!("cuda unavailable: {why}");
        return ExitCode::FAILURE;
    }
    println!("device: {}", engine.device_info().unwrap_or_default());
    println!("budget: {:.1} GiB of prepared weights", engine.memory_budget().unwrap_or(0) as f64 / (1u64 << 30) as f64);
    let mut failures = 0;
    if check {
        failures += check_formats(&engine, quick);
        failures += kernels::check(&engine);
        failures += check_group(&engine);
        failures += check_feed_forward(&engine);
        failures += check_attention(&engine);
        failures += check_model(&engine);
        let variants = [
            ("f16 outputs", CudaOptions { out_half: true, ..Default::default() }),
            ("one chunk", CudaOptions { chunks: 1, max_chunk: 1 << 20, ..Default::default() }),
            ("64-token chunks", CudaOptions { min_chunk: 64, max_chunk: 64, ..Default::default() }),
            ("64-token chunks, f16 out", CudaOptions { min_chunk: 64, max_chunk: 64, out_half: true, ..Default::default() }),
        ];
        for (name, o) in variants {
            let e = CudaEngine::new(o);
            println!("\nvariant: {name}");
            failures += check_formats(&e, true);
        }
    }
    if conformance {
        failures += check_conformance(kernel_cache);
    }
    if bench {
        bench::run(&engine, quick);
    }
    if e2e {
        // --e2e-q4k: the end-to-end model in Q4_K instead of Q8_0.
        e2e::run_all(if has("--e2e-q4k") { GgmlType::Q4_K } else { GgmlType::Q8_0 }, !quick);
    }
    if failures > 0 {
        println!("\nFAILED: {failures} checks");
        ExitCode::FAILURE
    } else {
        println!("\nall checks passed");
        ExitCode::SUCCESS
    }
}

/// Every format × odd M × block-multiple K × N ∈ {1, 63, 64, 65, 4096}, each against the
/// f64 reference: ‖out − ref‖ / max(‖ref‖, ‖products‖) < 1e-2 (see `rel_err_scaled`).
fn check_formats(e: &CudaEngine, quick: bool) -> usize {
    println!("\n{:<6} {:>5} {:>5} {:>5}  {:>10}  {:>9}  result", "format", "M", "K", "N", "rel err", "time ms");
    let mut failures = 0;
    let formats: &[GgmlType] = if quick { &FORMATS[..5] } else { &FORMATS };
    for &ty in formats {
        let k = match ty.block_size() {
            1 => 333,
            32 => 32 * 23,
            _ => 256 * 3,
        };
        for m in [17, 1023] {
            let w = weight(&format!("{}.{m}", ty.name()), ty, m, k, next_seed());
            prepare(e, &w);
            let wf = dequantized(&w);
            for n in [1, 63, 64, 65, 4096] {
                let x = random(n * k, next_seed());
                let mut out = vec![f32::NAN; n * m];
                let t = std::time::Instant::now();
                let r = e.matmul(&[&key(&w)], &[&w], 0, &x, n, &mut [&mut out]);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let (err, ok) = match r {
                    Err(f) => {
                        println!("{:<6} {m:>5} {k:>5} {n:>5}  engine failure: {f}", ty.name());
                        failures += 1;
                        continue;
                    }
                    Ok(()) => {
                        let (want, scale) = reference(&wf, m, k, &x, n);
                        let err = rel_err_scaled(&out, &want, scale);
                        (err, err < TOL)
                    }
                };
                failures += usize::from(!ok);
                println!("{:<6} {m:>5} {k:>5} {n:>5}  {err:>10.2e}  {ms:>9.2}  {}", ty.name(), if ok { "ok" } else { "FAIL" });
            }
            e.evict(&key(&w), 0);
        }
    }
    failures
}

/// Q/K/V-like group of three weights of different M sharing one input.
fn check_group(e: &CudaEngine) -> usize {
    let k = 512;
    let ws: Vec<_> = [(GgmlType::Q4_K, 511), (GgmlType::Q6_K, 129), (GgmlType::Q8_0, 1)]
        .iter()
        .enumerate()
        .map(|(i, &(ty, m))| weight(&format!("group.{i}"), ty, m, k, next_seed()))
        .collect();
    let mut failures = 0;
    println!();
    for n in [1, 65, 300] {
        ws.iter().for_each(|w| {
            prepare(e, w);
        });
        let x = random(n * k, next_seed());
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
        let keys: Vec<_> = ws.iter().map(key).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        let r = e.matmul(&keys.iter().collect::<Vec<_>>(), &ws.iter().collect::<Vec<_>>(), 0, &x, n, &mut refs);
        let errs: Vec<f64> = match r {
            Err(f) => {
                println!("group N={n}: engine failure: {f}");
                failures += 1;
                continue;
            }
            Ok(()) => ws
                .iter()
                .zip(&outs)
                .map(|(w, o)| {
                    let (want, scale) = reference(&dequantized(w), w.rows, k, &x, n);
                    rel_err_scaled(o, &want, scale)
                })
                .collect(),
        };
        let ok = errs.iter().all(|&e| e < TOL);
        failures += usize::from(!ok);
        let shown: Vec<String> = errs.iter().map(|e| format!("{e:.2e}")).collect();
        println!("group of 3 (M 511/129/1, K {k}) N={n:>4}: rel err {}  {}", shown.join(" "), if ok { "ok" } else { "FAIL" });
    }
    failures
}

/// Whole feed-forward blocks on the card (SiLU and GELU; N across several chunks) against
/// the f64 reference of gate and up, the activation in f64, then down.
fn check_feed_forward(e: &CudaEngine) -> usize {
    let (k, ff, m) = (512, 32 * 37, 257);
    let gate = weight("ffn.gate", GgmlType::Q4_K, ff, k, next_seed());
    let up = weight("ffn.up", GgmlType::Q6_K, ff, k, next_seed());
    let down = weight("ffn.down", GgmlType::Q8_0, m, ff, next_seed());
    for w in [&gate, &up, &down] {
        prepare(e, w);
    }
    let mut failures = 0;
    println!();
    for activation in [Activation::Silu, Activation::GeluTanh] {
        let ffn = FeedForward { gate: &gate, up: &up, down: &down, activation, biases: None };
        for n in [1, 65, 300, 2100] {
            let x = random(n * k, next_seed());
            let mut out = vec![f32::NAN; n * m];
            let r = e.feed_forward(&ffn, 0, &x, n, &mut out);
            if let Err(f) = r {
                println!("feed-forward {activation:?} N={n}: engine failure: {f}");
                failures += 1;
                continue;
            }
            let err = rel_err(&out, &engine::conformance::feed_forward_reference(&ffn, &x, n));
            let ok = err < TOL;
            failures += usize::from(!ok);
            println!("feed-forward {activation:?} (K {k}, FF {ff}, M {m}) N={n:>4}: rel err {err:.2e}  {}", if ok { "ok" } else { "FAIL" });
        }
    }
    for w in [&gate, &up, &down] {
        e.evict(&key(w), 0);
    }
    failures
}

/// The conformance suite on a fresh engine (default options) through the dispatcher: the
/// cases the CPU, reference and ane-sim engines pass in CI. Returns the failed cases.
fn check_conformance(kernel_cache: Option<std::path::PathBuf>) -> usize {
    let engine: Arc<dyn MatrixEngine> = Arc::new(CudaEngine::new(CudaOptions { kernel_cache, ..Default::default() }));
    let report = engine::conformance::run(engine, &engine::conformance::Options::default());
    println!("\n{report}");
    report.failures().len()
}

/// Causal attention on the card against the CPU's (itself tested against an f64 reference):
/// GQA groups of 1, 3, 4 and 8, head sizes 64-256, windows, batches that start mid-cache.
fn check_attention(e: &CudaEngine) -> usize {
    use engine::cpu::attention::{attention, AttnShape};
    use half::f16;
    let mut failures = 0;
    println!();
    let cases = [
        (32, 8, 128, None, 0, 512),
        (32, 8, 128, None, 0, 65),
        (32, 8, 128, Some(100), 300, 200),
        (4, 1, 256, Some(512), 0, 700),
        (9, 3, 64, None, 37, 300),
        (8, 8, 64, None, 5, 1),
        (64, 8, 128, None, 0, 1000),
        // 32 query heads per KV head of 256 dims: too much shared memory for the tiled kernel.
        (64, 2, 256, Some(40), 10, 90),
        // An 8B layer's prefill of 4096 tokens, and a window with a long cached prefix.
        (32, 8, 128, None, 0, 4096),
        (16, 4, 64, Some(256), 700, 333),
        // Decode steps (one query): long caches, windows, every head size the split kernel takes.
        (32, 8, 128, None, 4000, 1),
        (32, 8, 128, Some(100), 300, 1),
        (16, 4, 64, Some(256), 700, 1),
        (4, 1, 256, Some(512), 0, 1),
        (16, 2, 128, None, 63, 1),
        (64, 2, 256, Some(40), 10, 1),
    ];
    for (n_head, n_head_kv, dim, window, pos0, n) in cases {
        let s = AttnShape { n_head, n_head_kv, head_dim: dim, head_dim_v: dim, window };
        let ctx = pos0 + n;
        let rnd = |len: usize, scale: f32| random(len, next_seed()).into_iter().map(move |v| v * scale);
        let k: Vec<f16> = rnd(ctx * n_head_kv * dim, 2.0).map(f16::from_f32).collect();
        let v: Vec<f16> = rnd(ctx * n_head_kv * dim, 2.0).map(f16::from_f32).collect();
        let q: Vec<f32> = rnd(n * n_head * dim, 0.6).collect();
        let pos: Vec<usize> = (pos0..ctx).collect();
        let mut want = vec![0f32; n * n_head * dim];
        attention(&s, &q, &pos, &k, &v, &mut want);
        let mut got = vec![f32::NAN; n * n_head * dim];
        let t = std::time::Instant::now();
        let r = e.attention(&s, &q, &pos, &k, &v, &mut got);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let label = format!("attention heads {n_head}/{n_head_kv} dim {dim} window {window:?} pos {pos0}..{ctx}");
        match r {
            Err(f) => {
                println!("{label}: engine failure: {f}");
                failures += 1;
            }
            Ok(()) => {
                let err = rel_err(&got, &want);
                let ok = err < 1e-4;
                failures += usize::from(!ok);
                println!("{label}: rel err {err:.2e}, {ms:.2} ms  {}", if ok { "ok" } else { "FAIL" });
            }
        }
        // The whole stack's kernels: queries and outputs in f16 (probabilities too); a single
        // query also through the split decode kernel.
        for (flash, split) in [(64, false), (128, false), (0, false), (0, true)] {
            if (flash > 0 && !e.has_flash_attention(&s)) || (split && n != 1) {
                continue;
            }
            let mut got = vec![f32::NAN; n * n_head * dim];
            let kind = if split { "split decode".into() } else if flash > 0 { format!("flash {flash}") } else { "cuBLAS".into() };
            match e.stack_attention(&s, &q, pos0, &k, &v, &mut got, flash, split) {
                Err(f) => {
                    println!("{label} (stack, {kind}): engine failure: {f}");
                    failures += 1;
                }
                Ok(ms) => {
                    let err = rel_err(&got, &want);
                    let ok = err < 2e-3;
                    failures += usize::from(!ok);
                    println!("{label} (stack, {kind}): rel err {err:.2e}, {ms:.3} ms on the card  {}", if ok { "ok" } else { "FAIL" });
                }
            }
        }
    }
    failures
}

/// A tiny random model through the dispatcher against the exact reference engine: the
/// whole stack on the card; every op placed on its own (stack off); and a 1 MiB budget
/// (too small for the stack: ops one by one, evictions forced). Each runs two sequences in
/// one batch (one continuing a cached prefix), a continued prefill, and decode steps.
fn check_model(e: &CudaEngine) -> usize {
    use engine::forward::Sequence;
    let mut failures = 0;
    println!();
    let toks = |n: usize, seed: u32| -> Vec<u32> { (0..n as u32).map(|i| (i * 7919 + seed) % 512).collect() };
    // Every logit row of: [A: 150 fresh | B: 70 after a 30-token prefix] in one batch, then
    // 70 more tokens of A (its window crosses gemma3's 128), then 3 decode steps of both.
    let session = |r: &Runner| -> Vec<f32> {
        let (mut ca, mut cb) = (r.new_cache(256), r.new_cache(256));
        let mut out = r.forward(&mut cb, &toks(30, 5), 29..30).expect("prefix");
        let (a, b) = (toks(150, 13), toks(70, 29));
        let mut seqs = [Sequence { cache: &mut ca, tokens: &a, logit_rows: 0..150 }, Sequence { cache: &mut cb, tokens: &b, logit_rows: 0..70 }];
        r.forward_batch(&mut seqs).expect("batch").into_iter().for_each(|l| out.extend(l));
        out.extend(r.forward(&mut ca, &toks(70, 101), 0..70).expect("continued prefill"));
        for step in 0..3u32 {
            let t = [step * 31 + 5];
            let mut seqs = [Sequence { cache: &mut ca, tokens: &t, logit_rows: 0..1 }, Sequence { cache: &mut cb, tokens: &t, logit_rows: 0..1 }];
            r.forward_batch(&mut seqs).expect("decode").into_iter().for_each(|l| out.extend(l));
        }
        out
    };
    for (arch, ty) in [("llama", GgmlType::Q4_K), ("llama", GgmlType::Q8_0), ("gemma3", GgmlType::Q8_0), ("qwen3moe", GgmlType::Q8_0), ("qwen35", GgmlType::Q8_0)] {
        // Experts: routed on the host inside a resident stack; never streamed (all of a
        // layer's experts would cross), so over the budget the ops go one by one. Recurrent
        // states and expert routes cross between launches: no graphs for either.
        let moe = arch.ends_with("moe");
        let host_between = moe || arch == "qwen35";
        let spec = RandomModelSpec { arch: arch.into(), ..RandomModelSpec::preset("tiny", ty).expect("tiny preset") };
        let bytes = spec.build().expect("build").to_bytes();
        let file = gguf::GgufFile::from_bytes(bytes.clone()).expect("parse");
        // The decoder blocks' weights as the card keeps them (their GGUF blocks): whether a
        // budget holds them decides where decode runs.
        let block_bytes: u64 = file.tensors().iter().filter(|t| t.name.starts_with("blk.")).map(|t| t.n_bytes).sum();
        let model = || Model::from_file(Arc::new(gguf::GgufFile::from_bytes(bytes.clone()).expect("parse")), &mut |_, _| {}).expect("model");
        let cpu = session(&Runner::new(model(), 4).expect("runner"));
        // The reference engine multiplies unquantized f32 activations by the dequantized
        // weights: the card (f16 operands) must be close to it; the CPU (8-bit activations) less so.
        let refe: Arc<dyn MatrixEngine> = Arc::new(ReferenceEngine::new());
        let policy = PlacementPolicy::new(Backend::Named("ref".into()), 64, None, (1.0, 1.0));
        let d = Dispatcher::new(vec![refe], policy, CacheBudget::default(), false).expect("dispatcher");
        let exact = session(&Runner::with_dispatcher(model(), 4, d).expect("runner"));
        println!("model tiny {arch} {}: CPU (8-bit activations) vs exact reference: logits rel err {:.2e}", ty.name(), rel_err(&cpu, &exact));
        let mut first: Option<Vec<f32>> = None;
        let variants = [
            ("whole stack", usize::MAX, true, 64, true),
            ("whole stack, no graphs", usize::MAX, true, 64, false),
            ("whole stack, flash 128", usize::MAX, true, 128, true),
            ("whole stack, cuBLAS attention", usize::MAX, true, 0, true),
            ("ops one by one", usize::MAX, false, 64, true),
            ("1 MiB budget: streamed stack", 1 << 20, true, 64, true),
            ("1 MiB budget, ops one by one", 1 << 20, false, 64, true),
        ];
        for (label, budget, stack, flash_attention, graphs) in variants {
            // The paths built without a GPU (off by default) are what this check runs.
            let untried = cuda::Untried { split_attention: true, moe: true, delta_net: true };
            let engine = Arc::new(CudaEngine::new(CudaOptions { stack, flash_attention, graphs, untried, ..Default::default() }));
            let cuda: Arc<dyn MatrixEngine> = engine.clone();
            let policy = PlacementPolicy::new(Backend::Named("cuda".into()), 64, None, (1.0, 1.0));
            let d = Dispatcher::new(vec![cuda], policy, CacheBudget { memory_bytes: budget, ..Default::default() }, false).expect("dispatcher");
            let r = Runner::with_dispatcher(model(), 4, d).expect("runner");
            let got = session(&r);
            let stats = r.dispatcher.stats.snapshot();
            let s = stats.get("cuda").cloned().unwrap_or_default();
            let err = rel_err(&got, &exact);
            let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|p| p.0);
            let agree = cpu.chunks(512).zip(got.chunks(512)).filter(|(a, b)| argmax(a) == argmax(b)).count();
            // Weights resident (the budget holds them): every call is a stack on the card,
            // decode steps included (prefix, batch, continued prefill, 3 decode steps: 6
            // calls of two blocks); else only the batch and the continued prefill are
            // (streamed), and decode stays on the CPU. Op by op, the feed-forward blocks
            // run whole on the card, and a budget that cannot hold the weights evicts.
            let resident = block_bytes <= budget as u64;
            let placed_ok = match (stack, resident) {
                (true, true) => s.blocks == 12 && s.evictions == 0,
                (false, true) if moe => s.blocks == 0 && s.evictions == 0,
                (false, true) => s.blocks == 0 && s.fused_blocks == 4 && s.evictions == 0,
                (true, false) if moe => s.blocks == 0,
                (true, false) => s.blocks == 4 && s.evictions == 0,
                (false, false) => s.blocks == 0 && s.evictions > 0,
            };
            // Decode steps as graphs: the first step of a session captures, the next two
            // replay (same launches), and give exactly the logits of plain launches.
            let (captures, replays, off) = engine.graph_stats();
            let graphed = stack && resident && flash_attention > 0 && graphs && !host_between;
            let graphs_ok = if graphed { off.is_none() && captures >= 1 && replays >= 2 } else { replays == 0 };
            if label == "whole stack, no graphs" {
                let same = first.as_ref().is_some_and(|f| f == &got);
                println!("model tiny {arch} {}: decode steps replayed as graphs equal plain launches bit for bit: {}", ty.name(), if same { "ok" } else { "FAIL" });
                failures += usize::from(!same);
            }
            println!("  graphs: {captures} captured, {replays} replayed{}", off.map_or(String::new(), |o| format!(", off: {o}")));
            let ok = err < TOL && s.failures == 0 && placed_ok && graphs_ok;
            failures += usize::from(!ok);
            // The stack's attention (cuBLAS) against the op-by-op kernels', through the same card.
            let vs_stack = first.get_or_insert_with(|| got.clone());
            println!(
                "model tiny {arch} {} ({label}): vs the whole stack {:.2e}; logits rel err vs exact {err:.2e}, argmax agrees with CPU {agree}/{}, cuda blocks {} matmuls {} (fused {}) evictions {} failures {}  {}",
                ty.name(),
                rel_err(&got, vs_stack),
                got.len() / 512,
                s.blocks,
                s.matmuls,
                s.fused_blocks,
                s.evictions,
                s.failures,
                if ok { "ok" } else { "FAIL" }
            );
        }
    }
    let _ = e;
    failures
}
