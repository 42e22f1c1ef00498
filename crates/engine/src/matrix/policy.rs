//! The placement policy: given an engine, a weight's shape and type, and N, decide
//! where the matmul runs and say why. One object, unit-tested; nothing else decides.

use super::{Availability, MatmulShape, MatrixEngine};
use crate::error::EngineError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const GIB: f64 = (1u64 << 30) as f64;
/// Seconds of kernel launches and host work per layer of a decode step on an engine.
const DECODE_LAYER_OVERHEAD: f64 = 30e-6;

/// What a decoder stack would cost an engine, for [`PlacementPolicy::decide_stack`].
pub struct StackCost<'a> {
    /// Tokens.
    pub n: usize,
    /// FLOPs of every matmul and attention.
    pub flops: f64,
    /// Bytes crossing to the engine and back (hidden states, new K/V).
    pub bytes: f64,
    /// Bytes of the weights as stored: they cross on every call when streamed.
    pub weight_bytes: f64,
    /// Bytes an engine holds with every weight prepared (resident).
    pub resident: &'a dyn Fn(&dyn MatrixEngine) -> usize,
}

/// Which engines may take matmuls (`--backend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Everything on the CPU.
    Cpu,
    /// Only the named accelerator (an error at start-up if it is unavailable).
    Named(String),
    /// Every available accelerator; the CPU otherwise.
    Auto,
}

impl Backend {
    /// Parse `cpu`, `auto` or an engine name (whether the engine exists is the registry's
    /// question: [`super::Dispatcher::new`] answers it).
    pub fn parse(s: &str) -> Self {
        match s {
            "cpu" => Backend::Cpu,
            "auto" => Backend::Auto,
            other => Backend::Named(other.to_string()),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Backend::parse(s))
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Cpu => f.write_str("cpu"),
            Backend::Auto => f.write_str("auto"),
            Backend::Named(n) => f.write_str(n),
        }
    }
}

/// A placement decision: the engine index (None = CPU) and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Index into the accelerator list, or None for the CPU.
    pub engine: Option<usize>,
    /// Why, in words (logged with --verbose).
    pub reason: String,
}

impl Decision {
    fn cpu(reason: impl Into<String>) -> Self {
        Decision { engine: None, reason: reason.into() }
    }
}

/// Measured crossovers of one machine (`tandem calibrate`), keyed by engine and weight shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Free text: CPU model, accelerator, date.
    pub machine: String,
    /// One entry per (engine, m, k, type).
    pub entries: Vec<CalibrationEntry>,
}

/// The smallest N at which an engine beat the CPU on one shape (None: it never did).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationEntry {
    /// Engine name.
    pub engine: String,
    /// Output features.
    pub m: usize,
    /// Input features.
    pub k: usize,
    /// Weight type name.
    pub ty: String,
    /// First N where the engine was faster, if any.
    pub crossover_n: Option<usize>,
    /// (N, engine seconds, CPU seconds) as measured.
    pub timings: Vec<(usize, f64, f64)>,
}

impl Calibration {
    /// Read a calibration file; a corrupt file is an error naming it.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        serde_json::from_str(&text).map_err(|e| file_error(path, format!("not a calibration file: {e}")))
    }

    /// Write it.
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        }
        let text = serde_json::to_string_pretty(self).expect("serializable");
        std::fs::write(path, text).map_err(|e| file_error(path, e))
    }

    fn index(&self) -> HashMap<(String, usize, usize, String), Option<usize>> {
        self.entries.iter().map(|e| ((e.engine.clone(), e.m, e.k, e.ty.clone()), e.crossover_n)).collect()
    }
}

fn file_error(path: &Path, what: impl std::fmt::Display) -> EngineError {
    EngineError::File { path: path.display().to_string(), what: what.to_string() }
}

/// The policy: backend choice, minimum batch, optional calibration, CPU speed for the cost model.
pub struct PlacementPolicy {
    backend: Backend,
    min_batch: usize,
    calibration: HashMap<(String, usize, usize, String), Option<usize>>,
    /// CPU sustained FLOP/s and memory bandwidth (bytes/s), for the cost model.
    cpu: (f64, f64),
}

impl PlacementPolicy {
    /// A policy; `min_batch` is `--offload-min-batch` (default 64).
    pub fn new(backend: Backend, min_batch: usize, calibration: Option<&Calibration>, cpu: (f64, f64)) -> Self {
        PlacementPolicy {
            backend,
            min_batch,
            calibration: calibration.map(Calibration::index).unwrap_or_default(),
            cpu,
        }
    }

