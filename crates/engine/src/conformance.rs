//! One conformance suite for every matrix engine, in the spirit of ggml's
//! `test-backend-ops`: the same cases — every weight format × shapes × N (tails and bucket
//! edges), a grouped matmul, fused feed-forward blocks with each activation, attention
//! variants, whole decoder stacks with cached prefixes — run through the real
//! [`Dispatcher`] with a policy that places every op on the engine under test, so bucket
//! tiling and preparation run as in a model. Each case ends in a [`Verdict`]: passed (with
//! its error), failed (and why: over the limit, non-finite, the engine failed it and the
//! CPU recomputed it, or the op never reached the engine), or lacking (the capability, or
//! the shape the engine's `supports` refuses).
//!
//! Ops are compared with plain f64 references over the dequantized weights, stacks with the
//! CPU-only [`Runner`]. The error is ggml's normalized mean squared error taken per token
//! row, the worst row kept: one dropped or wrong token cannot hide among hundreds.

use crate::arch::Activation;
use crate::forward::Sequence;
use crate::matrix::cache::CacheBudget;
use crate::matrix::policy::{Backend, PlacementPolicy};
use crate::matrix::stats::{EngineStats, Stats};
use crate::matrix::{
    AttnShape, Availability, Dispatcher, EngineFailure, FeedForward, MatmulShape, MatrixEngine,
};
use crate::matrix::wrap::{OpHook, Wrapped};
use crate::random_model::RandomModelSpec;
use crate::weights::{TensorSource, Weight};
use crate::{Model, Runner};
use gguf::{GgmlType, GgufFile, GgufWriter};
use half::f16;
use rayon::prelude::*;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Token counts of the matmul cases: one token, a decode batch either side of the CPU's
/// GEMM threshold (7, 8), either side of a 64-token bucket (63, 64, 65), several tiles (300).
pub const MATMUL_NS: [usize; 7] = [1, 7, 8, 63, 64, 65, 300];
/// Token counts of the grouped matmul and feed-forward cases.
pub const BLOCK_NS: [usize; 3] = [1, 65, 300];

/// Error limits (worst row's NMSE), from what the CPU measures here. It quantizes
/// activations to 8 bits for the block formats (Q8_0, Q8_1, Q8_K: up to 3.3e-5, 4.8e-5 for
/// the group), to BF16 for BF16 weights (4.3e-6) and to f16 for F16 (7e-8); an engine with
/// f16 operands rounds both sides (about 2e-7). A wrong kernel is far above: outputs 3 %
/// off give 9e-4, a token left out a non-finite output (or 1, when zeros are written).
const LIMIT_8BIT: f64 = 1e-4;
/// BF16 weights (BF16 activations on the CPU).
const LIMIT_BF16: f64 = 2e-5;
/// F32 and F16 weights: f16 rounding of both operands on an engine.
const LIMIT_FLOAT: f64 = 2e-6;
/// A feed-forward block: two 8-bit roundings in a row (gate/up, then down) give 1.6e-4 on
/// the CPU; the other activation gives 1.2e-2 and more.
const LIMIT_FFN: f64 = 5e-4;
/// Attention over an f16 cache against the f64 reference: 3e-7 on the CPU (queries
/// rounded to f16); a query seeing one key past the causal mask gives 1.4e-3 and more.
const LIMIT_ATTENTION: f64 = 1e-5;
/// A whole stack's logits against the CPU's: the CPU's 8-bit activations through two
/// layers alone give 1.2e-3 (the exact reference engine against it); a token left
/// unprocessed or a batch's K/V rows not stored give 1 and more.
const LIMIT_STACK: f64 = 5e-3;

/// A CPU so slow in the cost model that the engine under test takes every op it supports.
const SLOW_CPU: (f64, f64) = (1.0, 1.0);
/// Threads of the stack cases' runners.
const THREADS: usize = 2;
/// Input width of the grouped matmul, and its members: Q/K/V-like, one input, three M.
const GROUP_K: usize = 512;
const GROUP: [(GgmlType, usize); 3] = [(GgmlType::Q4_K, 130), (GgmlType::Q6_K, 67), (GgmlType::Q8_0, 33)];
/// Feed-forward block: model width and intermediate width.
const FFN_DIMS: (usize, usize) = (256, 512);
/// Per-token input scales, so engines that scale tokens (the ANE's guard) or quantize them
/// per block see different magnitudes in one batch.
const ROW_SCALES: [f32; 4] = [1.0, 0.25, 2.0, 0.5];

