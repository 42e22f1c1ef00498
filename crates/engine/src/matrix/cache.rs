//! The prepared-weight cache: which (engine, weight, N bucket) are prepared, within a
//! memory budget (least recently used goes first) and a compile budget; counts hits,
//! misses, compiles and compile time. Engines hold the prepared data; this decides.

use super::stats::Stats;
use super::{EngineFailure, MatrixEngine, WeightKey};
use crate::weights::Weight;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Budgets of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheBudget {
    /// Bytes of prepared weights an engine may hold.
    pub memory_bytes: usize,
    /// Preparations allowed per engine per process (compilers with a program limit).
    pub max_compiles: usize,
}

impl Default for CacheBudget {
    fn default() -> Self {
        CacheBudget { memory_bytes: usize::MAX, max_compiles: usize::MAX }
    }
}

type Slot = (String, WeightKey, usize);

struct Entry {
    bytes: usize,
    last_use: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Slot, Entry>,
    used: HashMap<String, usize>,
    compiles: HashMap<String, usize>,
    tick: u64,
}

/// Tracks prepared weights of every engine.
pub struct PreparedCache {
    budget: CacheBudget,
    state: Mutex<State>,
}

/// The N bucket for `n` tokens: the smallest bucket ≥ n (the caller tiles N above the largest).
pub fn bucket_for(buckets: Option<&[usize]>, n: usize) -> usize {
    match buckets {
        None => 0,
        Some(b) => b.iter().copied().find(|&x| x >= n).unwrap_or_else(|| *b.last().expect("non-empty buckets")),
    }
}

impl PreparedCache {
    /// An empty cache.
    pub fn new(budget: CacheBudget) -> Self {
        PreparedCache { budget, state: Mutex::new(State::default()) }
    }

    /// Make sure `w` is prepared on `engine` for `bucket`, preparing (and evicting) as needed.
    pub fn ensure(
        &self,
        engine: &dyn MatrixEngine,
        key: &WeightKey,
        w: &Weight,
        bucket: usize,
        stats: &Stats,
    ) -> Result<(), EngineFailure> {
        let name = engine.name().to_string();
        let slot = (name.clone(), key.clone(), bucket);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.tick += 1;
        let tick = st.tick;
        if let Some(e) = st.entries.get_mut(&slot) {
            e.last_use = tick;
            stats.with(&name, |s| s.hits += 1);
            return Ok(());
        }
        stats.with(&name, |s| s.misses += 1);
        let compiled = st.compiles.get(&name).copied().unwrap_or(0);
        if compiled >= self.budget.max_compiles {
            return Err(EngineFailure {
                engine: name,
                what: format!("compile budget of {} preparations exhausted", self.budget.max_compiles),
            });
        }
        let t0 = Instant::now();
        let bytes = engine.prepare(key, w, bucket)?;
        let dt = t0.elapsed();
        stats.with(&name, |s| {
            s.compiles += 1;
            s.compile_time += dt;
        });
        *st.compiles.entry(name.clone()).or_default() += 1;
        if bytes > self.budget.memory_bytes {
            engine.evict(key, bucket);
            return Err(EngineFailure {
                engine: name,
                what: format!("{} needs {bytes} bytes, more than the whole budget", key.tensor),
            });
        }
        *st.used.entry(name.clone()).or_default() += bytes;
        st.entries.insert(slot.clone(), Entry { bytes, last_use: tick });
        // Least recently used first, never the one just prepared.
        while st.used[&name] > self.budget.memory_bytes {
            let victim = st
                .entries
                .iter()
                .filter(|(s, _)| s.0 == name && **s != slot)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(s, _)| s.clone())
                .expect("over budget implies another entry");
            let e = st.entries.remove(&victim).expect("present");
            *st.used.get_mut(&name).expect("present") -= e.bytes;
            engine.evict(&victim.1, victim.2);
            stats.with(&name, |s| s.evictions += 1);
        }
        Ok(())
    }

    /// The budgets.
    pub fn budget(&self) -> CacheBudget {
        self.budget
    }

    /// Bytes held by an engine.
    pub fn used(&self, engine: &str) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).used.get(engine).copied().unwrap_or(0)
    }

    /// Entries held by an engine.
    pub fn entries(&self, engine: &str) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).entries.keys().filter(|s| s.0 == engine).count()
    }
}
