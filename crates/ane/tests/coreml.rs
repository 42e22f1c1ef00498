//! Our programs and blobs checked by coremltools (ANE.md §7): `coreml_check.py` rebuilds
//! each function with the MIL builder (which infers every shape), converts it, and
//! compares the package's weight.bin with ours byte for byte. Runs when `python3` can
//! import coremltools; set TANDEM_REQUIRE_COREMLTOOLS=1 to make its absence a failure.

mod common;

use ane::blob::DenseRows;
use ane::build::{build_program, Act, BuildConfig, GroupOp, GroupSpec, WeightFormat};
use ane::mil::Layout;
use std::path::PathBuf;
use std::process::Command;

fn dense(rows: usize, cols: usize, seed: u64, scale: f32) -> DenseRows {
    DenseRows { rows, cols, data: common::Rng(seed).vec(rows * cols, scale) }
}

fn coremltools() -> bool {
    let ok = Command::new("python3").args(["-c", "import coremltools"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("TANDEM_REQUIRE_COREMLTOOLS").is_none(), "TANDEM_REQUIRE_COREMLTOOLS is set but python3 cannot import coremltools");
        eprintln!("skipped: python3 cannot import coremltools (pip install coremltools==9.0)");
    }
    ok
}

#[test]
fn programs_and_blobs_agree_with_coremltools() {
    if !coremltools() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ane-coreml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dense(128, 64, 1, 1.0), dense(40, 70, 2, 1.0));
    let (q, k, v) = (dense(96, 128, 3, 1.0), dense(32, 128, 4, 1.0), dense(40, 128, 5, 1.0));
    let (g, u, d) = (dense(160, 96, 6, 0.3), dense(160, 96, 7, 0.3), dense(96, 160, 8, 0.3));
    fn lin<'a>(m: Vec<&'a DenseRows>, concat: bool) -> GroupSpec<'a> {
        GroupSpec { members: m.into_iter().map(|r| r as &dyn ane::blob::RowSource).collect(), op: GroupOp::Linear { concat }, input_bound: None }
    }
    let mlp = |act| GroupSpec { members: vec![&g, &u, &d], op: GroupOp::Mlp(act), input_bound: None };
    let cm = BuildConfig { layout: Layout::ChannelMajor, max_dim: 16384, activation_bound: 64.0, ..BuildConfig::default() };
    let tm = BuildConfig { layout: Layout::TokenMajor, ..cm };
    let tiled = BuildConfig { max_dim: 64, activation_bound: 1e4, ..cm };
    let int8 = BuildConfig { weights: WeightFormat::Int8, ..cm };
    let cases: Vec<(&str, Vec<GroupSpec>, Vec<usize>, BuildConfig)> = vec![
        // §7's example: M=128, K=64 (16512-byte weight.bin).
        ("single_cm", vec![lin(vec![&a], false)], vec![32], cm),
        ("single_tm_padded", vec![lin(vec![&b], false)], vec![64], tm),
        ("qkv_separate", vec![lin(vec![&q, &k, &v], false)], vec![64], cm),
        ("qkv_concat_tiled", vec![lin(vec![&q, &k, &v], true)], vec![32], tiled),
        ("mlp_silu", vec![mlp(Act::Silu)], vec![64], cm),
        ("mlp_gelu_tiled_scaled", vec![mlp(Act::GeluTanh)], vec![64], BuildConfig { layout: Layout::TokenMajor, ..tiled }),
        ("mlp_silu_scaled", vec![mlp(Act::Silu)], vec![32], tiled),
        ("bank", vec![lin(vec![&a], false), lin(vec![&q, &k, &v], true)], vec![32, 64], cm),
        // int8 data + fp16 per-channel scales through constexpr_blockwise_shift_scale.
        ("int8_single", vec![lin(vec![&a], false)], vec![32], int8),
        ("int8_qkv_tiled_tm", vec![lin(vec![&q, &k, &v], true)], vec![64], BuildConfig { layout: Layout::TokenMajor, ..BuildConfig { weights: WeightFormat::Int8, ..tiled } }),
        ("int8_mlp_bank", vec![mlp(Act::Silu), lin(vec![&b], false)], vec![32, 64], BuildConfig { weights: WeightFormat::Int8, ..tiled }),
    ];
    for (name, groups, buckets, cfg) in &cases {
        let ids: Vec<(usize, &GroupSpec)> = groups.iter().enumerate().collect();
        let p = build_program(&ids, buckets, cfg).unwrap();
        std::fs::write(dir.join(format!("{name}.mil")), &p.mil).unwrap();
        std::fs::write(dir.join(format!("{name}.weight.bin")), &p.blob).unwrap();
        if *name == "single_cm" {
            assert_eq!(p.blob.len(), 16512);
        }
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/coreml_check.py");
    let out = Command::new("python3").arg(&script).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "coreml_check.py failed:\n{text}\n{err}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), cases.len(), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}
