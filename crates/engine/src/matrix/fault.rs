//! Fault injection: an engine wrapper that fails every k-th op, to prove that a
//! failing accelerator never leaves an output uncomputed.

use super::{AttentionOp, AttnShape, Availability, Capabilities, DecoderStack, EngineFailure, FeedForward, FusedFeedForward, MatmulShape, MatrixEngine, StackInput, WeightKey};
use crate::kv_cache::KvCache;
use crate::plan::Layer;
use crate::weights::Weight;
use half::f16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Wraps an engine; every `every`-th op (matmul or feed-forward block) returns an error instead of running.
pub struct FaultyEngine {
    inner: Arc<dyn MatrixEngine>,
    name: String,
    every: u64,
    calls: AtomicU64,
}

impl FaultyEngine {
    /// Fail every `every`-th matmul of `inner` (every ≥ 1).
    pub fn new(inner: Arc<dyn MatrixEngine>, every: u64) -> Self {
        let name = format!("{}+faults", inner.name());
        FaultyEngine { inner, name, every: every.max(1), calls: AtomicU64::new(0) }
    }
}

impl FaultyEngine {
    fn maybe_fail(&self) -> Result<(), EngineFailure> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if call % self.every == 0 {
            return Err(EngineFailure { engine: self.name.clone(), what: format!("injected fault on op {call}") });
        }
        Ok(())
    }
}

impl MatrixEngine for FaultyEngine {
    fn name(&self) -> &str {
        &self.name
    }
    fn availability(&self) -> Availability {
        self.inner.availability()
    }
    fn supports(&self, shape: &MatmulShape) -> Result<(), String> {
        self.inner.supports(shape)
    }
    fn n_buckets(&self) -> Option<&[usize]> {
        self.inner.n_buckets()
    }
    fn throughput_hint(&self) -> (f64, f64) {
        self.inner.throughput_hint()
    }
    fn memory_budget(&self) -> Option<usize> {
        self.inner.memory_budget()
    }
    fn prepare(&self, key: &WeightKey, w: &Weight, bucket: usize) -> Result<usize, EngineFailure> {
        self.inner.prepare(key, w, bucket)
    }
    fn evict(&self, key: &WeightKey, bucket: usize) {
        self.inner.evict(key, bucket)
    }
    fn matmul(
        &self,
        keys: &[&WeightKey],
        weights: &[&Weight],
        bucket: usize,
        x: &[f32],
        n: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<(), EngineFailure> {
        if let Err(f) = self.maybe_fail() {
            // Leave garbage behind, as a real failed eval might.
            outs.iter_mut().for_each(|o| o.fill(f32::NAN));
            return Err(f);
        }
        self.inner.matmul(keys, weights, bucket, x, n, outs)
    }
    fn prepared_bytes(&self, shape: &MatmulShape) -> usize {
        self.inner.prepared_bytes(shape)
    }
    /// The inner engine's capabilities, each wrapped so it fails like the matmuls.
    fn capabilities(&self) -> Capabilities<'_> {
        let inner = self.inner.capabilities();
        Capabilities {
            feed_forward: inner.feed_forward.map(|_| self as &dyn FusedFeedForward),
            attention: inner.attention.map(|_| self as &dyn AttentionOp),
            stack: inner.stack.map(|_| self as &dyn DecoderStack),
        }
    }
}

impl FaultyEngine {
    fn inner_capabilities(&self) -> Capabilities<'_> {
        self.inner.capabilities()
    }
}

impl FusedFeedForward for FaultyEngine {
    fn feed_forward(
        &self,
        keys: [&WeightKey; 3],
        ffn: &FeedForward<'_>,
        bucket: usize,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), EngineFailure> {
        if let Err(f) = self.maybe_fail() {
            out.fill(f32::NAN);
            return Err(f);
        }
        let inner = self.inner_capabilities().feed_forward.expect("offered only when the inner engine fuses");
        inner.feed_forward(keys, ffn, bucket, x, n, out)
    }
}

impl AttentionOp for FaultyEngine {
    fn supports_attention(&self, shape: &AttnShape) -> Result<(), String> {
        self.inner_capabilities().attention.expect("offered only when the inner engine has it").supports_attention(shape)
    }
    fn attention(
        &self,
        shape: &AttnShape,
        q: &[f32],
        positions: &[usize],
        k_cache: &[f16],
        v_cache: &[f16],
        out: &mut [f32],
    ) -> Result<(), EngineFailure> {
        if let Err(f) = self.maybe_fail() {
            out.fill(f32::NAN);
            return Err(f);
        }
        let inner = self.inner_capabilities().attention.expect("offered only when the inner engine has it");
        inner.attention(shape, q, positions, k_cache, v_cache, out)
    }
}

impl DecoderStack for FaultyEngine {
    fn supports_stack(&self, layers: &[Layer]) -> Result<(), String> {
        self.inner_capabilities().stack.expect("offered only when the inner engine has it").supports_stack(layers)
    }
    fn streams_stack(&self) -> bool {
        self.inner_capabilities().stack.is_some_and(|s| s.streams_stack())
    }
    fn stack(&self, input: &StackInput<'_>, x: &mut [f32], caches: &mut [&mut KvCache]) -> Result<(), EngineFailure> {
        if let Err(f) = self.maybe_fail() {
            // Garbage in the cache rows the batch would have filled (x stays: the contract).
            for il in 0..input.layers.len() {
                for (cache, span) in caches.iter_mut().zip(input.spans) {
                    let pos0 = input.positions[span.start];
                    let (kd, vd) = (cache.layer(il).0.len() / cache.n_ctx(), cache.layer(il).1.len() / cache.n_ctx());
                    let nan = vec![f32::NAN; span.len() * kd.max(vd)];
                    cache.store(il, pos0, &nan[..span.len() * kd], &nan[..span.len() * vd]);
                }
            }
            return Err(f);
        }
        let inner = self.inner_capabilities().stack.expect("offered only when the inner engine has it");
        inner.stack(input, x, caches)
    }
}
