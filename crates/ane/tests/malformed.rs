//! Broken programs, blobs and calls must fail with clear errors (never run silently),
//! both in the MIL writer and in the interpreter.

use ane::blob::{DenseRows, BLOB_PATH};
use ane::build::{build_program, BuildConfig, GroupOp, GroupSpec};
use ane::ffi::{Driver, WeightFile};
use ane::mil::{function_text, ConvWeight, Function, Op, Stmt};
use ane::sim::SimDriver;

fn good() -> (String, Vec<u8>) {
    let w = DenseRows { rows: 64, cols: 96, data: (0..64 * 96).map(|i| (i % 7) as f32 * 0.1).collect() };
    let spec = GroupSpec { members: vec![&w], op: GroupOp::Linear { concat: false }, input_bound: None };
    let b = build_program(&[(0, &spec)], &[64], &BuildConfig::default()).unwrap();
    (b.mil, b.blob)
}

fn compile_err(mil: &str, blob: &[u8]) -> String {
    match SimDriver::new().compile(mil, &[WeightFile { path: BLOB_PATH, bytes: blob }], 1) {
        Ok(_) => panic!("compiled:\n{mil}"),
        Err(e) => e.0,
    }
}

#[track_caller]
fn expect(mil: &str, blob: &[u8], want: &[&str]) {
    let e = compile_err(mil, blob);
    for w in want {
        assert!(e.contains(w), "error {e:?} lacks {w:?}");
    }
}

#[test]
fn the_good_program_compiles() {
    let (mil, blob) = good();
    let d = SimDriver::new();
    let p = d.compile(&mil, &[WeightFile { path: BLOB_PATH, bytes: &blob }], 1).unwrap();
    assert_eq!(p.compiled.funcs[0].name, "main");
    assert!(mil.starts_with("program(1.3)\n[buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3510.2.1\"}"));
}

#[test]
fn syntax_and_reference_errors_name_the_line() {
    let (mil, blob) = good();
    let line_of = |needle: &str| mil.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let conv_line = line_of("= conv(");
    expect(&mil.replacen("[name=string(\"y0\")];", "[name=string(\"v1\")]", 1), &blob, &[&format!("line {}", conv_line + 1), "expected ';'"]);
    expect(&mil.replace("x=x0)", "x=x9)"), &blob, &[&format!("line {conv_line}"), "undefined value x9"]);
    expect(&mil.replace("string(\"valid\")", "string(\"valid)"), &blob, &["unterminated string"]);
    expect(&mil.replacen("conv(", "softmax(", 1), &blob, &["op 'softmax' is not in the interpreted subset"]);
    expect(&mil.replacen("conv(", "gelu(", 1), &blob, &["gelu is rejected by the ANE"]);
    expect(&mil.replacen("} -> (y0);", "} -> (v7);", 1), &blob, &["output v7 is never defined"]);
    expect(&mil.replacen("    } -> (y0);\n", "", 1), &blob, &["expected"]);
}

#[test]
fn type_and_shape_errors() {
    let (mil, blob) = good();
    // The declared result shape disagrees with what conv yields.
    expect(&mil.replace("tensor<fp16, [1, 64, 1, 64]> y0", "tensor<fp16, [1, 65, 1, 64]> y0"), &blob, &["declared", "yields"]);
    // Weight channels disagree with the blob, or with the input.
    expect(&mil.replace("[64, 96, 1, 1]", "[64, 95, 1, 1]"), &blob, &["declared tensor needs 12160"]);
    expect(&mil.replace("[1, 96, 1, 64]> x0", "[1, 95, 1, 64]> x0"), &blob, &["is not [M, 95, 1, 1]"]);
    // Weight rows disagree with the blob size.
    expect(&mil.replace("[64, 96, 1, 1]", "[32, 96, 1, 1]"), &blob, &["holds 12288 bytes, the declared tensor needs 6144"]);
    // Strided conv: outside the subset.
    expect(&mil.replace("val=tensor<int32, [2]>([1, 1])];\n        tensor<int32, [4]>", "val=tensor<int32, [2]>([2, 2])];\n        tensor<int32, [4]>"), &blob, &["only 1×1 convs"]);
    // Width not a multiple of 32 (§2).
    expect(&mil.replace(", 1, 64]", ", 1, 48]"), &blob, &["not a multiple of 32"]);
    // Blob offset not at a metadata record, or past the file; missing weight file.
    expect(&mil.replace("offset=uint64(64)", "offset=uint64(96)"), &blob, &["64-aligned"]);
    expect(&mil.replace("offset=uint64(64)", "offset=uint64(1048576)"), &blob, &["past the end"]);
    expect(&mil.replace("weights/weight.bin", "weights/other.bin"), &blob, &["no weight file @model_path/weights/other.bin"]);
    let mut bad = blob.clone();
    bad[64] = 0;
    expect(&mil, &bad, &["sentinel"]);
    bad = blob.clone();
    bad[4] = 3;
    expect(&mil, &bad, &["version 3"]);
}