/// One case: its name in the report, what it runs, and the largest error it passes with.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name in the report (`matmul Q4_K 67x256 N=65`).
    pub name: String,
    /// The largest error (worst token row's NMSE) it passes with.
    pub limit: f64,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Matmul { ty: GgmlType, m: usize, k: usize, n: usize },
    Group { n: usize },
    FeedForward { activation: Activation, n: usize },
    Attention { shape: AttnShape, pos0: usize, n: usize },
    Stack { arch: &'static str, ty: GgmlType },
}

/// Every weight format that can be a matrix (it has a dot kernel).
pub fn matrix_formats() -> Vec<GgmlType> {
    GgmlType::ALL.into_iter().filter(|&ty| quant::dot_kernel(ty).is_ok()).collect()
}

/// The matmul shapes of a format: M never a multiple of 64; K a whole number of blocks,
/// one short and one wide (odd for the float formats).
fn matmul_shapes(ty: GgmlType) -> [(usize, usize); 2] {
    let wide = match ty.block_size() {
        1 => 333,
        32 => 32 * 23,
        _ => 256 * 3,
    };
    [(67, 256), (130, wide)]
}

fn matmul_limit(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 | GgmlType::F16 => LIMIT_FLOAT,
        GgmlType::BF16 => LIMIT_BF16,
        _ => LIMIT_8BIT,
    }
}

/// Attention variants: (label, shape, first position, tokens).
fn attention_variants() -> Vec<(&'static str, AttnShape, usize, usize)> {
    let shape = |n_head, n_head_kv, head_dim, head_dim_v, window| AttnShape { n_head, n_head_kv, head_dim, head_dim_v, window };
    vec![
        ("GQA 8/2 d64", shape(8, 2, 64, 64, None), 0, 65),
        ("MHA 4/4 d64, decode after a cached prefix", shape(4, 4, 64, 64, None), 40, 1),
        ("GQA 4/2 d128 dv64", shape(4, 2, 128, 64, None), 20, 7),
        ("GQA 6/2 d32, window 16", shape(6, 2, 32, 32, Some(16)), 30, 70),
        ("GQA 8/2 d64, cached prefix", shape(8, 2, 64, 64, None), 100, 63),
        ("MQA 4/1 d64", shape(4, 1, 64, 64, None), 0, 300),
    ]
}

/// Every case of the suite, in report order.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for ty in matrix_formats() {
        for (m, k) in matmul_shapes(ty) {
            for n in MATMUL_NS {
                let name = format!("matmul {} {m}x{k} N={n}", ty.name());
                cases.push(Case { name, limit: matmul_limit(ty), op: Op::Matmul { ty, m, k, n } });
            }
        }
    }
    let group_limit = GROUP.iter().map(|&(ty, _)| matmul_limit(ty)).fold(0.0, f64::max);
    for n in BLOCK_NS {
        let members: Vec<String> = GROUP.iter().map(|(ty, m)| format!("{}x{m}", ty.name())).collect();
        let name = format!("group {} K={GROUP_K} N={n}", members.join("+"));
        cases.push(Case { name, limit: group_limit, op: Op::Group { n } });
    }
    for activation in [Activation::Silu, Activation::GeluTanh] {
        for n in BLOCK_NS {
            let name = format!("feed-forward {activation:?} {}x{} N={n}", FFN_DIMS.0, FFN_DIMS.1);
            cases.push(Case { name, limit: LIMIT_FFN, op: Op::FeedForward { activation, n } });
        }
    }
    for (label, shape, pos0, n) in attention_variants() {
        let name = format!("attention {label} pos {pos0}..{}", pos0 + n);
        cases.push(Case { name, limit: LIMIT_ATTENTION, op: Op::Attention { shape, pos0, n } });
    }
    // phi3: fused projections as row views, partial RoPE, LongRoPE factors; mistral3: YaRN and
    // the query temperature (the longer sequence passes its original context of 64).
    let stacks = [("llama", GgmlType::Q8_0), ("gemma3", GgmlType::Q4_K), ("phi3", GgmlType::Q8_0), ("mistral3", GgmlType::Q8_0)];
    for (arch, ty) in stacks {
        let name = format!("stack tiny {arch} {}, two sequences, cached prefix", ty.name());
        cases.push(Case { name, limit: LIMIT_STACK, op: Op::Stack { arch, ty } });
    }
    cases
}

