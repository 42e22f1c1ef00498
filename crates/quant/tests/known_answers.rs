//! Known answers from llama.cpp's own implementations (gguf-py's numpy code and ggml's
//! C reference), recorded by `gen_known_answers.py` into `fixtures/known_answers.txt`:
//! dequantize bit-exact, quantize byte-exact, scalar dot bit-exact with ggml's generic dot.

mod common;

use common::unhex;
use quant::{
    dequantize_row, dot_kernel_scalar, quantize_activations, quantize_row, quantize_row_x86, GgmlType,
};

const FIXTURE: &str = include_str!("fixtures/known_answers.txt");

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn cases(kind: &str) -> impl Iterator<Item = (GgmlType, Vec<&'static str>)> + '_ {
    FIXTURE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(move |l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0] == kind).then(|| {
                (
                    GgmlType::from_name(f[1]).expect("type name"),
                    f[2..].to_vec(),
                )
            })
        })
}

#[test]
fn dequantize_is_bit_exact() {
    let mut count = 0;
    for (ty, f) in cases("deq") {
        let src = unhex(f[0]);
        let want = f32s(&unhex(f[1]));
        let mut got = vec![0f32; want.len()];
        dequantize_row(ty, &src, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} element {i}: {g} vs {w}",
                ty.name()
            );
        }
        count += 1;
    }
    assert!(count >= 40, "fixture has {count} dequantize cases");
}

#[test]
fn quantize_is_byte_exact() {
    let mut count = 0;
    for (ty, f) in cases("quant") {
        let src = f32s(&unhex(f[0]));
        let want = unhex(f[1]);
        let mut got = vec![0u8; want.len()];
        quantize_row(ty, &src, &mut got).unwrap();
        if ty == GgmlType::Q8_K {
            // The engine's activation quantizer is the reference for Q8_K, vectorized.
            let mut act = vec![0u8; want.len()];
            quantize_activations(ty, &src, &mut act).unwrap();
            assert_eq!(act, want, "Q8_K quantize_activations");
        }
        if got != want {
            let bb = ty.block_bytes();
            let blk = (0..want.len()).find(|&i| got[i] != want[i]).unwrap() / bb;
            panic!(
                "{} ({}) block {blk} differs:\n got  {:02x?}\n want {:02x?}",
                ty.name(),
                f[2],
                &got[blk * bb..(blk + 1) * bb],
                &want[blk * bb..(blk + 1) * bb]
            );
        }
        count += 1;
    }
    assert!(count >= 80, "fixture has {count} quantize cases");
}

#[test]
fn scalar_dot_is_bit_exact_with_ggml_generic() {
    let mut count = 0;
    for (ty, f) in cases("dot") {
        let (w, a) = (unhex(f[0]), unhex(f[1]));
        let want = f32s(&unhex(f[2]))[0];
        let n = w.len() / ty.block_bytes() * ty.block_size();
        let got = dot_kernel_scalar(ty).unwrap()(n, &w, &a);
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{} n={n}: {got} vs {want}",
            ty.name()
        );
        count += 1;
    }
    assert!(count >= 20, "fixture has {count} dot cases");
}

/// ggml's x86 `quantize_row_q8_0` / `quantize_row_q8_1` (compiled from arch/x86/quants.c
/// with AVX2): our scalar transcription everywhere, and on x86-64 the activation
/// quantizer the engine uses (SIMD), byte for byte.
#[test]
fn x86_activation_quantizers_are_byte_exact() {
    let mut count = 0;
    for (ty, f) in cases("quant_x86") {
        let src = f32s(&unhex(f[0]));
        let want = unhex(f[1]);
        let mut got = vec![0u8; want.len()];
        quantize_row_x86(ty, &src, &mut got).unwrap();
        assert_eq!(got, want, "{} scalar transcription", ty.name());
        if cfg!(target_arch = "x86_64") {
            got.fill(0);
            quantize_activations(ty, &src, &mut got).unwrap();
            assert_eq!(got, want, "{} quantize_activations", ty.name());
        }
        count += 1;
    }
    assert!(count >= 20, "fixture has {count} quant_x86 cases");
}

/// Every format has fixtures: dequantize cases for all block formats (Q8_1 has no ggml
/// dequantizer), dot cases for every quantized weight format.
#[test]
fn fixtures_cover_every_format() {
    use GgmlType::*;
    for ty in GgmlType::ALL {
        let deq = cases("deq").filter(|(t, _)| *t == ty).count();
        let dot = cases("dot").filter(|(t, _)| *t == ty).count();
        if !matches!(ty, F32 | Q8_1) {
            assert!(deq > 0, "no dequantize fixture for {}", ty.name());
        }
        if ty.block_size() > 1 && dot_kernel_scalar(ty).is_ok() {
            assert!(dot >= 2, "{} dot fixtures for {}", dot, ty.name());
        }
    }
}
