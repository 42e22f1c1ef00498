//! Validation and execution of parsed MIL. "Compiling" checks every statement: known op,
//! known arguments, defined operands, the declared result type equal to the inferred one,
//! constants (blobs read through their headers) matching their declared types, and the
//! ANE's constraints we rely on (§2, §4). Execution runs in fp16 arithmetic: every op's
//! result is rounded to fp16; conv accumulates in f32 and, like the ANE (§4), turns
//! outputs beyond ±32752 into inf — so the overflow guard is exercised for real.

use super::parse::{Arg, DType, Func, Lit, Program, Stmt, Ty};
use crate::blob;
use engine::cpu::ops::dot;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// A tensor of fp16 values (held as f32, each exactly an fp16).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

fn round16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// [`round16`] of every value, in place, through `half`'s vectorized slice conversions
/// (the same round-to-nearest-even as the scalar one).
fn round16_all(v: &mut [f32]) {
    let mut buf = [f16::ZERO; 512];
    for c in v.chunks_mut(buf.len()) {
        let b = &mut buf[..c.len()];
        b.convert_from_f32_slice(c);
        b.convert_to_f32_slice(c);
    }
}

/// `f` of every value, rounded to fp16, in parallel.
fn rounded(n: usize, f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut data = vec![0f32; n];
    data.par_chunks_mut(8192).enumerate().for_each(|(c, d)| {
        for (i, v) in d.iter_mut().enumerate() {
            *v = f(c * 8192 + i);
        }
        round16_all(d);
    });
    data
}

/// One executable step.
#[derive(Debug, Clone)]
enum Step {
    Conv { x: String, w: Arc<Tensor> },
    Transpose { x: String, perm: Vec<usize> },
    Binary { x: String, y: String, mul: bool },
    Scalar { x: String, c: f32, mul: bool },
    Sigmoid { x: String },
    Silu { x: String },
}

/// A validated function.
#[derive(Debug, Clone)]
pub struct CFunc {
    /// Name.
    pub name: String,
    /// Inputs in binding (alphabetical) order: name and shape.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Outputs in binding (alphabetical) order: name and shape.
    pub outputs: Vec<(String, Vec<usize>)>,
    steps: Vec<(String, Step)>,
}

/// A validated program.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Functions in declaration (procedure) order.
    pub funcs: Vec<CFunc>,
}

/// Ops the ANE is reported to reject or to misbehave on (§4), with the reason.
fn known_bad(op: &str) -> Option<&'static str> {
    match op {
        "gelu" => Some("gelu is rejected by the ANE compiler (§4); decompose it"),
        "tile" => Some("tile corrupts every later evaluation until the process exits (§4)"),
        _ => None,
    }
}

struct Checker<'a> {
    weights: &'a HashMap<String, Vec<u8>>,
    /// Blob records read so far, by (path, offset, int8).
    blobs: &'a mut HashMap<(String, u64, bool), Arc<Tensor>>,
    types: HashMap<String, Ty>,
    consts: HashMap<String, Lit>,
    tensors: HashMap<String, Arc<Tensor>>,
    f: &'a Func,
}

fn fp16_tensor(ty: &Ty) -> Option<&[usize]> {
    match ty {
        Ty::Tensor(DType::Fp16, s) => Some(s),
        _ => None,
    }
}

