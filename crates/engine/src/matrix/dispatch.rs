//! The dispatcher: the one entry point of every weight matmul. It asks the policy,
//! runs the op on the chosen engine (tiling N into the engine's buckets), and when the
//! engine fails it recomputes the op on the CPU in the same step, counts the failure
//! and reports it once. No output is ever left uncomputed.

use super::cache::{bucket_for, CacheBudget, PreparedCache};
use super::policy::{Backend, Decision, PlacementPolicy, StackCost};
use super::stats::Stats;
use super::{KvRows, AttnShape, Availability, EngineFailure, FeedForward, MatmulShape, MatrixEngine, StackInput, WeightKey};
use crate::cpu::attention::attention;
use half::f16;
use crate::cpu::matmul::{matmul_quantized, QuantizedInput};
use crate::error::{EngineError, Result};
use crate::weights::Weight;
use quant::GgmlType;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Routes matmuls to engines.
pub struct Dispatcher {
    accelerators: Vec<Arc<dyn MatrixEngine>>,
    policy: PlacementPolicy,
    cache: PreparedCache,
    /// Per-engine counters.
    pub stats: Stats,
    verbose: bool,
    reported: Mutex<HashSet<String>>,
    logged: Mutex<HashSet<(String, usize)>>,
    /// Weights (by name) that never leave the CPU, and the flag that keeps them (`--n-cpu-moe`, `-ngl`).
    cpu_weights: HashMap<String, String>,
}

/// What [`Dispatcher::stack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stacked {
    /// Nothing: the caller runs the blocks.
    No,
    /// Ran on accelerator `.0` with every weight resident there (the output weight too).
    Resident(usize),
    /// Ran with weights streamed to the engine (the logits stay with the caller).
    Streamed,
}

/// Rough CPU speed for the cost model before calibration (2 cores of AVX-512 int8, DDR bandwidth).
pub const CPU_HINT: (f64, f64) = (2e11, 1e10);

impl Dispatcher {
    /// Everything on the CPU.
    pub fn cpu_only() -> Self {
        Self::new(Vec::new(), PlacementPolicy::new(Backend::Cpu, 64, None, CPU_HINT), CacheBudget::default(), false)
            .expect("the CPU is always available")
    }

    /// A dispatcher over `accelerators`. A backend that names an unavailable or unknown engine is an error.
    pub fn new(
        accelerators: Vec<Arc<dyn MatrixEngine>>,
        policy: PlacementPolicy,
        budget: CacheBudget,
        verbose: bool,
    ) -> Result<Self> {
        if let Backend::Named(name) = policy.backend() {
            match accelerators.iter().find(|e| e.name() == name) {
                None => {
                    let known: Vec<&str> = accelerators.iter().map(|e| e.name()).collect();
                    return Err(EngineError::Invalid(format!(
                        "unknown backend '{name}' (cpu, auto{}{})",
                        if known.is_empty() { "" } else { ", " },
                        known.join(", ")
                    )));
                }
                Some(e) => {
                    if let Availability::Unavailable(why) = e.availability() {
                        return Err(EngineError::Invalid(format!("backend '{name}' is unavailable: {why}")));
                    }
                }
            }
        }
        // Under auto, an engine that cannot run here is set aside once, not asked on every op.
        let accelerators: Vec<_> = accelerators
            .into_iter()
            .filter(|e| match e.availability() {
                Availability::Available => true,
                Availability::Unavailable(why) => {
                    if verbose {
                        eprintln!("placement: {} unavailable: {why}", e.name());
                    }
                    false
                }
            })
            .collect();
        Ok(Dispatcher {
            accelerators,
            policy,
            cache: PreparedCache::new(budget),
            stats: Stats::default(),
            verbose,
            reported: Mutex::new(HashSet::new()),
            logged: Mutex::new(HashSet::new()),
            cpu_weights: HashMap::new(),
        })
    }

