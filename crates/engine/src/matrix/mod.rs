//! Matrix engines and placement: every weight matmul asks the [`Dispatcher`] where to
//! run; the [`policy::PlacementPolicy`] answers with a decision and a reason; engines
//! prepare each weight once ([`cache::PreparedCache`] keeps the budget); a failing
//! engine's op is recomputed on the CPU in the same step and counted.
//!
//! An engine takes matrix multiplications — one weight times `[N, K]` activations, or a
//! group of weights sharing one input (Q/K/V, gate/up) — and optionally larger units: a
//! feed-forward block, a prefill's attention, or a batch's whole decoder stack (only the
//! hidden states and the new K/V cross to it and back). Everything else stays on the CPU.

pub mod cache;
pub mod cpu_engine;
pub mod disk_cache;
pub mod dispatch;
pub mod fault;
pub mod policy;
pub mod reference;
pub mod stats;

pub use dispatch::Dispatcher;

use crate::arch::{Activation, Config};
use crate::block::StackInput;
use crate::cpu::attention::AttnShape;
use crate::kv_cache::KvCache;
use crate::weights::Weight;
use half::f16;
use quant::GgmlType;

/// The identity of a weight: tensor name plus the identity of the file it lives in
/// (path, size, modification time) — never a raw pointer that could be reused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightKey {
    /// Tensor name.
    pub tensor: String,
    /// File identity.
    pub file: String,
}

impl WeightKey {
    /// The key of a weight view.
    pub fn of(w: &Weight) -> Self {
        WeightKey { tensor: w.name.clone(), file: w.file_identity() }
    }
}

/// One matmul's shape: `[N, K] · [M, K]ᵀ` with the weight stored as `ty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulShape {
    /// Output features.
    pub m: usize,
    /// Input features.
    pub k: usize,
    /// Tokens.
    pub n: usize,
    /// Weight type.
    pub ty: GgmlType,
}

impl MatmulShape {
    /// The shape of `w` applied to `n` tokens.
    pub fn of(w: &Weight, n: usize) -> Self {
        MatmulShape { m: w.rows, k: w.cols, n, ty: w.ty }
    }

    /// Floating-point operations (2·M·K·N).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.k as f64 * self.n as f64
    }

    /// Bytes of the stored weight.
    pub fn weight_bytes(&self) -> f64 {
        self.ty.bytes_for((self.m * self.k) as u64).unwrap_or(0) as f64
    }
}

/// A feed-forward block: `down · (act(gate · x) ⊙ (up · x))`.
#[derive(Clone, Copy)]
pub struct FeedForward<'a> {
    /// Gate projection `[n_ff, n_embd]`.
    pub gate: &'a Weight,
    /// Up projection `[n_ff, n_embd]`.
    pub up: &'a Weight,
    /// Down projection `[n_embd, n_ff]`.
    pub down: &'a Weight,
    /// Applied to the gate before the product with up.
    pub activation: Activation,
}

impl FeedForward<'_> {
    /// The three weights in the order engines take their keys: gate, up, down.
    pub fn weights(&self) -> [&Weight; 3] {
        [self.gate, self.up, self.down]
    }
}

/// Whether an engine can run at all on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Ready.
    Available,
    /// Not usable, and why (no driver, no device, framework missing...).
    Unavailable(String),
}

/// Why an engine failed an op (the op is then recomputed on the CPU).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{engine}: {what}")]
pub struct EngineFailure {
    /// The engine.
    pub engine: String,
    /// What went wrong (compile error, eval error, out of memory, time-out...).
    pub what: String,
}

