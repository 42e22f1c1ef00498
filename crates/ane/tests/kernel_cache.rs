//! The persistent compiled-model directory: a second engine over the same directory
//! builds nothing and computes the same outputs; corrupt, truncated and foreign entries
//! are detected, rebuilt and replaced; a changed weight or option is a different key.

mod common;

use ane::build::GroupOp;
use ane::plan::PlanConfig;
use ane::sim::SimDriver;
use ane::{AneConfig, AneEngine, AneStats};
use common::{weights, Rng};
use engine::matrix::{MatrixEngine, WeightKey};
use engine::weights::Weight;
use gguf::GgmlType;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ane-kc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn engine(dir: &Path) -> AneEngine<SimDriver> {
    let cfg = AneConfig { plan: PlanConfig { buckets: vec![32, 64], ..PlanConfig::default() }, cache_dir: Some(dir.to_path_buf()), ..AneConfig::default() };
    AneEngine::new(SimDriver::new(), cfg)
}

/// Plan Q/K/V as one program and a single weight as another, run both at bucket 64.
fn run_all(e: &AneEngine<SimDriver>, ws: &[Weight], x: &[f32], n: usize) -> Vec<Vec<f32>> {
    e.add_groups(vec![(ws[..3].to_vec(), GroupOp::Linear { concat: false })]).unwrap();
    e.add_groups(vec![(vec![ws[3].clone()], GroupOp::Linear { concat: true })]).unwrap();
    let mut outs = Vec::new();
    for group in [&ws[..3], &ws[3..]] {
        let keys: Vec<WeightKey> = group.iter().map(WeightKey::of).collect();
        for (k, w) in keys.iter().zip(group) {
            e.prepare(k, w, 64).unwrap();
        }
        let mut o: Vec<Vec<f32>> = group.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
        let mut refs: Vec<&mut [f32]> = o.iter_mut().map(|v| v.as_mut_slice()).collect();
        let kr: Vec<&WeightKey> = keys.iter().collect();
        let wr: Vec<&Weight> = group.iter().collect();
        e.matmul(&kr, &wr, 64, x, n, &mut refs).unwrap();
        outs.extend(o);
    }
    outs
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "bin")).collect();
    v.sort();
    v
}

