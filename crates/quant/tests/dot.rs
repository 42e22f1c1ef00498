//! Dot kernels: every SIMD level against the scalar reference, and the scalar
//! reference against an f64 dot of the dequantized operands.

mod common;

use common::*;
use quant::{dot_kernel, dot_kernel_at, dot_kernel_scalar, rows_dot_kernel, GgmlType, SimdLevel};

/// Sum of |w_i * a_i| over the dequantized operands: the scale of rounding errors.
fn magnitude(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f64 {
    let wf = dequantized(ty, w, n);
    let af = dequantized(ty.vec_dot_type(), a, n);
    wf.iter()
        .zip(&af)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum::<f64>()
}

fn exact(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f64 {
    let wf = dequantized(ty, w, n);
    let af = dequantized(ty.vec_dot_type(), a, n);
    wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn lengths(ty: GgmlType) -> Vec<usize> {
    let bs = ty.block_size();
    if bs == 1 {
        // Float kernels: cover the vector body, the short loops and the tails.
        vec![1, 7, 8, 31, 32, 33, 100, 256, 1000]
    } else {
        vec![bs, 2 * bs, 7 * bs]
    }
}

/// Why not exact: the integer sum of each block is exact in every kernel, but SIMD
/// kernels add the per-block float terms in 8 (or 16) lanes with FMA instead of one
/// running f32 sum (float dots: f32 lanes instead of ggml's scalar f64 sum). The
/// re-association error is a few ulps of the summed magnitudes.
const SIMD_REL_TOL: f64 = 2e-6;

#[test]
fn simd_matches_scalar_every_level() {
    let mut rng = Rng::new(1);
    let levels = SimdLevel::available();
    eprintln!("levels: {levels:?}, detected {}", quant::simd_level());
    for ty in WEIGHT_TYPES {
        let scalar = dot_kernel_scalar(ty).unwrap();
        for n in lengths(ty) {
            for trial in 0..4 {
                // Half random bit patterns, half reference-quantized weights.
                let w = if trial % 2 == 0 || ty.block_size() == 1 {
                    random_weights(&mut rng, ty, n / ty.block_size())
                } else {
                    quantized(ty, &rng.normals(n, 0.5))
                };
                let a = random_activations(&mut rng, ty, n);
                let want = scalar(n, &w, &a) as f64;
                let tol = SIMD_REL_TOL * magnitude(ty, &w, &a, n) + 1e-30;
                for &level in &levels {
                    let got = dot_kernel_at(level, ty).unwrap()(n, &w, &a) as f64;
                    assert!(
                        (got - want).abs() <= tol,
                        "{} {level:?} n={n}: simd {got} scalar {want} (tol {tol})",
                        ty.name()
                    );
                }
            }
        }
    }
}

/// The row-batch kernels give, for every row, exactly the single-row kernel's result, on
/// random rows (raw bit patterns and quantized values) and odd row counts; bad lengths panic.
#[test]
fn rows_kernels_equal_the_dot_kernel_on_every_row() {
    let mut rng = Rng::new(77);
    let mut tested = 0;
    for &ty in GgmlType::ALL.iter() {
        let Some(rows) = rows_dot_kernel(ty) else { continue };
        tested += 1;
        let dot = dot_kernel(ty).unwrap();
        for n in lengths(ty) {
            for m in [1, 3, 8] {
                let nb = n / ty.block_size();
                let w: Vec<u8> = (0..m)
                    .flat_map(|r| if r % 2 == 0 { random_weights(&mut rng, ty, nb) } else { quantized(ty, &rng.normals(n, 0.5)) })
                    .collect();
                let a = random_activations(&mut rng, ty, n);
                let mut out = vec![f32::NAN; m];
                rows(n, &w, &a, &mut out);
                let rb = w.len() / m;
                for r in 0..m {
                    let want = dot(n, &w[r * rb..(r + 1) * rb], &a);
                    assert_eq!(out[r].to_bits(), want.to_bits(), "{} n={n} row {r}: {} vs {want}", ty.name(), out[r]);
                }
                let mut short = vec![0.0; m + 1];
                let bad = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rows(n, &w, &a, &mut short)));
                assert!(bad.is_err(), "{}: {} rows accepted for {m}", ty.name(), m + 1);
            }
        }
    }
    eprintln!("{tested} types have row-batch kernels at {}", quant::simd_level());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(tested >= 3, "no row-batch kernels on an AVX2 machine");
    }
}