/// A matrix engine: prepares weights once, then multiplies activations by them.
///
/// Engines hold their prepared weights themselves, keyed by [`WeightKey`] and N
/// bucket; the shared [`cache::PreparedCache`] decides what stays within the budget
/// and tells the engine to [`MatrixEngine::evict`] the rest.
pub trait MatrixEngine: Send + Sync {
    /// Short name used in flags and summaries (`cpu`, `cuda`, `ane`).
    fn name(&self) -> &str;
    /// Can it run here?
    fn availability(&self) -> Availability;
    /// Can it run this shape and type? `Err` says why not.
    fn supports(&self, shape: &MatmulShape) -> Result<(), String>;
    /// Token tiles it compiles for, if it compiles per shape; `None` = any N.
    fn n_buckets(&self) -> Option<&[usize]> {
        None
    }
    /// Bytes of prepared weights it can hold (free device memory less a reserve), if bounded;
    /// the cache budget when `--gpu-mem` is not given.
    fn memory_budget(&self) -> Option<usize> {
        None
    }
    /// Estimated sustained throughput (FLOP/s) and host↔engine bandwidth (bytes/s),
    /// used by the cost model before calibration says better.
    fn throughput_hint(&self) -> (f64, f64);
    /// Prepare (upload, convert, compile) `w` for token tile `bucket` (0 when
    /// [`n_buckets`](Self::n_buckets) is `None`). Returns the bytes it now holds.
    fn prepare(&self, key: &WeightKey, w: &Weight, bucket: usize) -> Result<usize, EngineFailure>;
    /// Drop a prepared weight.
    fn evict(&self, key: &WeightKey, bucket: usize);
    /// `outs[i][t * M_i + m] = Σ_k x[t, k] · W_i[m, k]` for weights prepared under `keys`
    /// (all sharing K), `n` tokens padded to `bucket` as the engine needs.
    fn matmul(
        &self,
        keys: &[&WeightKey],
        weights: &[&Weight],
        bucket: usize,
        x: &[f32],
        n: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<(), EngineFailure>;
    /// Whether [`feed_forward`](Self::feed_forward) runs a whole block in one call, so
    /// its wide intermediate never leaves the engine.
    fn fuses_feed_forward(&self) -> bool {
        false
    }
    /// `out[t] = down · (act(gate · x_t) ⊙ (up · x_t))` for the block's weights prepared
    /// under `keys` (gate, up, down), `n` tokens padded to `bucket` as the engine needs.
    fn feed_forward(
        &self,
        keys: [&WeightKey; 3],
        ffn: &FeedForward<'_>,
        bucket: usize,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), EngineFailure> {
        let _ = (keys, ffn, bucket, x, n, out);
        Err(EngineFailure { engine: self.name().into(), what: "this engine does not fuse feed-forward blocks".into() })
    }
    /// Whether [`attention`](Self::attention) can run this shape (`Err` says why not); by
    /// default no engine runs attention.
    fn supports_attention(&self, shape: &AttnShape) -> Result<(), String> {
        let _ = shape;
        Err("no attention on this engine".into())
    }
    /// Bytes a prepared weight of this shape holds on the engine (f16 by default), for
    /// deciding whether a whole model fits its budget.
    fn prepared_bytes(&self, shape: &MatmulShape) -> usize {
        shape.m * shape.k * 2
    }
    /// Whether [`stack`](Self::stack) can run this model's decoder blocks (`Err` says why
    /// not); by default no engine runs whole stacks.
    fn supports_stack(&self, config: &Config) -> Result<(), String> {
        let _ = config;
        Err("no whole decoder stacks on this engine".into())
    }
    /// Whether [`stack`](Self::stack) can also run with weights it has not prepared
    /// (`StackInput::weights_resident` false: it uploads them per layer, for models larger
    /// than its budget).
    fn streams_stack(&self) -> bool {
        false
    }
    /// Every decoder block of the model over a batch, as [`crate::block::run_block`] defines
    /// them: `x` (`[n, n_embd]`, the embeddings) becomes the last block's output, and each
    /// sequence's cache receives the new tokens' K/V at their positions (its length is left
    /// to the caller). Every weight of the stack is prepared before the call unless
    /// `input.weights_resident` is false (streaming, see [`streams_stack`](Self::streams_stack)). On failure `x`
    /// is left as it was (the caller recomputes from it) and the caches' new rows may hold
    /// anything (the caller rewrites them).
    fn stack(&self, input: &StackInput<'_>, x: &mut [f32], caches: &mut [&mut KvCache]) -> Result<(), EngineFailure> {
        let _ = (input, x, caches);
        Err(EngineFailure { engine: self.name().into(), what: "this engine does not run decoder stacks".into() })
    }
    /// Causal attention of a batch of queries over a layer's f16 KV cache, exactly as
    /// [`crate::cpu::attention::attention`] defines it (same arguments and layouts).
    fn attention(
        &self,
        shape: &AttnShape,
        q: &[f32],
        positions: &[usize],
        k_cache: &[f16],
        v_cache: &[f16],
        out: &mut [f32],
    ) -> Result<(), EngineFailure> {
        let _ = (shape, q, positions, k_cache, v_cache, out);
        Err(EngineFailure { engine: self.name().into(), what: "this engine does not run attention".into() })
    }
}

/// The work of a decoder stack over `positions`, for the cost model: FLOPs (every matmul
/// and every attention) and the bytes that cross to an engine and back (hidden states in
/// and out in f32, new K/V out in f16).
pub fn stack_cost(input: &StackInput<'_>) -> (f64, f64) {
    let (c, n) = (&input.model.config, input.n());
    let mut flops = 0.0;
    for (il, l) in input.model.layers.iter().enumerate() {
        flops += StackInput::weights(l).iter().map(|w| MatmulShape::of(w, n).flops()).sum::<f64>();
        for span in input.spans {
            flops += attention_cost(&input.attn_shape(il), &input.positions[span.clone()]).0;
        }
    }
    let kv = (c.n_head_kv * (c.head_dim + c.head_dim_v) * 2 * c.n_layer) as f64;
    (flops, n as f64 * (8.0 * c.n_embd as f64 + kv))
}

/// The work of one attention call, for the cost model: FLOPs (QKᵀ and PV) and the bytes an
/// engine would move (queries and outputs in f32, the cache rows in f16).
pub fn attention_cost(s: &AttnShape, positions: &[usize]) -> (f64, f64) {
    let seen: f64 = positions
        .iter()
        .map(|&p| s.window.map_or(p + 1, |w| (p + 1).min(w)) as f64)
        .sum();
    let flops = 2.0 * s.n_head as f64 * (s.head_dim + s.head_dim_v) as f64 * seen;
    let rows = positions.iter().max().map_or(0, |p| p + 1) as f64;
    let bytes = 4.0 * positions.len() as f64 * (s.n_head * (s.head_dim + s.head_dim_v)) as f64
        + 2.0 * rows * (s.n_head_kv * (s.head_dim + s.head_dim_v)) as f64;
    (flops, bytes)
}