/// Weights an engine will be asked to run together, announced before their first case to
/// engines that plan their programs ahead of use (the ANE's `add_groups`).
pub enum Planned<'a> {
    /// Matmuls sharing one input: one weight, or a Q/K/V-like group.
    Group(&'a [Weight]),
    /// A feed-forward block.
    FeedForward(&'a FeedForward<'a>),
}

/// Told about each weight group and feed-forward block before its first case; an error
/// fails the case.
pub type Planner<'a> = &'a (dyn Fn(Planned<'_>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Sync);

/// How to run the suite.
#[derive(Default, Clone, Copy)]
pub struct Options<'a> {
    /// Plans each group on the engine before its first case.
    pub plan: Option<Planner<'a>>,
    /// Only the cases whose name contains this.
    pub filter: Option<&'a str>,
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within its limit.
    Pass {
        /// The measured error.
        error: f64,
    },
    /// Wrong, and why.
    Fail {
        /// What went wrong.
        why: String,
        /// The measured error, when there was one to measure.
        error: Option<f64>,
    },
    /// The engine does not offer what the case needs: a capability, or (`unsupported: …`)
    /// the shape or format, as its `supports` says.
    Lacks(String),
}

fn fail(why: impl Into<String>) -> Verdict {
    Verdict::Fail { why: why.into(), error: None }
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The case's name.
    pub case: String,
    /// How it ended.
    pub verdict: Verdict,
    /// Its error limit.
    pub limit: f64,
    /// Wall time, preparation included.
    pub time: Duration,
}

/// The results of one engine.
#[derive(Debug, Clone)]
pub struct Report {
    /// The engine's name.
    pub engine: String,
    /// One per case, in order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// The failed cases.
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Fail { .. })).collect()
    }

    /// Cases that passed, failed and were lacking.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |f: fn(&Verdict) -> bool| self.outcomes.iter().filter(|o| f(&o.verdict)).count();
        (
            count(|v| matches!(v, Verdict::Pass { .. })),
            count(|v| matches!(v, Verdict::Fail { .. })),
            count(|v| matches!(v, Verdict::Lacks(_))),
        )
    }
}

impl fmt::Display for Report {
    /// A table: case, result, error, limit, time, and why for what did not pass.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (pass, failed, lacks) = self.counts();
        let width = self.outcomes.iter().map(|o| o.case.len()).max().unwrap_or(4);
        writeln!(f, "conformance of {}: {pass} passed, {failed} failed, {lacks} lacking", self.engine)?;
        writeln!(f, "{:<width$}  {:<6} {:>9} {:>9} {:>9}", "case", "result", "error", "limit", "ms")?;
        for o in &self.outcomes {
            let (result, error, note) = match &o.verdict {
                Verdict::Pass { error } => ("pass", Some(*error), String::new()),
                Verdict::Fail { why, error } => ("FAIL", *error, format!("  {why}")),
                Verdict::Lacks(what) => ("lacks", None, format!("  {what}")),
            };
            let error = error.map_or("-".to_string(), |e| format!("{e:.2e}"));
            let ms = o.time.as_secs_f64() * 1e3;
            writeln!(f, "{:<width$}  {result:<6} {error:>9} {:>9.0e} {ms:>9.1}{note}", o.case, o.limit)?;
        }
        Ok(())
    }
}

/// Run every case (those `opts.filter` selects) on `engine`.
pub fn run(engine: Arc<dyn MatrixEngine>, opts: &Options<'_>) -> Report {
    let cases: Vec<Case> = cases().into_iter().filter(|c| opts.filter.is_none_or(|f| c.name.contains(f))).collect();
    let mut report = Report { engine: engine.name().to_string(), outcomes: Vec::new() };
    let mut ctx = Ctx::new(engine, opts);
    for case in cases {
        let t0 = Instant::now();
        let verdict = match &mut ctx {
            Ok(ctx) => ctx.run(&case),
            Err(why) => fail(why.clone()),
        };
        report.outcomes.push(Outcome { case: case.name, verdict, limit: case.limit, time: t0.elapsed() });
    }
    report
}

/// The state of one run: the engine under test, a dispatcher that places every op on it,
/// and the weights and reference data made so far (each weight is made and prepared once,
/// whatever the number of cases using it).
struct Ctx<'a> {
    engine: Arc<UnderTest>,
    dispatcher: Dispatcher,
    budget: CacheBudget,
    opts: &'a Options<'a>,
    weights: HashMap<String, Vec<Weight>>,
    /// Inputs and reference outputs of each matmul weight for the largest N (cases take prefixes).
    matmul_data: HashMap<String, Arc<MatmulData>>,
    /// The stack cases' model files, kept until the end: weight keys of in-memory files
    /// name their address, which a later file must not reuse while the engine remembers it.
    files: Vec<Arc<GgufFile>>,
}