impl Checker<'_> {
    fn err<T>(&self, st: &Stmt, msg: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("line {}: {} {}: {msg}", st.line, self.f.name, st.out))
    }

    /// The named argument, resolved to a value name (operands must be named values).
    fn operand(&self, st: &Stmt, key: &str) -> Result<(String, Ty), String> {
        match st.args.iter().find(|(k, _)| k == key) {
            None => self.err(st, format!("{} needs argument {key}", st.op)),
            Some((_, Arg::Lit(_))) => self.err(st, format!("argument {key} must name a value")),
            Some((_, Arg::Name(n))) => match self.types.get(n) {
                None => self.err(st, format!("argument {key} uses undefined value {n}")),
                Some(t) => Ok((n.clone(), t.clone())),
            },
        }
    }

    /// A constant argument's literal (named const or inline), if given.
    fn constant(&self, st: &Stmt, key: &str) -> Result<Option<Lit>, String> {
        match st.args.iter().find(|(k, _)| k == key) {
            None => Ok(None),
            Some((_, Arg::Lit(l))) => Ok(Some(l.clone())),
            Some((_, Arg::Name(n))) => match self.consts.get(n) {
                Some(l) => Ok(Some(l.clone())),
                None => self.err(st, format!("argument {key} must be a constant, {n} is computed")),
            },
        }
    }

    fn only_args(&self, st: &Stmt, allowed: &[&str]) -> Result<(), String> {
        match st.args.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => self.err(st, format!("{} has no argument {k}", st.op)),
            None => Ok(()),
        }
    }

    fn ints(&self, st: &Stmt, key: &str) -> Result<Option<Vec<i64>>, String> {
        Ok(match self.constant(st, key)? {
            None => None,
            Some(Lit::List(Ty::Tensor(DType::Int32, _), v)) => Some(v.iter().map(|x| *x as i64).collect()),
            Some(Lit::Int(i)) => Some(vec![i]),
            Some(other) => return self.err(st, format!("{key} must be int32, got {other:?}")),
        })
    }

    fn tensor_of(&mut self, st: &Stmt, lit: &Lit) -> Result<Ty, String> {
        Ok(match lit {
            Lit::Str(_) => Ty::Scalar(DType::Str),
            Lit::Bool(_) => Ty::Scalar(DType::Bool),
            Lit::Int(_) => match &st.ty {
                Ty::Scalar(d @ (DType::Int32 | DType::Uint64)) => Ty::Scalar(*d),
                _ => Ty::Scalar(DType::Int32),
            },
            Lit::Float(_) => match &st.ty {
                Ty::Scalar(d @ (DType::Fp16 | DType::Fp32)) => Ty::Scalar(*d),
                _ => Ty::Scalar(DType::Fp32),
            },
            Lit::List(ty, v) => {
                let Ty::Tensor(_, shape) = ty else { return self.err(st, "list literal without a tensor type") };
                if shape.iter().product::<usize>() != v.len() {
                    return self.err(st, format!("literal has {} values for shape {shape:?}", v.len()));
                }
                ty.clone()
            }
            Lit::Blob(ty, path, offset) => {
                let (int8, shape) = match ty {
                    Ty::Tensor(DType::Fp16, s) => (false, s),
                    Ty::Tensor(DType::Int8, s) => (true, s),
                    _ => return self.err(st, "only fp16 and int8 BLOBFILE constants are supported"),
                };
                let Some(file) = self.weights.get(path) else { return self.err(st, format!("no weight file {path}")) };
                let key = (path.clone(), *offset, int8);
                if !self.blobs.contains_key(&key) {
                    let n = shape.iter().product();
                    let data = if int8 {
                        blob::read_int8(file, *offset, n).or_else(|e| self.err(st, e))?.iter().map(|&v| v as f32).collect()
                    } else {
                        blob::read_fp16(file, *offset, n).or_else(|e| self.err(st, e))?.iter().map(|x| x.to_f32()).collect()
                    };
                    self.blobs.insert(key.clone(), Arc::new(Tensor { shape: shape.to_vec(), data }));
                }
                let t = self.blobs[&key].clone();
                if t.shape != *shape {
                    return self.err(st, format!("blob at {offset} already read with shape {:?}", t.shape));
                }
                self.tensors.insert(st.out.clone(), t);
                ty.clone()
            }
        })
    }

    /// `constexpr_blockwise_shift_scale(data, scale)`: `data · scale` with `scale`
    /// broadcast over blocks (each of its dims divides data's), as fp16, at compile time.
    fn blockwise_shift_scale(&mut self, st: &Stmt) -> Result<Ty, String> {
        self.only_args(st, &["data", "scale"])?;
        let (d, dt) = self.operand(st, "data")?;
        let (s, stt) = self.operand(st, "scale")?;
        let (Ty::Tensor(DType::Int8, dshape), Ty::Tensor(DType::Fp16, sshape)) = (&dt, &stt) else {
            return self.err(st, format!("data must be int8 and scale fp16, are {dt:?} and {stt:?}"));
        };
        let (Some(data), Some(scale)) = (self.tensors.get(&d).cloned(), self.tensors.get(&s).cloned()) else {
            return self.err(st, "data and scale must be constants");
        };
        if sshape.len() != dshape.len() || sshape.iter().zip(dshape).any(|(b, a)| *b == 0 || a % b != 0) {
            return self.err(st, format!("scale {sshape:?} does not divide data {dshape:?} into blocks"));
        }
        // Row-major index → block index, per dimension.
        let rank = dshape.len();
        let mut out = Vec::with_capacity(data.data.len());
        let mut idx = vec![0usize; rank];
        for &q in &data.data {
            let mut si = 0;
            for a in 0..rank {
                si = si * sshape[a] + idx[a] / (dshape[a] / sshape[a]);
            }
            out.push(round16(q * scale.data[si]));
            for a in (0..rank).rev() {
                idx[a] += 1;
                if idx[a] < dshape[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
        self.tensors.insert(st.out.clone(), Arc::new(Tensor { shape: dshape.clone(), data: out }));
        Ok(Ty::Tensor(DType::Fp16, dshape.clone()))
    }

    /// Validate one statement; returns its step (None for constants).
    fn stmt(&mut self, st: &Stmt) -> Result<Option<Step>, String> {
        if let Some(why) = known_bad(&st.op) {
            return self.err(st, why);
        }
        let allowed = |k: &str, l: &Lit| (k == "name" && matches!(l, Lit::Str(_))) || (k == "val" && st.op == "const");
        if let Some((k, l)) = st.attrs.iter().find(|(k, l)| !allowed(k, l)) {
            return self.err(st, format!("unexpected attribute {k} = {l:?}"));
        }
        let (ty, step) = match st.op.as_str() {
            "const" => {
                if !st.args.is_empty() {
                    return self.err(st, "const takes no arguments");
                }
                let Some((_, val)) = st.attrs.iter().find(|(k, _)| k == "val").cloned() else {
                    return self.err(st, "const needs a val");
                };
                let ty = self.tensor_of(st, &val)?;
                self.consts.insert(st.out.clone(), val);
                (ty, None)
            }
            "constexpr_blockwise_shift_scale" => (self.blockwise_shift_scale(st)?, None),
            "conv" => {
                self.only_args(st, &["x", "weight", "strides", "pad_type", "pad", "dilations", "groups"])?;
                let (x, xt) = self.operand(st, "x")?;
                let (w, _) = self.operand(st, "weight")?;
                let Some(xs) = fp16_tensor(&xt).filter(|s| s.len() == 4).map(<[usize]>::to_vec) else {
                    return self.err(st, format!("conv input must be an fp16 rank-4 tensor, is {xt:?}"));
                };
                let Some(wt) = self.tensors.get(&w).cloned() else { return self.err(st, "conv weight must be a constant tensor") };
                if !matches!(self.types.get(&w), Some(Ty::Tensor(DType::Fp16, _))) {
                    return self.err(st, "conv weight must be fp16 (dequantize int8 with constexpr_blockwise_shift_scale)");
                }
                if wt.shape.len() != 4 || wt.shape[2] != 1 || wt.shape[3] != 1 || wt.shape[1] != xs[1] {
                    return self.err(st, format!("weight {:?} is not [M, {}, 1, 1]", wt.shape, xs[1]));
                }
                for (k, want) in [("strides", vec![1, 1]), ("dilations", vec![1, 1]), ("pad", vec![0, 0, 0, 0]), ("groups", vec![1])] {
                    if let Some(v) = self.ints(st, k)? {
                        if v != want {
                            return self.err(st, format!("{k} {v:?}: only 1×1 convs with {want:?} are interpreted"));
                        }
                    }
                }
                match self.constant(st, "pad_type")? {
                    None => {}
                    Some(Lit::Str(s)) if s == "valid" || s == "custom" => {}
                    Some(o) => return self.err(st, format!("pad_type {o:?}")),
                }
                (Ty::Tensor(DType::Fp16, vec![xs[0], wt.shape[0], xs[2], xs[3]]), Some(Step::Conv { x, w: wt }))
            }
            "transpose" => {
                self.only_args(st, &["x", "perm"])?;
                let (x, xt) = self.operand(st, "x")?;
                let Some(xs) = fp16_tensor(&xt).map(<[usize]>::to_vec) else { return self.err(st, "transpose of a non-fp16 value") };
                let perm = self.ints(st, "perm")?.unwrap_or_default();
                let mut seen = vec![false; xs.len()];
                if perm.len() != xs.len() || perm.iter().any(|&p| p < 0 || p as usize >= xs.len() || std::mem::replace(&mut seen[p as usize], true)) {
                    return self.err(st, format!("perm {perm:?} is not a permutation of rank {}", xs.len()));
                }
                let perm: Vec<usize> = perm.iter().map(|&p| p as usize).collect();
                (Ty::Tensor(DType::Fp16, perm.iter().map(|&p| xs[p]).collect()), Some(Step::Transpose { x, perm }))
            }
            op @ ("add" | "mul") => {
                self.only_args(st, &["x", "y"])?;
                let mul = op == "mul";
                let (x, xt) = self.operand(st, "x")?;
                let Some(xs) = fp16_tensor(&xt).map(<[usize]>::to_vec) else { return self.err(st, format!("{op} of a non-fp16 value")) };
                match self.constant(st, "y") {
                    Ok(Some(Lit::Float(c))) => (xt.clone(), Some(Step::Scalar { x, c: round16(c as f32), mul })),
                    _ => {
                        let (y, yt) = self.operand(st, "y")?;
                        if fp16_tensor(&yt) != Some(&xs) {
                            return self.err(st, format!("{op} of {xt:?} and {yt:?}: shapes must match"));
                        }
                        (xt.clone(), Some(Step::Binary { x, y, mul }))
                    }
                }
            }
            op @ ("sigmoid" | "silu") => {
                self.only_args(st, &["x"])?;
                let (x, xt) = self.operand(st, "x")?;
                if fp16_tensor(&xt).is_none() {
                    return self.err(st, format!("{op} of a non-fp16 value"));
                }
                (xt, Some(if op == "silu" { Step::Silu { x } } else { Step::Sigmoid { x } }))
            }
            other => return self.err(st, format!("op '{other}' is not in the interpreted subset")),
        };
        if ty != st.ty {
            return self.err(st, format!("declared {:?} but {} yields {ty:?}", st.ty, st.op));
        }
        if self.types.insert(st.out.clone(), ty).is_some() {
            return self.err(st, "value defined twice");
        }
        Ok(step)
    }
}

/// Validate a parsed program against its weight files.
pub fn compile(p: &Program, weights: &HashMap<String, Vec<u8>>) -> Result<Compiled, String> {
    if p.funcs.is_empty() {
        return Err("program has no functions".into());
    }
    for (path, file) in weights {
        blob::read_header(file).map_err(|e| format!("{path}: {e}"))?;
    }
    let mut blobs = HashMap::new();
    let mut funcs = Vec::new();
    for f in &p.funcs {
        if funcs.iter().any(|g: &CFunc| g.name == f.name) {
            return Err(format!("line {}: function {} defined twice", f.line, f.name));
        }
        if !f.opset.starts_with("ios") {
            return Err(format!("line {}: {}: unknown opset {}", f.line, f.name, f.opset));
        }
        let mut c = Checker { weights, blobs: &mut blobs, types: HashMap::new(), consts: HashMap::new(), tensors: HashMap::new(), f };
        let io = |name: &str, ty: &Ty| -> Result<Vec<usize>, String> {
            match fp16_tensor(ty) {
                Some(s) if s.len() == 4 && s[0] == 1 && s.iter().all(|&d| d > 0) && s[3] % 32 == 0 => Ok(s.to_vec()),
                Some(s) if s.len() == 4 && s[3] % 32 != 0 => {
                    Err(format!("line {}: {}: {name} width {} is not a multiple of 32 (§2: rows must be 64-byte multiples)", f.line, f.name, s[3]))
                }
                _ => Err(format!("line {}: {}: {name} must be fp16 [1, C, H, W], is {ty:?}", f.line, f.name)),
            }
        };
        let mut inputs = Vec::new();
        for (ty, name) in &f.inputs {
            inputs.push((name.clone(), io(name, ty)?));
            if c.types.insert(name.clone(), ty.clone()).is_some() {
                return Err(format!("line {}: {}: input {name} declared twice", f.line, f.name));
            }
        }
        let mut steps = Vec::new();
        for st in &f.body {
            if let Some(step) = c.stmt(st)? {
                steps.push((st.out.clone(), step));
            }
        }
        let mut outputs = Vec::new();
        for o in &f.outputs {
            let ty = c.types.get(o).ok_or_else(|| format!("line {}: {}: output {o} is never defined", f.line, f.name))?.clone();
            if c.consts.contains_key(o) || c.tensors.contains_key(o) {
                return Err(format!("line {}: {}: output {o} is a constant", f.line, f.name));
            }
            outputs.push((o.clone(), io(o, &ty)?));
        }
        // §2: surfaces bind in alphabetical order of names.
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        outputs.sort_by(|a, b| a.0.cmp(&b.0));
        funcs.push(CFunc { name: f.name.clone(), inputs, outputs, steps });
    }
    Ok(Compiled { funcs })
}

/// Lanes of the dot-product accumulator: every product `a[c]·b[c]` of the 16-aligned part
/// goes to lane `c % 16` (mul and add each rounded to f32, never fused), the lanes are
/// then summed in order, and the remainder's products added last. The tiled kernels
/// below keep exactly this order, so every output is the same f32 whichever runs.
const LANES: usize = 16;

/// The lanes summed in order, plus the remainder's products.
#[inline(always)]
fn finish(acc: &[f32; LANES], a_tail: &[f32], b_tail: &[f32]) -> f32 {
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}


/// Weight rows per tile of the vectorized kernels.
const ROWS: usize = 4;
/// Weight rows per parallel job: its token blocks are reused by all of them.
const JOB_ROWS: usize = 32;
/// Bytes of tokens per block, kept in cache while a job's rows pass over them.
const TOKEN_BLOCK_BYTES: usize = 128 << 10;

/// `out[r·s + t] = dot(w row r, x row t)` for `w` [rows, k], `x` [s, k] and `t` in
/// `ts` (rows ≤ [`ROWS`]; `out` holds `rows` rows of `s`).
fn dots(w: &[f32], x: &[f32], k: usize, s: usize, ts: Range<usize>, out: &mut [f32]) {
    let rows = out.len() / s;
    #[cfg(target_arch = "x86_64")]
    if rows == ROWS && k >= LANES {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature is present; shapes are checked by the kernel's asserts.
            return unsafe { x86::dots_avx512(w, x, k, s, ts, out) };
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: as above.
            return unsafe { x86::dots_avx(w, x, k, s, ts, out) };
        }
    }
    rest(w, x, k, s, rows, ts, out);
}

/// [`dots`] one at a time.
fn rest(w: &[f32], x: &[f32], k: usize, s: usize, rows: usize, ts: Range<usize>, out: &mut [f32]) {
    for r in 0..rows {
        for t in ts.clone() {
            out[r * s + t] = dot(&w[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
        }
    }
}

/// Register-tiled [`dot`]s: [`ROWS`] weight rows × a few tokens per tile, each output's
/// 16 lanes in vector registers, the lane sums and remainders through [`finish`].
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{finish, rest, LANES, ROWS};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Tokens per tile of the AVX-512 kernel: 4 × 4 accumulators of one register each.
    const T512: usize = 4;
    /// Tokens per tile of the AVX kernel: 4 × 2 accumulators of two registers each.
    const T256: usize = 2;

    // Loads as array reads: `_mm*_loadu_ps` go through `read_unaligned`, whose debug
    // checks (the test profile keeps debug assertions) spill every vector to the stack.
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        std::mem::transmute::<[f32; 16], __m512>(*p.cast::<[f32; 16]>())
    }
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        std::mem::transmute::<[f32; 8], __m256>(*p.cast::<[f32; 8]>())
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots_avx512(w: &[f32], x: &[f32], k: usize, s: usize, ts: Range<usize>, out: &mut [f32]) {
        assert!(w.len() >= ROWS * k && x.len() >= s * k && out.len() >= ROWS * s && ts.end <= s);
        let body = k / LANES * LANES;
        let wp = w.as_ptr();
        let mut t0 = ts.start;
        while t0 + T512 <= ts.end {
            let xp = x.as_ptr().add(t0 * k);
            let mut acc = [[_mm512_setzero_ps(); T512]; ROWS];
            let mut c = 0;
            while c < body {
                let mut ws = [_mm512_setzero_ps(); ROWS];
                for (r, v) in ws.iter_mut().enumerate() {
                    *v = load16(wp.add(r * k + c));
                }
                for t in 0..T512 {
                    let xv = load16(xp.add(t * k + c));
                    for r in 0..ROWS {
                        acc[r][t] = _mm512_add_ps(acc[r][t], _mm512_mul_ps(ws[r], xv));
                    }
                }
                c += LANES;
            }
            for r in 0..ROWS {
                for t in 0..T512 {
                    let mut lanes = [0f32; LANES];
                    _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r][t]);
                    let xt = &x[(t0 + t) * k..(t0 + t + 1) * k];
                    out[r * s + t0 + t] = finish(&lanes, &w[r * k + body..(r + 1) * k], &xt[body..]);
                }
            }
            t0 += T512;
        }
        rest(w, x, k, s, ROWS, t0..ts.end, out);
    }

    #[target_feature(enable = "avx")]
    pub(super) unsafe fn dots_avx(w: &[f32], x: &[f32], k: usize, s: usize, ts: Range<usize>, out: &mut [f32]) {
        assert!(w.len() >= ROWS * k && x.len() >= s * k && out.len() >= ROWS * s && ts.end <= s);
        let body = k / LANES * LANES;
        let wp = w.as_ptr();
        let mut t0 = ts.start;
        while t0 + T256 <= ts.end {
            let xp = x.as_ptr().add(t0 * k);
            // Lanes 0..8 and 8..16 of each output: independent sums, each in its own order.
            let mut acc = [[[_mm256_setzero_ps(); 2]; T256]; ROWS];
            let mut c = 0;
            while c < body {
                for h in 0..2 {
                    let mut ws = [_mm256_setzero_ps(); ROWS];
                    for (r, v) in ws.iter_mut().enumerate() {
                        *v = load8(wp.add(r * k + c + 8 * h));
                    }
                    for t in 0..T256 {
                        let xv = load8(xp.add(t * k + c + 8 * h));
                        for r in 0..ROWS {
                            acc[r][t][h] = _mm256_add_ps(acc[r][t][h], _mm256_mul_ps(ws[r], xv));
                        }
                    }
                }
                c += LANES;
            }
            for r in 0..ROWS {
                for t in 0..T256 {
                    let mut lanes = [0f32; LANES];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][t][0]);
                    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[r][t][1]);
                    let xt = &x[(t0 + t) * k..(t0 + t + 1) * k];
                    out[r * s + t0 + t] = finish(&lanes, &w[r * k + body..(r + 1) * k], &xt[body..]);
                }
            }
            t0 += T256;
        }
        rest(w, x, k, s, ROWS, t0..ts.end, out);
    }
}

