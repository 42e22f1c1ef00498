//! [`AneEngine`]: the ANE behind the placement machinery's [`MatrixEngine`] interface,
//! over any [`Driver`].
//!
//! - Weights are grouped as the forward pass calls them (Q/K/V, output, gate/up, down,
//!   vocabulary); [`crate::plan`] packs groups × buckets into few programs, compiled on
//!   the first `prepare` that needs them and unloaded when the prepared-weight cache has
//!   evicted every (weight, bucket) they serve. Weights the plan does not know get a
//!   program of their own.
//! - The compile budget is counted per process; a program whose build or compile failed
//!   is quarantined, so it is not retried (and paid for) on every op.
//! - With [`AneConfig::cache_dir`], built programs are kept on disk ([`crate::store`]):
//!   a later process loads them instead of rebuilding, and the driver keeps its compiled
//!   form beside them.
//! - [`AneEngine::warm_up`] compiles the plan's programs at model load, within the budget.
//! - Feed-forward blocks ([`AneConfig::fuse_mlp`]): each layer's gate, up and down are
//!   planned as one MLP group, whose program holds per bucket the fused block (taken
//!   whole through [`MatrixEngine::feed_forward`]: the F-wide intermediate never leaves
//!   the engine) and its gate/up and down as plain matmuls over the same blob entries,
//!   so the dispatcher's separate matmuls (the policy refused the block, or it runs
//!   unfused) are served without another compile.
//! - A matmul converts x into input surfaces (scaled by a power of two measured from the
//!   token norms, the guard's dynamic half), evaluates, and converts back, applying the
//!   weight scales; N beyond the bucket is tiled here, and conversion overlaps the
//!   evaluations (`engine/pipeline.rs`). Any driver error, evaluation time-out (the program is
//!   then quarantined) or non-finite output is an [`EngineFailure`]: the dispatcher
//!   recomputes the op on the CPU.

use crate::blob::{guard_scale, RowSource, BLOB_PATH};
use crate::build::{build_program, Act, BuildConfig, BuiltProgram, FnIo, GroupOp, GroupSpec, Part, WeightFormat};
use crate::convert::{self, as_f16, as_f16_mut, SurfaceShape};
use crate::error::AneError;
use crate::ffi::{Driver, WeightFile};
use crate::mil::Layout;
use crate::plan::{GroupKind, GroupShape, Plan, PlanConfig};
use crate::store::{self, KeyUnit};
use ::engine::matrix::disk_cache::{DiskCache, Lookup};
use ::engine::arch::Activation;
use ::engine::matrix::{Availability, Capabilities, EngineFailure, FeedForward, FusedFeedForward, MatmulShape, MatrixEngine, WeightKey};
use ::engine::plan::{FeedForwardPart, GroupName};
use ::engine::weights::Weight;
use ::engine::Model;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use crate::evaluator::Evaluator;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod pipeline;

/// Largest input norm a fused feed-forward block is scaled for (see `plan_model`).
pub const MLP_BOUND_CAP: f32 = 64.0;

/// Surface allocations are rounded up to this (OM: 64 KiB multiples; also clears the
/// ~48 KB minimum below which evaluation fails with 0x1d, §2).
pub const SURFACE_ALIGN: usize = 64 << 10;

/// The bound on one evaluation: `base + FLOPs / min_flops_per_s` (an evaluation can hang,
/// §4). Past it the op is an [`EngineFailure`] (recomputed on the CPU) and the program is
/// quarantined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalTimeout {
    /// Fixed allowance (dispatch, a cold start).
    pub base: Duration,
    /// The slowest rate still taken for progress.
    pub min_flops_per_s: f64,
}

impl Default for EvalTimeout {
    /// 5 s plus 1 s per GFLOP: minutes for the largest function on the interpreter, far
    /// beyond any ANE evaluation (§5: TFLOP/s).
    fn default() -> Self {
        EvalTimeout { base: Duration::from_secs(5), min_flops_per_s: 1e9 }
    }
}