    /// The backend choice.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Decide where a matmul of `shape` runs among `engines` (accelerators only; the CPU is the fallback).
    pub fn decide(&self, engines: &[&dyn MatrixEngine], shape: &MatmulShape) -> Decision {
        if self.backend == Backend::Cpu {
            return Decision::cpu("--backend cpu");
        }
        let mut why_not = Vec::new();
        for (i, e) in self.candidates(engines) {
            if let Availability::Unavailable(r) = e.availability() {
                why_not.push(format!("{} unavailable: {r}", e.name()));
                continue;
            }
            if let Err(r) = e.supports(shape) {
                why_not.push(format!("{} does not support it: {r}", e.name()));
                continue;
            }
            let key = (e.name().to_string(), shape.m, shape.k, shape.ty.name().to_string());
            if let Some(cross) = self.calibration.get(&key) {
                match cross {
                    Some(c) if shape.n >= *c => {
                        return Decision { engine: Some(i), reason: format!("N={} >= calibrated crossover {c}", shape.n) }
                    }
                    Some(c) => why_not.push(format!("N={} < {}'s calibrated crossover {c}", shape.n, e.name())),
                    None => why_not.push(format!("{} never beat the CPU in calibration", e.name())),
                }
                continue;
            }
            if shape.n < self.min_batch {
                why_not.push(format!("N={} < --offload-min-batch {}", shape.n, self.min_batch));
                continue;
            }
            let (t_engine, t_cpu) = self.estimate(e, shape);
            if t_engine < t_cpu {
                return Decision {
                    engine: Some(i),
                    reason: format!(
                        "N={} >= {}; cost model {:.3} ms on {} vs {:.3} ms on CPU",
                        shape.n,
                        self.min_batch,
                        t_engine * 1e3,
                        e.name(),
                        t_cpu * 1e3
                    ),
                };
            }
            why_not.push(format!(
                "cost model {:.3} ms on {} vs {:.3} ms on CPU",
                t_engine * 1e3,
                e.name(),
                t_cpu * 1e3
            ));
        }
        if why_not.is_empty() {
            why_not.push("no accelerator".into());
        }
        Decision::cpu(why_not.join("; "))
    }

    /// Decide where an attention call of `n` queries runs: an engine that supports it, when
    /// N reaches the minimum batch and the cost model (`flops`, `bytes` moved) says it is faster.
    pub fn decide_attention(
        &self,
        engines: &[&dyn MatrixEngine],
        shape: &super::AttnShape,
        n: usize,
        (flops, bytes): (f64, f64),
    ) -> Decision {
        if self.backend == Backend::Cpu {
            return Decision::cpu("--backend cpu");
        }
        let mut why_not = Vec::new();
        for (i, e) in self.candidates(engines) {
            let supported = e.capabilities().attention.map_or(Err("no attention on this engine".to_string()), |a| a.supports_attention(shape));
            if let Err(r) = supported {
                why_not.push(format!("{}: {r}", e.name()));
                continue;
            }
            if n < self.min_batch {
                why_not.push(format!("N={n} < --offload-min-batch {}", self.min_batch));
                continue;
            }
            let (e_flops, e_bw) = e.throughput_hint();
            let (t_engine, t_cpu) = (flops / e_flops + bytes / e_bw, flops / self.cpu.0);
            if t_engine < t_cpu {
                return Decision {
                    engine: Some(i),
                    reason: format!("attention N={n}: cost model {:.3} ms on {} vs {:.3} ms on CPU", t_engine * 1e3, e.name(), t_cpu * 1e3),
                };
            }
            why_not.push(format!("attention cost model {:.3} ms on {} vs {:.3} ms on CPU", t_engine * 1e3, e.name(), t_cpu * 1e3));
        }
        if why_not.is_empty() {
            why_not.push("no accelerator".into());
        }
        Decision::cpu(why_not.join("; "))
    }

