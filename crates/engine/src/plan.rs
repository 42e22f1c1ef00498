//! The layer plan: each decoder layer declared as named parts — a token mixer (full
//! attention today; recurrent layers to come) and a feed-forward part (dense today;
//! mixture of experts to come) with the norms around them. Architecture files build it
//! from GGUF metadata ([`standard_layer`] serves the llama-like ones); everything that
//! needs a layer's weights (placement, cost models, engines' stacks, the ANE planner,
//! `calibrate`) walks [`Layer::groups`], [`Layer::weights`] or [`Layer::vectors`] by role,
//! never by position.

use crate::arch::{Activation, Config, MoeConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::matrix::{AttnShape, FeedForward};
use crate::weights::{TensorSource, Weight};

/// What a weight matrix does in its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightRole {
    /// Query projection.
    AttnQ,
    /// Key projection.
    AttnK,
    /// Value projection.
    AttnV,
    /// Attention output projection.
    AttnOutput,
    /// Feed-forward gate.
    FfnGate,
    /// Feed-forward up projection.
    FfnUp,
    /// Feed-forward down projection.
    FfnDown,
    /// Mixture-of-experts router (`[n_expert, n_embd]`).
    FfnRouter,
    /// One expert's gate projection (one per expert, in expert order).
    ExpertGate,
    /// One expert's up projection.
    ExpertUp,
    /// One expert's down projection.
    ExpertDown,
    /// Gate of the per-layer input block (`[n_embd_per_layer, n_embd]`, gemma4).
    PerLayerGate,
    /// Projection of the per-layer input block back to the stream (`[n_embd, n_embd_per_layer]`).
    PerLayerProj,
    /// Gated DeltaNet: the joint q/k/v projection feeding the convolution (`attn_qkv`).
    DeltaQkv,
    /// Gated DeltaNet: the output gate's projection (`attn_gate`, z).
    DeltaGate,
    /// Gated DeltaNet: the per-head write strength's projection (`ssm_beta`).
    DeltaBeta,
    /// Gated DeltaNet: the per-head decay's projection (`ssm_alpha`).
    DeltaAlpha,
}

/// What a small per-layer vector (norm weights, biases) does in its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VectorRole {
    /// RMSNorm before the token mixer.
    AttnNorm,
    /// Query bias.
    QBias,
    /// Key bias.
    KBias,
    /// Value bias.
    VBias,
    /// Per-head RMSNorm of the queries.
    QNorm,
    /// Per-head RMSNorm of the keys.
    KNorm,
    /// RMSNorm of the mixer's output before the residual add.
    PostAttnNorm,
    /// RMSNorm before the feed-forward part.
    FfnNorm,
    /// RMSNorm of the feed-forward output before the residual add.
    PostFfnNorm,
    /// Attention sinks: one logit per query head joining every softmax (gpt-oss).
    AttnSinks,
    /// Bias of the attention output projection (gpt-oss).
    OutputBias,
    /// Bias of the mixture-of-experts router's logits (gpt-oss).
    RouterBias,
    /// RMSNorm of the per-layer input block's output (gemma4).
    PerLayerPostNorm,
    /// RMSNorm of the dense MLP's output beside the experts (gemma4's `post_ffw_norm_1`).
    SharedPostNorm,
    /// RMSNorm of the stream for the experts (gemma4's `pre_ffw_norm_2`).
    ExpertsNorm,
    /// RMSNorm of the experts' summed output (gemma4's `post_ffw_norm_2`).
    ExpertsPostNorm,
    /// Per-dimension weight of the router's input (gemma4's `ffn_gate_inp.scale`, ÷ √n_embd).
    RouterInputScale,
    /// Per-expert scale of the experts' outputs (gemma4's `ffn_down_exps.scale`).
    ExpertScales,
    /// The shared expert's gate, one weight per input feature (Qwen's `ffn_gate_inp_shexp`).
    SharedExpertGate,
    /// Gated DeltaNet: the causal convolution's taps, `[conv_dim, d_conv]` (`ssm_conv1d`).
    DeltaConv,
    /// Gated DeltaNet: the decay's bias per value head (`ssm_dt.bias`).
    DeltaDtBias,
    /// Gated DeltaNet: the decay's rate per value head, `-exp(A_log)` (`ssm_a`).
    DeltaA,
    /// Gated DeltaNet: the gated RMSNorm of each value head's output (`ssm_norm`).
    DeltaNorm,
}

/// A layer's vector by identity: engines that upload vectors address them this way.
pub type VectorId = (usize, VectorRole);

