//! Fault injection: an engine wrapper that fails every k-th op, to prove that a
//! failing accelerator never leaves an output uncomputed.

use super::wrap::{OpHook, Wrapped};
use super::MatrixEngine;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An engine whose every `every`-th op (matmul, feed-forward block, attention, stack)
/// fails instead of running.
pub type FaultyEngine = Wrapped<EveryKth>;

/// The hook: counts ops and fails every k-th.
pub struct EveryKth {
    every: u64,
    calls: AtomicU64,
}

impl OpHook for EveryKth {
    fn before(&self) -> Result<(), String> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if call % self.every == 0 {
            return Err(format!("injected fault on op {call}"));
        }
        Ok(())
    }
}

impl FaultyEngine {
    /// Fail every `every`-th op of `inner` (every ≥ 1), under the name `<inner>+faults`.
    pub fn new(inner: Arc<dyn MatrixEngine>, every: u64) -> Self {
        let name = format!("{}+faults", inner.name());
        Wrapped::with_hook(inner, name, EveryKth { every: every.max(1), calls: AtomicU64::new(0) })
    }
}
