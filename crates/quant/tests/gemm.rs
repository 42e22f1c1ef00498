//! Tiled kernels against the scalar reference dot, on random weights and activations:
//! odd row counts (tails of the 4-row tiles and 32-row slabs), odd token counts (tails
//! of the 16-token panels and 128-token blocks), one token, several row lengths.

mod common;

use common::*;
use quant::{dot_kernel_scalar, gemm_kernel_isa, quantize_activations, ActPanels, GemmIsa, GgmlType};

const TYPES: [GgmlType; 11] = {
    use GgmlType::*;
    [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4]
};

/// Sum of |w_i * a_i| of the dequantized operands: the scale of rounding errors.
fn magnitude(ty: GgmlType, w: &[u8], a: &[u8], k: usize) -> f64 {
    let wf = dequantized(ty, w, k);
    let af = dequantized(ty.vec_dot_type(), a, k);
    wf.iter().zip(&af).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum()
}

/// Random weights (half raw bit patterns, half reference-quantized) and activations
/// quantized the way the engine does.
fn case(rng: &mut Rng, ty: GgmlType, m: usize, n: usize, k: usize) -> (Vec<u8>, Vec<u8>) {
    let nb = k / ty.block_size();
    let mut w = Vec::new();
    for r in 0..m {
        if r % 2 == 0 {
            w.extend(random_weights(rng, ty, nb));
        } else {
            w.extend(quantized(ty, &rng.normals(k, 0.5)));
        }
    }
    let at = ty.vec_dot_type();
    let mut a = vec![0u8; n * at.bytes_for(k as u64).unwrap() as usize];
    quantize_activations(at, &rng.normals(n * k, 1.0), &mut a).unwrap();
    (w, a)
}

/// The instruction sets with tiled kernels on this CPU (AMX where the probe allows it).
fn isas() -> Vec<GemmIsa> {
    let all = [GemmIsa::Amx, GemmIsa::Avx512Vnni, GemmIsa::Avx2];
    let here: Vec<GemmIsa> = all.into_iter().filter(|i| i.available()).collect();
    if here.is_empty() {
        eprintln!("no tiled kernels on this CPU ({}): skipped", quant::simd_level());
    }
    here
}

/// `out[t * m + r]` for every row of `w` by the tiled kernel of `isa`.
fn gemm_on(isa: GemmIsa, ty: GgmlType, w: &[u8], panels: &ActPanels, out: &mut [f32]) {
    let kernel = gemm_kernel_isa(ty, isa).unwrap_or_else(|| panic!("{} has no {} kernel", isa.name(), ty.name()));
    let m = w.len() / ty.bytes_for(panels.k() as u64).unwrap() as usize;
    assert_eq!(out.len(), m * panels.n());
    // SAFETY: out holds n * m floats, indexed t * m + r; we hold it mutably.
    unsafe { kernel(w, panels, out.as_mut_ptr(), m) };
}

#[allow(clippy::too_many_arguments)]
fn check(ty: GgmlType, w: &[u8], a: &[u8], m: usize, n: usize, k: usize, got: &[f32], ldo: usize) {
    let (wrb, arb) = (w.len() / m, a.len() / n);
    let dot = dot_kernel_scalar(ty).unwrap();
    for t in 0..n {
        for r in 0..m {
            let (wr, ar) = (&w[r * wrb..(r + 1) * wrb], &a[t * arb..(t + 1) * arb]);
            let want = dot(k, wr, ar) as f64;
            let g = got[t * ldo + r] as f64;
            let tol = 2e-6 * magnitude(ty, wr, ar, k) + 1e-30;
            assert!((g - want).abs() <= tol, "{} m={m} n={n} k={k} row {r} token {t}: {g} vs {want} (tol {tol})", ty.name());
        }
    }
}

#[test]
fn gemm_matches_scalar_dots() {
    let mut rng = Rng::new(91);
    for isa in isas() {
        for ty in TYPES {
            let ks: &[usize] = if ty.block_size() == 256 { &[256, 768] } else { &[32, 96, 576] };
            for &k in ks {
                for (m, n) in [(1, 1), (5, 3), (4, 16), (37, 17), (7, 33), (3, 150)] {
                    let (w, a) = case(&mut rng, ty, m, n, k);
                    let panels = ActPanels::new(ty.vec_dot_type(), &a, k).unwrap();
                    assert_eq!(panels.n(), n);
                    let mut out = vec![f32::NAN; m * n];
                    gemm_on(isa, ty, &w, &panels, &mut out);
                    check(ty, &w, &a, m, n, k, &out, m);
                }
            }
        }
    }
}