/// Weights that share one input and are dispatched together, in the order a block runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupName {
    /// Q, K and V projections of the normed input.
    AttnQkv,
    /// The attention output projection.
    AttnOutput,
    /// Feed-forward gate and up projections.
    FfnGateUp,
    /// Feed-forward down projection.
    FfnDown,
    /// The mixture-of-experts router.
    FfnRouter,
    /// The per-layer input block's gate (of the stream after the feed-forward part).
    PerLayerGate,
    /// The per-layer input block's projection back to the stream.
    PerLayerProj,
    /// A Gated DeltaNet's input projections (q/k/v, z, beta, alpha) of the normed input.
    DeltaIn,
}

/// One op group of a layer.
pub struct OpGroup<'a> {
    /// Which group.
    pub name: GroupName,
    /// Its weights with their roles (all share one input width).
    pub weights: Vec<(WeightRole, &'a Weight)>,
}

/// Which RoPE angles a layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// The full-attention base.
    Global,
    /// The sliding-window layers' base.
    Local,
}

/// Where a layer's keys and values come from.
pub enum KvSource {
    /// Its own key and value projections of the normed input.
    Own {
        /// Key projection.
        k: Weight,
        /// Value projection.
        v: Weight,
    },
    /// One projection serves both: the values are the keys' projection, taken before the keys'
    /// norm and RoPE (gemma4's layers without `attn_v`).
    KeysAsValues(Weight),
    /// No projections: the layer attends over layer `.0`'s cache (gemma4's shared-KV tail).
    Shared(usize),
}

/// Full (grouped-query) attention with its options.
pub struct Attention {
    /// Query projection.
    pub q: Weight,
    /// Key and value projections, or the earlier layer whose cache this one reads.
    pub kv: KvSource,
    /// Values RMS-normed per head (no weight) before caching (gemma4).
    pub v_norm: bool,
    /// Output projection.
    pub output: Weight,
    /// Q/K/V biases (qwen2).
    pub q_bias: Option<Vec<f32>>,
    /// Key bias.
    pub k_bias: Option<Vec<f32>>,
    /// Value bias.
    pub v_bias: Option<Vec<f32>>,
    /// Per-head RMSNorm on the queries (gemma3, qwen3).
    pub q_norm: Option<Vec<f32>>,
    /// Per-head RMSNorm on the keys.
    pub k_norm: Option<Vec<f32>>,
    /// Heads, head sizes and the sliding window.
    pub shape: AttnShape,
    /// Which RoPE angles.
    pub rope: RopeKind,
    /// How RoPE pairs dimensions.
    pub rope_style: RopeStyle,
    /// Rotated dimensions per head (≤ head_dim).
    pub rope_dims: usize,
    /// Scale applied to queries before attention.
    pub scale: f32,
    /// A further per-position query scale (mistral3's Llama 4-style temperature tuning).
    pub temperature: Option<AttnTemperature>,
    /// Attention sinks, one logit per query head (gpt-oss).
    pub sinks: Option<Vec<f32>>,
    /// Bias added to the output projection (gpt-oss).
    pub output_bias: Option<Vec<f32>>,
    /// The query projection also yields a gate per head (`[q, gate]` per head, Qwen3.5): the
    /// attention's output is multiplied by its sigmoid before the output projection.
    pub output_gate: bool,
}

/// Llama 4-style attention temperature (llama.cpp's `inp_attn_scale`): queries at position p
/// are multiplied by `ln(floor((p + offset) / floor_scale) + 1) · scale + 1`, after RoPE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnTemperature {
    /// `attention.temperature_scale`.
    pub scale: f32,
    /// Positions per step of the logarithm (mistral3: the original context length).
    pub floor_scale: usize,
    /// Added to the position first.
    pub offset: f32,
}

impl Attention {
    /// The key projection and the value projection (`None` when the keys' serves both),
    /// or `None` for a layer that reads another's cache.
    pub fn kv_projections(&self) -> Option<(&Weight, Option<&Weight>)> {
        match &self.kv {
            KvSource::Own { k, v } => Some((k, Some(v))),
            KvSource::KeysAsValues(k) => Some((k, None)),
            KvSource::Shared(_) => None,
        }
    }

    /// The layer whose cache this one (layer `il`) attends over.
    pub fn kv_layer(&self, il: usize) -> usize {
        match self.kv {
            KvSource::Shared(source) => source,
            _ => il,
        }
    }

    /// Whether the layer is the plain kind every engine runs: own K/V, no value norm, no sinks,
    /// no output bias, no output gate.
    pub fn is_plain(&self) -> bool {
        matches!(self.kv, KvSource::Own { .. }) && !self.v_norm && self.sinks.is_none() && self.output_bias.is_none() && !self.output_gate
    }
}

impl AttnTemperature {
    /// The query multiplier at `pos`, computed as llama.cpp does (f32 floor, f64 logarithm).
    pub fn factor(&self, pos: usize) -> f32 {
        let steps = ((pos as f32 + self.offset) / self.floor_scale as f32).floor();
        ((steps as f64 + 1.0).ln() * self.scale as f64 + 1.0) as f32
    }
}

