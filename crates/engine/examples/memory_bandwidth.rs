//! Measures the read bandwidth decode is bound by (a benchmark, never a test):
//!
//!     cargo run --release -p engine --example memory_bandwidth -- [threads] [MiB]
//!
//! Each thread sums its own slice of a buffer much larger than the caches; best of 5 passes.
//! Decode of a model that does not fit the caches reads every weight once per token, so
//! tokens/s × bytes per token cannot exceed this.

use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let threads = args.first().copied().unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mib = args.get(1).copied().unwrap_or(2048);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    let buf: Vec<u64> = (0..mib * (1 << 17)).map(|i| i as u64).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let sum: u64 = pool.install(|| {
            buf.par_chunks(buf.len().div_ceil(threads)).map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v))).reduce(|| 0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.max((buf.len() * 8) as f64 / t.elapsed().as_secs_f64());
    }
    println!("read bandwidth, {threads} threads, {mib} MiB: {:.1} GB/s", best / 1e9);
}
