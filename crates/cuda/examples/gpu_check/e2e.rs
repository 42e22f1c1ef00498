//! End to end: a Llama-3-8B-shaped random model built in memory, prompt processing
//! (512 and 4096 tokens) on the CPU only and with matmuls offloaded to the card, in the
//! same run; decode steps on both (they stay on the CPU: N = 1 is below min-batch).
//! Offloaded prefills: a warm-up at each size, then the median of three; the CPU's: one.

use crate::common::rel_err;
use cuda::{CudaEngine, CudaOptions};
use engine::matrix::cache::CacheBudget;
use engine::matrix::dispatch::CPU_HINT;
use engine::matrix::policy::{Backend, PlacementPolicy};
use engine::matrix::{Dispatcher, MatrixEngine};
use engine::random_model::RandomModelSpec;
use engine::{Model, Runner};
use quant::GgmlType;
use std::sync::Arc;
use std::time::Instant;

/// Decode steps timed after each prefill (they stay on the CPU either way).
const DECODE_STEPS: usize = 16;

/// Prefill `n` tokens, then `decode` single-token steps; returns (prefill s, decode s per token, last logits).
fn run(r: &Runner, n: usize, decode: usize) -> (f64, f64, Vec<f32>) {
    let vocab = r.model.config.n_vocab as u32;
    let tokens: Vec<u32> = (0..n as u32).map(|i| 3 + (i * 7919 + 13) % (vocab - 3)).collect();
    let mut cache = r.new_cache(n + decode);
    let t = Instant::now();
    let logits = r.forward(&mut cache, &tokens, n - 1..n).expect("prefill");
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..decode {
        r.forward(&mut cache, &[3 + i as u32], 0..1).expect("decode");
    }
    (prefill, t.elapsed().as_secs_f64() / decode.max(1) as f64, logits)
}

