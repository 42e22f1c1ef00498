//! The memory read bandwidth decode is bound by: a model that does not fit the caches reads
//! every weight once per token, so tokens/s × bytes per token cannot exceed it.

use rayon::prelude::*;
use std::time::Instant;

/// Bytes/s `threads` threads read, each summing its own slice of `mib` MiB (far past the
/// caches); the best of `passes`.
pub fn read_bandwidth(threads: usize, mib: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
    let buf: Vec<u64> = (0..mib * (1 << 17)).map(|i| i as u64).collect();
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let sum: u64 = pool.install(|| {
            buf.par_chunks(buf.len().div_ceil(threads)).map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v))).reduce(|| 0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.max((buf.len() * 8) as f64 / t.elapsed().as_secs_f64());
    }
    best
}
