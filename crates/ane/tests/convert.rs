//! f32 ↔ fp16 surface conversion against `half` on random data, both layouts, with
//! padding (tokens past N, channels past the slice) and scales, small and threaded sizes.

mod common;

use ane::convert::*;
use half::f16;

fn check_layouts(n: usize, k: usize, cols: std::ops::Range<usize>, width: usize, seed: u64) {
    let mut rng = common::Rng(seed);
    let x = rng.vec(n * k, 100.0);
    let inv = 0.5;
    // Token-major: channels = bucket ≥ n, width ≥ slice (padded to 32).
    let bucket = n.div_ceil(32) * 32 + 32;
    let s = SurfaceShape::packed(bucket, width);
    let mut d = vec![f16::from_f32(7.0); s.len() + 5];
    write_token_major(&x, k, n, cols.clone(), inv, &mut d, s);
    for t in 0..bucket {
        for c in 0..width {
            let want = if t < n && c < cols.len() { f16::from_f32(x[t * k + cols.start + c] * inv) } else { f16::ZERO };
            assert_eq!(d[t * width + c].to_bits(), want.to_bits(), "token-major [{t}, {c}]");
        }
    }
    assert_eq!(d[s.len()], f16::from_f32(7.0), "nothing written past the tensor");
    // Channel-major: channels = slice (+ padding channels), width = bucket.
    let cs = SurfaceShape::packed(cols.len() + 3, bucket);
    let mut e = vec![f16::from_f32(7.0); cs.len()];
    write_channel_major(&x, k, n, cols.clone(), inv, &mut e, cs);
    for c in 0..cs.channels {
        for t in 0..bucket {
            let want = if t < n && c < cols.len() { f16::from_f32(x[t * k + cols.start + c] * inv) } else { f16::ZERO };
            assert_eq!(e[c * bucket + t].to_bits(), want.to_bits(), "channel-major [{c}, {t}]");
        }
    }
    // Reads: into columns col0.. of an [n, m] output, scaled back.
    let m = cols.len() + 10;
    let mut out = vec![-1f32; n * m];
    read_token_major(&d, s, n, 0..cols.len(), 2.0, &mut out, m, 4);
    let mut out2 = vec![-1f32; n * m];
    read_channel_major(&e, cs, n, 0..cols.len(), 2.0, &mut out2, m, 4);
    for t in 0..n {
        for j in 0..m {
            let want = if (4..4 + cols.len()).contains(&j) { f16::from_f32(x[t * k + cols.start + j - 4] * inv).to_f32() * 2.0 } else { -1.0 };
            assert_eq!(out[t * m + j], want, "token-major read [{t}, {j}]");
            assert_eq!(out2[t * m + j], want, "channel-major read [{t}, {j}]");
        }
    }
}

#[test]
fn small_odd_shapes() {
    check_layouts(5, 70, 3..67, 64, 1);
    check_layouts(1, 33, 0..33, 64, 2);
    check_layouts(31, 40, 8..40, 32, 3);
}

#[test]
fn threaded_sizes() {
    // Above the serial threshold in every function, with ragged edges.
    check_layouts(200, 1000, 17..913, 896, 4);
    check_layouts(509, 576, 0..576, 576, 5);
}

#[test]
fn special_values_convert_like_half() {
    let x = [0.0, -0.0, 65504.0, 65520.0, -1e9, 1e-8, 6.0e-5, f32::INFINITY, f32::NAN, 1.0 / 3.0, 2049.0, -0.1];
    let k = x.len();
    let s = SurfaceShape::packed(32, 32);
    let mut d = vec![f16::ZERO; s.len()];
    write_token_major(&x, k, 1, 0..k, 1.0, &mut d, s);
    for (i, v) in x.iter().enumerate() {
        let want = f16::from_f32(*v);
        assert!(d[i].to_bits() == want.to_bits() || (want.is_nan() && d[i].is_nan()), "{v}");
    }
}

#[test]
fn row_norms() {
    let mut rng = common::Rng(9);
    let x = rng.vec(300 * 200, 3.0);
    let want = (0..300).map(|t| x[t * 200 + 10..t * 200 + 150].iter().map(|v| v * v).sum::<f32>().sqrt()).fold(0f32, f32::max);
    assert_eq!(max_row_norm(&x, 200, 300, 10..150), want);
}
