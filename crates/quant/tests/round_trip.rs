//! Quantize -> dequantize error bounds, length errors, and the f16 slice helpers.

mod common;

use common::*;
use quant::{
    dequantize_row, f16_to_f32_slice, f32_to_f16_slice, quantize_row, GgmlType, QuantError,
};

/// Largest |x| per block of `bs`.
fn block_amax(x: &[f32], bs: usize) -> Vec<f32> {
    x.chunks(bs)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect()
}

/// Worst per-block max error, as a fraction of the block's largest |x|.
fn worst_rel_block_error(ty: GgmlType, x: &[f32], bs: usize) -> f64 {
    let y = dequantized(ty, &quantized(ty, x), x.len());
    let amax = block_amax(x, bs);
    x.chunks(bs)
        .zip(y.chunks(bs))
        .zip(amax)
        .map(|((xb, yb), m)| {
            let e = xb
                .iter()
                .zip(yb)
                .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
            if m > 0.0 {
                (e / m) as f64
            } else {
                e as f64
            }
        })
        .fold(0.0, f64::max)
}

fn rmse_over_rms(ty: GgmlType, x: &[f32]) -> f64 {
    let y = dequantized(ty, &quantized(ty, x), x.len());
    let err: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt()
}

/// Per-element bounds for the 32-element formats. The step is d (or range/levels); ggml
/// quantizes with the f32 scale but stores it as f16, which adds up to
/// (levels/2) * d * 2^-11 (~6% of a step), hence the slack factor.
#[test]
fn legacy_and_q8_error_bounds() {
    let mut rng = Rng::new(10);
    let f16_slack = 1.0 + 2f64.powi(-11) * 256.0;
    // (type, block size, bound as a fraction of the block's absmax)
    let cases = [
        (GgmlType::Q8_0, 32, 0.5 / 127.0 * f16_slack),
        (GgmlType::Q8_1, 32, 0.5 / 127.0 * f16_slack),
        (GgmlType::Q8_K, 256, 0.5 / 127.0 * 1.0001), // f32 scale: no f16 rounding
        (GgmlType::Q4_0, 32, 1.0 / 8.0 * f16_slack), // -max maps to +7d: a full step
        (GgmlType::Q5_0, 32, 1.0 / 16.0 * f16_slack),
        (
            GgmlType::Q4_1,
            32,
            2.0 * 0.5 / 15.0 * f16_slack + 2f64.powi(-11),
        ), // range <= 2*amax; m in f16
        (
            GgmlType::Q5_1,
            32,
            2.0 * 0.5 / 31.0 * f16_slack + 2f64.powi(-11),
        ),
    ];
    for (ty, bs, bound) in cases {
        // Scales keep d a normal f16: subnormal d (|x| < ~1e-2) loses relative precision.
        for scale in [0.05f32, 1.0, 300.0] {
            let x = rng.normals(64 * bs, scale);
            let e = worst_rel_block_error(ty, &x, bs);
            assert!(e <= bound, "{}: worst block error {e} > {bound}", ty.name());
        }
    }
}

/// K-quants (and IQ4) pick scales by search, so the bound is statistical: RMSE relative to RMS of
/// Gaussian data, thresholds a little above what ggml's reference quantizers reach.
#[test]
fn k_quant_rmse() {
    let mut rng = Rng::new(11);
    let x = rng.normals(64 * 256, 1.0);
    for (ty, max) in [
        (GgmlType::Q2_K, 0.40),
        (GgmlType::Q3_K, 0.20),
        (GgmlType::Q4_K, 0.11),
        (GgmlType::Q5_K, 0.055),
        (GgmlType::Q6_K, 0.028),
        (GgmlType::Q4_0, 0.13),
        (GgmlType::Q4_1, 0.12),
        (GgmlType::Q5_0, 0.065),
        (GgmlType::Q5_1, 0.06),
        (GgmlType::Q8_0, 0.009),
        (GgmlType::IQ4_NL, 0.12),
        (GgmlType::IQ4_XS, 0.11),
        (GgmlType::MXFP4, 0.16), // power-of-two block scales: coarser
        (GgmlType::NVFP4, 0.11),
        // Binary / ternary formats are for models trained that way: coarse on Gaussian data.
        (GgmlType::Q2_0, 0.75),
        (GgmlType::Q1_0, 0.65),
        (GgmlType::TQ2_0, 0.85),
        (GgmlType::TQ1_0, 0.85),
        // The grid i-quants through our nearest-grid-point quantizers (not ggml's).
        (GgmlType::IQ3_S, 0.16),
        (GgmlType::IQ3_XXS, 0.21),
        (GgmlType::IQ2_S, 0.29),
        (GgmlType::IQ2_XS, 0.34),
        (GgmlType::IQ2_XXS, 0.40),
        (GgmlType::IQ1_M, 0.55),
        (GgmlType::IQ1_S, 0.63),
    ] {
        let r = rmse_over_rms(ty, &x);
        eprintln!("{}: rmse/rms = {r:.4}", ty.name());
        assert!(r <= max, "{}: rmse/rms {r} > {max}", ty.name());
    }
}

