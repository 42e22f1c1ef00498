//! The whole ANE path through the MIL interpreter: generate MIL and blobs → "compile"
//! (parse + validate) → write surfaces → evaluate → read back → compare with the f64
//! matmul, for odd shapes, every layout, tiled K and M, fused Q/K/V (separate and
//! concatenated), fused MLPs (SiLU and the GELU decomposition), and the overflow guard.

mod common;

use ane::build::{Act, BuildConfig, GroupOp};
use ane::ffi::{Driver, WeightFile};
use ane::mil::Layout;
use ane::plan::PlanConfig;
use ane::sim::SimDriver;
use ane::{AneConfig, AneEngine};
use common::{reference, rel_err, weights, Rng};
use engine::matrix::{MatrixEngine, WeightKey};
use engine::weights::Weight;
use gguf::GgmlType;

fn config(layout: Layout, max_dim: usize, buckets: Vec<usize>) -> AneConfig {
    AneConfig {
        plan: PlanConfig { buckets, ..PlanConfig::default() },
        build: BuildConfig { layout, max_dim, activation_bound: 64.0, ..BuildConfig::default() },
        concat_groups: false,
        ..AneConfig::default()
    }
}

/// Prepare and run `ws` as one dispatch; returns one output per weight.
fn run(e: &AneEngine<SimDriver>, ws: &[&Weight], x: &[f32], n: usize) -> Vec<Vec<f32>> {
    let bucket = e.n_buckets().unwrap().iter().copied().find(|&b| b >= n).unwrap();
    let keys: Vec<WeightKey> = ws.iter().map(|w| WeightKey::of(w)).collect();
    for (k, w) in keys.iter().zip(ws) {
        e.prepare(k, w, bucket).unwrap();
    }
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    let key_refs: Vec<&WeightKey> = keys.iter().collect();
    e.matmul(&key_refs, ws, bucket, x, n, &mut refs).unwrap();
    outs
}

#[test]
fn single_matmuls_odd_shapes_tiled_both_layouts() {
    let ws = weights(
        &[("a", 100, 150, GgmlType::F32), ("b", 37, 96, GgmlType::Q8_0), ("c", 130, 256, GgmlType::Q4_K), ("d", 200, 40, GgmlType::F32)],
        3,
        1.0,
    );
    let mut rng = Rng(11);
    for layout in [Layout::ChannelMajor, Layout::TokenMajor] {
        // max_dim 64: K 150 → 3 input tiles, M 200 → 4 outputs, and so on.
        for max_dim in [64, 16384] {
            let e = AneEngine::new(SimDriver::new(), config(layout, max_dim, vec![32, 64, 128]));
            for n in [1, 5, 64, 100] {
                for w in &ws {
                    let x = rng.vec(n * w.cols, 1.0);
                    let got = run(&e, &[w], &x, n).remove(0);
                    let err = rel_err(&got, &reference(w, &x, n));
                    assert!(err < 4e-3, "{layout:?} max_dim {max_dim} {} n={n}: rel err {err}", w.name);
                }
            }
            // One program per weight (all buckets inside), compiled once.
            assert_eq!(e.compiles(), ws.len());
            assert_eq!(e.driver().compiles.load(std::sync::atomic::Ordering::Relaxed), ws.len());
        }
    }
}

#[test]
fn fused_qkv_separate_and_concatenated() {
    let ws = weights(&[("q", 96, 128, GgmlType::Q8_0), ("k", 32, 128, GgmlType::Q8_0), ("v", 40, 128, GgmlType::F32)], 5, 1.0);
    let mut rng = Rng(3);
    let n = 70;
    let x = rng.vec(n * 128, 1.0);
    for layout in [Layout::ChannelMajor, Layout::TokenMajor] {
        for concat in [false, true] {
            // max_dim 64: the concatenated 168 rows split into tiles that straddle members.
            let e = AneEngine::new(SimDriver::new(), config(layout, 64, vec![64, 128]));
            e.add_groups(vec![(ws.clone(), GroupOp::Linear { concat })]).unwrap();
            let refs: Vec<&Weight> = ws.iter().collect();
            let got = run(&e, &refs, &x, n);
            for (g, w) in got.iter().zip(&ws) {
                let err = rel_err(g, &reference(w, &x, n));
                assert!(err < 4e-3, "{layout:?} concat={concat} {}: {err}", w.name);
            }
            assert_eq!(e.compiles(), 1, "one program for the group");
        }
    }
}

fn mlp_reference(ws: &[Weight], x: &[f32], n: usize, act: Act) -> Vec<f32> {
    let (g, u) = (reference(&ws[0], x, n), reference(&ws[1], x, n));
    let h: Vec<f32> = g
        .iter()
        .zip(&u)
        .map(|(&a, &b)| {
            let a = a as f64;
            let f = match act {
                Act::Silu => a / (1.0 + (-a).exp()),
                Act::GeluTanh => 0.5 * a * (1.0 + (0.797_884_560_8 * (a + 0.044715 * a * a * a)).tanh()),
            };
            (f * b as f64) as f32
        })
        .collect();
    reference(&ws[2], &h, n)
}