/// A matmul weight's inputs `[n, K]` and f64 outputs `[n, M]`.
struct MatmulData {
    x: Vec<f32>,
    want: Vec<f32>,
}

impl<'a> Ctx<'a> {
    fn new(engine: Arc<dyn MatrixEngine>, opts: &'a Options<'a>) -> Result<Self, String> {
        if let Availability::Unavailable(why) = engine.availability() {
            return Err(format!("{} is unavailable: {why}", engine.name()));
        }
        let budget = CacheBudget { memory_bytes: engine.memory_budget().unwrap_or(usize::MAX), ..CacheBudget::default() };
        let engine = Arc::new(under_test(engine));
        let dispatcher = Self::dispatcher(&engine, budget)?;
        Ok(Ctx { engine, dispatcher, budget, opts, weights: HashMap::new(), matmul_data: HashMap::new(), files: Vec::new() })
    }

    /// A dispatcher that places every op `engine` supports on it, whatever N.
    fn dispatcher(engine: &Arc<UnderTest>, budget: CacheBudget) -> Result<Dispatcher, String> {
        let policy = PlacementPolicy::new(Backend::Named(engine.name().to_string()), 1, None, SLOW_CPU);
        Dispatcher::new(vec![engine.clone() as Arc<dyn MatrixEngine>], policy, budget, false).map_err(|e| e.to_string())
    }

    fn run(&mut self, case: &Case) -> Verdict {
        let measured = match case.op {
            Op::Matmul { ty, m, k, n } => self.matmul(ty, m, k, n),
            Op::Group { n } => self.group(n),
            Op::FeedForward { activation, n } => self.feed_forward(activation, n),
            Op::Attention { shape, pos0, n } => self.attention(&shape, pos0, n),
            Op::Stack { arch, ty } => self.stack(arch, ty),
        };
        match measured {
            Ok(error) if error <= case.limit => Verdict::Pass { error },
            Ok(error) => Verdict::Fail { why: format!("error over the limit {:.0e}", case.limit), error: Some(error) },
            Err(verdict) => verdict,
        }
    }

    fn matmul(&mut self, ty: GgmlType, m: usize, k: usize, n: usize) -> Result<f64, Verdict> {
        self.supports(&[MatmulShape { m, k, n, ty }])?;
        let w = self.weights(&format!("{}.{m}x{k}", ty.name()), &[(ty, m, k)], None)?.remove(0);
        let data = self.matmul_data(&w);
        let (x, want) = (&data.x[..n * k], &data.want[..n * m]);
        let mut out = vec![f32::NAN; n * m];
        let before = self.stats();
        self.dispatcher.matmul(&w, x, &mut out);
        self.ran_on_engine(&before, |s| s.matmuls, 1)?;
        worst_row_nmse(&out, want, m)
    }

    fn group(&mut self, n: usize) -> Result<f64, Verdict> {
        let specs: Vec<(GgmlType, usize, usize)> = GROUP.iter().map(|&(ty, m)| (ty, m, GROUP_K)).collect();
        self.supports(&specs.iter().map(|&(ty, m, k)| MatmulShape { m, k, n, ty }).collect::<Vec<_>>())?;
        let ws = self.weights("group", &specs, None)?;
        let x = inputs(n, GROUP_K, 1.0, seed_of("group input") ^ n as u64);
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        let before = self.stats();
        self.dispatcher.matmul_group(&ws.iter().collect::<Vec<_>>(), &x, &mut refs);
        self.ran_on_engine(&before, |s| s.matmuls, ws.len() as u64)?;
        let mut worst = 0f64;
        for (w, out) in ws.iter().zip(&outs) {
            let (want, _) = reference(&dequantized(w), w.rows, w.cols, &x, n);
            worst = worst.max(worst_row_nmse(out, &want, w.rows)?);
        }
        Ok(worst)
    }

