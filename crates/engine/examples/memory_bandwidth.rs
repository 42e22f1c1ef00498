//! Measures the read bandwidth decode is bound by (a benchmark, never a test):
//!
//!     cargo run --release -p engine --example memory_bandwidth -- [threads] [MiB]
//!
//! Each thread sums its own slice of a buffer much larger than the caches; best of 5 passes
//! (`engine::cpu::bandwidth`, which `tandem bench` uses too).

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let threads = args.first().copied().unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mib = args.get(1).copied().unwrap_or(2048);
    let best = engine::cpu::bandwidth::read_bandwidth(threads, mib, 5);
    println!("read bandwidth, {threads} threads, {mib} MiB: {:.1} GB/s", best / 1e9);
}