/// Engine options.
#[derive(Debug, Clone, PartialEq)]
pub struct AneConfig {
    /// Buckets, packing and the program budget.
    pub plan: PlanConfig,
    /// Layout, tile limit, static guard bound.
    pub build: BuildConfig,
    /// Q/K/V (and gate/up) as one concatenated matrix per group instead of one conv per member.
    pub concat_groups: bool,
    /// Plan each layer's gate, up and down as one MLP group and take whole feed-forward
    /// blocks from the dispatcher ([`MatrixEngine::fuses_feed_forward`]); `false` plans
    /// gate/up and down as two linear groups, and blocks run as separate matmuls.
    pub fuse_mlp: bool,
    /// The persistent compiled-model directory (`--kernel-cache`): built programs are
    /// stored there and reused by later processes. `None` keeps nothing on disk.
    pub cache_dir: Option<PathBuf>,
    /// The bound on each evaluation; `None` waits forever.
    pub eval_timeout: Option<EvalTimeout>,
    /// Convert the next evaluation's inputs and the previous one's outputs while the
    /// current one runs; `false` does one evaluation at a time (same results).
    pub overlap: bool,
}

impl Default for AneConfig {
    fn default() -> Self {
        AneConfig {
            plan: PlanConfig::default(),
            build: BuildConfig::default(),
            concat_groups: false,
            fuse_mlp: true,
            cache_dir: None,
            eval_timeout: Some(EvalTimeout::default()),
            overlap: true,
        }
    }
}

/// What [`AneEngine::warm_up`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WarmUp {
    /// Programs compiled and loaded by this warm-up.
    pub loaded: usize,
    /// Programs that were ready before it.
    pub already_ready: usize,
    /// Programs left cold because the compile budget ran out.
    pub over_budget: usize,
    /// Why each failed program failed (they are quarantined).
    pub failed: Vec<String>,
}

/// What the engine has done so far (for tests, summaries and the warm-up report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AneStats {
    /// Programs built (MIL text and weight blob generated from the weights).
    pub builds: usize,
    /// Programs handed to the driver's compiler (the compile budget counts these).
    pub compiles: usize,
    /// Programs read back from the compiled-model directory instead of built.
    pub disk_hits: usize,
    /// Directory entries found corrupt or stale, deleted and rebuilt.
    pub disk_rejects: usize,
    /// Fused feed-forward calls whose input exceeded the bound their program was scaled
    /// for (a token's ‖x‖₂), run on the engine as gate/up, host activation, down instead.
    pub mlp_over_bound: usize,
    /// Evaluations that did not return within [`AneConfig::eval_timeout`].
    pub timeouts: usize,
}

struct Group {
    weights: Vec<Weight>,
    keys: Vec<WeightKey>,
    op: GroupOp,
    /// An MLP's bound on each token's ‖x‖₂ (checked on every fused call).
    input_bound: Option<f32>,
}

/// Rows `rows` of a weight (a unit of a vocabulary split across programs).
struct RowSlice<'a> {
    w: &'a Weight,
    rows: Range<usize>,
}

impl RowSource for RowSlice<'_> {
    fn rows(&self) -> usize {
        self.rows.len()
    }
    fn cols(&self) -> usize {
        self.w.cols
    }
    fn row_f32(&self, r: usize, out: &mut [f32]) {
        self.w.dequantize_row(self.rows.start + r, out)
    }
}

struct Loaded<P> {
    program: Arc<P>,
    functions: Vec<FnIo>,
}

enum Status<P> {
    Cold,
    Ready(Loaded<P>),
    Failed(String),
}

struct ProgramSlot<P> {
    /// (group, row offset of the unit) per unit, by the unit index used as the build id.
    units: Vec<(usize, usize)>,
    buckets: Vec<usize>,
    status: Status<P>,
    holders: HashSet<(WeightKey, usize)>,
    plan_units: Vec<crate::plan::Unit>,
}

struct State<D: Driver> {
    groups: Vec<Group>,
    key_group: HashMap<WeightKey, usize>,
    programs: Vec<ProgramSlot<D::Program>>,
    stats: AneStats,
    pool: HashMap<usize, Vec<D::Surface>>,
}

