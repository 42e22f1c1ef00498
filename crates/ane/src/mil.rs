//! MIL program text in the dialect the private API reads (§3): `program(1.3)`, a
//! buildInfo dict, functions `NAME<ios18>(typed inputs) { statements } -> (outputs);`,
//! statements `TYPE NAME = OP(key=value, ...)[name=string("NAME")];`.
//!
//! A [`Function`] is a list of primitive statements over fp16 `[1, C, 1, S]` tensors;
//! [`crate::build`] lowers matmuls, fused Q/K/V, MLPs and tiles into it. The writer
//! infers every shape and refuses inconsistent programs, so a wrong lowering fails here
//! and not in the ANE compiler. Only ops reported to work on the ANE are emitted:
//! `conv` (1×1, the baked matmul, §3; its weight optionally int8 through
//! `constexpr_blockwise_shift_scale`), `transpose`, `add`, `mul`, `sigmoid`, `silu`;
//! never `gelu` (rejected, §4), `concat` (conflicting reports, §4) or `tile` (§4).

use crate::blob::BLOB_PATH;
use std::collections::HashMap;
use std::fmt::Write;

/// How the host lays activations in surfaces (see [`crate::convert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Surfaces `[1, K, 1, N]` (tokens innermost): convs take them as they are (OM's banks).
    ChannelMajor,
    /// Surfaces `[1, N, 1, K]` (host row order), transposed in the program around the conv (GA).
    TokenMajor,
}

/// A baked conv weight `[m, k, 1, 1]` in the blob file at metadata offset `offset`:
/// fp16, or int8 with per-output-channel fp16 scales `[m, 1, 1, 1]` at `int8_scales`,
/// dequantized by `constexpr_blockwise_shift_scale` (§3 dtypes; OM's form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvWeight {
    /// Blob metadata offset (what BLOBFILE's offset names).
    pub offset: u64,
    /// For int8 data: the metadata offset of its scales.
    pub int8_scales: Option<u64>,
    /// Output channels.
    pub m: usize,
    /// Input channels.
    pub k: usize,
}

/// One primitive operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// 1×1 conv with a baked weight: `[1, k, 1, s] → [1, m, 1, s]`.
    Conv {
        /// Input value.
        x: String,
        /// Weight.
        w: ConvWeight,
    },
    /// Swap channels and width (`perm = [0, 3, 2, 1]`).
    Transpose {
        /// Input value.
        x: String,
    },
    /// Elementwise sum of equal shapes.
    Add {
        /// Left.
        x: String,
        /// Right.
        y: String,
    },
    /// Elementwise product of equal shapes.
    Mul {
        /// Left.
        x: String,
        /// Right.
        y: String,
    },
    /// Product with an fp16 scalar constant.
    MulScalar {
        /// Input value.
        x: String,
        /// The constant (rounded to fp16).
        c: f32,
    },
    /// Sum with an fp16 scalar constant.
    AddScalar {
        /// Input value.
        x: String,
        /// The constant (rounded to fp16).
        c: f32,
    },
    /// Logistic function.
    Sigmoid {
        /// Input value.
        x: String,
    },
    /// x · sigmoid(x).
    Silu {
        /// Input value.
        x: String,
    },
}

/// `out = op`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    /// Result name (unique in the function).
    pub out: String,
    /// The operation.
    pub op: Op,
}

/// One function (a procedure of a bank, or `main`).
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// Name (`main` alone; `procedure000`... in banks, §1).
    pub name: String,
    /// Inputs: name and shape `[1, C, 1, S]`. Surfaces bind in alphabetical order of
    /// names (§2), so names must sort in index order.
    pub inputs: Vec<(String, [usize; 4])>,
    /// Statements in order.
    pub body: Vec<Stmt>,
    /// Returned values (alphabetical order = index order, like inputs).
    pub outputs: Vec<String>,
}

/// `prefix` + index, zero-padded so names sort in index order (§2 binds alphabetically).
pub fn io_name(prefix: &str, i: usize, count: usize) -> String {
    let width = count.saturating_sub(1).to_string().len();
    format!("{prefix}{i:0width$}")
}

