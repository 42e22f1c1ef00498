//! Matmul throughput on Llama-3-8B shapes, Q4_K and Q8_0 weights, N = 64…4096:
//! the engine end to end (f32 activations in host memory → f32 outputs in host memory)
//! against a plain cuBLAS f16 GEMM of the same shape with everything already on the
//! card, measured in the same run; also the PCIe floor and the CPU.

use engine::matrix::FusedFeedForward;
use crate::common::*;
use cuda::{CudaEngine, CudaOptions};
use engine::matrix::MatrixEngine;
use quant::GgmlType;
use std::collections::HashMap;
use std::time::Instant;

const SHAPES: [(&str, usize, usize); 4] =
    [("q/o 4096x4096", 4096, 4096), ("k/v 1024x4096", 1024, 4096), ("gate/up 14336x4096", 14336, 4096), ("down 4096x14336", 4096, 14336)];

fn time_matmul(e: &CudaEngine, ws: &[&engine::weights::Weight], x: &[f32], n: usize, reps: usize) -> f64 {
    let keys: Vec<_> = ws.iter().map(|w| key(w)).collect();
    let key_refs: Vec<_> = keys.iter().collect();
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; n * w.rows]).collect();
    let mut times = Vec::new();
    for r in 0..reps + 2 {
        if r == 2 {
            e.take_phase_times();
        }
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        let t = Instant::now();
        e.matmul(&key_refs, ws, 0, x, n, &mut refs).unwrap_or_else(|f| panic!("matmul: {f}"));
        if r >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    median(times)
}

/// Mean host (convert + enqueue, wait + copy) and card milliseconds per call since the last take.
fn phases(e: &CudaEngine) -> (f64, f64, f64) {
    let p = e.take_phase_times();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e3 / p.calls.max(1) as f64;
    (per(p.convert_enqueue), per(p.wait_copy), per(p.device))
}

/// The host side of the pipeline, alone: memory bandwidth, conversion, thread-pool wake-up.
fn host() {
    use rayon::prelude::*;
    let len = 16 << 20;
    let src = random(len, next_seed());
    let mut dst = vec![0f32; len];
    let mut half = vec![0u8; len * 2];
    let best = |f: &mut dyn FnMut()| (0..5).map(|_| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    }).fold(f64::MAX, f64::min);
    let one = best(&mut || dst.copy_from_slice(&src));
    let par = best(&mut || dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s)));
    let conv = best(&mut || half.par_chunks_mut(1 << 17).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| quant::f32_to_f16_slice(s, d)));
    let mut wake = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let t = Instant::now();
        (0..rayon::current_num_threads()).into_par_iter().for_each(|_| std::hint::black_box(()));
        wake.push(t.elapsed().as_secs_f64());
    }
    let mb = (len * 4) as f64;
    println!(
        "host: copy 64 MB {:.1} GB/s on one thread, {:.1} GB/s on {} (read+write counted); f32→f16 of 16M values {:.2} ms; waking the pool {:.0} µs (median)",
        2.0 * mb / one / 1e9,
        2.0 * mb / par / 1e9,
        rayon::current_num_threads(),
        conv * 1e3,
        median(wake) * 1e6
    );
}

