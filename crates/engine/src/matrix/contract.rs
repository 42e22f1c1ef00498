//! The engine contract: what a matrix engine must do (the core: availability, shape
//! support, preparing and evicting weights under the shared cache's keys, grouped
//! matmuls) and what it may offer ([`Capabilities`]: a fused feed-forward block, a
//! prefill's attention, a batch's whole decoder stack), discovered at run time. The
//! shapes engines need live here; nothing here knows a model's file or its architecture.

use crate::arch::Activation;
use crate::plan::{Layer, RopeKind};
use crate::weights::Weight;
use half::f16;
use quant::GgmlType;
use std::ops::Range;

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
    /// Biases of the projections, if any (gpt-oss's experts).
    pub biases: Option<&'a crate::plan::FfnBiases>,
}

impl FeedForward<'_> {
    /// Whether engines that fuse blocks can take it: no biases, a SiLU or GELU gate.
    pub fn is_plain(&self) -> bool {
        self.biases.is_none() && matches!(self.activation, Activation::Silu | Activation::GeluTanh)
    }

    /// The block as separate steps, for whoever does not fuse it: gate and up through
    /// `group` (one shared input), `act(gate) ⊙ up` on the host, down through `group`.
    pub fn run_with<E>(&self, x: &[f32], out: &mut [f32], mut group: impl FnMut(&[&Weight], &[f32], &mut [&mut [f32]]) -> Result<(), E>) -> Result<(), E> {
        let n = x.len() / self.gate.cols;
        let (mut gate, mut up) = (vec![0f32; n * self.gate.rows], vec![0f32; n * self.up.rows]);
        group(&[self.gate, self.up], x, &mut [&mut gate, &mut up])?;
        if let Some(b) = self.biases {
            b.add_to_gate_up(&mut gate, &mut up);
        }
        crate::cpu::ops::gated(self.activation, &mut gate, &up);
        group(&[self.down], &gate, &mut [out])?;
        if let Some(b) = self.biases {
            b.add_to_down(out);
        }
        Ok(())
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

/// Shapes for one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Query/key head dimension.
    pub head_dim: usize,
    /// Value head dimension.
    pub head_dim_v: usize,
    /// Sliding window (keys with pos_q - pos_k >= window are masked).
    pub window: Option<usize>,
}

/// A matrix engine: prepares weights once, then multiplies activations by them.
///
/// Engines hold their prepared weights themselves, keyed by [`WeightKey`] and N
/// bucket; the shared [`super::cache::PreparedCache`] decides what stays within the budget
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
    /// Bytes a prepared weight of this shape holds on the engine (f16 by default), for
    /// deciding whether a whole model fits its budget.
    fn prepared_bytes(&self, shape: &MatmulShape) -> usize {
        shape.m * shape.k * 2
    }
    /// `outs[i][t * M_i + m] = Σ_k x[t, k] · W_i[m, k]` for weights prepared under `keys`
    /// (all sharing K), `n` tokens padded to `bucket` as the engine needs.
    fn matmul(&self, keys: &[&WeightKey], weights: &[&Weight], bucket: usize, x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure>;
    /// The larger units this engine runs besides matmuls (none by default).
    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities::default()
    }
    /// Whether it takes a mixture of experts' blocks (`Err` says why not: they then stay on the CPU).
    fn takes_experts(&self) -> Result<(), String> {
        Ok(())
    }
    /// Bytes of device memory the process holds on the engine now (weights, caches, scratch),
    /// for benchmarks' memory columns; `None` when it has no memory of its own or cannot say.
    fn device_memory(&self) -> Option<usize> {
        None
    }
}

/// What an engine offers besides matmuls; each is asked for at run time.
#[derive(Clone, Copy, Default)]
pub struct Capabilities<'a> {
    /// A whole feed-forward block in one call (its wide intermediate never leaves the engine).
    pub feed_forward: Option<&'a dyn FusedFeedForward>,
    /// A prefill's attention over a layer's cache.
    pub attention: Option<&'a dyn AttentionOp>,
    /// A batch's whole decoder stack (only hidden states and new K/V cross).
    pub stack: Option<&'a dyn DecoderStack>,
}

