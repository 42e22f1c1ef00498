//! Conversion overlapped with evaluation: a call whose N spans several bucket tiles (or
//! whose group spans several programs, or several separately planned weights) runs its
//! evaluations back to back on the evaluation thread while this thread converts the
//! next inputs and the previous outputs. The results must equal, bit for bit, those of
//! one evaluation at a time and of one call per tile. `overlap_timing` (ignored: speed
//! is never a test) prints what the overlap saves against an ANE-like latency.

mod common;

use ane::build::{BuildConfig, GroupOp};
use ane::ffi::{Driver, DriverError};
use ane::mil::Layout;
use ane::plan::PlanConfig;
use ane::sim::SimDriver;
use ane::{AneConfig, AneEngine};
use common::{reference, rel_err, weights, EvalHook, HookedSim, Rng};
use engine::matrix::{MatrixEngine, WeightKey};
use engine::weights::Weight;
use gguf::GgmlType;
use std::time::{Duration, Instant};

fn config(layout: Layout, overlap: bool, max_program_bytes: u64) -> AneConfig {
    AneConfig {
        plan: PlanConfig { buckets: vec![32, 64], max_program_bytes, ..PlanConfig::default() },
        build: BuildConfig { layout, max_dim: 128, activation_bound: 64.0, ..BuildConfig::default() },
        overlap,
        ..AneConfig::default()
    }
}

/// One engine call for all `n` tokens (tiled inside), or one call per 64-token tile.
fn call<D: Driver>(e: &AneEngine<D>, ws: &[&Weight], x: &[f32], n: usize, per_tile: bool) -> Vec<Vec<f32>> {
    let keys: Vec<WeightKey> = ws.iter().map(|w| WeightKey::of(w)).collect();
    for (k, w) in keys.iter().zip(ws) {
        e.prepare(k, w, 64).unwrap();
    }
    let kr: Vec<&WeightKey> = keys.iter().collect();
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
    let k = ws[0].cols;
    let step = if per_tile { 64 } else { n };
    for t0 in (0..n).step_by(step) {
        let len = step.min(n - t0);
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().zip(ws).map(|(o, w)| &mut o[t0 * w.rows..(t0 + len) * w.rows]).collect();
        e.matmul(&kr, ws, 64, &x[t0 * k..(t0 + len) * k], len, &mut refs).unwrap();
    }
    outs
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter().map(|o| o.iter().map(|f| f.to_bits()).collect()).collect()
}

#[test]
fn overlapped_calls_equal_sequential_ones_bit_for_bit() {
    // K 320 → 3 input tiles, M 200 → 2 outputs, split over three programs by rows; Q/K/V
    // as one group; two weights planned alone but dispatched together; a 300-row
    // "vocabulary" over two programs.
    let ws = weights(
        &[
            ("w", 200, 320, GgmlType::Q8_0),
            ("q", 96, 128, GgmlType::Q8_0),
            ("k", 32, 128, GgmlType::F32),
            ("v", 40, 128, GgmlType::Q4_0),
            ("a", 64, 128, GgmlType::F32),
            ("b", 48, 128, GgmlType::Q8_0),
            ("vocab", 300, 128, GgmlType::Q8_0),
        ],
        31,
        1.0,
    );
    let mut rng = Rng(12);
    for layout in [Layout::ChannelMajor, Layout::TokenMajor] {
        let engines: Vec<AneEngine<SimDriver>> = [true, false].iter().map(|&o| AneEngine::new(SimDriver::new(), config(layout, o, 50_000))).collect();
        let cases: Vec<Vec<&Weight>> = vec![vec![&ws[0]], vec![&ws[1], &ws[2], &ws[3]], vec![&ws[4], &ws[5]], vec![&ws[6]]];
        for e in &engines {
            e.add_groups(vec![(ws[1..4].to_vec(), GroupOp::Linear { concat: false })]).unwrap();
        }
        for case in &cases {
            let n = 300; // five tiles of 64, the last one 44
            let x = rng.vec(n * case[0].cols, 1.0);
            let overlapped = call(&engines[0], case, &x, n, false);
            let sequential = call(&engines[1], case, &x, n, false);
            let per_tile = call(&engines[0], case, &x, n, true);
            assert_eq!(bits(&overlapped), bits(&sequential), "{layout:?} {}", case[0].name);
            assert_eq!(bits(&overlapped), bits(&per_tile), "{layout:?} {}", case[0].name);
            for (o, w) in overlapped.iter().zip(case) {
                assert!(rel_err(o, &reference(w, &x, n)) < 4e-3, "{layout:?} {}", w.name);
            }
        }
        // Q/K/V 1; w (128000 bytes) 3 and the vocabulary (76800) 2 under 50000 per program; a, b 1 each.
        assert_eq!(engines[0].planned_programs(), 1 + 3 + 1 + 1 + 2);
    }
}

/// An evaluation hook that only waits `latency` instead of evaluating (an ANE-like
/// evaluation: off the CPU). Its outputs are meaningless; only timing is read.
struct Sleepy {
    latency: Duration,
}

impl EvalHook for Sleepy {
    fn before(&self, _: usize) -> Option<Result<(), DriverError>> {
        std::thread::sleep(self.latency);
        Some(Ok(()))
    }
}

fn time_calls<D: Driver>(e: &AneEngine<D>, w: &Weight, x: &[f32], n: usize, bucket: usize, reps: usize) -> f64 {
    let key = WeightKey::of(w);
    e.prepare(&key, w, bucket).unwrap();
    let mut out = vec![0f32; n * w.rows];
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        e.matmul(&[&key], &[w], bucket, x, n, &mut [&mut out]).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

#[test]
#[ignore = "timing report, not a test: cargo test -p ane --test overlap -- --ignored --nocapture"]
fn overlap_timing() {
    let (m, k, n, bucket) = (2048, 2048, 4096, 512);
    let w = weights(&[("w", m, k, GgmlType::F32)], 5, 1.0).remove(0);
    let x = Rng(1).vec(n * k, 1.0);
    let cfg = |overlap| AneConfig { plan: PlanConfig { buckets: vec![bucket], ..PlanConfig::default() }, overlap, ..AneConfig::default() };
    // ANE-like: 2·M·K·bucket at 3 TFLOP/s.
    let latency = Duration::from_secs_f64(2.0 * (m * k * bucket) as f64 / 3e12);
    for overlap in [false, true] {
        let e = AneEngine::new(HookedSim::new("sleepy", Sleepy { latency }), cfg(overlap));
        let t = time_calls(&e, &w, &x, n, bucket, 5);
        eprintln!(
            "sleeping driver ({:.2} ms per evaluation), {m}x{k}, N={n} in {} tiles of {bucket}: overlap={overlap}: {:.2} ms",
            latency.as_secs_f64() * 1e3,
            n / bucket,
            t * 1e3
        );
    }
    // The interpreter itself (evaluation on the CPU, competing with conversion for cores).
    let (m, k, n) = (512, 1024, 2048);
    let w = weights(&[("w", m, k, GgmlType::F32)], 6, 1.0).remove(0);
    let x = Rng(2).vec(n * k, 1.0);
    for overlap in [false, true] {
        let e = AneEngine::new(SimDriver::new(), cfg(overlap));
        let t = time_calls(&e, &w, &x, n, bucket, 3);
        eprintln!("SimDriver, {m}x{k}, N={n} in {} tiles of {bucket}: overlap={overlap}: {:.2} ms", n / bucket, t * 1e3);
    }
}