    fn feed_forward(&mut self, activation: Activation, n: usize) -> Result<f64, Verdict> {
        if self.engine.inner().capabilities().feed_forward.is_none() {
            return Err(Verdict::Lacks("no FusedFeedForward".into()));
        }
        let (k, ff) = FFN_DIMS;
        let specs = [(GgmlType::Q4_K, ff, k), (GgmlType::Q6_K, ff, k), (GgmlType::Q8_0, k, ff)];
        self.supports(&specs.map(|(ty, m, k)| MatmulShape { m, k, n, ty }))?;
        let ws = self.weights(&format!("ffn.{activation:?}"), &specs, Some(activation))?;
        let ffn = FeedForward { gate: &ws[0], up: &ws[1], down: &ws[2], activation, biases: None };
        // Gates of std about 1.5 (0.4 to 3 with the row scales): both activations' curved part.
        let x = inputs(n, k, (6.75 * 3.0 / k as f32).sqrt(), seed_of("ffn input") ^ n as u64);
        let mut out = vec![f32::NAN; n * k];
        let before = self.stats();
        self.dispatcher.feed_forward(&ffn, &x, &mut out);
        self.ran_on_engine(&before, |s| s.fused_blocks, 1)?;
        worst_row_nmse(&out, &feed_forward_reference(&ffn, &x, n), k)
    }

    fn attention(&self, shape: &AttnShape, pos0: usize, n: usize) -> Result<f64, Verdict> {
        let op = self.engine.inner().capabilities().attention.ok_or_else(|| Verdict::Lacks("no AttentionOp".into()))?;
        op.supports_attention(shape).map_err(|why| Verdict::Lacks(format!("unsupported: {why}")))?;
        let (ctx, kvd, vd) = (pos0 + n, shape.n_head_kv * shape.head_dim, shape.n_head_kv * shape.head_dim_v);
        let seed = seed_of(&format!("{shape:?} {pos0} {n}"));
        // Keys of std 1.15 and queries scaled by 3/√d: scores of std about 2, a peaked softmax.
        let half_floats = |len, seed| random(len, seed).into_iter().map(|v| f16::from_f32(2.0 * v)).collect::<Vec<f16>>();
        let (k_cache, v_cache) = (half_floats(ctx * kvd, seed), half_floats(ctx * vd, seed ^ 1));
        let q_scale = 3.0 / (shape.head_dim as f32).sqrt();
        let q: Vec<f32> = random(n * shape.n_head * shape.head_dim, seed ^ 2).into_iter().map(|v| v * q_scale).collect();
        let positions: Vec<usize> = (pos0..ctx).collect();
        let mut out = vec![f32::NAN; n * shape.n_head * shape.head_dim_v];
        let before = self.stats();
        self.dispatcher.attention(shape, &q, &positions, &k_cache, &v_cache, &mut out);
        self.ran_on_engine(&before, |s| s.attention, 1)?;
        let want = attention_reference(shape, &q, &positions, &k_cache, &v_cache);
        worst_row_nmse(&out, &want, shape.n_head * shape.head_dim_v)
    }

    fn stack(&mut self, arch: &str, ty: GgmlType) -> Result<f64, Verdict> {
        let stack = self.engine.inner().capabilities().stack.ok_or_else(|| Verdict::Lacks("no DecoderStack".into()))?;
        let spec = RandomModelSpec { arch: arch.into(), ..RandomModelSpec::preset("tiny", ty).expect("the tiny preset exists") };
        let bytes = spec.build().map_err(|e| fail(format!("random model: {e}")))?.to_bytes();
        let file = Arc::new(GgufFile::from_bytes(bytes).map_err(|e| fail(format!("random model: {e}")))?);
        self.files.push(file.clone());
        let load = || Model::from_file(file.clone(), &mut |_, _| {}).map_err(|e| fail(format!("random model: {e}")));
        let model = load()?;
        stack.supports_stack(&model.layers).map_err(|why| Verdict::Lacks(format!("unsupported: {why}")))?;
        let weights = model.layers.iter().flat_map(|l| l.weights().map(|(_, w)| w)).chain([&model.output]);
        self.supports(&weights.map(|w| MatmulShape::of(w, SESSION_BATCH)).collect::<Vec<_>>())?;
        let (n_layer, n_vocab) = (model.config.n_layer, model.config.n_vocab);
        let cpu = session(&Runner::new(load()?, THREADS).map_err(|e| fail(e.to_string()))?)?;
        let dispatcher = Self::dispatcher(&self.engine, self.budget).map_err(fail)?;
        let runner = Runner::with_dispatcher(model, THREADS, dispatcher).map_err(|e| fail(e.to_string()))?;
        let got = session(&runner)?;
        let s = snapshot(&runner.dispatcher.stats, self.engine.name());
        if s.failures > 0 {
            return Err(fail(format!("the engine failed {} stack(s), recomputed on the CPU: {}", s.failures, self.engine.hook().take())));
        }
        if s.blocks != SESSION_CALLS * n_layer as u64 {
            return Err(fail(format!("{} of {SESSION_CALLS} batches ran as a stack on the engine", s.blocks / n_layer as u64)));
        }
        worst_row_nmse(&got, &cpu, n_vocab)
    }

