//! The dispatcher: the one entry point of every weight matmul. It asks the policy,
//! runs the op on the chosen engine (tiling N into the engine's buckets), and when the
//! engine fails it recomputes the op on the CPU in the same step, counts the failure
//! and reports it once. No output is ever left uncomputed.

use super::cache::{bucket_for, CacheBudget, PreparedCache};
use super::policy::{Backend, Decision, PlacementPolicy};
use super::stats::Stats;
use super::{Availability, EngineFailure, MatmulShape, MatrixEngine, WeightKey};
use crate::cpu::matmul::{matmul_quantized, QuantizedInput};
use crate::error::{EngineError, Result};
use crate::weights::Weight;
use quant::GgmlType;
use std::collections::HashSet;
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
        })
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
        let k = ws[0].cols;
        let n = x.len() / k;
        // Decode on a CPU-only machine is the hot path: no policy call, no reason strings.
        if self.accelerators.is_empty() && !self.verbose {
            return self.run_on_cpu(ws, x, outs);
        }
        let shape = MatmulShape { m: ws.iter().map(|w| w.rows).sum(), ..MatmulShape::of(ws[0], n) };
        let engines: Vec<&dyn MatrixEngine> = self.accelerators.iter().map(|e| e.as_ref()).collect();
        let mut decision = self.policy.decide(&engines, &shape);
        if decision.engine.is_some() {
            // Every member must be supported, not just the first.
            if let Some(bad) = ws.iter().find_map(|w| engines[decision.engine.unwrap()].supports(&MatmulShape::of(w, n)).err()) {
                decision = Decision { engine: None, reason: bad };
            }
        }
        self.log(ws[0], n, &decision);
        if let Some(i) = decision.engine {
            let engine = self.accelerators[i].as_ref();
            match self.run_on(engine, ws, x, n, outs) {
                Ok(()) => return,
                Err(f) => self.report_failure(&f),
            }
        }
        self.run_on_cpu(ws, x, outs);
    }

    fn run_on(
        &self,
        engine: &dyn MatrixEngine,
        ws: &[&Weight],
        x: &[f32],
        n: usize,
        outs: &mut [&mut [f32]],
    ) -> std::result::Result<(), EngineFailure> {
        let k = ws[0].cols;
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
            let key_refs: Vec<&WeightKey> = keys.iter().collect();
            let mut tile_outs: Vec<&mut [f32]> =
                outs.iter_mut().zip(ws).map(|(o, w)| &mut o[start * w.rows..(start + len) * w.rows]).collect();
            engine.matmul(&key_refs, ws, bucket, &x[start * k..(start + len) * k], len, &mut tile_outs)?;
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

    fn log(&self, w: &Weight, n: usize, d: &Decision) {
        if !self.verbose {
            return;
        }
        let new = self.logged.lock().unwrap_or_else(|e| e.into_inner()).insert((w.name.clone(), n));
        if new {
            let engine = d.engine.map_or("cpu", |i| self.accelerators[i].name());
            eprintln!("placement: {} N={n} -> {engine}: {}", w.name, d.reason);
        }
    }

    /// The accelerators, for calibration and summaries.
    pub fn accelerators(&self) -> &[Arc<dyn MatrixEngine>] {
        &self.accelerators
    }
}