    /// Decide whether an engine runs a batch's whole decoder stack, and how: one that supports
    /// the model, when N reaches the minimum batch and the cost model says it is faster than
    /// the CPU. Resident when every prepared weight fits the budget at once; otherwise
    /// streamed (weights uploaded per layer, their stored bytes counted in the cost) if the
    /// engine can, else not at all (ops are then placed one by one). Below the minimum batch
    /// (decode steps) only an engine that decodes with its weights resident, when reading
    /// them at its memory bandwidth beats the CPU streaming the stored ones. Returns the
    /// decision and whether the stack is streamed.
    pub fn decide_stack(&self, engines: &[&dyn MatrixEngine], layers: &[crate::plan::Layer], cost: &StackCost<'_>, budget: usize) -> (Decision, bool) {
        if self.backend == Backend::Cpu {
            return (Decision::cpu("--backend cpu"), false);
        }
        let n = cost.n;
        let mut why_not = Vec::new();
        for (i, e) in self.candidates(engines) {
            let Some(stack) = e.capabilities().stack else {
                why_not.push(format!("{}: no whole decoder stacks on this engine", e.name()));
                continue;
            };
            if let Err(r) = stack.supports_stack(layers) {
                why_not.push(format!("{}: {r}", e.name()));
                continue;
            }
            let need = (cost.resident)(e);
            let streamed = need > budget;
            let over = format!(
                "the model's weights need {:.2} GiB on {}, over its {:.2} GiB budget",
                need as f64 / GIB,
                e.name(),
                budget as f64 / GIB
            );
            if n < self.min_batch {
                // A decode step: the engine reads its resident weights once per step at its
                // memory bandwidth, the CPU streams the stored weights at its own.
                match stack.decode_bandwidth() {
                    Some(bw) if !streamed => {
                        let t_engine = need as f64 / bw + layers.len() as f64 * DECODE_LAYER_OVERHEAD;
                        let t_cpu = (cost.flops / self.cpu.0).max(cost.weight_bytes / self.cpu.1);
                        let costs = format!("decode cost model {:.3} ms on {} vs {:.3} ms on CPU", t_engine * 1e3, e.name(), t_cpu * 1e3);
                        if t_engine < t_cpu {
                            return (Decision { engine: Some(i), reason: format!("whole stack N={n} (decode), resident: {costs}") }, false);
                        }
                        why_not.push(costs);
                    }
                    Some(_) => why_not.push(format!("{over}: decode stays on the CPU")),
                    None => why_not.push(format!("N={n} < --offload-min-batch {}", self.min_batch)),
                }
                continue;
            }
            if streamed && !stack.streams_stack(layers) {
                why_not.push(format!("{over}: ops placed one by one"));
                continue;
            }
            let (e_flops, e_bw) = e.throughput_hint();
            let moved = cost.bytes + if streamed { cost.weight_bytes } else { 0.0 };
            let (t_engine, t_cpu) = (cost.flops / e_flops + moved / e_bw, cost.flops / self.cpu.0);
            let costs = format!("cost model {:.3} ms on {} vs {:.3} ms on CPU", t_engine * 1e3, e.name(), t_cpu * 1e3);
            if t_engine < t_cpu {
                let how = if streamed { format!("streamed ({over})") } else { "resident".into() };
                return (Decision { engine: Some(i), reason: format!("whole stack N={n}, {how}: {costs}") }, streamed);
            }
            why_not.push(costs);
        }
        if why_not.is_empty() {
            why_not.push("no accelerator".into());
        }
        (Decision::cpu(why_not.join("; ")), false)
    }

    /// The engines `--backend` lets the policy consider, with their indices.
    fn candidates<'a>(&'a self, engines: &'a [&'a dyn MatrixEngine]) -> impl Iterator<Item = (usize, &'a dyn MatrixEngine)> + 'a {
        engines.iter().copied().enumerate().filter(move |(_, e)| match &self.backend {
            Backend::Named(name) => name == e.name(),
            _ => true,
        })
    }

    /// The smallest N any engine takes without a calibration saying otherwise (`--offload-min-batch`).
    pub fn min_batch(&self) -> usize {
        self.min_batch
    }

    /// Estimated seconds on the engine (compute + activations in f16 both ways) and on the CPU
    /// (compute or streaming the weight, whichever is slower). Preparation is paid once and ignored.
    pub fn estimate(&self, e: &dyn MatrixEngine, s: &MatmulShape) -> (f64, f64) {
        let (flops, bw) = e.throughput_hint();
        let moved = 2.0 * (s.n * (s.k + s.m)) as f64;
        let t_engine = s.flops() / flops + moved / bw;
        let t_cpu = (s.flops() / self.cpu.0).max(s.weight_bytes() / self.cpu.1);
        (t_engine, t_cpu)
    }
}
