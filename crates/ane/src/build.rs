//! Lowering: groups of weights → one program (MIL text, blob file, and for each
//! function the map from surfaces to the caller's tensors).
//!
//! - A linear group (one weight, or Q/K/V, or gate/up) shares one input. Members become
//!   separate outputs, or (concat) one matrix whose output rows the host splits — a
//!   concatenated output with no `concat` op.
//! - An MLP group is gate, up, down with SiLU or tanh-GELU between, in one function
//!   ([`Part::Whole`]); beside it, for every bucket, its gate/up and its down as plain
//!   matmuls ([`Part::GateUp`], [`Part::Down`]) baking the same blob entries, so weights
//!   planned as one MLP also serve a caller that runs the block as separate matmuls.
//! - Every conv stays within [`BuildConfig::max_dim`] (§4): M is split into several
//!   outputs, K into several inputs whose convs are summed with `add`.
//! - Each (group, tile) is written to the blob once; every bucket's function of the
//!   program bakes it from the same offset.
//! - Overflow guard: each weight is stored as `w / s` with `s` from
//!   [`crate::blob::guard_scale`] (row norms × [`BuildConfig::activation_bound`]); the host
//!   multiplies outputs by `s`. Linear functions also report their largest scaled row
//!   norm so the engine can scale each call's input by a measured power of two.

use crate::blob::{fp16_tile, guard_scale, int8_tile, max_row_norm, BlobWriter, RowSource};
use crate::mil::{function_name, io_name, program_text, ConvWeight, Function, Layout, Op, Stmt};
use std::collections::HashMap;
use std::ops::Range;

/// GELU's tanh form as a sigmoid: 0.5·x·(1 + tanh(z)) = x·sigmoid(2z),
/// 2z = A·x + B·x³ (A = 2·√(2/π), B = A·0.044715). Only mul/add/sigmoid, since `gelu` is rejected (§4).
pub const GELU_A: f32 = 1.595_769;
/// See [`GELU_A`].
pub const GELU_B: f32 = 0.071_354_82;

/// Activation between gate and up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// x·sigmoid(x).
    Silu,
    /// GELU, tanh approximation (ggml's and Gemma's).
    GeluTanh,
}

/// What a group computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOp {
    /// `out_i = x · W_iᵀ` for every member; `concat` stacks the members into one matrix.
    Linear {
        /// One matrix (one conv per M tile) instead of one per member.
        concat: bool,
    },
    /// Members gate, up, down: `out = down(act(gate·x) ⊙ (up·x))`.
    Mlp(Act),
}

/// Which computation of its group a function performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The group's own op: every member of a linear group, or the fused MLP.
    Whole,
    /// An MLP's gate and up as plain matmuls of the block input (outputs: gate, up).
    GateUp,
    /// An MLP's down as a plain matmul of the activated intermediate (input K = F).
    Down,
}

impl Part {
    /// Its code in stored programs.
    pub fn code(self) -> u8 {
        match self {
            Part::Whole => 0,
            Part::GateUp => 1,
            Part::Down => 2,
        }
    }
    /// The part of a stored code.
    pub fn from_code(c: u8) -> Option<Part> {
        [Part::Whole, Part::GateUp, Part::Down].into_iter().find(|p| p.code() == c)
    }
}

/// Weights sharing one input, and what to do with them.
pub struct GroupSpec<'a> {
    /// Members, all with the same K (for an MLP: gate, up, down).
    pub members: Vec<&'a dyn RowSource>,
    /// The computation.
    pub op: GroupOp,
    /// For an MLP: the bound on each token's ‖x‖₂ its fused function is scaled for
    /// ([`BuildConfig::activation_bound`] when `None`). The caller checks it on every call.
    pub input_bound: Option<f32>,
}

impl GroupSpec<'_> {
    /// Input features.
    pub fn k(&self) -> usize {
        self.members[0].cols()
    }
    /// Output features of each output tensor the caller gets.
    pub fn out_dims(&self) -> Vec<usize> {
        match self.op {
            GroupOp::Linear { .. } => self.members.iter().map(|m| m.rows()).collect(),
            GroupOp::Mlp(_) => vec![self.members[2].rows()],
        }
    }
    /// The functions built per bucket: the whole op, and for an MLP also its matmuls on
    /// their own (baking the same blob entries), so that its weights serve plain matmuls.
    pub fn parts(&self) -> &'static [Part] {
        match self.op {
            GroupOp::Linear { .. } => &[Part::Whole],
            GroupOp::Mlp(_) => &[Part::Whole, Part::GateUp, Part::Down],
        }
    }
    /// Input features and output features of each output of `part`.
    pub fn part_io(&self, part: Part) -> (usize, Vec<usize>) {
        match part {
            Part::Whole => (self.k(), self.out_dims()),
            Part::GateUp => (self.k(), vec![self.members[0].rows(), self.members[1].rows()]),
            Part::Down => (self.members[2].cols(), vec![self.members[2].rows()]),
        }
    }
}