fn dims(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn fp16_literal(c: f32) -> String {
    // Round to fp16 first so the text says exactly the value the ANE will use.
    let v = half::f16::from_f32(c).to_f32();
    format!("{v:?}")
}

/// Text of one function, with every shape inferred and checked.
pub fn function_text(f: &Function) -> Result<String, String> {
    let mut shapes: HashMap<&str, [usize; 4]> = HashMap::new();
    let mut s = String::new();
    let ins: Vec<String> = f.inputs.iter().map(|(n, sh)| format!("tensor<fp16, [{}]> {n}", dims(sh))).collect();
    let _ = writeln!(s, "    func {}<ios18>({}) {{", f.name, ins.join(", "));
    for (n, sh) in &f.inputs {
        if sh[0] != 1 || sh[2] != 1 || sh[1] == 0 || sh[3] == 0 {
            return Err(format!("{}: input {n} shape {sh:?} is not [1, C, 1, S]", f.name));
        }
        if shapes.insert(n, *sh).is_some() {
            return Err(format!("{}: input {n} declared twice", f.name));
        }
    }
    let uses = |p: fn(&Op) -> bool| f.body.iter().any(|st| p(&st.op));
    // Conv parameters once per function, as GA and OM emit them (§3).
    if uses(|o| matches!(o, Op::Conv { .. })) {
        s.push_str("        string c_pad_type = const()[name=string(\"c_pad_type\"), val=string(\"valid\")];\n");
        s.push_str("        tensor<int32, [2]> c_strides = const()[name=string(\"c_strides\"), val=tensor<int32, [2]>([1, 1])];\n");
        s.push_str("        tensor<int32, [4]> c_pad = const()[name=string(\"c_pad\"), val=tensor<int32, [4]>([0, 0, 0, 0])];\n");
        s.push_str("        tensor<int32, [2]> c_dilations = const()[name=string(\"c_dilations\"), val=tensor<int32, [2]>([1, 1])];\n");
        s.push_str("        int32 c_groups = const()[name=string(\"c_groups\"), val=int32(1)];\n");
    }
    if uses(|o| matches!(o, Op::Transpose { .. })) {
        s.push_str("        tensor<int32, [4]> c_perm = const()[name=string(\"c_perm\"), val=tensor<int32, [4]>([0, 3, 2, 1])];\n");
    }
    let mut n_const = 0;
    for st in &f.body {
        let get = |shapes: &HashMap<&str, [usize; 4]>, v: &str| {
            shapes.get(v).copied().ok_or_else(|| format!("{}: {} uses undefined value {v}", f.name, st.out))
        };
        let (shape, call) = match &st.op {
            Op::Conv { x, w } => {
                let xs = get(&shapes, x)?;
                if xs[1] != w.k {
                    return Err(format!("{}: conv {} has {} input channels, weight expects {}", f.name, st.out, xs[1], w.k));
                }
                let wn = format!("{}_w", st.out);
                let wt = format!("tensor<fp16, [{}, {}, 1, 1]>", w.m, w.k);
                let blob = |ty: &str, name: &str, offset: u64| {
                    format!("        {ty} {name} = const()[name=string(\"{name}\"), val={ty}(BLOBFILE(path=string(\"{BLOB_PATH}\"), offset=uint64({offset})))];\n")
                };
                match w.int8_scales {
                    None => s.push_str(&blob(&wt, &wn, w.offset)),
                    Some(so) => {
                        // int8 data and fp16 scales as constants, dequantized at compile time (§3).
                        let (qt, sct) = (format!("tensor<int8, [{}, {}, 1, 1]>", w.m, w.k), format!("tensor<fp16, [{}, 1, 1, 1]>", w.m));
                        s.push_str(&blob(&qt, &format!("{wn}_q"), w.offset));
                        s.push_str(&blob(&sct, &format!("{wn}_s"), so));
                        let _ = writeln!(s, "        {wt} {wn} = constexpr_blockwise_shift_scale(data={wn}_q, scale={wn}_s)[name=string(\"{wn}\")];");
                    }
                }
                (
                    [1, w.m, 1, xs[3]],
                    format!("conv(dilations=c_dilations, groups=c_groups, pad=c_pad, pad_type=c_pad_type, strides=c_strides, weight={wn}, x={x})"),
                )
            }
            Op::Transpose { x } => {
                let xs = get(&shapes, x)?;
                ([xs[0], xs[3], xs[2], xs[1]], format!("transpose(perm=c_perm, x={x})"))
            }
            Op::Add { x, y } | Op::Mul { x, y } => {
                let (xs, ys) = (get(&shapes, x)?, get(&shapes, y)?);
                if xs != ys {
                    return Err(format!("{}: {} combines shapes {xs:?} and {ys:?}", f.name, st.out));
                }
                let op = if matches!(st.op, Op::Add { .. }) { "add" } else { "mul" };
                (xs, format!("{op}(x={x}, y={y})"))
            }
            Op::MulScalar { x, c } | Op::AddScalar { x, c } => {
                let xs = get(&shapes, x)?;
                let cn = format!("c_{n_const}");
                n_const += 1;
                let _ = writeln!(s, "        fp16 {cn} = const()[name=string(\"{cn}\"), val=fp16({})];", fp16_literal(*c));
                let op = if matches!(st.op, Op::MulScalar { .. }) { "mul" } else { "add" };
                (xs, format!("{op}(x={x}, y={cn})"))
            }
            Op::Sigmoid { x } => (get(&shapes, x)?, format!("sigmoid(x={x})")),
            Op::Silu { x } => (get(&shapes, x)?, format!("silu(x={x})")),
        };
        if shapes.insert(&st.out, shape).is_some() {
            return Err(format!("{}: value {} defined twice", f.name, st.out));
        }
        let _ = writeln!(s, "        tensor<fp16, [{}]> {} = {call}[name=string(\"{}\")];", dims(&shape), st.out, st.out);
    }
    for o in &f.outputs {
        if !shapes.contains_key(o.as_str()) {
            return Err(format!("{}: output {o} is never defined", f.name));
        }
    }
    let _ = writeln!(s, "    }} -> ({});", f.outputs.join(", "));
    Ok(s)
}

/// A whole program. One function is `main` under GA's buildInfo; several are a bank
/// under OM's (the two combinations reported to compile, §3).
pub fn program_text(functions: &[Function]) -> Result<String, String> {
    let mut s = String::from("program(1.3)\n");
    if functions.len() == 1 {
        s.push_str(
            "[buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3510.2.1\"}, {\"coremlc-version\", \"3505.4.1\"}, \
             {\"coremltools-component-milinternal\", \"\"}, {\"coremltools-version\", \"9.0\"}})]\n",
        );
    } else {
        s.push_str("[buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3520.4.1\"}, {\"coremlc-version\", \"3520.5.1\"}})]\n");
    }
    s.push_str("{\n");
    let mut names = std::collections::HashSet::new();
    for f in functions {
        if !names.insert(f.name.as_str()) {
            return Err(format!("function {} defined twice", f.name));
        }
        s.push_str(&function_text(f)?);
    }
    s.push_str("}\n");
    Ok(s)
}

/// Name of function `i` of `count` (§1: `main` alone, `procedureNNN` in banks).
pub fn function_name(i: usize, count: usize) -> String {
    if count == 1 {
        "main".into()
    } else {
        format!("procedure{i:03}")
    }
}