    /// Lacks when the engine refuses any of `shapes`.
    fn supports(&self, shapes: &[MatmulShape]) -> Result<(), Verdict> {
        shapes.iter().try_for_each(|s| {
            self.engine.supports(s).map_err(|why| Verdict::Lacks(format!("unsupported: {} {}x{}: {why}", s.ty.name(), s.m, s.k)))
        })
    }

    /// The weights of group `group` (each `(type, M, K)`), made and announced on first use.
    fn weights(&mut self, group: &str, specs: &[(GgmlType, usize, usize)], ffn: Option<Activation>) -> Result<Vec<Weight>, Verdict> {
        if let Some(ws) = self.weights.get(group) {
            return Ok(ws.clone());
        }
        let ws: Vec<Weight> = specs
            .iter()
            .enumerate()
            .map(|(i, &(ty, m, k))| {
                let name = format!("conformance.{group}.{i}");
                random_weight(&name, ty, m, k, seed_of(&name))
            })
            .collect();
        if let Some(plan) = self.opts.plan {
            let planned = match ffn {
                Some(activation) => plan(Planned::FeedForward(&FeedForward { gate: &ws[0], up: &ws[1], down: &ws[2], activation, biases: None })),
                None => plan(Planned::Group(&ws)),
            };
            planned.map_err(|e| fail(format!("planning {group}: {e}")))?;
        }
        self.weights.insert(group.to_string(), ws.clone());
        Ok(ws)
    }

    /// Inputs for the largest N and their f64 outputs through `w`.
    fn matmul_data(&mut self, w: &Weight) -> Arc<MatmulData> {
        self.matmul_data
            .entry(w.name.clone())
            .or_insert_with(|| {
                let n = MATMUL_NS[MATMUL_NS.len() - 1];
                let x = inputs(n, w.cols, 1.0, seed_of(&w.name) ^ 1);
                let (want, _) = reference(&dequantized(w), w.rows, w.cols, &x, n);
                Arc::new(MatmulData { x, want })
            })
            .clone()
    }

    fn stats(&self) -> EngineStats {
        snapshot(&self.dispatcher.stats, self.engine.name())
    }

    /// Ok when the op just dispatched ran on the engine: `count` grew by `want` and the
    /// engine failed nothing (a failure is recomputed on the CPU: right numbers, wrong engine).
    fn ran_on_engine(&self, before: &EngineStats, count: fn(&EngineStats) -> u64, want: u64) -> Result<(), Verdict> {
        let after = self.stats();
        if after.failures > before.failures {
            return Err(fail(format!("the engine failed it, recomputed on the CPU: {}", self.engine.hook().take())));
        }
        if count(&after) - count(before) != want {
            return Err(fail("placed on the CPU, not on the engine"));
        }
        Ok(())
    }
}

fn snapshot(stats: &Stats, engine: &str) -> EngineStats {
    stats.snapshot().get(engine).cloned().unwrap_or_default()
}

/// Forward calls of [`session`] (each one stack on the engine) and its largest batch.
const SESSION_CALLS: u64 = 5;
const SESSION_BATCH: usize = 190;

/// Every logit row of: a 10-token prompt of sequence B (its cached prefix); one batch of A
/// (150 fresh tokens, past gemma3's 128-token window) and B (40 more); a decode step of both;
/// then the host rewriting rows an engine may hold: B cut back to 30 positions and continued
/// with 6 other tokens, A replaced by a copy of B's first 10 positions and stepped.
fn session(r: &Runner) -> Result<Vec<f32>, Verdict> {
    let tokens = |n: usize, seed: u32| -> Vec<u32> { (0..n as u32).map(|i| (i * 7919 + seed) % 512).collect() };
    let failed = |e: crate::EngineError| fail(e.to_string());
    let (mut a, mut b) = (r.new_cache(256), r.new_cache(256));
    let mut out = r.forward(&mut b, &tokens(10, 5), 0..10).map_err(failed)?;
    let prefix_b = b.snapshot();
    let (ta, tb, step) = (tokens(150, 13), tokens(40, 29), [7u32]);
    let batches: [[&[u32]; 2]; 2] = [[&ta, &tb], [&step, &step]];
    for [xa, xb] in batches {
        let mut seqs = [
            Sequence { cache: &mut a, tokens: xa, logit_rows: 0..xa.len() },
            Sequence { cache: &mut b, tokens: xb, logit_rows: 0..xb.len() },
        ];
        r.forward_batch(&mut seqs).map_err(failed)?.into_iter().for_each(|l| out.extend(l));
    }
    b.truncate(30);
    out.extend(r.forward(&mut b, &tokens(6, 41), 0..6).map_err(failed)?);
    if !a.restore(&prefix_b) {
        return Err(fail("a snapshot of 10 positions does not fit a 256-position cache"));
    }
    out.extend(r.forward(&mut a, &step, 0..1).map_err(failed)?);
    Ok(out)
}