/// How weights are stored in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// fp16, as the ANE computes.
    #[default]
    Fp16,
    /// int8 with one fp16 scale per output channel, dequantized to fp16 when the program
    /// is compiled (`constexpr_blockwise_shift_scale`, §3): half the blob, and fewer bits.
    Int8,
}

/// Lowering options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildConfig {
    /// Surface layout.
    pub layout: Layout,
    /// Largest conv M and K (and surface width) (§4).
    pub max_dim: usize,
    /// Assumed bound on ‖x‖₂ of one token's input, for the static guard.
    pub activation_bound: f32,
    /// Weight storage in the blob.
    pub weights: WeightFormat,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig { layout: Layout::ChannelMajor, max_dim: crate::MAX_DIM, activation_bound: 1024.0, weights: WeightFormat::Fp16 }
    }
}

/// Where a run of output channels of one surface goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Which of the group's outputs ([`GroupSpec::out_dims`]).
    pub output: usize,
    /// First feature of that output.
    pub col0: usize,
    /// First channel in the surface tensor.
    pub ch0: usize,
    /// Channels.
    pub len: usize,
}

/// One output surface of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct OutIo {
    /// Tensor shape `[1, C, 1, S]`.
    pub shape: [usize; 4],
    /// What its channels hold.
    pub segments: Vec<Segment>,
    /// Multiply by this on the host (the guard's weight scale).
    pub scale: f32,
}

/// One input surface of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct InIo {
    /// Tensor shape `[1, C, 1, S]`.
    pub shape: [usize; 4],
    /// The input features it carries.
    pub cols: Range<usize>,
}

/// What the engine needs to run one function.
#[derive(Debug, Clone, PartialEq)]
pub struct FnIo {
    /// Caller's group id.
    pub group: usize,
    /// What it computes of its group.
    pub part: Part,
    /// Token tile.
    pub bucket: usize,
    /// Procedure index in the program.
    pub procedure: usize,
    /// Inputs in binding order.
    pub inputs: Vec<InIo>,
    /// Outputs in binding order.
    pub outputs: Vec<OutIo>,
    /// Largest row norm of the stored (scaled) weights; `Some` lets the engine scale
    /// inputs per call to keep outputs under the guard (linear functions only).
    pub weight_norm: Option<f32>,
    /// Multiply-accumulates per token (Σ M·K over its convs, padding included): the
    /// engine bounds an evaluation's time by the work it does.
    pub macs: u64,
}

/// A program ready for a driver.
pub struct BuiltProgram {
    /// MIL text.
    pub mil: String,
    /// The blob file named by [`crate::blob::BLOB_PATH`].
    pub blob: Vec<u8>,
    /// One per function, in procedure order.
    pub functions: Vec<FnIo>,
}

fn round32(n: usize) -> usize {
    n.div_ceil(32) * 32
}

fn tiles(n: usize, max: usize) -> Vec<Range<usize>> {
    (0..n).step_by(max).map(|a| a..(a + max).min(n)).collect()
}

/// A matrix made of member rows stacked (one member, or all for concat).
struct Stack<'a> {
    parts: Vec<(usize, &'a dyn RowSource)>,
    rows: usize,
}

impl RowSource for Stack<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.parts[0].1.cols()
    }
    fn row_f32(&self, r: usize, out: &mut [f32]) {
        let mut r = r;
        for (_, p) in &self.parts {
            if r < p.rows() {
                return p.row_f32(r, out);
            }
            r -= p.rows();
        }
        panic!("row past the stack");
    }
}

/// Blob entries of one program, shared by all its bucket functions.
struct Weights<'a> {
    blob: BlobWriter,
    cfg: &'a BuildConfig,
    done: HashMap<(usize, usize, usize, usize), ConvWeight>,
}