/// How a layer mixes information across tokens.
pub enum Mixer {
    /// Full attention over the KV cache.
    Attention(Attention),
    /// A Gated DeltaNet: linear attention with a recurrent state per sequence (Qwen3.5).
    DeltaNet(DeltaNet),
}

/// The sizes of a Gated DeltaNet layer (llama.cpp's `ssm.*` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaShape {
    /// Key (and query) heads (`ssm.group_count`).
    pub n_k_heads: usize,
    /// Value heads (`ssm.time_step_rank`).
    pub n_v_heads: usize,
    /// Key head size (`ssm.state_size`).
    pub head_k_dim: usize,
    /// Value head size (`ssm.inner_size / n_v_heads`).
    pub head_v_dim: usize,
    /// Taps of the causal convolution (`ssm.conv_kernel`).
    pub d_conv: usize,
    /// How value heads share key heads: consecutive value heads per key head (qwen3next's
    /// repeat-interleave), or the key heads tiled across the value heads (qwen35).
    pub interleaved: bool,
}

impl DeltaShape {
    /// The key (and query) head value head `h` reads.
    pub fn key_head(&self, h: usize) -> usize {
        if self.interleaved { h / (self.n_v_heads / self.n_k_heads) } else { h % self.n_k_heads }
    }
    /// Channels of the convolution: queries, keys, values.
    pub fn conv_dim(&self) -> usize {
        2 * self.n_k_heads * self.head_k_dim + self.n_v_heads * self.head_v_dim
    }
    /// Width of the values (and of the gate z and the output before its projection).
    pub fn value_dim(&self) -> usize {
        self.n_v_heads * self.head_v_dim
    }
    /// Floats of a sequence's convolution state: the last `d_conv - 1` inputs of every channel.
    pub fn conv_state_len(&self) -> usize {
        (self.d_conv - 1) * self.conv_dim()
    }
    /// Floats of a sequence's recurrent state: a `head_v_dim × head_k_dim` matrix per value head.
    pub fn ssm_state_len(&self) -> usize {
        self.n_v_heads * self.head_v_dim * self.head_k_dim
    }
}

/// Where a Gated DeltaNet's β and α logits come from.
pub enum BetaAlpha {
    /// `ssm_beta` and `ssm_alpha`, `[n_v_heads, n_embd]` each (qwen35).
    Separate {
        /// β's projection.
        beta: Weight,
        /// α's projection.
        alpha: Weight,
    },
    /// `ssm_ba`, `[2·n_v_heads, n_embd]`: per key head, the β rows of its value heads, then
    /// their α rows (qwen3next).
    Fused(Weight),
}

/// A Gated DeltaNet layer (llama.cpp's qwen35 linear attention): the normed input projected
/// to q/k/v (through a causal depthwise convolution and SiLU; q and k L2-normed), a gate z,
/// a write strength β = σ(b) and a decay g = softplus(α + dt_bias)·A per value head; per
/// head the state S ← e^g·S, S += β(v − S k) kᵀ, o = S q / √d_k; then the output RMS-normed
/// per head, times SiLU(z), and projected back.
pub struct DeltaNet {
    /// `attn_qkv`: `[conv_dim, n_embd]`.
    pub qkv: Weight,
    /// `attn_gate`: `[value_dim, n_embd]`.
    pub gate: Weight,
    /// The write strength's and the decay's projections.
    pub beta_alpha: BetaAlpha,
    /// `ssm_conv1d`: `[conv_dim, d_conv]`, the oldest tap first.
    pub conv: Vec<f32>,
    /// `ssm_dt.bias`: `[n_v_heads]`.
    pub dt_bias: Vec<f32>,
    /// `ssm_a`: `[n_v_heads]`.
    pub a: Vec<f32>,
    /// `ssm_norm`: `[head_v_dim]`.
    pub norm: Vec<f32>,
    /// `ssm_out`: `[n_embd, value_dim]`.
    pub output: Weight,
    /// Sizes.
    pub shape: DeltaShape,
}

/// A dense gated feed-forward part: `down · (act(gate · x) ⊙ (up · x))`.
pub struct DenseFfn {
    /// Gate projection `[n_ff, n_embd]`.
    pub gate: Weight,
    /// Up projection `[n_ff, n_embd]`.
    pub up: Weight,
    /// Down projection `[n_embd, n_ff]`.
    pub down: Weight,
    /// Applied to the gate.
    pub activation: Activation,
    /// Biases of the three projections (gpt-oss's experts).
    pub biases: Option<FfnBiases>,
}

