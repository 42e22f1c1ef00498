//! The activation quantizers: on x86-64 the SIMD path equals the scalar transcription of
//! ggml's x86 arithmetic on random data (ties, tiny and huge scales, zero blocks);
//! elsewhere `quantize_activations` is the reference quantizer.

mod common;

use common::Rng;
use quant::{quantize_activations, quantize_row, quantize_row_x86, GgmlType};

fn inputs(rng: &mut Rng) -> Vec<Vec<f32>> {
    let mut v = Vec::new();
    for scale in [1e-6f32, 0.02, 1.0, 37.0, 1e5] {
        for n in [32, 64, 576, 1536] {
            v.push(rng.normals(n, scale));
        }
    }
    // Half-integer ties with amax = 127 (scale exactly 1), and an all-zero block.
    let mut t: Vec<f32> = (0..256).map(|i| ((i * 37 % 255) as f32 - 127.0) * 0.5).collect();
    t[0] = 127.0;
    t[32] = -127.0;
    t.extend([0.0; 32]);
    v.push(t);
    // Largest magnitude twice with opposite signs: the first one (negative) sets the sign.
    let mut s = rng.normals(256, 1.0);
    s[3] = -9.0;
    s[200] = 9.0;
    v.push(s);
    v
}

#[test]
fn activation_quantizer_matches_x86_transcription() {
    let mut rng = Rng::new(77);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        for x in inputs(&mut rng) {
            if x.len() % ty.block_size() != 0 {
                continue;
            }
            let bytes = ty.bytes_for(x.len() as u64).unwrap() as usize;
            let (mut got, mut want) = (vec![0u8; bytes], vec![0u8; bytes]);
            quantize_activations(ty, &x, &mut got).unwrap();
            if cfg!(target_arch = "x86_64") {
                quantize_row_x86(ty, &x, &mut want).unwrap();
            } else {
                quantize_row(ty, &x, &mut want).unwrap();
            }
            assert_eq!(got, want, "{} n={}", ty.name(), x.len());
        }
    }
}

/// The two Q8 algorithms differ only in rounding: never by more than one step.
#[test]
fn x86_and_reference_differ_by_at_most_one() {
    let mut rng = Rng::new(78);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
        let off = if ty == GgmlType::Q8_1 { 4 } else { 2 };
        for x in inputs(&mut rng) {
            let bytes = ty.bytes_for(x.len() as u64).unwrap() as usize;
            let (mut a, mut b) = (vec![0u8; bytes], vec![0u8; bytes]);
            quantize_row_x86(ty, &x, &mut a).unwrap();
            quantize_row(ty, &x, &mut b).unwrap();
            for (ba, bb) in a.chunks(ty.block_bytes()).zip(b.chunks(ty.block_bytes())) {
                assert_eq!(ba[..2], bb[..2], "d is the same");
                for (qa, qb) in ba[off..].iter().zip(&bb[off..]) {
                    assert!((*qa as i8 as i32 - *qb as i8 as i32).abs() <= 1);
                }
            }
        }
    }
}
