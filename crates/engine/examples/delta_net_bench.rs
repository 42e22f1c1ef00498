//! The Gated DeltaNet recurrence alone, token by token vs chunked, on a Qwen3.5-2B/9B head
//! shape (d_k = d_v = 128), one head per thread as the layer runs them.
//!
//!   cargo run --release -p engine --example delta_net_bench [TOKENS] [HEADS]

use engine::cpu::delta_net::{recur_chunked, recur_sequential, HeadInputs};
use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let (n, heads) = (args.next().unwrap_or(512), args.next().unwrap_or(16));
    let (dk, dv) = (128, 128);
    let mut seed = 1u64;
    let mut rnd = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let unit = |v: Vec<f32>| {
        let l = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / l).collect::<Vec<f32>>()
    };
    let q: Vec<f32> = (0..n).flat_map(|_| unit((0..dk).map(|_| rnd()).collect())).collect();
    let k: Vec<f32> = (0..n).flat_map(|_| unit((0..dk).map(|_| rnd()).collect())).collect();
    let v: Vec<f32> = (0..n * dv).map(|_| rnd()).collect();
    let (q, k, v) = (&q[..], &k[..], &v[..]);
    for chunked in [false, true] {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut states = vec![0f32; heads * dv * dk];
            let mut outs = vec![0f32; heads * n * dv];
            let t0 = Instant::now();
            states.par_chunks_mut(dv * dk).zip(outs.par_chunks_mut(n * dv)).for_each(|(s, o)| {
                let (fq, fk, fv) = (move |t: usize| &q[t * dk..(t + 1) * dk], move |t: usize| &k[t * dk..(t + 1) * dk], move |t: usize| &v[t * dv..(t + 1) * dv]);
                let head = HeadInputs { n, dk, dv, q: &fq, k: &fk, v: &fv, beta: &|_| 0.5, log_decay: &|_| -0.05 };
                if chunked { recur_chunked(&head, s, o) } else { recur_sequential(&head, s, o) }
            });
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let name = if chunked { "chunked" } else { "token by token" };
        println!("{name:>15}: {n} tokens x {heads} heads in {:.2} ms ({:.1} us/token)", best * 1e3, best * 1e6 / n as f64);
    }
}
