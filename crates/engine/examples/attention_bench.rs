//! Times CPU attention alone on a model's shape (a benchmark, never a test):
//!
//!     cargo run --release -p engine --example attention_bench -- [heads kv_heads dim tokens threads context]
//!
//! Defaults: Llama-3-8B (32 heads, 8 KV heads, dim 128), a 512-token prefill, all cores;
//! `context` > `tokens` puts the new tokens at the end of a longer cache (a decode step: tokens 1).

use engine::cpu::attention::{attention, AttnShape};
use half::f16;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (n_head, n_head_kv, dim, n) = (arg(0, 32), arg(1, 8), arg(2, 128), arg(3, 512));
    let threads = arg(4, std::thread::available_parallelism().map_or(1, |n| n.get()));
    let ctx = arg(5, n).max(n);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    let s = AttnShape { n_head, n_head_kv, head_dim: dim, head_dim_v: dim, window: None };
    let mut seed = 1u64;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
    };
    let k: Vec<f16> = (0..ctx * n_head_kv * dim).map(|_| f16::from_f32(rnd())).collect();
    let v: Vec<f16> = (0..ctx * n_head_kv * dim).map(|_| f16::from_f32(rnd())).collect();
    let q: Vec<f32> = (0..n * n_head * dim).map(|_| rnd()).collect();
    let pos: Vec<usize> = (ctx - n..ctx).collect();
    let mut out = vec![0f32; n * n_head * dim];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        pool.install(|| attention(&s, &q, &pos, &k, &v, &mut out));
        best = best.min(t.elapsed().as_secs_f64());
    }
    let flops = 4.0 * n_head as f64 * dim as f64 * pos.iter().map(|p| (p + 1) as f64).sum::<f64>();
    println!("heads {n_head}/{n_head_kv} dim {dim} tokens {n} context {ctx} threads {threads}: {:.2} ms, {:.1} GFLOP/s", best * 1e3, flops / best / 1e9);
}
