//! An engine seen under another name with a hook on its ops: fault injection
//! ([`super::fault::FaultyEngine`]) and the conformance suite's recorder are both this.
//! Every failure — the hook's or the inner engine's — carries the wrapper's name, since
//! that is the engine the dispatcher placed the op on.

use super::{KvRows, AttentionOp, AttnShape, Availability, Capabilities, DecoderStack, EngineFailure, FeedForward, FusedFeedForward, MatmulShape, MatrixEngine, StackInput, WeightKey};
use crate::plan::Layer;
use crate::weights::Weight;
use half::f16;
use std::sync::Arc;

/// What a wrapper does around the inner engine's ops.
pub trait OpHook: Send + Sync {
    /// Before an op runs (preparation excluded): `Err(why)` fails it without running it,
    /// leaving garbage where its outputs go, as a failed engine may.
    fn before(&self) -> Result<(), String> {
        Ok(())
    }
    /// Every failure of a preparation or an op, as the dispatcher will see it.
    fn failed(&self, failure: &EngineFailure) {
        let _ = failure;
    }
}

/// `inner` under `name`, its ops passed through `hook`.
pub struct Wrapped<H> {
    inner: Arc<dyn MatrixEngine>,
    name: String,
    hook: H,
}

impl<H: OpHook> Wrapped<H> {
    /// Wrap `inner` under `name`.
    pub fn with_hook(inner: Arc<dyn MatrixEngine>, name: String, hook: H) -> Self {
        Wrapped { inner, name, hook }
    }

    /// The engine inside.
    pub fn inner(&self) -> &Arc<dyn MatrixEngine> {
        &self.inner
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The inner engine's failure under this engine's name, shown to the hook.
    fn renamed<T>(&self, r: Result<T, EngineFailure>) -> Result<T, EngineFailure> {
        r.map_err(|f| {
            let f = EngineFailure { engine: self.name.clone(), what: f.what };
            self.hook.failed(&f);
            f
        })
    }

    /// Whether the hook fails the next op before it runs (the caller then fills its outputs with garbage).
    fn injected(&self) -> Result<(), EngineFailure> {
        let r = self.hook.before().map_err(|what| EngineFailure { engine: self.name.clone(), what });
        self.renamed(r)
    }

    /// The inner capability, or a failure naming the one missing.
    fn missing(&self, what: &str) -> EngineFailure {
        EngineFailure { engine: self.name.clone(), what: format!("no {what}") }
    }
}

impl<H: OpHook> MatrixEngine for Wrapped<H> {
    fn name(&self) -> &str {
        &self.name
    }
    fn availability(&self) -> Availability {
        self.inner.availability()
    }
    fn supports(&self, shape: &MatmulShape) -> Result<(), String> {
        self.inner.supports(shape)
    }
    fn takes_experts(&self) -> Result<(), String> {
        self.inner.takes_experts()
    }
    fn device_memory(&self) -> Option<usize> {
        self.inner.device_memory()
    }
    fn n_buckets(&self) -> Option<&[usize]> {
        self.inner.n_buckets()
    }
    fn memory_budget(&self) -> Option<usize> {
        self.inner.memory_budget()
    }
    fn throughput_hint(&self) -> (f64, f64) {
        self.inner.throughput_hint()
    }
    fn prepare(&self, key: &WeightKey, w: &Weight, bucket: usize) -> Result<usize, EngineFailure> {
        self.renamed(self.inner.prepare(key, w, bucket))
    }
    fn evict(&self, key: &WeightKey, bucket: usize) {
        self.inner.evict(key, bucket)
    }
    fn prepared_bytes(&self, shape: &MatmulShape) -> usize {
        self.inner.prepared_bytes(shape)
    }
    fn matmul(&self, keys: &[&WeightKey], ws: &[&Weight], bucket: usize, x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        if let Err(f) = self.injected() {
            outs.iter_mut().for_each(|o| o.fill(f32::NAN));
            return Err(f);
        }
        self.renamed(self.inner.matmul(keys, ws, bucket, x, n, outs))
    }
    /// The inner engine's capabilities, each passed through the hook.
    fn capabilities(&self) -> Capabilities<'_> {
        let inner = self.inner.capabilities();
        Capabilities {
            feed_forward: inner.feed_forward.map(|_| self as &dyn FusedFeedForward),
            attention: inner.attention.map(|_| self as &dyn AttentionOp),
            stack: inner.stack.map(|_| self as &dyn DecoderStack),
        }
    }
}

impl<H: OpHook> FusedFeedForward for Wrapped<H> {
    fn feed_forward(&self, ffn: &FeedForward<'_>, bucket: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), EngineFailure> {
        let op = self.inner.capabilities().feed_forward.ok_or_else(|| self.missing("FusedFeedForward"))?;
        if let Err(f) = self.injected() {
            out.fill(f32::NAN);
            return Err(f);
        }
        self.renamed(op.feed_forward(ffn, bucket, x, n, out))
    }
}

impl<H: OpHook> AttentionOp for Wrapped<H> {
    fn supports_attention(&self, shape: &AttnShape) -> Result<(), String> {
        self.inner.capabilities().attention.map_or(Err("no AttentionOp".into()), |op| op.supports_attention(shape))
    }
    fn attention(&self, shape: &AttnShape, q: &[f32], positions: &[usize], k: &[f16], v: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        let op = self.inner.capabilities().attention.ok_or_else(|| self.missing("AttentionOp"))?;
        if let Err(f) = self.injected() {
            out.fill(f32::NAN);
            return Err(f);
        }
        self.renamed(op.attention(shape, q, positions, k, v, out))
    }
}

impl<H: OpHook> DecoderStack for Wrapped<H> {
    fn supports_stack(&self, layers: &[Layer]) -> Result<(), String> {
        self.inner.capabilities().stack.map_or(Err("no DecoderStack".into()), |op| op.supports_stack(layers))
    }
    fn streams_stack(&self, layers: &[Layer]) -> bool {
        self.inner.capabilities().stack.is_some_and(|op| op.streams_stack(layers))
    }
    fn decode_bandwidth(&self) -> Option<f64> {
        self.inner.capabilities().stack.and_then(|op| op.decode_bandwidth())
    }
    fn stack(&self, input: &StackInput<'_>, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Result<(), EngineFailure> {
        let op = self.inner.capabilities().stack.ok_or_else(|| self.missing("DecoderStack"))?;
        if let Err(f) = self.injected() {
            // A failed stack leaves `x` as it was (the contract), garbage in the new cache rows.
            poison_new_rows(input, caches);
            return Err(f);
        }
        self.renamed(op.stack(input, x, caches))
    }
}

/// NaN in every cache row the batch would have written.
fn poison_new_rows(input: &StackInput<'_>, caches: &mut [&mut dyn KvRows]) {
    for (il, l) in input.layers.iter().enumerate() {
        // Only layers that write rows of their own.
        let Some(a) = l.attention().filter(|a| a.kv_projections().is_some()) else { continue };
        let s = &a.shape;
        let (kd, vd) = (s.n_head_kv * s.head_dim, s.n_head_kv * s.head_dim_v);
        for (cache, span) in caches.iter_mut().zip(input.spans) {
            let pos0 = input.positions[span.start];
            let nan = vec![f32::NAN; span.len() * kd.max(vd)];
            cache.store(il, pos0, &nan[..span.len() * kd], &nan[..span.len() * vd]);
        }
    }
}