#[test]
fn scalar_matches_dequantized_f64() {
    let mut rng = Rng::new(2);
    for ty in WEIGHT_TYPES {
        let scalar = dot_kernel_scalar(ty).unwrap();
        for n in lengths(ty) {
            let w = random_weights(&mut rng, ty, n / ty.block_size());
            let a = random_activations(&mut rng, ty, n);
            let got = scalar(n, &w, &a) as f64;
            let want = exact(ty, &w, &a, n);
            // Dequantized values are rounded to f32 per element and scales are
            // combined in a different order than in the kernels: a few ulps of the magnitude.
            let mut tol = 2e-6 * magnitude(ty, &w, &a, n) + 1e-30;
            if ty.vec_dot_type() == GgmlType::Q8_1 {
                // Q8_1 stores s = d*sum(q) as f16 (like ggml), and the kernel uses m*s:
                // add half an f16 ulp of every |m * s| term.
                let af = dequantized(GgmlType::Q8_1, &a, n);
                for (blk, ab) in w.chunks_exact(ty.block_bytes()).zip(af.chunks_exact(32)) {
                    let m = dequantized(GgmlType::F16, &blk[2..4], 1)[0] as f64;
                    tol += (m * ab.iter().map(|v| *v as f64).sum::<f64>()).abs() * 2f64.powi(-11);
                }
            }
            assert!(
                (got - want).abs() <= tol,
                "{} n={n}: {got} vs {want} (tol {tol})",
                ty.name()
            );
        }
    }
}

#[test]
fn unaligned_inputs_give_the_same_result() {
    let mut rng = Rng::new(3);
    for ty in WEIGHT_TYPES {
        let n = 2 * ty.block_size().max(32);
        let w = random_weights(&mut rng, ty, n / ty.block_size());
        let a = random_activations(&mut rng, ty, n);
        for level in SimdLevel::available() {
            let k = dot_kernel_at(level, ty).unwrap();
            let want = k(n, &w, &a);
            for shift in 1..4 {
                let mut wb = vec![0u8; shift];
                wb.extend_from_slice(&w);
                let mut ab = vec![0u8; shift + 1];
                ab.extend_from_slice(&a);
                assert_eq!(
                    k(n, &wb[shift..], &ab[shift + 1..]).to_bits(),
                    want.to_bits(),
                    "{}",
                    ty.name()
                );
            }
        }
    }
}

#[test]
fn kernel_lookup() {
    for ty in WEIGHT_TYPES {
        assert!(dot_kernel(ty).is_ok());
    }
    for ty in [GgmlType::Q8_1, GgmlType::Q8_K] {
        assert!(dot_kernel(ty).is_err());
        assert!(dot_kernel_scalar(ty).is_err());
    }
    assert!(["avx512vnni", "avx2", "neon", "scalar"].contains(&quant::simd_level()));
    assert_eq!(*SimdLevel::available().last().unwrap(), SimdLevel::Scalar);
}

#[test]
#[should_panic]
fn mismatched_lengths_panic() {
    let k = dot_kernel(GgmlType::Q8_0).unwrap();
    k(64, &[0u8; 34], &[0u8; 68]);
}

/// The NEON legacy kernels reduce each block to an exact integer and then do the
/// scalar reference's float operations in its order: bit-identical results.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_legacy_kernels_are_bit_exact() {
    use GgmlType::*;
    let mut rng = Rng::new(4);
    for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0] {
        for nb in [1, 2, 7] {
            let n = nb * 32;
            let w = random_weights(&mut rng, ty, nb);
            let a = random_activations(&mut rng, ty, n);
            let want = dot_kernel_scalar(ty).unwrap()(n, &w, &a);
            let got = dot_kernel_at(SimdLevel::Neon, ty).unwrap()(n, &w, &a);
            assert_eq!(got.to_bits(), want.to_bits(), "{} n={n}", ty.name());
        }
    }
}