impl Weights<'_> {
    /// The conv weight for rows × cols of `src` (key identifies it), written once.
    fn conv(&mut self, key: (usize, usize, usize, usize), src: &dyn RowSource, rows: Range<usize>, cols: Range<usize>, inv: f32) -> ConvWeight {
        let tm = self.cfg.layout == Layout::TokenMajor;
        let (pm, pk) = if tm { (round32(rows.len()), round32(cols.len())) } else { (rows.len(), cols.len()) };
        if let Some(w) = self.done.get(&key) {
            return *w;
        }
        let w = match self.cfg.weights {
            WeightFormat::Fp16 => ConvWeight { offset: self.blob.push_fp16(&fp16_tile(src, rows, cols, pm, pk, inv)), int8_scales: None, m: pm, k: pk },
            WeightFormat::Int8 => {
                // Data then scales, each its own record: the order coremltools writes (§7 check).
                let (q, scales) = int8_tile(src, rows, cols, pm, pk, inv);
                let offset = self.blob.push_int8(&q);
                ConvWeight { offset, int8_scales: Some(self.blob.push_fp16(&scales)), m: pm, k: pk }
            }
        };
        self.done.insert(key, w);
        w
    }
}

/// Builds the statements of one function.
struct Body<'c> {
    cfg: &'c BuildConfig,
    stmts: Vec<Stmt>,
    n: usize,
    macs: u64,
}

impl Body<'_> {
    fn push(&mut self, op: Op) -> String {
        self.n += 1;
        let out = format!("v{}", self.n);
        self.stmts.push(Stmt { out: out.clone(), op });
        out
    }
    /// Σ_j conv(x_j, w_j): the K tiles of one M tile.
    fn convs(&mut self, xs: &[String], ws: &[ConvWeight]) -> String {
        let mut acc: Option<String> = None;
        for (x, w) in xs.iter().zip(ws) {
            self.macs += (w.m * w.k) as u64;
            let c = self.push(Op::Conv { x: x.clone(), w: *w });
            acc = Some(match acc {
                None => c,
                Some(a) => self.push(Op::Add { x: a, y: c }),
            });
        }
        acc.expect("at least one K tile")
    }
    fn input(&mut self, x: &str) -> String {
        match self.cfg.layout {
            Layout::ChannelMajor => x.to_string(),
            Layout::TokenMajor => self.push(Op::Transpose { x: x.into() }),
        }
    }
    /// Make `v` the function output `name`.
    fn output(&mut self, v: String, name: String) {
        match self.cfg.layout {
            // No op needed: rename the statement that defines it (outputs are never reused).
            Layout::ChannelMajor => self.stmts.iter_mut().rev().find(|s| s.out == v).expect("defined").out = name,
            Layout::TokenMajor => self.stmts.push(Stmt { out: name, op: Op::Transpose { x: v } }),
        }
    }
}