/// See the module docs.
pub struct AneEngine<D: Driver> {
    driver: Arc<D>,
    evaluator: Evaluator<D>,
    cfg: AneConfig,
    disk: Option<DiskCache>,
    state: Mutex<State<D>>,
}

impl<D: Driver> AneEngine<D> {
    /// An engine that plans each weight on its first `prepare`.
    pub fn new(driver: D, cfg: AneConfig) -> Self {
        let state = State { groups: Vec::new(), key_group: HashMap::new(), programs: Vec::new(), stats: AneStats::default(), pool: HashMap::new() };
        // An unusable directory is reported, not fatal: the engine builds as without one.
        let disk = cfg.cache_dir.as_ref().and_then(|d| {
            DiskCache::new(d).map_err(|e| eprintln!("warning: ane: kernel cache {}: {e}; not caching on disk", d.display())).ok()
        });
        let driver = Arc::new(driver);
        AneEngine { evaluator: Evaluator::new(driver.clone()), driver, cfg, disk, state: Mutex::new(state) }
    }

    /// An engine planned for `model`'s matmul groups, as the forward pass dispatches them.
    pub fn for_model(driver: D, model: &Model, cfg: AneConfig) -> Result<Self, AneError> {
        let e = Self::new(driver, cfg);
        e.plan_model(model)?;
        Ok(e)
    }

    /// Plan `model`'s groups: each layer's op groups as its plan lists them (Q/K/V, output,
    /// gate/up, down; gate/up and down as one fused MLP when [`AneConfig::fuse_mlp`] is on),
    /// then the head.
    /// Without it every weight gets a program of its own on first use, which exhausts
    /// the compile budget on a real model: call it once the model is loaded.
    pub fn plan_model(&self, model: &Model) -> Result<(), AneError> {
        let linear = GroupOp::Linear { concat: self.cfg.concat_groups };
        let mut groups = Vec::new();
        for l in &model.layers {
            // A mixture of experts' router is planned like any weight; its experts are not
            // (a program per expert would exhaust the compile budget): they stay on the CPU.
            for g in l.groups() {
                match (g.name, &l.ffn) {
                    (GroupName::FfnGateUp, FeedForwardPart::Dense(dense)) if self.cfg.fuse_mlp && dense.block().is_plain() => {
                        // The block's input is RMSNorm's output x̂ ⊙ γ with ‖x̂‖₂ ≤ √K: so
                        // ‖x‖₂ ≤ √K · max|γ|, far tighter than the generic bound, and exact.
                        let gmax = l.ffn_norm.iter().fold(0f32, |m, v| m.max(v.abs()));
                        // The bound is exact but loose when a few γ are large (Gemma: 500-1800 against
                        // real norms of 10-58), and a loose bound scales the fused block's fp16 output
                        // into subnormals: cap it; a call above the cap runs as parts on the engine.
                        let bound = ((l.ffn_norm.len() as f32).sqrt() * gmax * 1.001).min(self.cfg.build.activation_bound).min(MLP_BOUND_CAP);
                        let bound = (bound.is_finite() && bound > 0.0).then_some(bound);
                        let mlp = GroupOp::Mlp(act_of(dense.activation).expect("a plain block's activation"));
                        groups.push((vec![dense.gate.clone(), dense.up.clone(), dense.down.clone()], mlp, bound));
                    }
                    // Inside the fused block above.
                    (GroupName::FfnDown, FeedForwardPart::Dense(dense)) if self.cfg.fuse_mlp && dense.block().is_plain() => {}
                    _ => groups.push((g.weights.iter().map(|(_, w)| (*w).clone()).collect(), linear, None)),
                }
            }
        }
        groups.push((vec![model.output.clone()], linear, None));
        self.add_groups_bounded(groups)
    }