/// Chunking variants on two shapes, to choose the defaults.
fn tuning(reps: usize) {
    let variants = [
        ("1 chunk", CudaOptions { chunks: 1, max_chunk: 1 << 20, ..Default::default() }),
        ("2 chunks", CudaOptions { chunks: 2, min_chunk: 64, ..Default::default() }),
        ("4 chunks >=64", CudaOptions { chunks: 4, min_chunk: 64, ..Default::default() }),
        ("4 chunks >=128", CudaOptions { chunks: 4, min_chunk: 128, ..Default::default() }),
        ("8 chunks >=128", CudaOptions { chunks: 8, min_chunk: 128, max_chunk: 4096, ..Default::default() }),
        ("4 chunks f16 out", CudaOptions { chunks: 4, min_chunk: 64, out_half: true, ..Default::default() }),
        ("1 chunk f16 out", CudaOptions { chunks: 1, max_chunk: 1 << 20, out_half: true, ..Default::default() }),
        ("card+bus only f32 out", CudaOptions { bench_device_only: true, ..Default::default() }),
        ("card+bus only f16 out", CudaOptions { bench_device_only: true, out_half: true, ..Default::default() }),
    ];
    let engines: Vec<_> = variants.iter().map(|(l, o)| (*l, CudaEngine::new(o.clone()))).collect();
    println!("
tuning (Q4_K): ms per call, and host convert+enqueue / wait+copy / card span");
    for (label, m, k) in [SHAPES[0], SHAPES[2]] {
        let w = weight(label, GgmlType::Q4_K, m, k, next_seed());
        engines.iter().for_each(|(_, e)| {
            prepare(e, &w);
        });
        for n in [256, 1024, 4096] {
            let x = random(n * k, next_seed());
            let row: Vec<String> = engines
                .iter()
                .map(|(l, e)| {
                    let t = time_matmul(e, &[&w], &x, n, reps);
                    let (a, b, c) = phases(e);
                    format!("{l}: {:.3} ({a:.3}/{b:.3}/{c:.3})", t * 1e3)
                })
                .collect();
            println!("{label:<19} N={n:>5}  {}", row.join("  "));
        }
        engines.iter().for_each(|(_, e)| e.evict(&key(&w), 0));
    }
}

fn reps_for(quick: bool) -> usize {
    if quick {
        5
    } else {
        10
    }
}

/// Prints the benchmark tables; the last one is the summary at N = 256.
pub fn run(e: &CudaEngine, quick: bool) {
    let (h2d, d2h) = e.bench_bus(256 << 20).expect("bus benchmark");
    println!("\nbus (pinned, 256 MiB): host→device {:.1} GB/s, device→host {:.1} GB/s", h2d / 1e9, d2h / 1e9);
    host();
    tuning(reps_for(quick));
    let half = CudaEngine::new(CudaOptions { out_half: true, ..Default::default() });
    let ns: &[usize] = if quick { &[64, 256, 4096] } else { &[64, 128, 256, 512, 1024, 2048, 4096] };
    let reps = reps_for(quick);
    let mut cublas: HashMap<(usize, usize, usize), f64> = HashMap::new();
    let mut summary = Vec::new();
    println!(
        "\n{:<5} {:<19} {:>5} | {:>8} {:>7} | {:>8} {:>7} {:>5} | {:>20} | {:>8} {:>5} | {:>8} {:>8} | {:>8}",
        "type", "shape", "N", "cuBLAS", "TFLOPS", "engine", "TFLOPS", "%", "host1/host2/card", "f16 out", "%", "bus f32", "bus f16", "CPU ms"
    );
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0] {
        for (label, m, k) in SHAPES {
            let w = weight(label, ty, m, k, next_seed());
            let tp = prepare(e, &w);
            prepare(&half, &w);
            println!("{:<5} {label:<19} prepared in {:.1} ms ({:.1} MB of blocks)", ty.name(), tp * 1e3, w.data().len() as f64 / 1e6);
            for &n in ns {
                let x = random(n * k, next_seed());
                let base = *cublas.entry((m, k, n)).or_insert_with(|| e.bench_cublas(m, k, n, 20).expect("cuBLAS"));
                let t = time_matmul(e, &[&w], &x, n, reps);
                let (p1, p2, pd) = phases(e);
                let th = time_matmul(&half, &[&w], &x, n, reps);
                // Upload and download overlap (full duplex): the larger is the floor.
                let bus = ((n * k * 2) as f64 / h2d).max((n * m * 4) as f64 / d2h);
                let bus16 = ((n * k * 2) as f64 / h2d).max((n * m * 2) as f64 / d2h);
                let cpu = if n <= 1024 && !quick {
                    let mut out = vec![0f32; n * m];
                    let t0 = Instant::now();
                    engine::cpu::matmul::matmul(&w, &x, &mut out);
                    format!("{:8.2}", t0.elapsed().as_secs_f64() * 1e3)
                } else {
                    format!("{:>8}", "-")
                };
                let flops = 2.0 * (m * k * n) as f64;
                println!(
                    "{:<5} {label:<19} {n:>5} | {:>8.3} {:>7.1} | {:>8.3} {:>7.1} {:>4.0}% | {:>20} | {:>8.3} {:>4.0}% | {:>8.3} {:>8.3} | {cpu}",
                    ty.name(),
                    base * 1e3,
                    flops / base / 1e12,
                    t * 1e3,
                    flops / t / 1e12,
                    100.0 * base / t,
                    format!("{p1:.3}/{p2:.3}/{pd:.3}"),
                    th * 1e3,
                    100.0 * base / th,
                    bus * 1e3,
                    bus16 * 1e3,
                );
                if n == 256 {
                    summary.push((ty, label, base, t, th, bus, bus16));
                }
            }
            e.evict(&key(&w), 0);
            half.evict(&key(&w), 0);
        }
    }
    groups(e, &mut cublas, reps);
    feed_forward(e, &mut cublas, reps);
    println!("\nsummary at N = 256 (engine time includes f32→f16, upload, download; target ≥ 70% of cuBLAS)");
    println!(
        "{:<5} {:<19} | {:>9} {:>9} {:>6} | {:>9} {:>6} | {:>14} {:>14}",
        "type", "shape", "cuBLAS ms", "engine ms", "%", "f16out ms", "%", "bus-bound f32", "bus-bound f16"
    );
    for (ty, label, base, t, th, bus, bus16) in summary {
        println!(
            "{:<5} {label:<19} | {:>9.3} {:>9.3} {:>5.0}% | {:>9.3} {:>5.0}% | {:>13.0}% {:>13.0}%",
            ty.name(),
            base * 1e3,
            t * 1e3,
            100.0 * base / t,
            th * 1e3,
            100.0 * base / th,
            100.0 * base / bus.max(base),
            100.0 * base / bus16.max(base)
        );
    }
}

