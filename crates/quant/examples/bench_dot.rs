//! Rough dot-kernel throughput per type and SIMD level (single thread).
//! `cargo run --release -p quant --example bench_dot`; `ROWS` (default 32: in L2) and
//! `K` (row length, default 4096) set the shape, `TYPES=Q4_0,Q8_0` picks types.

use std::time::Instant;

use quant::{dot_kernel_at, quantize_row, GgmlType, SimdLevel};

fn main() {
    use GgmlType::*;
    let n: usize = std::env::var("K").ok().and_then(|v| v.parse().ok()).unwrap_or(4096);
    let only: Option<Vec<String>> = std::env::var("TYPES").ok().map(|v| v.split(',').map(|t| t.to_uppercase()).collect());
    // Few rows: the weights stay in L2, so this measures the kernels, not DRAM.
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let x: Vec<f32> = (0..n * rows).map(|_| rnd()).collect();
    let act: Vec<f32> = (0..n).map(|_| rnd()).collect();
    println!("detected: {}", quant::simd_level());
    for ty in [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
        MXFP4, NVFP4, Q1_0, Q2_0, TQ1_0, TQ2_0, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M,
    ] {
        if only.as_ref().is_some_and(|o| !o.iter().any(|t| t == ty.name())) {
            continue;
        }
        let row_bytes = ty.bytes_for(n as u64).unwrap() as usize;
        let mut w = vec![0u8; row_bytes * rows];
        quantize_row(ty, &x, &mut w).unwrap();
        let at = ty.vec_dot_type();
        let mut a = vec![0u8; at.bytes_for(n as u64).unwrap() as usize];
        quantize_row(at, &act, &mut a).unwrap();
        let mut line = format!("{:5}", ty.name());
        for level in SimdLevel::available() {
            let k = dot_kernel_at(level, ty).unwrap();
            let mut sink = 0f32;
            let reps = 10;
            // Best of several runs: the machine is shared and noisy.
            let mut dt = f64::MAX;
            for _ in 0..15 {
                let t = Instant::now();
                for _ in 0..reps {
                    for r in 0..rows {
                        sink += k(n, &w[r * row_bytes..(r + 1) * row_bytes], &a);
                    }
                }
                dt = dt.min(t.elapsed().as_secs_f64());
            }
            let gb = (row_bytes * rows * reps) as f64 / dt / 1e9;
            let ns_blk = dt * 1e9 / (reps * rows * n / 32) as f64;
            line += &format!(
                "  {:>10}: {:6.2} GB/s {:6.2} ns/32el",
                level.name(),
                gb,
                ns_blk
            );
            std::hint::black_box(sink);
        }
        println!("{line}");
    }
}