    /// Plan weight groups (each shares one input and is dispatched together).
    pub fn add_groups(&self, groups: Vec<(Vec<Weight>, GroupOp)>) -> Result<(), AneError> {
        self.add_groups_bounded(groups.into_iter().map(|(ws, op)| (ws, op, None)).collect())
    }

    /// [`Self::add_groups`] with, for MLP groups, the bound on each token's ‖x‖₂ their fused
    /// function is scaled for (`None`: [`BuildConfig::activation_bound`]). A tighter bound
    /// keeps the intermediate far from fp16's subnormals; a call whose input exceeds it
    /// runs as separate matmuls on the engine (counted in [`AneStats::mlp_over_bound`]).
    pub fn add_groups_bounded(&self, groups: Vec<(Vec<Weight>, GroupOp, Option<f32>)>) -> Result<(), AneError> {
        let mut st = self.lock();
        let first = st.groups.len();
        let mut shapes = Vec::new();
        for (ws, op, input_bound) in groups {
            let keys: Vec<WeightKey> = ws.iter().map(WeightKey::of).collect();
            if let Some(k) = keys.iter().find(|k| st.key_group.contains_key(*k)) {
                return Err(AneError::AlreadyPlanned(k.tensor.clone()));
            }
            let gi = st.groups.len();
            keys.iter().for_each(|k| {
                st.key_group.insert(k.clone(), gi);
            });
            // The kind only decides how the plan counts bytes (an MLP is not a plain stack).
            let kind = if matches!(op, GroupOp::Mlp(_)) { GroupKind::Mlp } else { GroupKind::Qkv };
            shapes.push(GroupShape { layer: None, kind, ms: ws.iter().map(|w| w.rows).collect(), k: ws[0].cols });
            st.groups.push(Group { weights: ws, keys, op, input_bound });
        }
        let mut pc = self.cfg.plan.clone();
        pc.max_programs = usize::MAX; // the budget is enforced on compiles, across all plans
        let plan = Plan::pack(shapes, &pc).map_err(AneError::Budget)?;
        for p in plan.programs {
            let units = p.units.iter().map(|u| (first + u.group, u.rows.as_ref().map_or(0, |r| r.start))).collect();
            let plan_units = p.units.iter().map(|u| crate::plan::Unit { group: first + u.group, ..u.clone() }).collect();
            st.programs.push(ProgramSlot { units, buckets: p.buckets, status: Status::Cold, holders: HashSet::new(), plan_units });
        }
        Ok(())
    }

    /// Programs compiled so far (the budget counts these).
    pub fn compiles(&self) -> usize {
        self.lock().stats.compiles
    }

    /// Builds, compiles and compiled-model directory traffic so far.
    pub fn stats(&self) -> AneStats {
        self.lock().stats
    }