    /// Keep these weights on the CPU whatever the policy says (llama.cpp's `--n-cpu-moe`:
    /// the experts of the first layers stay in host memory); `reason` names the flag.
    pub fn keep_on_cpu<'w>(&mut self, weights: impl IntoIterator<Item = &'w Weight>, reason: &str) {
        self.cpu_weights.extend(weights.into_iter().map(|w| (w.name.clone(), reason.to_string())));
    }

    /// The per-engine counters, then the layers whose weights a flag keeps on the CPU (-ngl),
    /// and where a model's experts run when not where the policy would put other weights:
    /// kept by a flag, or refused by every accelerator.
    pub fn summary(&self, layers: &[crate::plan::Layer]) -> String {
        let mut s = self.stats.summary();
        let whole = |l: &&crate::plan::Layer| l.weights().all(|(_, w)| self.is_kept_on_cpu(w));
        if let Some(first) = layers.iter().find(whole) {
            let kept = layers.iter().filter(whole).count();
            let why = first.weights().next().map_or("", |(_, w)| self.kept_reason(w));
            s.push_str(&format!("placement: the weights of {kept} of {} layers kept on the CPU ({why})\n", layers.len()));
        }
        let moe_layers: Vec<usize> = (0..layers.len()).filter(|&il| !layers[il].experts().is_empty()).collect();
        if moe_layers.is_empty() {
            return s;
        }
        let kept = moe_layers.iter().filter(|&&il| self.is_kept_on_cpu(&layers[il].experts()[0].gate)).count();
        if kept > 0 {
            let first = moe_layers.iter().map(|&il| &layers[il].experts()[0].gate).find(|w| self.is_kept_on_cpu(w));
            let why = first.map_or("", |w| self.kept_reason(w));
            s.push_str(&format!("placement: experts of {kept} of {} layers kept on the CPU ({why})\n", moe_layers.len()));
        }
        for e in &self.accelerators {
            if let Err(why) = e.takes_experts() {
                s.push_str(&format!("placement: experts on the CPU, not {}: {why}\n", e.name()));
            }
        }
        s
    }

    /// Whether `w` is kept on the CPU.
    pub fn is_kept_on_cpu(&self, w: &Weight) -> bool {
        self.cpu_weights.contains_key(&w.name)
    }

    /// The flag that keeps `w` on the CPU ("" when none does).
    fn kept_reason(&self, w: &Weight) -> &str {
        self.cpu_weights.get(&w.name).map_or("", |r| r.as_str())
    }

    /// The prepared-weight cache.
    pub fn cache(&self) -> &PreparedCache {
        &self.cache
    }

    /// `out = x · Wᵀ`.
    pub fn matmul(&self, w: &Weight, x: &[f32], out: &mut [f32]) {
        self.matmul_group(&[w], x, &mut [out]);
    }

    /// Several weights sharing one input (Q/K/V, gate/up): `outs[i] = x · W_iᵀ`.
    pub fn matmul_group(&self, ws: &[&Weight], x: &[f32], outs: &mut [&mut [f32]]) {
        // Decode on a CPU-only machine is the hot path: no policy call, no reason strings.
        if self.accelerators.is_empty() && !self.verbose {
            return self.run_on_cpu(ws, x, outs);
        }
        let n = x.len() / ws[0].cols;
        match self.choose(ws, n) {
            Some(engine) => self.run_group_on(engine, ws, x, outs),
            None => self.run_on_cpu(ws, x, outs),
        }
    }

    /// A group on `engine`, tiled into its buckets; on the CPU when the engine fails it.
    fn run_group_on(&self, engine: &dyn MatrixEngine, ws: &[&Weight], x: &[f32], outs: &mut [&mut [f32]]) {
        let (n, k) = (x.len() / ws[0].cols, ws[0].cols);
        let keys: Vec<WeightKey> = ws.iter().map(|w| WeightKey::of(w)).collect();
        let key_refs: Vec<&WeightKey> = keys.iter().collect();
        let result = self.run_tiles(engine, ws, n, |bucket, start, len| {
            let mut tile_outs: Vec<&mut [f32]> =
                outs.iter_mut().zip(ws).map(|(o, w)| &mut o[start * w.rows..(start + len) * w.rows]).collect();
            engine.matmul(&key_refs, ws, bucket, &x[start * k..(start + len) * k], len, &mut tile_outs)
        });
        if let Err(f) = result {
            self.report_failure(&f);
            self.run_on_cpu(ws, x, outs);
        }
    }

    /// A feed-forward block, `out = down · (act(gate · x) ⊙ (up · x))`. An engine that
    /// fuses blocks takes it whole when the policy gives it the gate/up group (the wide
    /// intermediate then never crosses to the host); otherwise each matmul is placed on
    /// its own and the activation runs on the CPU.
    pub fn feed_forward(&self, f: &FeedForward<'_>, x: &[f32], out: &mut [f32]) {
        let n = x.len() / f.gate.cols;
        // Engines fuse plain blocks only; biases and gpt-oss's SwiGLU run on the host between matmuls.
        if (!self.accelerators.is_empty() || self.verbose) && f.is_plain() {
            let fused = self.choose(&[f.gate, f.up], n).and_then(|e| e.capabilities().feed_forward.map(|fuse| (e, fuse)));
            if let Some((engine, fuse)) = fused {
                let supported = engine.supports(&MatmulShape::of(f.down, n));
                if let Err(why) = &supported {
                    self.log(f.down, n, &format!("{} fuses feed-forward blocks but not this one: {why}", engine.name()));
                }
                if supported.is_ok() {
                    let (k, m) = (f.gate.cols, f.down.rows);
                    let result = self.run_tiles(engine, &[f.gate, f.up, f.down], n, |bucket, start, len| {
                        let tile_x = &x[start * k..(start + len) * k];
                        let tile_out = &mut out[start * m..(start + len) * m];
                        fuse.feed_forward(f, bucket, tile_x, len, tile_out)
                    });
                    match result {
                        Ok(()) => return self.stats.with(engine.name(), |s| s.fused_blocks += 1),
                        Err(failure) => {
                            // The block is recomputed on the CPU, not re-placed on the engine that failed it.
                            self.report_failure(&failure);
                            return self.feed_forward_with(f, x, out, |ws, x, outs| self.run_on_cpu(ws, x, outs));
                        }
                    }
                }
            }
        }
        self.feed_forward_with(f, x, out, |ws, x, outs| self.matmul_group(ws, x, outs));
    }

    /// A mixture of experts' active blocks, `outs[i] = blocks[i](xs[i])`. On a CPU-only
    /// machine all of them run in shared parallel regions (decode's few-row blocks would each
    /// pay fork/joins); otherwise each block is placed as [`Self::feed_forward`] places it.
    pub fn experts(&self, blocks: &[FeedForward<'_>], xs: &[&[f32]], outs: &mut [&mut [f32]]) {
        let all_kept = || blocks.iter().all(|b| [b.gate, b.up, b.down].iter().all(|w| self.is_kept_on_cpu(w)));
        let none_takes = || self.accelerators.iter().all(|e| e.takes_experts().is_err());
        if (self.accelerators.is_empty() && !self.verbose) || none_takes() || (!self.cpu_weights.is_empty() && all_kept()) {
            if self.verbose {
                if let (Some(b), Some(x)) = (blocks.first(), xs.first()) {
                    self.log(b.gate, x.len() / b.gate.cols, "-> cpu: experts run on the CPU (see the placement summary)");
                }
            }
            let t0 = Instant::now();
            crate::moe::experts_on_cpu(blocks, xs, outs);
            let flops: f64 = blocks
                .iter()
                .zip(xs)
                .map(|(b, x)| [b.gate, b.up, b.down].iter().map(|w| MatmulShape::of(w, x.len() / b.gate.cols).flops()).sum::<f64>())
                .sum();
            return self.stats.with("cpu", |s| {
                s.matmuls += 3 * blocks.len() as u64;
                s.flops += flops;
                s.time += t0.elapsed();
            });
        }
        for ((b, x), out) in blocks.iter().zip(xs).zip(outs.iter_mut()) {
            self.feed_forward(b, x, out);
        }
    }

    /// Causal attention of one sequence's new tokens over a layer's KV cache (see
    /// [`crate::cpu::attention::attention`]): on an engine when the policy places it there,
    /// on the CPU otherwise or when the engine fails it.
    pub fn attention(&self, shape: &AttnShape, q: &[f32], positions: &[usize], k_cache: &[f16], v_cache: &[f16], out: &mut [f32]) {
        if self.accelerators.is_empty() && !self.verbose {
            return attention(shape, q, positions, k_cache, v_cache, out);
        }
        let n = positions.len();
        let cost = super::cost::attention_cost(shape, positions);
        let engines: Vec<&dyn MatrixEngine> = self.accelerators.iter().map(|e| e.as_ref()).collect();
        let decision = self.policy.decide_attention(&engines, shape, n, cost);
        if self.verbose && self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert(("attention".into(), n)) {
            let name = decision.engine.map_or("cpu", |i| engines[i].name());
            eprintln!("placement: attention N={n} -> {name}: {}", decision.reason);
        }
        let t0 = Instant::now();
        let engine = decision.engine.map(|i| engines[i]);
        if let Some((e, op)) = engine.and_then(|e| e.capabilities().attention.map(|op| (e, op))) {
            match op.attention(shape, q, positions, k_cache, v_cache, out) {
                Ok(()) => {
                    return self.stats.with(e.name(), |s| {
                        s.attention += 1;
                        s.flops += cost.0;
                        s.time += t0.elapsed();
                    })
                }
                Err(f) => self.report_failure(&f),
            }
        }
        let t0 = Instant::now();
        attention(shape, q, positions, k_cache, v_cache, out);
        self.stats.with("cpu", |s| {
            s.attention += 1;
            s.flops += cost.0;
            s.time += t0.elapsed();
        });
    }

    /// Attention with one sink logit per query head (gpt-oss): on the CPU, which alone has
    /// the kernel (see [`crate::cpu::attention::attention_with_sinks`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_with_sinks(&self, shape: &AttnShape, sinks: &[f32], q: &[f32], positions: &[usize], k_cache: &[f16], v_cache: &[f16], out: &mut [f32]) {
        let t0 = Instant::now();
        crate::cpu::attention::attention_with_sinks(shape, Some(sinks), q, positions, k_cache, v_cache, out);
        if self.accelerators.is_empty() && !self.verbose {
            return;
        }
        let cost = super::cost::attention_cost(shape, positions);
        self.stats.with("cpu", |s| {
            s.attention += 1;
            s.flops += cost.0;
            s.time += t0.elapsed();
        });
    }

    /// A batch's whole decoder stack on one engine, when the policy places it there (see
    /// [`MatrixEngine::stack`]). Resident: every weight is prepared first (the output
    /// projection's too: the batch's logits then follow on the same engine, see
    /// [`Dispatcher::matmul_on`]) and stays. Streamed (the model is over the budget): the
    /// engine uploads each layer's weights as it goes. Failed: `x` is as it was and the
    /// caller runs the blocks itself, rewriting any K/V rows the engine stored.
    /// `head` is the output projection the batch's logits go through afterwards.
    pub fn stack(&self, input: &StackInput<'_>, head: &Weight, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Stacked {
        if self.accelerators.is_empty() && !self.verbose {
            return Stacked::No;
        }
        let n = input.n();
        if n < self.policy.min_batch() && !self.verbose && !self.accelerators.iter().any(|e| e.capabilities().stack.is_some_and(|s| s.decode_bandwidth().is_some())) {
            // A decode step no engine takes: skip pricing every layer.
            return Stacked::No;
        }
        let layers = input.layers;
        // A stack holds all its weights on the engine: not when some must stay on the CPU.
        if !self.cpu_weights.is_empty() && layers.iter().any(|l| l.weights().any(|(_, w)| self.is_kept_on_cpu(w))) {
            return Stacked::No;
        }
        let (flops, bytes) = super::cost::stack_cost(input);
        let layer_weights = || layers.iter().flat_map(|l| l.weights().map(|(_, w)| w));
        let weights = || layer_weights().chain(std::iter::once(head));
        let resident = |e: &dyn MatrixEngine| -> usize { weights().map(|w| e.prepared_bytes(&MatmulShape::of(w, n))).sum() };
        let weight_bytes = layer_weights().map(|w| MatmulShape::of(w, n).weight_bytes()).sum();
        let cost = StackCost { n, flops, bytes, weight_bytes, resident: &resident };
        let engines: Vec<&dyn MatrixEngine> = self.accelerators.iter().map(|e| e.as_ref()).collect();
        let (decision, streamed) = self.policy.decide_stack(&engines, layers, &cost, self.cache.budget().memory_bytes);
        if self.verbose && self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert(("stack".into(), n)) {
            let name = decision.engine.map_or("cpu", |i| engines[i].name());
            eprintln!("placement: decoder stack N={n} -> {name}: {}", decision.reason);
        }
        let Some(index) = decision.engine else { return Stacked::No };
        let engine = engines[index];
        let Some(stack) = engine.capabilities().stack else { return Stacked::No };
        let unsupported = weights().find_map(|w| {
            engine.supports(&MatmulShape::of(w, n)).err().map(|why| format!("{}: {why}", w.name))
        });
        if let Some(why) = unsupported {
            if self.verbose && self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert(("stack weights".into(), n)) {
                eprintln!("placement: decoder stack N={n} stays here: {} cannot take {why}", engine.name());
            }
            return Stacked::No;
        }
        let t0 = Instant::now();
        let bucket = bucket_for(engine.n_buckets(), n);
        let prepared = if streamed {
            Ok(())
        } else {
            weights().try_for_each(|w| self.cache.ensure(engine, &WeightKey::of(w), w, bucket, &self.stats))
        };
        let input = StackInput { weights_resident: !streamed, ..*input };
        match prepared.and_then(|_| stack.stack(&input, x, caches)) {
            Ok(()) => {
                self.stats.with(engine.name(), |s| {
                    s.blocks += layers.len() as u64;
                    s.flops += flops;
                    s.time += t0.elapsed();
                });
                if streamed {
                    Stacked::Streamed
                } else {
                    Stacked::Resident(index)
                }
            }
            Err(f) => {
                self.report_failure(&f);
                Stacked::No
            }
        }
    }

    /// `out = x · Wᵀ` on accelerator `engine` whatever N (a stack's logits, following its
    /// hidden states), on the CPU when that engine fails it.
    pub fn matmul_on(&self, engine: usize, w: &Weight, x: &[f32], out: &mut [f32]) {
        match self.accelerators.get(engine) {
            Some(e) => self.run_group_on(e.as_ref(), &[w], x, &mut [out]),
            None => self.run_on_cpu(&[w], x, &mut [out]),
        }
    }

    /// The unfused block with every group through `group` (which never fails: it falls back itself).
    fn feed_forward_with(&self, f: &FeedForward<'_>, x: &[f32], out: &mut [f32], group: impl Fn(&[&Weight], &[f32], &mut [&mut [f32]])) {
        let run = f.run_with(x, out, |ws, x, outs| {
            group(ws, x, outs);
            Ok::<(), std::convert::Infallible>(())
        });
        run.unwrap_or_else(|never| match never {});
    }

    /// The accelerator the policy picks for a group of `n` tokens, if any (every member must be supported).
    fn choose(&self, ws: &[&Weight], n: usize) -> Option<&dyn MatrixEngine> {
        if let Some(w) = ws.iter().find(|w| self.is_kept_on_cpu(w)) {
            self.log(ws[0], n, &format!("-> cpu: {}", self.kept_reason(w)));
            return None;
        }
        let shape = MatmulShape { m: ws.iter().map(|w| w.rows).sum(), ..MatmulShape::of(ws[0], n) };
        let engines: Vec<&dyn MatrixEngine> = self.accelerators.iter().map(|e| e.as_ref()).collect();
        let mut decision = self.policy.decide(&engines, &shape);
        if let Some(i) = decision.engine {
            if let Some(bad) = ws.iter().find_map(|w| engines[i].supports(&MatmulShape::of(w, n)).err()) {
                decision = Decision { engine: None, reason: bad };
            }
        }
        let name = decision.engine.map_or("cpu", |i| self.accelerators[i].name());
        self.log(ws[0], n, &format!("-> {name}: {}", decision.reason));
        decision.engine.map(|i| engines[i])
    }

    /// Runs `op(bucket, start, len)` over the engine's token tiles, preparing every weight
    /// for each tile's bucket first, and counts the work.
    fn run_tiles(
        &self,
        engine: &dyn MatrixEngine,
        ws: &[&Weight],
        n: usize,
        mut op: impl FnMut(usize, usize, usize) -> std::result::Result<(), EngineFailure>,
    ) -> std::result::Result<(), EngineFailure> {
        let keys: Vec<WeightKey> = ws.iter().map(|w| WeightKey::of(w)).collect();
        let tile = engine.n_buckets().and_then(|b| b.last().copied()).unwrap_or(n.max(1));
        let t0 = Instant::now();
        let mut start = 0;
        while start < n {
            let len = tile.min(n - start);
            let bucket = bucket_for(engine.n_buckets(), len);
            for (key, w) in keys.iter().zip(ws) {
                self.cache.ensure(engine, key, w, bucket, &self.stats)?;
            }
            op(bucket, start, len)?;
            start += len;
        }
        let flops: f64 = ws.iter().map(|w| MatmulShape::of(w, n).flops()).sum();
        self.stats.with(engine.name(), |s| {
            s.matmuls += ws.len() as u64;
            s.flops += flops;
            s.time += t0.elapsed();
        });
        Ok(())
    }

    /// The CPU path; group members with the same dot type share one quantized input.
    pub fn run_on_cpu(&self, ws: &[&Weight], x: &[f32], outs: &mut [&mut [f32]]) {
        let k = ws[0].cols;
        let n = x.len() / k;
        let t0 = Instant::now();
        let mut input: Option<(GgmlType, QuantizedInput)> = None;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            let ty = w.ty.vec_dot_type();
            if input.as_ref().is_none_or(|(t, _)| *t != ty) {
                input = Some((ty, QuantizedInput::new(ty, x, k)));
            }
            matmul_quantized(w, &input.as_ref().expect("set above").1, out);
        }
        let flops: f64 = ws.iter().map(|w| MatmulShape::of(w, n).flops()).sum();
        self.stats.with("cpu", |s| {
            s.matmuls += ws.len() as u64;
            s.flops += flops;
            s.time += t0.elapsed();
        });
    }

    fn report_failure(&self, f: &EngineFailure) {
        self.stats.with(&f.engine, |s| s.failures += 1);
        let first = self.reported.lock().unwrap_or_else(|e| e.into_inner()).insert(f.engine.clone());
        if first {
            eprintln!("warning: {f}; this op and any further failures run on the CPU (counted in the placement summary)");
        }
    }

    fn log(&self, w: &Weight, n: usize, what: &str) {
        if !self.verbose {
            return;
        }
        let new = self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert((w.name.clone(), n));
        if new {
            eprintln!("placement: {} N={n} {what}", w.name);
        }
    }

    /// The accelerators, for calibration and summaries.
    pub fn accelerators(&self) -> &[Arc<dyn MatrixEngine>] {
        &self.accelerators
    }
}