/// The biases of a feed-forward block's projections, added to their outputs.
#[derive(Debug, Clone)]
pub struct FfnBiases {
    /// `[n_ff]`, added to the gate projection (before the activation).
    pub gate: Vec<f32>,
    /// `[n_ff]`, added to the up projection.
    pub up: Vec<f32>,
    /// `[n_embd]`, added to the down projection.
    pub down: Vec<f32>,
}

impl FfnBiases {
    /// Adds the gate's and up projection's biases to their outputs (`[n, n_ff]` each).
    pub fn add_to_gate_up(&self, gate: &mut [f32], up: &mut [f32]) {
        crate::cpu::ops::add_bias(gate, &self.gate);
        crate::cpu::ops::add_bias(up, &self.up);
    }

    /// Adds the down projection's bias to its output (`[n, n_embd]`).
    pub fn add_to_down(&self, out: &mut [f32]) {
        crate::cpu::ops::add_bias(out, &self.down);
    }
}

impl DenseFfn {
    /// The block as engines take it.
    pub fn block(&self) -> FeedForward<'_> {
        FeedForward { gate: &self.gate, up: &self.up, down: &self.down, activation: self.activation, biases: self.biases.as_ref() }
    }
}

/// How router logits become expert probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts, then top-k of the probabilities (qwen3moe, mixtral).
    Softmax,
    /// Top-k of the logits, then softmax over the k chosen (gpt-oss).
    SoftmaxOfTopK,
}

/// A mixture of experts: a router picks `n_used` of the experts for each token; the token's
/// output is the weighted sum of theirs.
pub struct MoeFfn {
    /// Router `[n_expert, n_embd]`.
    pub router: Weight,
    /// Bias added to the router's logits (gpt-oss).
    pub router_bias: Option<Vec<f32>>,
    /// The experts, each a dense gated block (views into the file's 3-D expert tensors).
    pub experts: Vec<DenseFfn>,
    /// How the router's logits choose and weight the experts.
    pub routing: Routing,
    /// Each expert's output multiplied by its scale (gemma4).
    pub expert_scales: Option<Vec<f32>>,
    /// A dense MLP beside the experts, with norms of its own (gemma4's arrangement).
    pub shared: Option<SharedMlp>,
    /// A shared expert on the experts' input, its output scaled by a sigmoid gate (Qwen3.5-MoE).
    pub shared_expert: Option<SharedExpert>,
}

/// Qwen's shared expert: `out += σ(gate · h) · mlp(h)` beside the routed experts.
pub struct SharedExpert {
    /// The expert (`ffn_{gate,up,down}_shexp`).
    pub mlp: DenseFfn,
    /// `ffn_gate_inp_shexp`: one weight per input feature, one gate logit per token.
    pub gate: Vec<f32>,
}

/// Gemma 4's MoE layers (26B-A4B): `ffn = post₁(mlp(h)) + post₂(experts(norm₂(x)))`, `h` the
/// layer's feed-forward norm of the stream `x`, the router fed `rms(x) ⊙ scale / √n_embd`.
pub struct SharedMlp {
    /// The dense MLP, on the layer's feed-forward norm of the stream.
    pub mlp: DenseFfn,
    /// RMSNorm of its output.
    pub post_norm: Vec<f32>,
    /// RMSNorm of the stream, the experts' input.
    pub experts_norm: Vec<f32>,
    /// RMSNorm of the experts' summed output.
    pub experts_post_norm: Vec<f32>,
    /// The router's input is the stream RMS-normed without a weight, times this (the file's
    /// `ffn_gate_inp.scale` ÷ √n_embd).
    pub router_input_scale: Vec<f32>,
}

/// How a router's logits choose each token's experts and weight their outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    /// Experts per token.
    pub n_used: usize,
    /// How the logits become weights.
    pub gating: Gating,
    /// Divide the chosen experts' weights by their sum.
    pub normalize: bool,
    /// Multiply the weights by this (1 when the file does not say).
    pub scale: f32,
}

/// A layer's feed-forward part.
pub enum FeedForwardPart {
    /// Dense gate/up/down.
    Dense(DenseFfn),
    /// Mixture of experts.
    Moe(MoeFfn),
}

/// Gemma 4's per-layer input block (E2B/E4B), after the feed-forward residual:
/// `x += norm(proj · (gelu(gate · x) ⊙ p))`, `p` the token's input for this layer
/// (from the per-layer token embeddings and a projection of the token's embedding).
pub struct PerLayerInput {
    /// `[n_embd_per_layer, n_embd]`.
    pub gate: Weight,
    /// `[n_embd, n_embd_per_layer]`.
    pub proj: Weight,
    /// RMSNorm of the projection.
    pub post_norm: Vec<f32>,
}