#[test]
fn fused_mlp_silu_and_gelu() {
    let (dim, ff) = (96, 160);
    let ws = weights(&[("gate", ff, dim, GgmlType::F32), ("up", ff, dim, GgmlType::Q8_0), ("down", dim, ff, GgmlType::F32)], 9, 0.5);
    let mut rng = Rng(5);
    let n = 50;
    let x = rng.vec(n * dim, 2.0);
    for layout in [Layout::ChannelMajor, Layout::TokenMajor] {
        for act in [Act::Silu, Act::GeluTanh] {
            for (max_dim, bound) in [(64, 64.0), (16384, 1e4)] {
                // A large activation bound forces gate/up/down scales ≠ 1 (the rescaled sigmoid path).
                let mut cfg = config(layout, max_dim, vec![64]);
                cfg.build.activation_bound = bound;
                let e = AneEngine::new(SimDriver::new(), cfg);
                e.add_groups(vec![(ws.clone(), GroupOp::Mlp(act))]).unwrap();
                let mut out = vec![f32::NAN; n * dim];
                e.mlp([&ws[0], &ws[1], &ws[2]], 64, &x, n, &mut out).unwrap();
                let err = rel_err(&out, &mlp_reference(&ws, &x, n, act));
                assert!(err < 1e-2, "{layout:?} {act:?} max_dim {max_dim} bound {bound}: {err}");
            }
        }
    }
}

#[test]
fn overflow_guard_keeps_large_outputs_finite() {
    // All-positive weights and inputs: every output ≈ 256 · 100 · 5 = 128000 > 65504.
    let k = 256;
    let mut w = weights(&[("big", 64, k, GgmlType::F32)], 1, 1.0);
    let big = w.remove(0);
    let x = vec![100f32; 64 * k];
    let mut row = vec![0f32; k];
    // Direct program with no scaling (bound 0): the interpreter, like the ANE, gives inf.
    struct Pos(usize);
    impl ane::blob::RowSource for Pos {
        fn rows(&self) -> usize {
            64
        }
        fn cols(&self) -> usize {
            self.0
        }
        fn row_f32(&self, _: usize, out: &mut [f32]) {
            out.fill(5.0)
        }
    }
    let pos = Pos(k);
    let spec = ane::build::GroupSpec { members: vec![&pos], op: GroupOp::Linear { concat: false }, input_bound: None };
    let cfg = BuildConfig { activation_bound: 0.0, ..BuildConfig::default() };
    let built = ane::build::build_program(&[(0, &spec)], &[64], &cfg).unwrap();
    let d = SimDriver::new();
    let p = d.compile(&built.mil, &[WeightFile { path: ane::blob::BLOB_PATH, bytes: &built.blob }], 1).unwrap();
    d.load(&p).unwrap();
    let mut xin = d.surface(k * 64 * 2).unwrap();
    d.write(&mut xin, &mut |b| ane::convert::write_channel_major(&x, k, 64, 0..k, 1.0, ane::convert::as_f16_mut(b), ane::convert::SurfaceShape::packed(k, 64))).unwrap();
    let y = d.surface(64 * 64 * 2).unwrap();
    d.evaluate(&p, 0, &[&xin], &[&y]).unwrap();
    d.read(&y, &mut |b| assert!(ane::convert::as_f16(b).iter().all(|v| v.is_infinite()), "unguarded output overflows")).unwrap();
    // Through the engine: the measured input scale keeps it finite and exact to fp16 precision.
    let e = AneEngine::new(SimDriver::new(), config(Layout::ChannelMajor, 16384, vec![64]));
    big.dequantize_row(0, &mut row);
    let xs: Vec<f32> = (0..64 * k).map(|i| 600.0 * row[i % k].signum()).collect();
    let got = run(&e, &[&big], &xs, 64).remove(0);
    assert!(got.iter().all(|v| v.is_finite()));
    let want = reference(&big, &xs, 64);
    assert!(want.iter().any(|v| v.abs() > 40000.0), "the test must exceed the fp16 limit");
    assert!(rel_err(&got, &want) < 4e-3, "{}", rel_err(&got, &want));
}

#[test]
fn evicted_programs_unload_and_come_back() {
    let ws = weights(&[("a", 64, 64, GgmlType::F32)], 2, 1.0);
    let e = AneEngine::new(SimDriver::new(), config(Layout::ChannelMajor, 16384, vec![32, 64]));
    let x = Rng(1).vec(64 * 64, 1.0);
    let first = run(&e, &[&ws[0]], &x, 40);
    let key = WeightKey::of(&ws[0]);
    let live = |e: &AneEngine<SimDriver>| e.driver().loaded.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(live(&e), 1);
    e.evict(&key, 64);
    assert_eq!(live(&e), 0, "no (weight, bucket) holds the program any more");
    let mut out = vec![0f32; 40 * 64];
    assert!(e.matmul(&[&key], &[&ws[0]], 64, &x, 40, &mut [&mut out]).is_err(), "an unloaded program is an error, not garbage");
    assert_eq!(run(&e, &[&ws[0]], &x, 40), first);
    assert_eq!(e.compiles(), 2, "recompiled after eviction");
}
