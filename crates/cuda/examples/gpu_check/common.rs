//! Shared by the check and the benchmark: random weights of any format as real
//! `Weight` views (through an in-memory GGUF file), random activations, the f64 reference.

use cuda::CudaEngine;
use engine::matrix::{MatrixEngine, WeightKey};
use engine::weights::{TensorSource, Weight};
use quant::GgmlType;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// A fresh seed per call, so every run draws new inputs.
pub fn next_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ t
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` values in [-1, 1) (never all zeros), filled in parallel from `seed`.
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; len];
    v.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
        let mut s = splitmix(seed ^ (c as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        for x in chunk {
            s = splitmix(s);
            *x = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        }
    });
    v
}

/// A random `[m, k]` weight of type `ty`, stored in its own in-memory GGUF file.
pub fn weight(name: &str, ty: GgmlType, m: usize, k: usize, seed: u64) -> Weight {
    let vals = random(m * k, seed);
    let row_bytes = ty.bytes_for(k as u64).expect("k is whole blocks") as usize;
    let mut data = vec![0u8; m * row_bytes];
    data.par_chunks_mut(row_bytes).zip(vals.par_chunks(k)).for_each(|(d, v)| quant::quantize_row(ty, v, d).expect("quantize"));
    let mut w = gguf::GgufWriter::new();
    w.add_tensor(name, &[k as u64, m as u64], ty, data).expect("add tensor");
    let file = gguf::GgufFile::from_bytes(w.to_bytes()).expect("parse");
    TensorSource::new(Arc::new(file)).matrix(name, k, m).expect("matrix")
}

/// The weight dequantized to f32 on the CPU (the reference's operand).
pub fn dequantized(w: &Weight) -> Vec<f32> {
    let mut f = vec![0f32; w.rows * w.cols];
    f.par_chunks_mut(w.cols).enumerate().for_each(|(r, row)| w.dequantize_row(r, row));
    f
}

/// `out[t, r] = Σ x[t, :] · w[r, :]`, products in f32 summed in f64; also the norm of all
/// the products, √Σ(x·w)², the scale of the rounding error when a sum cancels.
pub fn reference(wf: &[f32], m: usize, k: usize, x: &[f32], n: usize) -> (Vec<f32>, f64) {
    let mut out = vec![0f32; n * m];
    let mut sq = vec![0f64; n];
    out.par_chunks_mut(m).zip(sq.par_iter_mut()).enumerate().for_each(|(t, (row, sq))| {
        let xr = &x[t * k..(t + 1) * k];
        for (o, wr) in row.iter_mut().zip(wf.chunks_exact(k)) {
            // Eight partial sums keep this fast without changing the f64 accuracy.
            let (mut acc, mut acc2) = ([0f64; 8], [0f64; 8]);
            for (xc, wc) in xr.chunks(8).zip(wr.chunks(8)) {
                for (i, (a, b)) in xc.iter().zip(wc).enumerate() {
                    let p = (a * b) as f64;
                    acc[i] += p;
                    acc2[i] += p * p;
                }
            }
            *o = acc.iter().sum::<f64>() as f32;
            *sq += acc2.iter().sum::<f64>();
        }
    });
    (out, sq.iter().sum::<f64>().sqrt())
}

/// ‖out − ref‖ / ‖ref‖, infinite when any output is not finite. With `scale` (the norm of
/// the products), divides by the larger of the two: for random data they are alike, but a
/// single output (M = N = 1) whose sum happens to cancel would otherwise fail on rounding.
pub fn rel_err_scaled(out: &[f32], want: &[f32], scale: f64) -> f64 {
    if out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut d, mut r) = (0f64, 0f64);
    for (a, b) in out.iter().zip(want) {
        d += ((a - b) as f64).powi(2);
        r += (*b as f64).powi(2);
    }
    d.sqrt() / r.sqrt().max(scale).max(1e-300)
}

/// ‖out − ref‖ / ‖ref‖, infinite when any output is not finite.
pub fn rel_err(out: &[f32], want: &[f32]) -> f64 {
    rel_err_scaled(out, want, 0.0)
}

/// Key a weight by its own identity.
pub fn key(w: &Weight) -> WeightKey {
    WeightKey::of(w)
}

/// Prepare on the engine, returning the seconds it took.
pub fn prepare(e: &CudaEngine, w: &Weight) -> f64 {
    let t = std::time::Instant::now();
    e.prepare(&key(w), w, 0).unwrap_or_else(|f| panic!("prepare {}: {f}", w.name));
    t.elapsed().as_secs_f64()
}

/// Median of a list of seconds.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