#[test]
fn float_round_trips() {
    let mut rng = Rng::new(12);
    let x = rng.normals(1000, 3.0);
    let y = dequantized(GgmlType::F32, &quantized(GgmlType::F32, &x), x.len());
    assert_eq!(x, y);
    for (ty, rel) in [
        (GgmlType::F16, 2f32.powi(-11)),
        (GgmlType::BF16, 2f32.powi(-8)),
    ] {
        let y = dequantized(ty, &quantized(ty, &x), x.len());
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= rel * a.abs(), "{}: {a} -> {b}", ty.name());
        }
    }
}

#[test]
fn zero_blocks_stay_zero() {
    for ty in GgmlType::ALL {
        let n = ty.block_size() * 2;
        let y = dequantized(ty, &quantized(ty, &vec![0.0; n]), n);
        assert!(y.iter().all(|v| *v == 0.0), "{}", ty.name());
    }
}

#[test]
fn bad_lengths_are_errors() {
    for ty in GgmlType::ALL {
        let bs = ty.block_size();
        let bytes = ty.block_bytes();
        let mut out = vec![0f32; bs];
        assert!(matches!(
            dequantize_row(ty, &vec![0u8; bytes + 1], &mut out),
            Err(QuantError::BadLength { .. })
        ));
        let mut q = vec![0u8; bytes];
        assert!(matches!(
            quantize_row(ty, &vec![0f32; bs + 1], &mut q),
            Err(QuantError::BadLength { .. })
        ));
        assert!(matches!(
            quantize_row(ty, &vec![0f32; bs], &mut vec![0u8; bytes - 1]),
            Err(QuantError::BadLength { .. })
        ));
        if bs > 1 {
            let mut odd = vec![0f32; bs - 1];
            assert!(matches!(
                dequantize_row(ty, &[], &mut odd),
                Err(QuantError::BadLength { .. })
            ));
        }
        // Empty rows are fine.
        assert!(dequantize_row(ty, &[], &mut []).is_ok());
    }
}

#[test]
fn f16_slices_match_scalar_conversion() {
    let mut rng = Rng::new(13);
    // Every half bit pattern, at an odd byte offset.
    let mut src = vec![0u8; 1];
    for h in 0..=u16::MAX {
        src.extend_from_slice(&h.to_le_bytes());
    }
    let mut fast = vec![0f32; 65536];
    f16_to_f32_slice(&src[1..], &mut fast);
    let mut slow = vec![0f32; 65536];
    dequantize_row(GgmlType::F16, &src[1..], &mut slow).unwrap();
    for h in 0..65536usize {
        let want = half::f16::from_bits(h as u16).to_f32();
        assert!(
            fast[h].to_bits() == want.to_bits() || (want.is_nan() && fast[h].is_nan()),
            "{h:#x}"
        );
        assert!(
            slow[h].to_bits() == want.to_bits() || (want.is_nan() && slow[h].is_nan()),
            "{h:#x}"
        );
    }
    // f32 -> f16: random magnitudes across the whole range, odd length for the tail.
    let x: Vec<f32> = (0..1001)
        .map(|_| rng.normal() * 10f32.powi((rng.next_u64() % 14) as i32 - 9))
        .collect();
    let mut h = vec![0u8; 2 * x.len()];
    f32_to_f16_slice(&x, &mut h);
    for (i, v) in x.iter().enumerate() {
        let want = half::f16::from_f32(*v).to_bits();
        assert_eq!(u16::from_le_bytes([h[2 * i], h[2 * i + 1]]), want, "{v}");
    }
}
