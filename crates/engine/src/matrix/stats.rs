//! Per-engine counters, printed as the placement summary.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Counters of one engine.
#[derive(Debug, Default, Clone)]
pub struct EngineStats {
    /// Matmuls run (a group counts once per weight).
    pub matmuls: u64,
    /// Of those, feed-forward blocks run whole (three matmuls each).
    pub fused_blocks: u64,
    /// Attention calls (a layer's batch each; their FLOPs are counted in `flops`).
    pub attention: u64,
    /// Decoder blocks run whole (within stacks: hidden states kept on the engine).
    pub blocks: u64,
    /// Floating-point operations done.
    pub flops: f64,
    /// Wall time inside the engine.
    pub time: Duration,
    /// Prepared-weight cache hits.
    pub hits: u64,
    /// Prepared-weight cache misses.
    pub misses: u64,
    /// Preparations (compiles, uploads, conversions).
    pub compiles: u64,
    /// Time spent preparing.
    pub compile_time: Duration,
    /// Prepared weights evicted to stay within the budget.
    pub evictions: u64,
    /// Ops this engine failed (recomputed on the CPU).
    pub failures: u64,
}

/// Counters of every engine, by name.
#[derive(Default)]
pub struct Stats {
    inner: Mutex<BTreeMap<String, EngineStats>>,
}

impl Stats {
    /// Update one engine's counters.
    pub fn with(&self, engine: &str, f: impl FnOnce(&mut EngineStats)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(engine.to_string()).or_default());
    }

    /// A copy of all counters.
    pub fn snapshot(&self) -> BTreeMap<String, EngineStats> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forget everything (e.g. after a warm-up run).
    pub fn reset(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The placement summary table.
    pub fn summary(&self) -> String {
        let mut s = String::from(
            "placement: engine   matmuls (fused ffn)  attention  blocks      GFLOP    time(s)   GFLOP/s  cache hit/miss/compile  failures\n",
        );
        for (name, e) in self.snapshot() {
            let secs = e.time.as_secs_f64();
            s.push_str(&format!(
                "placement: {name:<6} {:>9} {:>11} {:>10} {:>7} {:>10.1} {:>10.3} {:>9.1}  {:>6}/{}/{} ({:.2}s)  {:>8}\n",
                e.matmuls,
                if e.fused_blocks > 0 { format!("({})", e.fused_blocks) } else { String::new() },
                e.attention,
                e.blocks,
                e.flops / 1e9,
                secs,
                if secs > 0.0 { e.flops / 1e9 / secs } else { 0.0 },
                e.hits,
                e.misses,
                e.compiles,
                e.compile_time.as_secs_f64(),
                e.failures
            ));
        }
        s
    }
}