#[test]
fn a_second_engine_over_the_same_directory_builds_nothing() {
    let dir = temp_dir("reuse");
    let ws = weights(&[("q", 96, 128, GgmlType::Q8_0), ("k", 32, 128, GgmlType::Q4_0), ("v", 40, 128, GgmlType::F32), ("o", 64, 128, GgmlType::Q8_0)], 7, 1.0);
    let n = 50;
    let x = Rng(4).vec(n * 128, 1.0);
    let first = engine(&dir);
    let want = run_all(&first, &ws, &x, n);
    assert_eq!(first.stats(), AneStats { builds: 2, compiles: 2, disk_hits: 0, disk_rejects: 0, timeouts: 0, mlp_over_bound: 0 });
    assert_eq!(entries(&dir).len(), 2, "one entry per program");
    let second = engine(&dir);
    let got = run_all(&second, &ws, &x, n);
    assert_eq!(second.stats(), AneStats { builds: 0, compiles: 2, disk_hits: 2, disk_rejects: 0, timeouts: 0, mlp_over_bound: 0 });
    assert_eq!(got, want, "a stored program computes exactly what the built one did");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_truncated_and_foreign_entries_are_rebuilt() {
    let dir = temp_dir("corrupt");
    let ws = weights(&[("q", 96, 128, GgmlType::Q8_0), ("k", 32, 128, GgmlType::Q8_0), ("v", 40, 128, GgmlType::F32), ("o", 64, 128, GgmlType::F32)], 9, 1.0);
    let n = 33;
    let x = Rng(8).vec(n * 128, 1.0);
    let want = run_all(&engine(&dir), &ws, &x, n);
    let files = entries(&dir);
    // Flip one byte in the middle of the first (inside its blob), cut the second short.
    let mut b = std::fs::read(&files[0]).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&files[0], &b).unwrap();
    let b = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &b[..b.len() - 100]).unwrap();
    let e = engine(&dir);
    assert_eq!(run_all(&e, &ws, &x, n), want);
    assert_eq!(e.stats(), AneStats { builds: 2, compiles: 2, disk_hits: 0, disk_rejects: 2, timeouts: 0, mlp_over_bound: 0 });
    // Both were rewritten: the next engine reads them.
    let e = engine(&dir);
    assert_eq!(run_all(&e, &ws, &x, n), want);
    assert_eq!((e.stats().disk_hits, e.stats().builds), (2, 0));
    // An entry copied under another program's name is stale, not trusted.
    let files = entries(&dir);
    std::fs::copy(&files[0], &files[1]).unwrap();
    let e = engine(&dir);
    assert_eq!(run_all(&e, &ws, &x, n), want);
    assert_eq!(e.stats(), AneStats { builds: 1, compiles: 2, disk_hits: 1, disk_rejects: 1, timeouts: 0, mlp_over_bound: 0 });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn weight_content_and_options_are_part_of_the_key() {
    let dir = temp_dir("keys");
    let a = weights(&[("q", 64, 96, GgmlType::F32), ("k", 32, 96, GgmlType::F32), ("v", 32, 96, GgmlType::F32), ("o", 64, 96, GgmlType::F32)], 1, 1.0);
    // Same names and shapes, other values.
    let b = weights(&[("q", 64, 96, GgmlType::F32), ("k", 32, 96, GgmlType::F32), ("v", 32, 96, GgmlType::F32), ("o", 64, 96, GgmlType::F32)], 2, 1.0);
    let x = Rng(3).vec(40 * 96, 1.0);
    run_all(&engine(&dir), &a, &x, 40);
    let e = engine(&dir);
    run_all(&e, &b, &x, 40);
    assert_eq!((e.stats().builds, e.stats().disk_hits), (2, 0), "other weight content, other programs");
    let cfg = AneConfig { cache_dir: Some(dir.clone()), plan: PlanConfig { buckets: vec![32, 64], ..PlanConfig::default() }, concat_groups: false, ..AneConfig::default() };
    let mut cfg2 = cfg.clone();
    cfg2.build.activation_bound = 7.0;
    let e = AneEngine::new(SimDriver::new(), cfg2);
    run_all(&e, &a, &x, 40);
    assert_eq!(e.stats().disk_hits, 0, "other build options, other programs");
    let e = AneEngine::new(SimDriver::new(), cfg);
    run_all(&e, &a, &x, 40);
    assert_eq!(e.stats().disk_hits, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_payloads_are_errors_never_panics() {
    use ane::blob::{DenseRows, RowSource};
    use ane::build::{build_program, BuildConfig, GroupSpec, Part};
    use ane::store::{decode, encode, validate, Expect};
    let (q, k) = (DenseRows { rows: 40, cols: 70, data: Rng(1).vec(2800, 1.0) }, DenseRows { rows: 24, cols: 70, data: Rng(2).vec(1680, 1.0) });
    let spec = GroupSpec { members: vec![&q as &dyn RowSource, &k], op: GroupOp::Linear { concat: true }, input_bound: None };
    let cfg = BuildConfig { max_dim: 32, ..BuildConfig::default() };
    let built = build_program(&[(0, &spec)], &[32, 64], &cfg).unwrap();
    let bytes = encode(&built);
    let units = [vec![(Part::Whole, 70, vec![40, 24])]];
    let expect = Expect { units: &units, buckets: &[32, 64], layout: cfg.layout };
    let back = decode(&bytes).unwrap();
    validate(&back, &expect).unwrap();
    assert_eq!((back.mil.as_str(), &back.blob, &back.functions), (built.mil.as_str(), &built.blob, &built.functions));
    // Every truncation, and a flipped byte at many offsets of the I/O map: an error or a
    // program that still validates, never a panic or a huge allocation.
    for cut in (0..bytes.len()).step_by(7) {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut flagged = 0;
    for at in 0..built.functions.len() * 200 {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[at] ^= bit;
            if decode(&b).and_then(|p| validate(&p, &expect)).is_err() {
                flagged += 1;
            }
        }
    }
    assert!(flagged > 0);
    // A program for other shapes does not pass as this one.
    let wrong = [vec![(Part::Whole, 64, vec![40, 24])]];
    assert!(validate(&back, &Expect { units: &wrong, buckets: &[32, 64], layout: cfg.layout }).is_err());
    assert!(validate(&back, &Expect { units: &units, buckets: &[32], layout: cfg.layout }).is_err());
}