    /// Programs planned.
    pub fn planned_programs(&self) -> usize {
        self.lock().programs.len()
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Evaluation threads started: one, plus one for each abandoned after a time-out.
    pub fn eval_workers_started(&self) -> usize {
        self.evaluator.workers_started()
    }

    /// Start-up warm-up: build (or read back), compile and load now every planned program
    /// holding functions for any of `buckets` (all planned buckets when empty), in plan
    /// order, so that prefills find them ready. Bounded by the compile budget: programs
    /// beyond what it has left stay cold (and fall back to the CPU later, as they would
    /// have). A program that fails is quarantined and the warm-up goes on.
    /// `progress(done, total)` is called once before the first program and after each.
    pub fn warm_up(&self, buckets: &[usize], progress: &mut dyn FnMut(usize, usize)) -> WarmUp {
        let mut st = self.lock();
        let wanted = |p: &ProgramSlot<D::Program>| buckets.is_empty() || p.buckets.iter().any(|b| buckets.contains(b));
        let cold: Vec<usize> = (0..st.programs.len()).filter(|&p| wanted(&st.programs[p]) && matches!(st.programs[p].status, Status::Cold)).collect();
        let mut report = WarmUp { already_ready: (0..st.programs.len()).filter(|&p| wanted(&st.programs[p]) && matches!(st.programs[p].status, Status::Ready(_))).count(), ..WarmUp::default() };
        let room = self.cfg.plan.max_programs.saturating_sub(st.stats.compiles);
        let total = cold.len().min(room);
        report.over_budget = cold.len() - total;
        progress(0, total);
        for (i, &p) in cold[..total].iter().enumerate() {
            match self.ensure(&mut st, p) {
                Ok(()) => report.loaded += 1,
                Err(e) => report.failed.push(e.what),
            }
            progress(i + 1, total);
        }
        report
    }

    /// The fused MLP `down(act(gate·x) ⊙ up·x)` for `n` tokens (tiled by `bucket`), the
    /// weights planned with [`GroupOp::Mlp`] by [`Self::add_groups`]; compiles what it
    /// needs. The dispatcher's entry is [`MatrixEngine::feed_forward`] (prepared weights).
    pub fn mlp(&self, ws: [&Weight; 3], bucket: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), EngineFailure> {
        let mut st = self.lock();
        let keys = ws.map(WeightKey::of);
        let g = self.mlp_group(&st, [&keys[0], &keys[1], &keys[2]], None)?;
        for p in Self::programs_of(&st, g, bucket) {
            self.ensure(&mut st, p)?;
        }
        self.run_mlp(&mut st, g, ws, bucket, x, n, out)
    }

    /// The group planned as one MLP of exactly `keys` (gate, up, down), with `act` if given.
    fn mlp_group(&self, st: &State<D>, keys: [&WeightKey; 3], act: Option<Act>) -> Result<usize, EngineFailure> {
        let g = *st.key_group.get(keys[0]).ok_or_else(|| self.fail(format!("{} is not planned", keys[0].tensor)))?;
        let group = &st.groups[g];
        match group.op {
            GroupOp::Mlp(a) if group.keys.iter().zip(keys).all(|(k, key)| k == key) => match act {
                Some(want) if want != a => Err(self.fail(format!("{} is planned with {a:?}, the block asks for {want:?}", keys[0].tensor))),
                _ => Ok(g),
            },
            _ => Err(self.fail("weights are not planned as one MLP")),
        }
    }

    /// MLP group `g` over `n` tokens, programs loaded: the fused functions when every
    /// token's ‖x‖₂ is within the bound they were scaled for, else the group's gate/up
    /// and down functions (each guarded per call) with the activation on the host.
    #[allow(clippy::too_many_arguments)]
    fn run_mlp(&self, st: &mut State<D>, g: usize, ws: [&Weight; 3], bucket: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), EngineFailure> {
        let (k, ff, m) = (ws[0].cols, ws[0].rows, ws[2].rows);
        let bound = st.groups[g].input_bound.unwrap_or(self.cfg.build.activation_bound);
        let mut jobs = Vec::new();
        if convert::max_row_norm(x, k, n, 0..k) <= bound {
            self.jobs_for(st, g, Part::Whole, bucket, n, 0, &mut jobs)?;
            self.run_jobs(st, &jobs, x, k, n, &mut [&mut out[..n * m]])?;
        } else {
            st.stats.mlp_over_bound += 1;
            let (mut gate, mut up) = (vec![0f32; n * ff], vec![0f32; n * ff]);
            self.jobs_for(st, g, Part::GateUp, bucket, n, 0, &mut jobs)?;
            self.run_jobs(st, &jobs, x, k, n, &mut [&mut gate, &mut up])?;
            match st.groups[g].op {
                GroupOp::Mlp(Act::GeluTanh) => ::engine::cpu::ops::gelu_mul(&mut gate, &up),
                _ => ::engine::cpu::ops::silu_mul(&mut gate, &up),
            }
            jobs.clear();
            self.jobs_for(st, g, Part::Down, bucket, n, 0, &mut jobs)?;
            self.run_jobs(st, &jobs, &gate, ff, n, &mut [&mut out[..n * m]])?;
        }
        match out[..n * m].iter().position(|v| !v.is_finite()) {
            Some(bad) => Err(self.fail(format!("MLP {}: non-finite output at {bad} (fp16 overflow?)", ws[0].name))),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<D>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, what: impl Into<String>) -> EngineFailure {
        EngineFailure { engine: self.driver.name().to_string(), what: what.into() }
    }

    fn programs_of(st: &State<D>, group: usize, bucket: usize) -> Vec<usize> {
        (0..st.programs.len()).filter(|&p| st.programs[p].buckets.contains(&bucket) && st.programs[p].units.iter().any(|u| u.0 == group)).collect()
    }

    /// Build, compile and load program `p` unless it is ready; failures stick.
    fn ensure(&self, st: &mut State<D>, p: usize) -> Result<(), EngineFailure> {
        match &st.programs[p].status {
            Status::Ready(_) => return Ok(()),
            Status::Failed(why) => return Err(self.fail(format!("program {p} failed earlier: {why}"))),
            Status::Cold => {}
        }
        if st.stats.compiles >= self.cfg.plan.max_programs {
            return Err(self.fail(format!("compile budget of {} programs per process exhausted", self.cfg.plan.max_programs)));
        }
        let result = self.obtain(st, p).and_then(|(built, key)| {
            st.stats.compiles += 1;
            let files = [WeightFile { path: BLOB_PATH, bytes: &built.blob }];
            let n = built.functions.len();
            let program = match (&self.cfg.cache_dir, &key) {
                (Some(root), Some(key)) => self.driver.compile_cached(&built.mil, &files, n, &store::compiled_dir(root, key)),
                _ => self.driver.compile(&built.mil, &files, n),
            }
            .map_err(|e| e.to_string())?;
            if let Err(e) = self.driver.load(&program) {
                self.driver.unload(&program);
                return Err(e.to_string());
            }
            Ok(Loaded { program: Arc::new(program), functions: built.functions })
        });
        match result {
            Ok(l) => {
                st.programs[p].status = Status::Ready(l);
                Ok(())
            }
            Err(e) => {
                st.programs[p].status = Status::Failed(e.clone());
                Err(self.fail(e))
            }
        }
    }

    /// Program `p` built, or read back from the compiled-model directory; with its key
    /// when a directory is configured.
    fn obtain(&self, st: &mut State<D>, p: usize) -> Result<(BuiltProgram, Option<String>), String> {
        let slot = &st.programs[p];
        let key = self.disk.as_ref().map(|_| {
            let units: Vec<KeyUnit> = slot.plan_units.iter().map(|u| KeyUnit { weights: &st.groups[u.group].weights, rows: u.rows.clone(), op: st.groups[u.group].op, input_bound: st.groups[u.group].input_bound }).collect();
            store::program_key(&units, &slot.buckets, &format!("{:?}", self.cfg.build))
        });
        let slices: Vec<Vec<RowSlice>> = slot
            .plan_units
            .iter()
            .map(|u| {
                let g = &st.groups[u.group];
                g.weights.iter().map(|w| RowSlice { w, rows: u.rows.clone().unwrap_or(0..w.rows) }).collect()
            })
            .collect();
        let specs: Vec<GroupSpec> = slot
            .plan_units
            .iter()
            .zip(&slices)
            .map(|(u, s)| GroupSpec { members: s.iter().map(|r| r as &dyn RowSource).collect(), op: st.groups[u.group].op, input_bound: st.groups[u.group].input_bound })
            .collect();
        if let (Some(disk), Some(key)) = (&self.disk, &key) {
            let expect_units: Vec<Vec<(Part, usize, Vec<usize>)>> = specs
                .iter()
                .map(|g| g.parts().iter().map(|&part| { let (k, outs) = g.part_io(part); (part, k, outs) }).collect())
                .collect();
            let expect = store::Expect { units: &expect_units, buckets: &slot.buckets, layout: self.cfg.build.layout };
            match disk.get(key) {
                Lookup::Hit(bytes) => match store::decode(&bytes).and_then(|b| store::validate(&b, &expect).map(|()| b)) {
                    Ok(built) => {
                        st.stats.disk_hits += 1;
                        return Ok((built, Some(key.clone())));
                    }
                    Err(e) => {
                        eprintln!("warning: ane: kernel cache entry {key}: {e}; rebuilding");
                        st.stats.disk_rejects += 1;
                    }
                },
                Lookup::Rejected(why) => {
                    eprintln!("warning: ane: kernel cache: {why}");
                    st.stats.disk_rejects += 1;
                }
                Lookup::Miss => {}
            }
        }
        let ids: Vec<(usize, &GroupSpec)> = specs.iter().enumerate().collect();
        let built = build_program(&ids, &slot.buckets, &self.cfg.build).map_err(|e| format!("build: {e}"))?;
        st.stats.builds += 1;
        if let (Some(disk), Some(key)) = (&self.disk, &key) {
            if let Err(e) = disk.put(key, &store::encode(&built)) {
                eprintln!("warning: ane: kernel cache: cannot write {key}: {e}");
            }
        }
        Ok((built, key))
    }
}

impl<D: Driver> MatrixEngine for AneEngine<D> {
    fn name(&self) -> &str {
        self.driver.name()
    }
    fn takes_experts(&self) -> Result<(), String> {
        // plan_model plans no expert: a program each would exhaust the compile budget.
        Err("a program per expert would exhaust the ANE's compile budget".into())
    }
    fn availability(&self) -> Availability {
        match self.driver.availability() {
            Ok(()) => Availability::Available,
            Err(why) => Availability::Unavailable(why),
        }
    }
    fn supports(&self, s: &MatmulShape) -> Result<(), String> {
        // K beyond 8 tiles would mean many input surfaces per eval; keep those on the CPU.
        if s.k > 8 * self.cfg.build.max_dim {
            return Err(format!("K={} needs more than 8 input tiles of {}", s.k, self.cfg.build.max_dim));
        }
        Ok(())
    }
    fn n_buckets(&self) -> Option<&[usize]> {
        Some(&self.cfg.plan.buckets)
    }
    fn throughput_hint(&self) -> (f64, f64) {
        self.driver.throughput_hint()
    }
    fn prepare(&self, key: &WeightKey, w: &Weight, bucket: usize) -> Result<usize, EngineFailure> {
        let mut st = self.lock();
        if !st.key_group.contains_key(key) {
            drop(st);
            self.add_groups(vec![(vec![w.clone()], GroupOp::Linear { concat: false })]).map_err(|e| self.fail(e.to_string()))?;
            st = self.lock();
        }
        let g = st.key_group[key];
        let progs = Self::programs_of(&st, g, bucket);
        if progs.is_empty() {
            return Err(self.fail(format!("bucket {bucket} is not one of {:?}", self.cfg.plan.buckets)));
        }
        for &p in &progs {
            self.ensure(&mut st, p)?;
            st.programs[p].holders.insert((key.clone(), bucket));
        }
        // Blob bytes (fp16, or int8 plus a scale per row), shared by the buckets baked from the same blob.
        let share = if self.cfg.plan.share_buckets { self.cfg.plan.buckets.len() } else { 1 };
        let bytes = match self.cfg.build.weights {
            WeightFormat::Fp16 => 2 * w.rows * w.cols,
            WeightFormat::Int8 => w.rows * (w.cols + 2),
        };
        Ok(bytes.div_ceil(share))
    }
    fn evict(&self, key: &WeightKey, bucket: usize) {
        let mut st = self.lock();
        let Some(&g) = st.key_group.get(key) else { return };
        for p in Self::programs_of(&st, g, bucket) {
            let slot = &mut st.programs[p];
            slot.holders.remove(&(key.clone(), bucket));
            // Only a ready program goes cold: a quarantined one stays failed.
            if slot.holders.is_empty() && matches!(slot.status, Status::Ready(_)) {
                if let Status::Ready(l) = std::mem::replace(&mut slot.status, Status::Cold) {
                    self.driver.unload(&l.program);
                }
            }
        }
    }
    fn matmul(&self, keys: &[&WeightKey], weights: &[&Weight], bucket: usize, x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        let mut st = self.lock();
        let group_of = |st: &State<D>, k: &WeightKey| st.key_group.get(k).copied().ok_or_else(|| self.fail(format!("{} is not prepared", k.tensor)));
        let g = group_of(&st, keys[0])?;
        let same = |members: &[WeightKey]| members.len() == keys.len() && members.iter().zip(keys).all(|(a, b)| a == *b);
        // What of the group the call asks for: all of a linear group, or an MLP's gate/up or down.
        let part = match st.groups[g].op {
            GroupOp::Linear { .. } => same(&st.groups[g].keys).then_some(Part::Whole),
            GroupOp::Mlp(_) if same(&st.groups[g].keys[..2]) => Some(Part::GateUp),
            GroupOp::Mlp(_) if same(&st.groups[g].keys[2..]) => Some(Part::Down),
            GroupOp::Mlp(_) => {
                return Err(self.fail(format!("{} is planned in an MLP: matmuls take its gate and up together, or its down", keys[0].tensor)));
            }
        };
        // N beyond the bucket is tiled here (each tile's jobs overlap the next's conversion).
        let mut jobs = Vec::new();
        if let Some(part) = part {
            self.jobs_for(&st, g, part, bucket, n, 0, &mut jobs)?;
        } else {
            // Weights planned alone but dispatched together: one group each.
            for (i, key) in keys.iter().enumerate() {
                let gi = group_of(&st, key)?;
                if st.groups[gi].keys.len() != 1 || !matches!(st.groups[gi].op, GroupOp::Linear { .. }) {
                    return Err(self.fail(format!("{} is planned in a group of {}", key.tensor, st.groups[gi].keys.len())));
                }
                self.jobs_for(&st, gi, Part::Whole, bucket, n, i, &mut jobs)?;
            }
        }
        let k = weights[0].cols;
        self.run_jobs(&mut st, &jobs, x, k, n, outs)?;
        for (o, w) in outs.iter().zip(weights) {
            if let Some(bad) = o[..n * w.rows].iter().position(|v| !v.is_finite()) {
                return Err(self.fail(format!("{}: non-finite output at {bad} (fp16 overflow?)", w.name)));
            }
        }
        Ok(())
    }
    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities { feed_forward: self.cfg.fuse_mlp.then_some(self as &dyn FusedFeedForward), ..Capabilities::default() }
    }
}

impl<D: Driver> FusedFeedForward for AneEngine<D> {
    fn feed_forward(&self, ffn: &FeedForward<'_>, bucket: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), EngineFailure> {
        let ws = [ffn.gate, ffn.up, ffn.down];
        let owned = ws.map(WeightKey::of);
        let keys = owned.each_ref();
        let mut st = self.lock();
        let planned_mlp = st.key_group.get(keys[0]).is_some_and(|&g| matches!(st.groups[g].op, GroupOp::Mlp(_)));
        if let (true, Some(act)) = (planned_mlp && ffn.biases.is_none(), act_of(ffn.activation)) {
            // Prepared by the dispatcher (gate, up, down for this bucket): nothing compiles here.
            let g = self.mlp_group(&st, keys, Some(act))?;
            return self.run_mlp(&mut st, g, ws, bucket, x, n, out);
        }
        drop(st);
        // Weights not planned as one MLP (no plan_model, or planned on first use): the
        // matmuls on the engine, the activation on the host, as the CPU computes it.
        ffn.run_with(&x[..n * ffn.gate.cols], out, |ws, x, outs| {
            let at = if ws.len() == 2 { &keys[..2] } else { &keys[2..] };
            self.matmul(at, ws, bucket, x, n, outs)
        })
    }
}

/// The build's activation for the model's (gpt-oss's clamped SwiGLU has none: its blocks
/// run as parts, the activation on the host).
fn act_of(a: Activation) -> Option<Act> {
    match a {
        Activation::Silu => Some(Act::Silu),
        Activation::GeluTanh => Some(Act::GeluTanh),
        Activation::SwigluOai => None,
    }
}
