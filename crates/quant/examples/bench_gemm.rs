//! Tiled (prefill) kernel throughput per type against the dot kernels, single thread.
//! `cargo run --release -p quant --example bench_gemm [M K N]` (default 576x1536, 256 tokens);
//! one row per type and instruction set this CPU runs (AMX, AVX-512 VNNI, AVX2); `TYPES=Q4_0,Q4_K`
//! picks types.

use std::time::Instant;

use quant::{dot_kernel, gemm_kernel_isa, quantize_activations, quantize_row, ActPanels, GemmIsa, GgmlType};

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    use GgmlType::*;
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (m, k, n) = match args[..] {
        [m, k, n] => (m, k, n),
        _ => (576, 1536, 256),
    };
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
    let act: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
    println!("M={m} K={k} N={n}, detected {}", quant::simd_level());
    let only: Option<Vec<String>> = std::env::var("TYPES").ok().map(|v| v.split(',').map(|t| t.to_uppercase()).collect());
    for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4] {
        if only.as_ref().is_some_and(|o| !o.iter().any(|t| t == ty.name())) {
            continue;
        }
        let isas: Vec<GemmIsa> =
            [GemmIsa::Amx, GemmIsa::Avx512Vnni, GemmIsa::Avx2].into_iter().filter(|&i| gemm_kernel_isa(ty, i).is_some()).collect();
        if isas.is_empty() {
            continue;
        }
        let rb = ty.bytes_for(k as u64).unwrap() as usize;
        let mut w = vec![0u8; rb * m];
        quantize_row(ty, &x, &mut w).unwrap();
        let at = ty.vec_dot_type();
        let arb = at.bytes_for(k as u64).unwrap() as usize;
        let mut a = vec![0u8; arb * n];
        quantize_activations(at, &act, &mut a).unwrap();
        let mut out = vec![0f32; m * n];
        let tp = best_of(5, || {
            std::hint::black_box(ActPanels::new(at, &a, k).unwrap());
        });
        let panels = ActPanels::new(at, &a, k).unwrap();
        let dot = dot_kernel(ty).unwrap();
        let td = best_of(3, || {
            for r in 0..m {
                for t in 0..n {
                    out[t * m + r] = dot(k, &w[r * rb..(r + 1) * rb], &a[t * arb..(t + 1) * arb]);
                }
            }
        });
        let macs = (m * k * n) as f64;
        for isa in isas {
            let kernel = gemm_kernel_isa(ty, isa).unwrap();
            // SAFETY: out holds n * m floats, indexed t * m + r.
            let tg = best_of(7, || unsafe { kernel(&w, &panels, out.as_mut_ptr(), m) });
            println!(
                "{:6} {:12} {:7.1} GMAC/s ({:6.2} ms)  dots {:6.1} GMAC/s  x{:.1}  panels {:.3} ms",
                ty.name(),
                isa.name(),
                macs / tg / 1e9,
                tg * 1e3,
                macs / td / 1e9,
                td / tg,
                tp * 1e3
            );
        }
    }
}