fn conv(x: &Tensor, w: &Tensor) -> Tensor {
    let (k, m) = (x.shape[1], w.shape[0]);
    let sp = x.shape[2] * x.shape[3];
    // Tokens contiguous per position, so every output is one dot of two contiguous rows.
    let mut xt = vec![0f32; sp * k];
    for c in 0..k {
        for s in 0..sp {
            xt[s * k + c] = x.data[c * sp + s];
        }
    }
    let block = (TOKEN_BLOCK_BYTES / (4 * k)).max(8) / 8 * 8;
    let mut out = vec![0f32; m * sp];
    out.par_chunks_mut(JOB_ROWS * sp).enumerate().for_each(|(b, rows)| {
        let w = &w.data[b * JOB_ROWS * k..][..rows.len() / sp * k];
        for t0 in (0..sp).step_by(block) {
            for (i, sub) in rows.chunks_mut(ROWS * sp).enumerate() {
                dots(&w[i * ROWS * k..], &xt, k, sp, t0..(t0 + block).min(sp), sub);
            }
        }
        round16_all(rows);
        for v in rows.iter_mut() {
            // §4: matmul outputs beyond ~32752 become inf on the ANE.
            if v.abs() > crate::FP16_MATMUL_LIMIT {
                *v = f32::INFINITY.copysign(*v);
            }
        }
    });
    Tensor { shape: vec![x.shape[0], m, x.shape[2], x.shape[3]], data: out }
}

fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let mut strides = vec![1; x.shape.len()];
    for i in (0..x.shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * x.shape[i + 1];
    }
    let n = x.data.len();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        data.push(x.data[idx.iter().zip(perm).map(|(&i, &p)| i * strides[p]).sum::<usize>()]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor { shape, data }
}

fn map(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    Tensor { shape: x.shape.clone(), data: rounded(x.data.len(), |i| f(x.data[i])) }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CFunc {
    /// Run on packed fp16 inputs (binding order); returns packed fp16 outputs.
    pub fn run(&self, inputs: &[&[f16]]) -> Result<Vec<Vec<f16>>, String> {
        let mut vals: HashMap<&str, Arc<Tensor>> = HashMap::new();
        for ((name, shape), src) in self.inputs.iter().zip(inputs) {
            let n: usize = shape.iter().product();
            if src.len() < n {
                return Err(format!("{}: input {name} needs {n} values, surface holds {}", self.name, src.len()));
            }
            let mut data = vec![0f32; n];
            src[..n].convert_to_f32_slice(&mut data);
            vals.insert(name, Arc::new(Tensor { shape: shape.clone(), data }));
        }
        for (out, step) in &self.steps {
            let get = |n: &str| vals.get(n).cloned().expect("validated");
            let t = match step {
                Step::Conv { x, w } => conv(&get(x), w),
                Step::Transpose { x, perm } => transpose(&get(x), perm),
                Step::Binary { x, y, mul } => {
                    let (a, b) = (get(x), get(y));
                    let data = rounded(a.data.len(), |i| if *mul { a.data[i] * b.data[i] } else { a.data[i] + b.data[i] });
                    Tensor { shape: a.shape.clone(), data }
                }
                Step::Scalar { x, c, mul } => map(&get(x), |v| if *mul { v * c } else { v + c }),
                Step::Sigmoid { x } => map(&get(x), sigmoid),
                Step::Silu { x } => map(&get(x), |v| v * sigmoid(v)),
            };
            vals.insert(out, Arc::new(t));
        }
        Ok(self
            .outputs
            .iter()
            .map(|(o, _)| {
                let data = &vals[o.as_str()].data;
                let mut out = vec![f16::ZERO; data.len()];
                out.convert_from_f32_slice(data);
                out
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The dot every output was computed with before the tiled kernels: they must match it bit for bit.
    use engine::cpu::ops::dot as plain_dot;

    #[test]
    fn slice_rounding_is_the_scalar_rounding() {
        // Every fp16 rounding boundary region: subnormals, halfway cases, overflow, inf.
        let mut v: Vec<f32> = (0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) >> 1) * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        v.extend([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, 2.98e-8, 5.97e-8, f32::INFINITY, f32::NEG_INFINITY]);
        let want: Vec<u32> = v.iter().map(|&x| round16(x).to_bits()).collect();
        round16_all(&mut v);
        let bad = v.iter().zip(&want).position(|(a, b)| a.to_bits() != *b && !a.is_nan());
        assert_eq!(bad, None);
    }

    #[test]
    fn tiled_dots_are_bit_identical_to_the_plain_dot() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            round16(((seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 3.0)
        };
        // Odd row counts (a partial last job), token counts off the tiles, K with and without a remainder.
        for (m, k, s) in [(4, 16, 4), (7, 37, 5), (9, 576, 64), (5, 1000, 3), (12, 15, 33), (8, 640, 34), (70, 2048, 21)] {
            let w = Tensor { shape: vec![m, k, 1, 1], data: (0..m * k).map(|_| next()).collect() };
            let x = Tensor { shape: vec![1, k, 1, s], data: (0..k * s).map(|_| next()).collect() };
            let got = conv(&x, &w);
            for o in 0..m {
                for t in 0..s {
                    let xr: Vec<f32> = (0..k).map(|c| x.data[c * s + t]).collect();
                    let want = round16(plain_dot(&w.data[o * k..(o + 1) * k], &xr));
                    assert_eq!(got.data[o * s + t].to_bits(), want.to_bits(), "m {m} k {k} s {s}: output {o}, token {t}");
                }
            }
            // Each kernel the machine has, not only the one conv picks.
            #[cfg(target_arch = "x86_64")]
            if k >= LANES {
                let xt: Vec<f32> = (0..s).flat_map(|t| (0..k).map(move |c| (c, t))).map(|(c, t)| x.data[c * s + t]).collect();
                let want: Vec<f32> = (0..ROWS * s)
                    .map(|i| if i % s == 0 { 0.0 } else { plain_dot(&w.data[i / s * k..(i / s + 1) * k], &xt[i % s * k..(i % s + 1) * k]) })
                    .collect();
                type Kernel = unsafe fn(&[f32], &[f32], usize, usize, Range<usize>, &mut [f32]);
                let kernels: [(&str, bool, Kernel); 2] = [
                    ("avx512", std::arch::is_x86_feature_detected!("avx512f"), x86::dots_avx512),
                    ("avx", std::arch::is_x86_feature_detected!("avx"), x86::dots_avx),
                ];
                for (name, _, kernel) in kernels.into_iter().filter(|k| k.1) {
                    let mut got = vec![0f32; ROWS * s];
                    // SAFETY: the feature was detected.
                    unsafe { kernel(&w.data, &xt, k, s, 1..s, &mut got) };
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{name}: m {m} k {k} s {s}");
                }
            }
        }
    }
}