/// One decoder layer: `x += post(mixer(norm(x)))`, then `x += post(ffn(norm(x)))`, then
/// (gemma4) the per-layer input block and the output scale.
pub struct Layer {
    /// RMSNorm epsilon of every norm in the layer.
    pub norm_eps: f32,
    /// RMSNorm before the mixer.
    pub attn_norm: Vec<f32>,
    /// The token mixer.
    pub mixer: Mixer,
    /// RMSNorm on the mixer's output (gemma).
    pub post_attn_norm: Option<Vec<f32>>,
    /// RMSNorm before the feed-forward part.
    pub ffn_norm: Vec<f32>,
    /// The feed-forward part.
    pub ffn: FeedForwardPart,
    /// RMSNorm on the feed-forward output (gemma).
    pub post_ffn_norm: Option<Vec<f32>>,
    /// The per-layer input block (gemma4 E2B/E4B).
    pub per_layer: Option<PerLayerInput>,
    /// The layer's output multiplied by this (gemma4's `layer_output_scale`).
    pub out_scale: Option<f32>,
}

impl Layer {
    /// Hidden size (the residual stream's width).
    pub fn n_embd(&self) -> usize {
        self.attn_norm.len()
    }

    /// The attention part, if the layer's mixer is attention.
    pub fn attention(&self) -> Option<&Attention> {
        match &self.mixer {
            Mixer::Attention(a) => Some(a),
            Mixer::DeltaNet(_) => None,
        }
    }

    /// The op groups in the order the block runs them.
    pub fn groups(&self) -> Vec<OpGroup<'_>> {
        use WeightRole::*;
        let mut groups = Vec::with_capacity(4);
        match &self.mixer {
            Mixer::Attention(a) => {
                let mut qkv = vec![(AttnQ, &a.q)];
                match &a.kv {
                    KvSource::Own { k, v } => qkv.extend([(AttnK, k), (AttnV, v)]),
                    KvSource::KeysAsValues(k) => qkv.push((AttnK, k)),
                    KvSource::Shared(_) => {}
                }
                groups.push(OpGroup { name: GroupName::AttnQkv, weights: qkv });
                groups.push(OpGroup { name: GroupName::AttnOutput, weights: vec![(AttnOutput, &a.output)] });
            }
            Mixer::DeltaNet(d) => {
                let mut inputs = vec![(DeltaQkv, &d.qkv), (DeltaGate, &d.gate)];
                match &d.beta_alpha {
                    BetaAlpha::Separate { beta, alpha } => inputs.extend([(DeltaBeta, beta), (DeltaAlpha, alpha)]),
                    BetaAlpha::Fused(ba) => inputs.push((DeltaBeta, ba)),
                }
                groups.push(OpGroup { name: GroupName::DeltaIn, weights: inputs });
                groups.push(OpGroup { name: GroupName::AttnOutput, weights: vec![(AttnOutput, &d.output)] });
            }
        }
        match &self.ffn {
            FeedForwardPart::Dense(f) => {
                groups.push(OpGroup { name: GroupName::FfnGateUp, weights: vec![(FfnGate, &f.gate), (FfnUp, &f.up)] });
                groups.push(OpGroup { name: GroupName::FfnDown, weights: vec![(FfnDown, &f.down)] });
            }
            FeedForwardPart::Moe(m) => {
                let dense = m.shared.as_ref().map(|s| &s.mlp).or(m.shared_expert.as_ref().map(|s| &s.mlp));
                if let Some(mlp) = dense {
                    groups.push(OpGroup { name: GroupName::FfnGateUp, weights: vec![(FfnGate, &mlp.gate), (FfnUp, &mlp.up)] });
                    groups.push(OpGroup { name: GroupName::FfnDown, weights: vec![(FfnDown, &mlp.down)] });
                }
                groups.push(OpGroup { name: GroupName::FfnRouter, weights: vec![(FfnRouter, &m.router)] });
            }
        }
        if let Some(p) = &self.per_layer {
            groups.push(OpGroup { name: GroupName::PerLayerGate, weights: vec![(PerLayerGate, &p.gate)] });
            groups.push(OpGroup { name: GroupName::PerLayerProj, weights: vec![(PerLayerProj, &p.proj)] });
        }
        groups
    }

    /// The experts of a mixture-of-experts layer (none for a dense one). They are not op
    /// groups: which of them run, and on how many tokens, depends on the router.
    pub fn experts(&self) -> &[DenseFfn] {
        match &self.ffn {
            FeedForwardPart::Dense(_) => &[],
            FeedForwardPart::Moe(m) => &m.experts,
        }
    }

    /// Every weight matrix with its role: the op groups', then each expert's.
    pub fn weights(&self) -> impl Iterator<Item = (WeightRole, &Weight)> {
        let experts = self.experts().iter().flat_map(|e| {
            [(WeightRole::ExpertGate, &e.gate), (WeightRole::ExpertUp, &e.up), (WeightRole::ExpertDown, &e.down)]
        });
        self.groups().into_iter().flat_map(|g| g.weights).chain(experts)
    }

    /// Every vector (norm weights, biases) the layer has, with its role.
    pub fn vectors(&self) -> impl Iterator<Item = (VectorRole, &[f32])> {
        use VectorRole::*;
        let a = self.attention();
        let d = match &self.mixer {
            Mixer::DeltaNet(d) => Some(d),
            Mixer::Attention(_) => None,
        };
        let (router_bias, expert_scales, shared, shared_gate) = match &self.ffn {
            FeedForwardPart::Moe(m) => (m.router_bias.as_ref(), m.expert_scales.as_ref(), m.shared.as_ref(), m.shared_expert.as_ref().map(|s| &s.gate)),
            FeedForwardPart::Dense(_) => (None, None, None, None),
        };
        [
            (AttnNorm, Some(&self.attn_norm)),
            (QBias, a.and_then(|a| a.q_bias.as_ref())),
            (KBias, a.and_then(|a| a.k_bias.as_ref())),
            (VBias, a.and_then(|a| a.v_bias.as_ref())),
            (QNorm, a.and_then(|a| a.q_norm.as_ref())),
            (KNorm, a.and_then(|a| a.k_norm.as_ref())),
            (PostAttnNorm, self.post_attn_norm.as_ref()),
            (FfnNorm, Some(&self.ffn_norm)),
            (PostFfnNorm, self.post_ffn_norm.as_ref()),
            (AttnSinks, a.and_then(|a| a.sinks.as_ref())),
            (OutputBias, a.and_then(|a| a.output_bias.as_ref())),
            (RouterBias, router_bias),
            (PerLayerPostNorm, self.per_layer.as_ref().map(|p| &p.post_norm)),
            (SharedPostNorm, shared.map(|s| &s.post_norm)),
            (ExpertsNorm, shared.map(|s| &s.experts_norm)),
            (ExpertsPostNorm, shared.map(|s| &s.experts_post_norm)),
            (RouterInputScale, shared.map(|s| &s.router_input_scale)),
            (ExpertScales, expert_scales),
            (SharedExpertGate, shared_gate),
            (DeltaConv, d.map(|d| &d.conv)),
            (DeltaDtBias, d.map(|d| &d.dt_bias)),
            (DeltaA, d.map(|d| &d.a)),
            (DeltaNorm, d.map(|d| &d.norm)),
        ]
        .into_iter()
        .filter_map(|(role, v)| v.map(|v| (role, v.as_slice())))
    }

    /// The vector playing `role`, if the layer has one.
    pub fn vector(&self, role: VectorRole) -> Option<&[f32]> {
        self.vectors().find(|(r, _)| *r == role).map(|(_, v)| v)
    }
}