/// Build one program holding, for every group and every bucket, one function.
/// `groups` pairs the caller's group id with its spec.
pub fn build_program(groups: &[(usize, &GroupSpec)], buckets: &[usize], cfg: &BuildConfig) -> Result<BuiltProgram, String> {
    if cfg.max_dim < 32 || !cfg.max_dim.is_multiple_of(32) {
        return Err(format!("max_dim {} must be a positive multiple of 32", cfg.max_dim));
    }
    if let Some(b) = buckets.iter().find(|&&b| b == 0 || !b.is_multiple_of(32) || b > crate::MAX_DIM) {
        return Err(format!("bucket {b}: token tiles must be multiples of 32 up to {} (§2, §4)", crate::MAX_DIM));
    }
    let mut w = Weights { blob: BlobWriter::new(), cfg, done: HashMap::new() };
    let mut functions = Vec::new();
    let mut ios = Vec::new();
    let total = groups.iter().map(|(_, g)| g.parts().len()).sum::<usize>() * buckets.len();
    for (gi, (gid, g)) in groups.iter().enumerate() {
        let k = g.k();
        if g.members.iter().any(|m| m.cols() != k && !matches!(g.op, GroupOp::Mlp(_))) {
            return Err(format!("group {gid}: members differ in K"));
        }
        // Static scales and the stacks that become convs, once per group.
        let a = match g.op {
            GroupOp::Mlp(_) => g.input_bound.unwrap_or(cfg.activation_bound),
            GroupOp::Linear { .. } => cfg.activation_bound,
        };
        let norms: Vec<f32> = g.members.iter().map(|m| max_row_norm(*m, 0..m.rows())).collect();
        let mlp = match g.op {
            GroupOp::Linear { .. } => None,
            GroupOp::Mlp(act) => {
                let [gate, up, down] = [g.members[0], g.members[1], g.members[2]];
                let f = gate.rows();
                if up.rows() != f || up.cols() != k || down.cols() != f {
                    return Err(format!("group {gid}: gate {}x{}, up {}x{}, down {}x{} do not chain", f, k, up.rows(), up.cols(), down.rows(), down.cols()));
                }
                // Chained guard (conservative): |g'| ≤ bg after sg; su keeps |h'| =
                // |act(g)/sg · u/su| ≤ bg·|u|/su under L (|act(g)| ≤ |g| for SiLU and GELU);
                // ‖h'‖₂ ≤ √F · that bound gives sd. The parts bake the same entries: as plain
                // matmuls they scale their inputs per call (their weight norm is reported).
                let sg = guard_scale(norms[0] * a);
                let bg = (norms[0] * a / sg).max(1.0);
                let su = guard_scale(bg * norms[1] * a);
                let bh = (f as f32).sqrt() * bg * norms[1] * a / su;
                let sd = guard_scale(norms[2] * bh);
                let stacks = [Stack { parts: vec![(0, gate)], rows: f }, Stack { parts: vec![(1, up)], rows: f }, Stack { parts: vec![(2, down)], rows: down.rows() }];
                Some((act, [sg, su, sd], stacks))
            }
        };
        for &bucket in buckets {
            for &part in g.parts() {
                let procedure = functions.len();
                let mut body = Body { cfg, stmts: Vec::new(), n: 0, macs: 0 };
                let (pk, _) = g.part_io(part);
                let ktiles = tiles(pk, cfg.max_dim);
                let in_shape = |kt: &Range<usize>| match cfg.layout {
                    Layout::ChannelMajor => [1, kt.len(), 1, bucket],
                    Layout::TokenMajor => [1, bucket, 1, round32(kt.len())],
                };
                let in_names: Vec<String> = (0..ktiles.len()).map(|j| io_name("x", j, ktiles.len())).collect();
                let inputs: Vec<InIo> = ktiles.iter().map(|kt| InIo { shape: in_shape(kt), cols: kt.clone() }).collect();
                let xs: Vec<String> = in_names.iter().map(|x| body.input(x)).collect();
                let mut outs: Vec<(String, OutIo)> = Vec::new();
                let out_shape = |m: usize| match cfg.layout {
                    Layout::ChannelMajor => [1, m, 1, bucket],
                    Layout::TokenMajor => [1, bucket, 1, round32(m)],
                };
                let weight_norm;
                match (g.op, &mlp) {
                    (GroupOp::Linear { concat }, _) => {
                        let stacks: Vec<(Stack, f32)> = if concat {
                            let parts: Vec<(usize, &dyn RowSource)> = g.members.iter().copied().enumerate().collect();
                            let rows = g.members.iter().map(|m| m.rows()).sum();
                            let nmax = norms.iter().copied().fold(0.0, f32::max);
                            vec![(Stack { parts, rows }, guard_scale(nmax * a))]
                        } else {
                            g.members.iter().enumerate().map(|(i, m)| (Stack { parts: vec![(i, *m)], rows: m.rows() }, guard_scale(norms[i] * a))).collect()
                        };
                        let mut wn = 0f32;
                        for (si, (stack, s)) in stacks.iter().enumerate() {
                            let snorm = if concat { norms.iter().copied().fold(0.0, f32::max) } else { norms[stack.parts[0].0] };
                            wn = wn.max(snorm / s);
                            for (ri, rt) in tiles(stack.rows, cfg.max_dim).into_iter().enumerate() {
                                let ws: Vec<ConvWeight> =
                                    ktiles.iter().enumerate().map(|(j, kt)| w.conv((gi, si, ri, j), stack, rt.clone(), kt.clone(), 1.0 / s)).collect();
                                let v = body.convs(&xs, &ws);
                                outs.push((v, OutIo { shape: out_shape(rt.len()), segments: segments(stack, rt), scale: *s }));
                            }
                        }
                        weight_norm = Some(wn);
                    }
                    (GroupOp::Mlp(_), Some((act, [sg, su, sd], [gs, us, ds]))) => {
                        let (act, sg, su, sd) = (*act, *sg, *su, *sd);
                        let ftiles = tiles(gs.rows, cfg.max_dim);
                        // Entry keys (group, member, M tile, K tile) are the same in every part.
                        let gate_up = |w: &mut Weights, body: &mut Body, si: usize, stack: &Stack, s: f32, ri: usize, ft: &Range<usize>| {
                            let ws: Vec<ConvWeight> = ktiles.iter().enumerate().map(|(j, kt)| w.conv((gi, si, ri, j), stack, ft.clone(), kt.clone(), 1.0 / s)).collect();
                            body.convs(&xs, &ws)
                        };
                        let down = |w: &mut Weights, body: &mut Body, hs: &[String]| -> Vec<(String, OutIo)> {
                            let mut outs = Vec::new();
                            for (ri, rt) in tiles(ds.rows, cfg.max_dim).into_iter().enumerate() {
                                let wd: Vec<ConvWeight> = ftiles.iter().enumerate().map(|(j, ft)| w.conv((gi, 2, ri, j), ds, rt.clone(), ft.clone(), 1.0 / sd)).collect();
                                let v = body.convs(hs, &wd);
                                let seg = vec![Segment { output: 0, col0: rt.start, ch0: 0, len: rt.len() }];
                                let scale = if part == Part::Whole { sg * su * sd } else { sd };
                                outs.push((v, OutIo { shape: out_shape(rt.len()), segments: seg, scale }));
                            }
                            outs
                        };
                        match part {
                            Part::Whole => {
                                let mut hs = Vec::new();
                                for (ri, ft) in ftiles.iter().enumerate() {
                                    let gv = gate_up(&mut w, &mut body, 0, gs, sg, ri, ft);
                                    let uv = gate_up(&mut w, &mut body, 1, us, su, ri, ft);
                                    let h = activation(&mut body, gv, act, sg)?;
                                    hs.push(body.push(Op::Mul { x: h, y: uv }));
                                }
                                outs = down(&mut w, &mut body, &hs);
                                weight_norm = None;
                            }
                            Part::GateUp => {
                                for (si, stack, s) in [(0, gs, sg), (1, us, su)] {
                                    for (ri, ft) in ftiles.iter().enumerate() {
                                        let v = gate_up(&mut w, &mut body, si, stack, s, ri, ft);
                                        let seg = vec![Segment { output: si, col0: ft.start, ch0: 0, len: ft.len() }];
                                        outs.push((v, OutIo { shape: out_shape(ft.len()), segments: seg, scale: s }));
                                    }
                                }
                                weight_norm = Some((norms[0] / sg).max(norms[1] / su));
                            }
                            Part::Down => {
                                outs = down(&mut w, &mut body, &xs);
                                weight_norm = Some(norms[2] / sd);
                            }
                        }
                    }
                    (GroupOp::Mlp(_), None) => unreachable!("MLP scales are set above"),
                }
                let out_names: Vec<String> = (0..outs.len()).map(|o| io_name("y", o, outs.len())).collect();
                let mut outputs = Vec::new();
                for ((v, io), name) in outs.into_iter().zip(&out_names) {
                    body.output(v, name.clone());
                    outputs.push(io);
                }
                let macs = body.macs;
                functions.push(Function {
                    name: function_name(procedure, total),
                    inputs: in_names.iter().cloned().zip(inputs.iter().map(|i| i.shape)).collect(),
                    body: body.stmts,
                    outputs: out_names,
                });
                ios.push(FnIo { group: *gid, part, bucket, procedure, inputs, outputs, weight_norm, macs });
            }
        }
    }
    let mil = program_text(&functions)?;
    Ok(BuiltProgram { mil, blob: w.blob.finish(), functions: ios })
}