#[test]
fn evaluation_errors() {
    let (mil, blob) = good();
    let d = SimDriver::new();
    let p = d.compile(&mil, &[WeightFile { path: BLOB_PATH, bytes: &blob }], 1).unwrap();
    let x = d.surface(96 * 64 * 2).unwrap();
    let y = d.surface(64 * 64 * 2).unwrap();
    assert!(d.evaluate(&p, 0, &[&x], &[&y]).unwrap_err().0.contains("not loaded"));
    d.load(&p).unwrap();
    assert!(d.load(&p).is_err(), "double load");
    d.evaluate(&p, 0, &[&x], &[&y]).unwrap();
    assert!(d.evaluate(&p, 1, &[&x], &[&y]).unwrap_err().0.contains("no procedure 1"));
    assert!(d.evaluate(&p, 0, &[&x, &x], &[&y]).unwrap_err().0.contains("takes 1 inputs"));
    let small = d.surface(1024).unwrap();
    assert!(d.evaluate(&p, 0, &[&small], &[&y]).unwrap_err().0.contains("needs 6144 values"));
    assert!(d.evaluate(&p, 0, &[&x], &[&small]).unwrap_err().0.contains("needs 4096 values"));
    assert!(SimDriver::new().compile(&mil, &[WeightFile { path: BLOB_PATH, bytes: &blob }], 2).err().unwrap().0.contains("1 functions, 2 expected"));
}

#[test]
fn unequal_surface_sizes_are_refused() {
    // Two inputs (K split in two tiles): §2 wants one allocation size per side.
    let w = DenseRows { rows: 32, cols: 64, data: vec![0.5; 32 * 64] };
    let spec = GroupSpec { members: vec![&w], op: GroupOp::Linear { concat: false }, input_bound: None };
    let b = build_program(&[(0, &spec)], &[32], &BuildConfig { max_dim: 32, ..BuildConfig::default() }).unwrap();
    let d = SimDriver::new();
    let p = d.compile(&b.mil, &[WeightFile { path: BLOB_PATH, bytes: &b.blob }], 1).unwrap();
    d.load(&p).unwrap();
    let (a, c, y) = (d.surface(4096).unwrap(), d.surface(2048).unwrap(), d.surface(4096).unwrap());
    assert!(d.evaluate(&p, 0, &[&a, &c], &[&y]).unwrap_err().0.contains("unequal sizes"));
    let c = d.surface(4096).unwrap();
    d.evaluate(&p, 0, &[&a, &c], &[&y]).unwrap();
}

#[test]
fn the_writer_refuses_inconsistent_functions() {
    let conv = |x: &str, k| Op::Conv { x: x.into(), w: ConvWeight { offset: 64, int8_scales: None, m: 32, k } };
    let f = |body: Vec<Stmt>, outputs: Vec<&str>| Function {
        name: "main".into(),
        inputs: vec![("x0".into(), [1, 64, 1, 32])],
        body,
        outputs: outputs.into_iter().map(String::from).collect(),
    };
    let e = function_text(&f(vec![Stmt { out: "a".into(), op: conv("x0", 63) }], vec!["a"])).unwrap_err();
    assert!(e.contains("64 input channels, weight expects 63"), "{e}");
    let e = function_text(&f(vec![Stmt { out: "a".into(), op: conv("x1", 64) }], vec!["a"])).unwrap_err();
    assert!(e.contains("undefined value x1"), "{e}");
    let body = vec![Stmt { out: "a".into(), op: conv("x0", 64) }, Stmt { out: "b".into(), op: Op::Add { x: "a".into(), y: "x0".into() } }];
    let e = function_text(&f(body, vec!["b"])).unwrap_err();
    assert!(e.contains("combines shapes"), "{e}");
    let e = function_text(&f(vec![Stmt { out: "a".into(), op: conv("x0", 64) }], vec!["z"])).unwrap_err();
    assert!(e.contains("output z is never defined"), "{e}");
}