/// A llama-like layer as the config's options describe it: GQA attention (Q/K/V separate or
/// fused, biases when the file has them, QK-norm, post-norms, sliding windows and the query
/// temperature where the config says) and a dense gated feed-forward part (gate/up fused for phi3).
pub fn standard_layer(src: &TensorSource, c: &Config, il: usize) -> Result<Layer> {
    let attention = standard_attention(src, c, il)?;
    let ffn = match &c.moe {
        None => FeedForwardPart::Dense(dense_ffn(src, c, il)?),
        Some(moe) => FeedForwardPart::Moe(moe_ffn(src, c, moe, il)?),
    };
    layer_with_ffn(src, c, il, Mixer::Attention(attention), ffn)
}

/// The vector `name` of `len` when `flag` says the architecture has it (then it is required).
fn required_vector(src: &TensorSource, flag: bool, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
    if flag { src.vector(name, len).map(Some) } else { Ok(None) }
}

/// Layer `il`'s attention as the config describes it.
pub(crate) fn standard_attention(src: &TensorSource, c: &Config, il: usize) -> Result<Attention> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let required_if = |flag: bool, name: String, len: usize| required_vector(src, flag, &name, len);
    let shape = c.attn_shape(il);
    let local = c.swa_layers[il];
    let Qkv { q, kv, q_bias, k_bias, v_bias } = qkv(src, c, il)?;
    let own_kv = !matches!(kv, KvSource::Shared(_));
    Ok(Attention {
        q,
        kv,
        v_norm: c.v_norm && own_kv,
        output: src.matrix(&n("attn_output"), shape.n_head * shape.head_dim_v, c.n_embd)?,
        q_bias,
        k_bias,
        v_bias,
        q_norm: required_if(c.qk_norm, n("attn_q_norm"), shape.head_dim)?,
        k_norm: required_if(c.qk_norm && own_kv, n("attn_k_norm"), shape.head_dim)?,
        shape,
        rope: if local { RopeKind::Local } else { RopeKind::Global },
        rope_style: c.rope_style,
        rope_dims: c.rope_dims_of(il),
        scale: c.attn_scale,
        temperature: c.attn_temperature,
        sinks: required_if(c.attn_sinks, n("attn_sinks"), shape.n_head)?,
        output_gate: c.attn_output_gate,
        output_bias: match c.attn_output_bias {
            true => Some(src.vector(&format!("blk.{il}.attn_output.bias"), c.n_embd)?),
            false => src.optional_vector(&format!("blk.{il}.attn_output.bias"), c.n_embd)?,
        },
    })
}

