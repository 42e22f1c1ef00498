//! Every decode matrix-vector kernel alone (f16 tokens, 8-bit tokens, split and wide forms)
//! on quantized random weights, against the host's dequantized weights times the same
//! tokens: whichever kernel the decode steps pick, it has been run here.

use crate::common::rel_err;
use cuda::CudaEngine;
use quant::GgmlType;

/// The decode kernels of each format with a kernel of its own.
pub const MV_KERNELS: [(GgmlType, &[&str]); 3] = [
    (GgmlType::Q4_K, &["mv_q4_k", "mv_q4_k_q8", "mv_q4_k_q8_s2", "mv_q4_k_q8_s4", "mv_q4_k_q8w", "mv_q4_k_q8w_s2", "mv_q4_k_q8w_s4"]),
    (GgmlType::Q6_K, &["mv_q6_k", "mv_q6_k_q8"]),
    (GgmlType::Q8_0, &["mv_q8_0", "mv_q8_0_q8", "mv_q8_0_q8_s2", "mv_q8_0_q8_s4"]),
];

/// Uniform values in [-1, 1) from a seeded LCG.
fn values(n: usize, mut seed: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Failures among every kernel × rows not a multiple of four × ragged and even block counts
/// × 1, 3 and 8 tokens. Tolerance: 1e-3 with f16 tokens, 1.5e-2 with 8-bit ones.
pub fn check(e: &CudaEngine) -> usize {
    let mut failures = 0;
    println!();
    for (ty, kernels) in MV_KERNELS {
        for (rows, cols) in [(67, 256 * 13), (130, 256 * 16), (9, 256 * 56)] {
            let vals = values(rows * cols, (rows * cols) as u64);
            let row_bytes = ty.bytes_for(cols as u64).expect("block multiple") as usize;
            let mut w = vec![0u8; rows * row_bytes];
            let mut deq = vec![0f32; rows * cols];
            for r in 0..rows {
                let blocks = &mut w[r * row_bytes..(r + 1) * row_bytes];
                quant::quantize_row(ty, &vals[r * cols..(r + 1) * cols], blocks).expect("quantize");
                quant::dequantize_row(ty, blocks, &mut deq[r * cols..(r + 1) * cols]).expect("dequantize");
            }
            for n in [1, 3, 8] {
                // Tokens as the card sees them (f16), the reference in f64.
                let x: Vec<f32> = values(n * cols, 7 + n as u64).iter().map(|&v| half::f16::from_f32(v * 2.0).to_f32()).collect();
                let want: Vec<f32> = (0..n)
                    .flat_map(|t| {
                        let (x, deq) = (&x, &deq);
                        (0..rows).map(move |r| (0..cols).map(|k| deq[r * cols + k] as f64 * x[t * cols + k] as f64).sum::<f64>() as f32)
                    })
                    .collect();
                for k in kernels {
                    let tol = if cuda::kernel_probe::takes_8bit_tokens(k) { 1.5e-2 } else { 1e-3 };
                    let (err, what) = match e.matvec_once(ty, rows, cols, k, &w, &x) {
                        Ok(y) => (rel_err(&y, &want), String::new()),
                        Err(f) => (f64::INFINITY, format!(" ({})", f.what)),
                    };
                    let ok = err < tol;
                    failures += usize::from(!ok);
                    if !ok || n == 1 {
                        println!("kernel {k} {rows}x{cols} n={n}: rel err {err:.2e}{what}  {}", if ok { "ok" } else { "FAIL" });
                    }
                }
            }
        }
    }
    failures
}