/// Capability: a whole feed-forward block as one call.
pub trait FusedFeedForward: Sync {
    /// `out[t] = down · (act(gate · x_t) ⊙ (up · x_t))` for the block's weights, each prepared
    /// under its [`WeightKey::of`], `n` tokens padded to `bucket` as the engine needs.
    fn feed_forward(&self, ffn: &FeedForward<'_>, bucket: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), EngineFailure>;
}

/// Capability: causal attention of a batch of queries over a layer's f16 KV cache,
/// exactly as [`crate::cpu::attention::attention`] defines it (same arguments and layouts).
pub trait AttentionOp: Sync {
    /// Whether it can run this shape (`Err` says why not).
    fn supports_attention(&self, shape: &AttnShape) -> Result<(), String>;
    /// Run it.
    fn attention(&self, shape: &AttnShape, q: &[f32], positions: &[usize], k_cache: &[f16], v_cache: &[f16], out: &mut [f32]) -> Result<(), EngineFailure>;
}

/// Capability: every decoder block of a model over a batch, following
/// [`crate::block::run_layers`].
pub trait DecoderStack: Sync {
    /// Whether it can run these layers (`Err` says why not).
    fn supports_stack(&self, layers: &[Layer]) -> Result<(), String>;
    /// Whether it can also run these layers with weights it has not prepared
    /// ([`StackInput::weights_resident`] false: it uploads them per layer, for models larger
    /// than its budget).
    fn streams_stack(&self, _layers: &[Layer]) -> bool {
        false
    }
    /// The engine's memory bandwidth (bytes/s) when it also runs decode steps, each
    /// sequence's rows kept on it between calls ([`KvRows::mirror`]); `None`: it takes only
    /// batches large enough for the placement policy's minimum.
    fn decode_bandwidth(&self) -> Option<f64> {
        None
    }
    /// `x` (`[n, n_embd]`, the embeddings) becomes the last block's output, and each
    /// sequence's cache receives the new tokens' K/V at their positions (its length is left
    /// to the caller). Every weight is prepared before the call unless
    /// `input.weights_resident` is false. On failure `x` is left as it was (the caller
    /// recomputes from it) and the caches' new rows may hold anything (the caller rewrites them).
    fn stack(&self, input: &StackInput<'_>, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Result<(), EngineFailure>;
}

/// One sequence's K/V rows as a stack reads and writes them: per layer, f16 rows of every
/// position (`[n_ctx, n_head_kv * head_dim]` for K, the value width for V). The engine's
/// KV cache is one; the contract needs no more of it.
pub trait KvRows: Send {
    /// Layer `il`'s K and V rows.
    fn layer(&self, il: usize) -> (&[f16], &[f16]);
    /// Every layer's K and V rows as f16 bit patterns, writable (an engine's write-back).
    fn layers_mut(&mut self) -> Vec<(&mut [u16], &mut [u16])>;
    /// Store f32 K and V rows of layer `il` at positions `pos0..`, rounded to f16.
    fn store(&mut self, il: usize, pos0: usize, k: &[f32], v: &[f32]);
    /// A recurrent layer's state for the sequence: (convolution inputs, delta-rule state),
    /// as they stand after the cached positions.
    fn recurrent(&mut self, il: usize) -> (&mut [f32], &mut [f32]);
    /// The engine's own copy of these rows, kept with the sequence between calls.
    fn mirror(&mut self) -> &mut KvMirror;
}

/// An engine's copy of one sequence's K/V rows (on the card: decode steps then read the
/// cache where it already is). It lives with the sequence and is dropped with it; the host
/// rows stay the truth, and every host-side write lowers `valid` to the first row it touched.
#[derive(Default)]
pub struct KvMirror {
    /// The engine's data, which only it reads (it downcasts).
    pub data: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Positions `0..valid` of the copy equal the host rows.
    pub valid: usize,
}

impl KvMirror {
    /// Host rows from `pos` on changed (written, cut or replaced).
    pub fn changed_from(&mut self, pos: usize) {
        self.valid = self.valid.min(pos);
    }
}

/// A batch's pass through every decoder block: what an engine needs besides the hidden
/// states and the caches.
#[derive(Clone, Copy)]
pub struct StackInput<'a> {
    /// The layers, as the architecture planned them.
    pub layers: &'a [Layer],
    /// Absolute position of every token of the batch.
    pub positions: &'a [usize],
    /// The batch rows of each sequence (one KV cache each, in the same order).
    pub spans: &'a [Range<usize>],
    /// `(sin, cos)` of every RoPE pair for every token, `[n, rope_dims / 2]`: full-attention layers.
    pub rope_global: &'a [(f32, f32)],
    /// The same for sliding-window layers (equal to `rope_global` when the model has none).
    pub rope_local: &'a [(f32, f32)],
    /// Every weight is prepared on the engine (resident); false: the engine streams them.
    pub weights_resident: bool,
    /// Each layer's per-token inputs of the per-layer input block, `[n_layer, n, width]`
    /// (gemma4 E2B/E4B; empty for other models).
    pub per_layer_inputs: &'a [f32],
}

impl StackInput<'_> {
    /// Tokens in the batch.
    pub fn n(&self) -> usize {
        self.positions.len()
    }

    /// The RoPE angles of layer `il`.
    pub fn rope(&self, il: usize) -> &[(f32, f32)] {
        match self.layers[il].attention().map(|a| a.rope) {
            Some(RopeKind::Local) => self.rope_local,
            _ => self.rope_global,
        }
    }
}
