//! int8 weights with per-channel fp16 scales (`constexpr_blockwise_shift_scale`):
//! accuracy against the fp16 path and the f64 reference on random weights, through the
//! whole engine (tiling, fused groups, the MLP, the overflow guard), half the blob, and
//! the interpreter's checks on the new op.

mod common;

use ane::blob::DenseRows;
use ane::build::{build_program, Act, BuildConfig, GroupOp, GroupSpec, WeightFormat};
use ane::ffi::{Driver, WeightFile};
use ane::mil::Layout;
use ane::plan::PlanConfig;
use ane::sim::SimDriver;
use ane::{AneConfig, AneEngine};
use common::{reference, rel_err, weights, Rng};
use engine::matrix::{MatrixEngine, WeightKey};
use engine::weights::Weight;
use gguf::GgmlType;

fn engine(format: WeightFormat, layout: Layout, max_dim: usize) -> AneEngine<SimDriver> {
    let build = BuildConfig { layout, max_dim, activation_bound: 64.0, weights: format };
    AneEngine::new(SimDriver::new(), AneConfig { plan: PlanConfig { buckets: vec![64], ..PlanConfig::default() }, build, ..AneConfig::default() })
}

fn run(e: &AneEngine<SimDriver>, ws: &[&Weight], x: &[f32], n: usize) -> Vec<Vec<f32>> {
    let keys: Vec<WeightKey> = ws.iter().map(|w| WeightKey::of(w)).collect();
    for (k, w) in keys.iter().zip(ws) {
        e.prepare(k, w, 64).unwrap();
    }
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    let kr: Vec<&WeightKey> = keys.iter().collect();
    e.matmul(&kr, ws, 64, x, n, &mut refs).unwrap();
    outs
}

#[test]
fn int8_matmuls_stay_close_to_fp16_on_random_weights() {
    let ws = weights(
        &[("a", 100, 150, GgmlType::F32), ("b", 37, 96, GgmlType::Q8_0), ("c", 130, 256, GgmlType::Q4_0), ("d", 200, 40, GgmlType::F32)],
        13,
        1.0,
    );
    let mut rng = Rng(17);
    let mut worst = (0f32, 0f32);
    for layout in [Layout::ChannelMajor, Layout::TokenMajor] {
        for max_dim in [64, 16384] {
            let (e16, e8) = (engine(WeightFormat::Fp16, layout, max_dim), engine(WeightFormat::Int8, layout, max_dim));
            for w in &ws {
                let n = 57;
                let x = rng.vec(n * w.cols, 1.0);
                let want = reference(w, &x, n);
                let (y16, y8) = (run(&e16, &[w], &x, n).remove(0), run(&e8, &[w], &x, n).remove(0));
                let (err16, err8) = (rel_err(&y16, &want), rel_err(&y8, &want));
                worst = (worst.0.max(err16), worst.1.max(err8));
                // int8 per-channel: ~0.4% of max|w| per weight, averaged over K.
                assert!(err8 < 1.5e-2, "{layout:?} max_dim {max_dim} {}: int8 rel err {err8} (fp16 {err16})", w.name);
                assert!(rel_err(&y8, &y16) < 1.5e-2);
            }
        }
    }
    eprintln!("worst relative error: fp16 {:.2e}, int8 {:.2e}", worst.0, worst.1);
}

#[test]
fn int8_fused_groups_and_mlp() {
    let ws = weights(&[("q", 96, 128, GgmlType::Q8_0), ("k", 32, 128, GgmlType::Q8_0), ("v", 40, 128, GgmlType::F32)], 5, 1.0);
    let x = Rng(3).vec(70 * 128, 1.0);
    for concat in [false, true] {
        let e = engine(WeightFormat::Int8, Layout::ChannelMajor, 64);
        e.add_groups(vec![(ws.clone(), GroupOp::Linear { concat })]).unwrap();
        let refs: Vec<&Weight> = ws.iter().collect();
        for (got, w) in run(&e, &refs, &x, 60).iter().zip(&ws) {
            let err = rel_err(got, &reference(w, &x, 60));
            assert!(err < 1.5e-2, "concat={concat} {}: {err}", w.name);
        }
    }
    let (dim, ff) = (96, 160);
    let m = weights(&[("gate", ff, dim, GgmlType::F32), ("up", ff, dim, GgmlType::Q8_0), ("down", dim, ff, GgmlType::F32)], 9, 0.5);
    let x = Rng(5).vec(50 * dim, 2.0);
    let mut outs = Vec::new();
    for format in [WeightFormat::Fp16, WeightFormat::Int8] {
        let e = engine(format, Layout::TokenMajor, 64);
        e.add_groups(vec![(m.clone(), GroupOp::Mlp(Act::Silu))]).unwrap();
        let mut out = vec![f32::NAN; 50 * dim];
        e.mlp([&m[0], &m[1], &m[2]], 64, &x, 50, &mut out).unwrap();
        outs.push(out);
    }
    let err = rel_err(&outs[1], &outs[0]);
    assert!(err < 3e-2, "int8 MLP vs fp16 MLP: {err}");
}

#[test]
fn int8_blob_is_about_half_and_the_interpreter_checks_the_op() {
    let a = DenseRows { rows: 128, cols: 64, data: Rng(1).vec(128 * 64, 1.0) };
    let spec = GroupSpec { members: vec![&a], op: GroupOp::Linear { concat: false }, input_bound: None };
    let b16 = build_program(&[(0, &spec)], &[32], &BuildConfig::default()).unwrap();
    let cfg8 = BuildConfig { weights: WeightFormat::Int8, ..BuildConfig::default() };
    let b8 = build_program(&[(0, &spec)], &[32], &cfg8).unwrap();
    // 64 header + (64 + 8192) data + (64 + 256) scales: coremltools' layout (§7).
    assert_eq!((b16.blob.len(), b8.blob.len()), (16512, 8640));
    assert!(b8.mil.contains("tensor<int8, [128, 64, 1, 1]>") && b8.mil.contains("constexpr_blockwise_shift_scale(data="), "{}", b8.mil);
    let d = SimDriver::new();
    let compile = |mil: &str| d.compile(mil, &[WeightFile { path: ane::blob::BLOB_PATH, bytes: &b8.blob }], 1).map(|_| ()).map_err(|e| e.0);
    compile(&b8.mil).unwrap();
    // The int8 constant straight into conv: refused.
    let w = b8.mil.split("weight=").nth(1).and_then(|r| r.split(',').next()).unwrap();
    let direct = b8.mil.replace(&format!("weight={w},"), &format!("weight={w}_q,"));
    assert!(compile(&direct).unwrap_err().contains("conv weight must be fp16"), "{direct}");
    // A scale that does not tile the data.
    let bad = b8.mil.replace("tensor<fp16, [128, 1, 1, 1]>", "tensor<fp16, [3, 1, 1, 1]>");
    assert!(compile(&bad).is_err());
    // Data declared fp16 where the blob holds int8.
    let wrong = b8.mil.replace("tensor<int8, [128, 64, 1, 1]>", "tensor<fp16, [128, 64, 1, 1]>");
    assert!(compile(&wrong).unwrap_err().contains("dtype 4"), "{}", compile(&wrong).unwrap_err());
}