/// Layer `il` from its attention and feed-forward parts, with the norms around them.
pub(crate) fn layer_with_ffn(src: &TensorSource, c: &Config, il: usize, mixer: Mixer, ffn: FeedForwardPart) -> Result<Layer> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let required_if = |flag: bool, name: String, len: usize| required_vector(src, flag, &name, len);
    Ok(Layer {
        norm_eps: c.norm_eps,
        attn_norm: src.vector(&n("attn_norm"), c.n_embd)?,
        mixer,
        post_attn_norm: required_if(c.post_norms, n("post_attention_norm"), c.n_embd)?,
        ffn_norm: src.vector(&n(c.ffn_norm_name), c.n_embd)?,
        ffn,
        post_ffn_norm: required_if(c.post_norms, n("post_ffw_norm"), c.n_embd)?,
        per_layer: None,
        out_scale: None,
    })
}

/// Layer `il`'s dense gated feed-forward block of the layer's width (gate/up fused for phi3);
/// a width of 0 means the file never gave one.
pub(crate) fn dense_ffn(src: &TensorSource, c: &Config, il: usize) -> Result<DenseFfn> {
    match c.layer_n_ff[il] {
        0 => Err(EngineError::MissingKey(format!("{}.feed_forward_length", c.arch))),
        n_ff => dense_ffn_named(src, c, il, n_ff, ""),
    }
}

/// [`dense_ffn`] over the tensors `ffn_{gate,up,down}{suffix}` (`_shexp`: a shared expert).
pub(crate) fn dense_ffn_named(src: &TensorSource, c: &Config, il: usize, n_ff: usize, suffix: &str) -> Result<DenseFfn> {
    let n = |s: &str| format!("blk.{il}.{s}{suffix}.weight");
    let (gate, up) = if c.fused_gate_up {
        // One `ffn_up` of 2·n_ff rows: the gate's, then the up projection's (ggml_swiglu's halves).
        let mut parts = src.split_rows(&n("ffn_up"), c.n_embd, &[n_ff, n_ff])?.into_iter();
        (parts.next().expect("two parts"), parts.next().expect("two parts"))
    } else {
        (src.matrix(&n("ffn_gate"), c.n_embd, n_ff)?, src.matrix(&n("ffn_up"), c.n_embd, n_ff)?)
    };
    let down = src.matrix(&n("ffn_down"), n_ff, c.n_embd)?;
    Ok(DenseFfn { gate, up, down, activation: c.activation, biases: None })
}

/// Q, K and V projections with their biases.
struct Qkv {
    q: Weight,
    kv: KvSource,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
}