/// Prints one table; `long` adds the 4096-token prompt.
pub fn run_all(ty: GgmlType, long: bool) {
    let threads = std::thread::available_parallelism().map_or(16, |n| n.get());
    let t = Instant::now();
    let spec = RandomModelSpec::preset("llama3-8b", ty).expect("preset");
    let file = Arc::new(gguf::GgufFile::from_bytes(spec.build().expect("build").to_bytes()).expect("parse"));
    println!("\nend to end: llama3-8b {} random weights, {:.1} GB, built in {:.1} s, {threads} CPU threads", ty.name(), file.bytes().len() as f64 / 1e9, t.elapsed().as_secs_f64());
    let model = || Model::from_file(file.clone(), &mut |_, _| {}).expect("model");
    let cpu = Runner::new(model(), threads).expect("runner");
    // The same engine three ways: op by op (feed-forward blocks and attention on the card,
    // the rest on the CPU, activations crossing per op); whole decoder stacks on the card
    // with the weights resident; whole stacks with the weights streamed per prefill.
    // `budget`: bytes of weights the card may keep (None: what it has); a budget under the
    // model's size streams the weights on every prefill.
    let offload = |stack: bool, budget: Option<usize>| {
        let engine = Arc::new(CudaEngine::new(CudaOptions { stack, profile_stack: stack, ..Default::default() }));
        let budget = budget.unwrap_or(engine.memory_budget().expect("available"));
        let cuda: Arc<dyn MatrixEngine> = engine.clone();
        let policy = PlacementPolicy::new(Backend::Named("cuda".into()), 64, None, CPU_HINT);
        let d = Dispatcher::new(vec![cuda], policy, CacheBudget { memory_bytes: budget, ..Default::default() }, false).expect("dispatcher");
        let gpu = Runner::with_dispatcher(model(), threads, d).expect("runner");
        let t = Instant::now();
        run(&gpu, 64, 0); // prepares every offloaded weight once
        println!(
            "first offloaded pass (stack {stack}, budget {:.1} GB; prepares {:.1} GB on the card): {:.1} s",
            budget as f64 / 1e9,
            gpu.dispatcher.cache().used("cuda") as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
        gpu.dispatcher.stats.reset();
        (gpu, engine)
    };
    let (ops, _) = offload(false, None);
    let (stacked, stack_engine) = offload(true, None);
    let (streamed, _) = offload(true, Some(2 << 30));
    let runners = [("op by op", ops), ("stack", stacked), ("streamed", streamed)];
    println!("{:>6} {:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>8} | {:>14} {:>14} | {:>12}", "prompt", "offload", "CPU s", "CPU t/s", "offload s", "t/s", "speedup", "CPU decode t/s", "offl decode t/s", "logits diff");
    let sizes: &[usize] = if long { &[512, 4096] } else { &[512] };
    // (prompt, CPU t/s, t/s per runner, CPU decode t/s, decode t/s with the resident stack)
    let mut summary: Vec<(usize, f64, Vec<f64>, f64, f64)> = Vec::new();
    for &n in sizes {
        let (tc, dc, lc) = run(&cpu, n, DECODE_STEPS);
        let mut row = (n, n as f64 / tc, Vec::new(), 1.0 / dc, 0.0);
        for (label, gpu) in &runners {
            // A warm-up at this size (buffers grow once, as llama-bench warms up), then the
            // median of three prefills.
            run(gpu, n, 0);
            let mut tries: Vec<(f64, f64, Vec<f32>)> = (0..3).map(|_| run(gpu, n, DECODE_STEPS)).collect();
            tries.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (tg, dg, lg) = tries.swap_remove(1);
            println!(
                "{n:>6} {label:>10} | {tc:>10.2} {:>10.0} | {tg:>10.3} {:>10.0} | {:>7.1}x | {:>14.1} {:>14.1} | {:>12.2e}",
                n as f64 / tc,
                n as f64 / tg,
                tc / tg,
                1.0 / dc,
                1.0 / dg,
                rel_err(&lg, &lc)
            );
            row.2.push(n as f64 / tg);
            if *label == "stack" {
                row.4 = 1.0 / dg;
            }
        }
        summary.push(row);
    }
    // The whole stack against its matmuls alone (the same GEMMs, back to back, on cuBLAS):
    // the share of the card's matmul ceiling the whole prefill reaches.
    let c = runners[1].1.model.config.clone();
    let probe = CudaEngine::new(CudaOptions::default());
    let (qd, kvd, od) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head * c.head_dim_v);
    let shapes = [(qd, c.n_embd), (kvd, c.n_embd), (kvd, c.n_embd), (c.n_embd, od), (c.n_ff, c.n_embd), (c.n_ff, c.n_embd), (c.n_embd, c.n_ff)];
    let ns: &[usize] = if long { &[256, 512, 4096] } else { &[256, 512] };
    for &n in ns {
        let alone: Vec<f64> = shapes.iter().map(|&(m, k)| probe.bench_cublas(m, k, n, 10).expect("cuBLAS") * c.n_layer as f64).collect();
        let ceiling: f64 = alone.iter().sum();
        let times: Vec<f64> = (0..5).map(|_| run(&runners[1].1, n, 0).0).collect();
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let all: Vec<String> = times.iter().map(|t| format!("{:.1}", t * 1e3)).collect();
        println!("stack N={n}: five prefills {} ms", all.join(" "));
        println!(
            "stack N={n}: prefill {:.1} ms ({:.0} t/s); its {} matmuls alone on cuBLAS {:.1} ms: {:.0} % of the ceiling",
            best * 1e3,
            n as f64 / best,
            7 * c.n_layer,
            ceiling * 1e3,
            ceiling / best * 100.0
        );
        // The matmul phases of the last prefill on the card against the same GEMMs alone.
        let phases = stack_engine.stack_phases();
        let phase = |name: &str| phases.iter().find(|p| p.0 == name).map_or(f64::NAN, |p| p.1);
        let on_card: f64 = phases.iter().map(|p| p.1).sum();
        let parts = [("Q/K/V", phase("Q/K/V GEMMs"), alone[..3].iter().sum::<f64>()), ("output", phase("output GEMM + norm"), alone[3]), ("feed-forward", phase("feed-forward"), alone[4..].iter().sum::<f64>())];
        let (mm, mm_alone): (f64, f64) = parts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.1, a.1 + p.2 * 1e3));
        let text: Vec<String> = parts.iter().map(|(k, t, a)| format!("{k} {t:.2} ms vs {:.2} alone ({:.0} %)", a * 1e3, a * 1e3 / t * 100.0)).collect();
        println!(
            "stack N={n}: on the card {on_card:.1} ms; its matmul phases {mm:.1} ms vs {mm_alone:.1} ms alone ({:.0} % of the ceiling): {}",
            mm_alone / mm * 100.0,
            text.join(", ")
        );
        let rest: Vec<String> = phases.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        println!("stack N={n}: card time per phase (ms): {}", rest.join(", "));
    }
    for (label, gpu) in &runners {
        println!("{label}:");
        print!("{}", gpu.dispatcher.stats.summary());
    }
    // Last, the short table: prompt processing against the CPU, and decode (on the CPU either way).
    println!("\nsummary ({} weights, {threads} CPU threads): prompt tokens/s, and how many times the CPU's", ty.name());
    println!("| prompt | CPU | op by op | stack (resident) | stack (streamed) | decode CPU | decode with engine |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, cpu_ts, ts, dc, dg) in &summary {
        let cells: Vec<String> = ts.iter().map(|t| format!("{t:.0} ({:.1}x)", t / cpu_ts)).collect();
        println!("| pp{n} | {cpu_ts:.0} | {} | {dc:.1} | {dg:.1} |", cells.join(" | "));
    }
}