/// The groups the model issues: Q/K/V sharing one input, gate/up sharing one input.
fn groups(e: &CudaEngine, cublas: &mut HashMap<(usize, usize, usize), f64>, reps: usize) {
    println!("\ngroups (Q4_K), one input upload per group");
    for (label, ms) in [("q+k+v", vec![4096, 1024, 1024]), ("gate+up", vec![14336, 14336])] {
        let k = 4096;
        let ws: Vec<_> = ms.iter().enumerate().map(|(i, &m)| weight(&format!("{label}.{i}"), GgmlType::Q4_K, m, k, next_seed())).collect();
        ws.iter().for_each(|w| {
            prepare(e, w);
        });
        let refs: Vec<_> = ws.iter().collect();
        for n in [256, 512, 4096] {
            let x = random(n * k, next_seed());
            let base: f64 = ms.iter().map(|&m| *cublas.entry((m, k, n)).or_insert_with(|| e.bench_cublas(m, k, n, 20).expect("cuBLAS"))).sum();
            let t = time_matmul(e, &refs, &x, n, reps);
            let flops: f64 = ms.iter().map(|&m| 2.0 * (m * k * n) as f64).sum();
            println!(
                "{label:<8} N={n:>5}: cuBLAS {:.3} ms ({:.0} TFLOPS), engine {:.3} ms ({:.0} TFLOPS), {:.0}%",
                base * 1e3,
                flops / base / 1e12,
                t * 1e3,
                flops / t / 1e12,
                100.0 * base / t
            );
        }
        ws.iter().for_each(|w| e.evict(&key(w), 0));
    }
}

/// The whole Llama-3-8B feed-forward block (gate, up, SiLU, down) in one engine call: the
/// input crosses once, the output once, the 14336-wide intermediate never. The ceiling is
/// cuBLAS's three GEMMs on the card (the activation kernel is not counted in it).
fn feed_forward(e: &CudaEngine, cublas: &mut HashMap<(usize, usize, usize), f64>, reps: usize) {
    use engine::arch::Activation;
    use engine::matrix::FeedForward;
    println!("\nfeed-forward block (Q4_K, 4096 -> 14336 -> 4096, SiLU) in one call, f32 in and out of host memory");
    let (k, ff) = (4096, 14336);
    let gate = weight("bench.gate", GgmlType::Q4_K, ff, k, next_seed());
    let up = weight("bench.up", GgmlType::Q4_K, ff, k, next_seed());
    let down = weight("bench.down", GgmlType::Q4_K, k, ff, next_seed());
    for w in [&gate, &up, &down] {
        prepare(e, w);
    }
    let ffn = FeedForward { gate: &gate, up: &up, down: &down, activation: Activation::Silu, biases: None };
    for n in [64, 128, 256, 512, 1024, 2048, 4096] {
        let x = random(n * k, next_seed());
        let mut out = vec![0f32; n * k];
        let mut times = Vec::new();
        for r in 0..reps + 2 {
            let t = Instant::now();
            e.feed_forward(&ffn, 0, &x, n, &mut out).unwrap_or_else(|f| panic!("feed-forward: {f}"));
            if r >= 2 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let t = median(times);
        let mut gemm = |m, k| *cublas.entry((m, k, n)).or_insert_with(|| e.bench_cublas(m, k, n, 20).expect("cuBLAS"));
        let base = 2.0 * gemm(ff, k) + gemm(k, ff);
        let flops = 3.0 * 2.0 * (ff * k * n) as f64;
        println!(
            "ffn      N={n:>5}: cuBLAS {:.3} ms ({:.0} TFLOPS), engine {:.3} ms ({:.0} TFLOPS), {:.0}%",
            base * 1e3,
            flops / base / 1e12,
            t * 1e3,
            flops / t / 1e12,
            100.0 * base / t
        );
    }
    for w in [&gate, &up, &down] {
        e.evict(&key(w), 0);
    }
}

/// Every decode matrix-vector kernel on the 8B shapes (and the output head), one token and
/// four: microseconds per call and the weight bytes it streams per second. False when a
/// kernel could not run.
pub fn matvec_kernels(e: &CudaEngine) -> bool {
    let kernels = crate::kernels::MV_KERNELS;
    let shapes = SHAPES.iter().copied().chain([("output 128256x4096", 128256, 4096)]);
    let mut ok = true;
    println!("decode matrix-vector kernels: us per call (GB/s of weights), back to back, weights beyond L2");
    for (ty, names) in kernels {
        for (label, rows, cols) in shapes.clone() {
            for n in [1, 4] {
                let bytes = (rows * cols / ty.block_size() * ty.block_bytes()) as f64;
                let cells: Vec<String> = names
                    .iter()
                    .map(|k| match e.bench_matvec(ty, rows, cols, n, k, 200) {
                        Ok(us) => format!("{k} {us:.1} ({:.0})", bytes / us / 1e3),
                        Err(f) => {
                            ok = false;
                            format!("{k} error: {}", f.what)
                        }
                    })
                    .collect();
                println!("{} {label} n={n}: {}", ty.name(), cells.join(", "));
            }
        }
    }
    ok
}
