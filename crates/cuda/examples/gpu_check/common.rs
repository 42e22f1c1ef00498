//! Shared by the check and the benchmark: random weights of any format as real
//! `Weight` views (through an in-memory GGUF file), random activations, the f64 reference
//! (the conformance suite's, `engine::conformance`), error measures, timing helpers.

use cuda::CudaEngine;
use engine::matrix::{MatrixEngine, WeightKey};
use engine::weights::Weight;
use std::sync::atomic::{AtomicU64, Ordering};

pub use engine::conformance::{dequantized, random, random_weight as weight, reference};

static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// A fresh seed per call, so every run draws new inputs.
pub fn next_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ t
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