/// AMX computes each scale group's integer sums on the tile unit and then applies the
/// scales exactly as the VNNI tiles do: the same bits, on random rows and token counts
/// that leave tails of the 16-row tiles, 32-row slabs and 16-token panels.
#[test]
fn amx_gives_the_vnni_bits() {
    if !(GemmIsa::Amx.available() && GemmIsa::Avx512Vnni.available()) {
        eprintln!("AMX not usable here ({:?}): skipped", quant::amx_support());
        return;
    }
    let mut rng = Rng::new(94);
    for ty in TYPES {
        let k = if ty.block_size() == 256 { 768 } else { 608 };
        for (m, n) in [(1, 1), (16, 16), (17, 33), (45, 150), (70, 7)] {
            let (w, a) = case(&mut rng, ty, m, n, k);
            let panels = ActPanels::new(ty.vec_dot_type(), &a, k).unwrap();
            let mut amx = vec![f32::NAN; m * n];
            let mut vnni = vec![f32::NAN; m * n];
            gemm_on(GemmIsa::Amx, ty, &w, &panels, &mut amx);
            gemm_on(GemmIsa::Avx512Vnni, ty, &w, &panels, &mut vnni);
            for (i, (x, y)) in amx.iter().zip(&vnni).enumerate() {
                assert_eq!(x.to_bits(), y.to_bits(), "{} m={m} n={n}: row {} token {}: {x} vs {y}", ty.name(), i % m, i / m);
            }
        }
    }
}

/// Every quant byte at an extreme (0xFF: the largest 4/5/6-bit values and K-quant scales;
/// 0x80: Q8_0's -128 and Q6_K's -128 scales; 0x00: the codebooks' -127) against
/// activations all at +-127: where an integer sum could overflow or saturate (the AVX2
/// kernels' i16 pair sums), it shows here.
#[test]
fn gemm_survives_extreme_values() {
    let mut rng = Rng::new(93);
    for (isa, ty) in isas().into_iter().flat_map(|isa| TYPES.map(|ty| (isa, ty))) {
        let k = if ty.block_size() == 256 { 512 } else { 128 };
        let (m, n) = (6, 19);
        for fill in [0xFF, 0x80, 0x00] {
            let mut w = random_weights(&mut rng, ty, m * k / ty.block_size());
            for blk in w.chunks_exact_mut(ty.block_bytes()) {
                let keep: Vec<usize> = match ty {
                    GgmlType::MXFP4 => vec![0], // the E8M0 scale byte
                    _ => f16_fields(ty).iter().flat_map(|&o| [o, o + 1]).collect(),
                };
                for (i, b) in blk.iter_mut().enumerate() {
                    if !keep.contains(&i) {
                        *b = fill;
                    }
                }
            }
            let at = ty.vec_dot_type();
            let mut a = vec![0u8; n * at.bytes_for(k as u64).unwrap() as usize];
            // Constant rows quantize to +-127 everywhere; alternate the rows' signs.
            let x: Vec<f32> = (0..n * k).map(|i| if (i / k) % 2 == 0 { 1.0 } else { -0.5 }).collect();
            quantize_activations(at, &x, &mut a).unwrap();
            let panels = ActPanels::new(at, &a, k).unwrap();
            let mut out = vec![f32::NAN; m * n];
            gemm_on(isa, ty, &w, &panels, &mut out);
            check(ty, &w, &a, m, n, k, &out, m);
        }
    }
}

/// The raw kernel with a row stride: writes exactly its columns of a wider matrix.
#[test]
fn gemm_kernel_writes_only_its_columns() {
    for isa in isas() {
        let kernel = gemm_kernel_isa(GgmlType::Q4_1, isa).unwrap();
        let mut rng = Rng::new(92);
        let (ty, m, n, k, ldo, col0) = (GgmlType::Q4_1, 13, 21, 64, 40, 9);
        let (w, a) = case(&mut rng, ty, m, n, k);
        let panels = ActPanels::new(ty.vec_dot_type(), &a, k).unwrap();
        let mut out = vec![-7.0f32; n * ldo];
        // SAFETY: rows col0..col0+m of every token row t < n lie inside out (col0 + m <= ldo).
        unsafe { kernel(&w, &panels, out.as_mut_ptr().add(col0), ldo) };
        for t in 0..n {
            for c in (0..col0).chain(col0 + m..ldo) {
                assert_eq!(out[t * ldo + c], -7.0, "{}: token {t} column {c} touched", isa.name());
            }
        }
        check(ty, &w, &a, m, n, k, &out[col0..], ldo);
    }
}

#[test]
fn panels_reject_bad_input() {
    assert!(ActPanels::new(GgmlType::Q4_0, &[0; 18], 32).is_err());
    assert!(ActPanels::new(GgmlType::Q8_0, &[0; 35], 32).is_err());
    assert!(ActPanels::new(GgmlType::Q8_K, &[0; 292], 32).is_err());
    let p = ActPanels::new(GgmlType::Q8_0, &[], 32).unwrap();
    assert_eq!(p.n(), 0);
}