/// Q/K/V as llama.cpp's `create_tensor_qkv` finds them: views of the rows of a fused
/// `attn_qkv` (Q's, then K's, then V's; its bias split likewise, or separate biases) when the
/// file has one, else the three tensors. A layer of the shared-KV tail has only Q; where the
/// config allows, a missing `attn_v` makes the keys' projection serve as values (gemma4).
fn qkv(src: &TensorSource, c: &Config, il: usize) -> Result<Qkv> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let b = |s: &str| format!("blk.{il}.{s}.bias");
    let sh = c.attn_shape(il);
    // With Qwen3.5's output gate, each query head's rows are followed by its gate's.
    let q_rows = sh.n_head * sh.head_dim * if c.attn_output_gate { 2 } else { 1 };
    let parts = [q_rows, sh.n_head_kv * sh.head_dim, sh.n_head_kv * sh.head_dim_v];
    let [q_out, k_out, v_out] = parts;
    let source = c.kv_layer(il);
    if source != il {
        if c.attn_shape(source) != sh {
            return Err(EngineError::BadMetadata(format!(
                "layer {il} reads layer {source}'s keys and values, whose heads differ ({:?} vs {sh:?})",
                c.attn_shape(source)
            )));
        }
        let q_bias = src.optional_vector(&b("attn_q"), q_out)?;
        return Ok(Qkv { q: src.matrix(&n("attn_q"), c.n_embd, q_out)?, kv: KvSource::Shared(source), q_bias, k_bias: None, v_bias: None });
    }
    let separate_biases = || -> Result<[Option<Vec<f32>>; 3]> {
        Ok([src.optional_vector(&b("attn_q"), q_out)?, src.optional_vector(&b("attn_k"), k_out)?, src.optional_vector(&b("attn_v"), v_out)?])
    };
    if !src.has(&n("attn_qkv")) {
        let [q_bias, k_bias, v_bias] = separate_biases()?;
        let k = src.matrix(&n("attn_k"), c.n_embd, k_out)?;
        let kv = if c.optional_v && !src.has(&n("attn_v")) {
            if k_out != v_out {
                return Err(EngineError::BadMetadata(format!("layer {il}: keys ({k_out}) cannot serve as values ({v_out})")));
            }
            KvSource::KeysAsValues(k)
        } else {
            KvSource::Own { k, v: src.matrix(&n("attn_v"), c.n_embd, v_out)? }
        };
        return Ok(Qkv { q: src.matrix(&n("attn_q"), c.n_embd, q_out)?, kv, q_bias, k_bias, v_bias });
    }
    let mut w = src.split_rows(&n("attn_qkv"), c.n_embd, &parts)?.into_iter();
    let [q_bias, k_bias, v_bias] = match src.optional_vector(&b("attn_qkv"), q_out + k_out + v_out)? {
        Some(fused) => [
            Some(fused[..q_out].to_vec()),
            Some(fused[q_out..q_out + k_out].to_vec()),
            Some(fused[q_out + k_out..].to_vec()),
        ],
        // llama.cpp adds separate biases to a fused projection only when all three are there.
        None => match separate_biases()? {
            [Some(q), Some(k), Some(v)] => [Some(q), Some(k), Some(v)],
            _ => [None, None, None],
        },
    };
    let mut next = || w.next().expect("three parts");
    let (q, k, v) = (next(), next(), next());
    Ok(Qkv { q, kv: KvSource::Own { k, v }, q_bias, k_bias, v_bias })
}

/// A mixture-of-experts part from the file's router and 3-D expert tensors
/// (`ffn_{gate,up,down}_exps`, one slab of rows per expert).
pub(crate) fn moe_ffn(src: &TensorSource, c: &Config, m: &MoeConfig, il: usize) -> Result<MoeFfn> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    let (e, ff) = (m.n_expert, m.n_ff_exp);
    let (gate, up) = expert_gate_up(src, c, il, ff, e)?;
    let down = src.experts(&n("ffn_down_exps"), ff, c.n_embd, e)?;
    // gpt-oss's per-expert biases: one `[len, n_expert]` tensor per projection.
    let (mut biases, mut router_bias): (Vec<Option<FfnBiases>>, _) = ((0..e).map(|_| None).collect(), None);
    if m.biases {
        let b = |s: &str| format!("blk.{il}.{s}.bias");
        let gate = src.vectors(&b("ffn_gate_exps"), ff, e)?;
        let up = src.vectors(&b("ffn_up_exps"), ff, e)?;
        let down = src.vectors(&b("ffn_down_exps"), c.n_embd, e)?;
        biases = gate.into_iter().zip(up).zip(down).map(|((gate, up), down)| Some(FfnBiases { gate, up, down })).collect();
        router_bias = Some(src.vector(&b("ffn_gate_inp"), e)?);
    }
    let experts = gate
        .into_iter()
        .zip(up)
        .zip(down)
        .zip(biases)
        .map(|(((gate, up), down), biases)| DenseFfn { gate, up, down, activation: c.activation, biases })
        .collect();
    Ok(MoeFfn {
        router: src.matrix(&n("ffn_gate_inp"), c.n_embd, e)?,
        router_bias,
        experts,
        routing: m.routing,
        expert_scales: None,
        shared: None,
        shared_expert: None,
    })
}

/// Layer `il`'s experts' gate and up projections: row views of each expert's slab of a fused
/// `ffn_gate_up_exps` (its gate's rows, then its up projection's) when the file has one, else
/// the separate tensors (llama.cpp's `create_tensor_gate_up_exps`).
pub(crate) fn expert_gate_up(src: &TensorSource, c: &Config, il: usize, ff: usize, e: usize) -> Result<(Vec<Weight>, Vec<Weight>)> {
    let n = |s: &str| format!("blk.{il}.{s}.weight");
    if src.has(&n("ffn_gate_up_exps")) {
        let fused = src.experts(&n("ffn_gate_up_exps"), c.n_embd, 2 * ff, e)?;
        return Ok(fused.into_iter().map(|w| (w.rows(0..ff), w.rows(ff..2 * ff))).unzip());
    }
    Ok((src.experts(&n("ffn_gate_exps"), c.n_embd, ff, e)?, src.experts(&n("ffn_up_exps"), c.n_embd, ff, e)?))
}