/// The worst token row's normalized mean squared error, `Σ(out − want)² / Σ want²` over
/// each row of `row` values; an error when any output is not finite.
pub fn worst_row_nmse(out: &[f32], want: &[f32], row: usize) -> Result<f64, Verdict> {
    if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
        return Err(fail(format!("non-finite output {} at token {}", out[bad], bad / row)));
    }
    let nmse = |(o, w): (&[f32], &[f32])| {
        let err: f64 = o.iter().zip(w).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let norm: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
        err / norm.max(1e-30)
    };
    Ok(out.chunks(row).zip(want.chunks(row)).map(nmse).fold(0.0, f64::max))
}

/// FNV-1a of a name: each weight and input draws its own values, the same on every run.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// `[n, k]` activations in [-scale, scale), each token scaled again by [`ROW_SCALES`].
fn inputs(n: usize, k: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut x = random(n * k, seed);
    x.chunks_mut(k).enumerate().for_each(|(t, row)| row.iter_mut().for_each(|v| *v *= scale * ROW_SCALES[t % ROW_SCALES.len()]));
    x
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` values in [-1, 1) (never all zeros), filled in parallel from `seed`.
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; len];
    v.par_chunks_mut(4096).enumerate().for_each(|(c, chunk)| {
        let mut s = splitmix(seed ^ (c as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        for x in chunk {
            s = splitmix(s);
            *x = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        }
    });
    v
}

/// A random `[m, k]` weight of type `ty` (values in [-1, 1) quantized with the `quant`
/// crate), stored in its own in-memory GGUF file.
pub fn random_weight(name: &str, ty: GgmlType, m: usize, k: usize, seed: u64) -> Weight {
    let vals = random(m * k, seed);
    let row_bytes = ty.bytes_for(k as u64).expect("k is whole blocks") as usize;
    let mut data = vec![0u8; m * row_bytes];
    data.par_chunks_mut(row_bytes).zip(vals.par_chunks(k)).for_each(|(d, v)| quant::quantize_row(ty, v, d).expect("quantize"));
    let mut w = GgufWriter::new();
    w.add_tensor(name, &[k as u64, m as u64], ty, data).expect("add tensor");
    let file = GgufFile::from_bytes(w.to_bytes()).expect("a file we wrote parses");
    TensorSource::new(Arc::new(file)).matrix(name, k, m).expect("a matrix type")
}

/// The weight dequantized to f32 (the references' operand).
pub fn dequantized(w: &Weight) -> Vec<f32> {
    let mut f = vec![0f32; w.rows * w.cols];
    f.par_chunks_mut(w.cols).enumerate().for_each(|(r, row)| w.dequantize_row(r, row));
    f
}

/// `out[t, r] = Σ x[t, :] · w[r, :]`, products in f32 summed in f64; also the norm of all
/// the products, √Σ(x·w)², the scale of the rounding error when a sum cancels.
pub fn reference(wf: &[f32], m: usize, k: usize, x: &[f32], n: usize) -> (Vec<f32>, f64) {
    let mut out = vec![0f32; n * m];
    let mut sq = vec![0f64; n];
    out.par_chunks_mut(m).zip(sq.par_iter_mut()).enumerate().for_each(|(t, (row, sq))| {
        let xr = &x[t * k..(t + 1) * k];
        for (o, wr) in row.iter_mut().zip(wf.chunks_exact(k)) {
            // Eight partial sums keep this fast without changing the f64 accuracy.
            let (mut acc, mut acc2) = ([0f64; 8], [0f64; 8]);
            for (xc, wc) in xr.chunks(8).zip(wr.chunks(8)) {
                for (i, (a, b)) in xc.iter().zip(wc).enumerate() {
                    let p = (a * b) as f64;
                    acc[i] += p;
                    acc2[i] += p * p;
                }
            }
            *o = acc.iter().sum::<f64>() as f32;
            *sq += acc2.iter().sum::<f64>();
        }
    });
    (out, sq.iter().sum::<f64>().sqrt())
}

/// A feed-forward block in f64: gate and up through [`reference`], biases, the activation
/// (GELU's tanh form, not the CPU's f16 table) and product in f64, then down and its bias.
pub fn feed_forward_reference(f: &FeedForward<'_>, x: &[f32], n: usize) -> Vec<f32> {
    use crate::arch::{SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT};
    let (k, ff) = (f.gate.cols, f.gate.rows);
    let (gate, _) = reference(&dequantized(f.gate), ff, k, x, n);
    let (up, _) = reference(&dequantized(f.up), ff, k, x, n);
    let bias = |b: Option<&Vec<f32>>, i: usize, len: usize| b.map_or(0.0, |b| b[i % len] as f64);
    let mid: Vec<f32> = gate
        .iter()
        .zip(&up)
        .enumerate()
        .map(|(i, (&g, &u))| {
            let g = g as f64 + bias(f.biases.map(|b| &b.gate), i, ff);
            let u = u as f64 + bias(f.biases.map(|b| &b.up), i, ff);
            let (a, u) = match f.activation {
                Activation::Silu => (g / (1.0 + (-g).exp()), u),
                Activation::GeluTanh => (0.5 * g * (1.0 + (0.797_884_560_802_865_4 * g * (1.0 + 0.044715 * g * g)).tanh()), u),
                Activation::SwigluOai => {
                    let (limit, alpha) = (SWIGLU_OAI_LIMIT as f64, SWIGLU_OAI_ALPHA as f64);
                    let g = g.min(limit);
                    (g / (1.0 + (-alpha * g).exp()), u.clamp(-limit, limit) + 1.0)
                }
            };
            (a * u) as f32
        })
        .collect();
    let mut out = reference(&dequantized(f.down), f.down.rows, ff, &mid, n).0;
    if let Some(b) = f.biases {
        crate::cpu::ops::add_bias(&mut out, &b.down);
    }
    out
}

/// Causal attention in f64 (scores, softmax and the weighted sum), as
/// [`crate::cpu::attention::attention`] defines it: the cache holds positions
/// `0..=positions[last]`, a query at `p` sees keys `p - window < j <= p`.
pub fn attention_reference(s: &AttnShape, q: &[f32], positions: &[usize], k: &[f16], v: &[f16]) -> Vec<f32> {
    let (d, dv, group) = (s.head_dim, s.head_dim_v, s.n_head / s.n_head_kv);
    let (kvd, vd) = (s.n_head_kv * d, s.n_head_kv * dv);
    let mut out = vec![0f32; positions.len() * s.n_head * dv];
    out.par_chunks_mut(dv).enumerate().for_each(|(job, o)| {
        let (t, h) = (job / s.n_head, job % s.n_head);
        let (pos, g) = (positions[t], h / group);
        let seen = s.window.map_or(0, |w| (pos + 1).saturating_sub(w))..pos + 1;
        let qh = &q[(t * s.n_head + h) * d..][..d];
        let score = |j: usize| -> f64 { qh.iter().zip(&k[j * kvd + g * d..][..d]).map(|(a, b)| *a as f64 * b.to_f64()).sum() };
        let scores: Vec<f64> = seen.clone().map(score).collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for (i, o) in o.iter_mut().enumerate() {
            let sum: f64 = seen.clone().zip(&weights).map(|(j, w)| w * v[j * vd + g * dv + i].to_f64()).sum();
            *o = (sum / total) as f32;
        }
    });
    out
}

/// The engine under test, renamed so that its work is counted apart from the CPU's
/// fallback; its hook keeps the last failure's reason for the report.
type UnderTest = Wrapped<LastFailure>;

fn under_test(inner: Arc<dyn MatrixEngine>) -> UnderTest {
    let name = format!("{} (under test)", inner.name());
    Wrapped::with_hook(inner, name, LastFailure::default())
}

/// Remembers the last failure.
#[derive(Default)]
struct LastFailure(Mutex<Option<String>>);

impl OpHook for LastFailure {
    fn failed(&self, f: &EngineFailure) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.to_string());
    }
}

impl LastFailure {
    fn take(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| "no reason given".into())
    }
}