/// Map rows `rt` of a stack back to member outputs.
fn segments(stack: &Stack, rt: Range<usize>) -> Vec<Segment> {
    let mut segs = Vec::new();
    let mut base = 0;
    for (member, p) in &stack.parts {
        let (a, b) = (base.max(rt.start), (base + p.rows()).min(rt.end));
        if a < b {
            segs.push(Segment { output: *member, col0: a - base, ch0: a - rt.start, len: b - a });
        }
        base += p.rows();
    }
    segs
}

/// `act(sg·g') / sg` from the scaled gate `g'` (exact rewrite; inf inside sigmoid is harmless).
fn activation(body: &mut Body, g: String, act: Act, sg: f32) -> Result<String, String> {
    Ok(match act {
        Act::Silu if sg == 1.0 => body.push(Op::Silu { x: g }),
        Act::Silu => {
            let t = body.push(Op::MulScalar { x: g.clone(), c: sg });
            let s = body.push(Op::Sigmoid { x: t });
            body.push(Op::Mul { x: g, y: s })
        }
        Act::GeluTanh => {
            let b = GELU_B * sg * sg * sg;
            if b > 60000.0 {
                return Err(format!("gate scale {sg} too large for the GELU constants in fp16"));
            }
            let g2 = body.push(Op::Mul { x: g.clone(), y: g.clone() });
            let t = body.push(Op::MulScalar { x: g2, c: b });
            let t = body.push(Op::AddScalar { x: t, c: GELU_A * sg });
            let z = body.push(Op::Mul { x: g.clone(), y: t });
            let s = body.push(Op::Sigmoid { x: z });
            body.push(Op::Mul { x: g, y: s })
        }
    })
}
