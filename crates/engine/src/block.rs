//! The decoder block, described once: [`run_layers`] walks the layer plan and calls the
//! steps of [`BlockSteps`] (norm, token mixer, residual, feed-forward) in order. Every
//! engine's stack follows it: the host path ([`HostSteps`], each op through [`BlockOps`]:
//! the dispatcher's per-op placement or an engine's own host ops, as the reference engine
//! does) and an engine with kernels of its own (CUDA) implements the steps on its device.
//! An op added to a block is added to the plan, to this walk, and once per engine's step.

use crate::cpu::ops::{self, RopeTable};
use crate::matrix::{AttnShape, Dispatcher, EngineFailure, FeedForward, KvRows, StackInput};
use crate::plan::{Attention, BetaAlpha, DeltaNet, DenseFfn, FeedForwardPart, Layer, Mixer, MoeFfn, PerLayerInput, VectorId, VectorRole};
use crate::weights::Weight;
use crate::arch::RopeStyle;
use half::f16;
use rayon::prelude::*;
use std::ops::Range;

/// `(sin, cos)` of every pair of `table` at each of `positions`, `[n, pairs]`.
pub fn rope_angles(table: &RopeTable, positions: &[usize]) -> Vec<(f32, f32)> {
    let per_token: Vec<Vec<(f32, f32)>> = positions
        .par_iter()
        .map(|&p| {
            let mut a = Vec::new();
            table.angles(p, &mut a);
            a
        })
        .collect();
    per_token.concat()
}

/// The steps of a decoder stack over a batch. State: the residual stream `x`, the normed
/// input `h` of the next part, and that part's output `o`.
pub trait BlockSteps {
    /// What a failed step returns.
    type Error;
    /// Layer `il` begins (an engine may fetch its weights here).
    fn begin_layer(&mut self, il: usize) -> Result<(), Self::Error> {
        let _ = il;
        Ok(())
    }
    /// `h = norm(x)` with the weights of `norm` (the first layer's input norm).
    fn norm(&mut self, norm: VectorId) -> Result<(), Self::Error>;
    /// `o = attention(h)` for layer `il`, storing the batch's new K/V in the caches.
    fn attention(&mut self, il: usize, a: &Attention) -> Result<(), Self::Error>;
    /// `o = delta_net(h)` for layer `il`, advancing each sequence's recurrent state.
    fn delta_net(&mut self, il: usize, d: &DeltaNet) -> Result<(), Self::Error>;
    /// `o = ffn(h)` for layer `il`.
    fn dense_ffn(&mut self, il: usize, f: &DenseFfn) -> Result<(), Self::Error>;
    /// `o = moe(h)` for layer `il`: the router, then each token's chosen experts.
    fn moe_ffn(&mut self, il: usize, m: &MoeFfn) -> Result<(), Self::Error>;
    /// `x += post(o)` (post-norm when given), then `h = next(x)` when given.
    fn residual(&mut self, post: Option<VectorId>, next: Option<VectorId>) -> Result<(), Self::Error>;
    /// `x += norm(proj · (gelu(gate · x) ⊙ p))`, `p` each token's input for layer `il` (gemma4).
    fn per_layer_input(&mut self, il: usize, p: &PerLayerInput) -> Result<(), Self::Error>;
    /// `x *= scale` (gemma4's layer output scale).
    fn scale_stream(&mut self, scale: f32) -> Result<(), Self::Error>;
    /// Layer `il` is done (an engine may release its weights here).
    fn end_layer(&mut self, il: usize) -> Result<(), Self::Error> {
        let _ = il;
        Ok(())
    }
}

/// The decoder blocks `range` of `layers`, step by step: for each layer, its mixer on the
/// normed stream, the residual add (with the post-norm, and the feed-forward norm
/// next), its feed-forward part, the residual add (with the next layer's input norm).
pub fn run_layers<S: BlockSteps>(steps: &mut S, layers: &[Layer], range: Range<usize>) -> Result<(), S::Error> {
    let has = |il: usize, role: VectorRole| layers[il].vector(role).map(|_| (il, role));
    if range.is_empty() {
        return Ok(());
    }
    steps.norm((range.start, VectorRole::AttnNorm))?;
    for il in range.clone() {
        let l = &layers[il];
        steps.begin_layer(il)?;
        match &l.mixer {
            Mixer::Attention(a) => steps.attention(il, a)?,
            Mixer::DeltaNet(d) => steps.delta_net(il, d)?,
        }
        steps.residual(has(il, VectorRole::PostAttnNorm), Some((il, VectorRole::FfnNorm)))?;
        match &l.ffn {
            FeedForwardPart::Dense(f) => steps.dense_ffn(il, f)?,
            FeedForwardPart::Moe(m) => steps.moe_ffn(il, m)?,
        }
        let next = (il + 1 < range.end).then_some((il + 1, VectorRole::AttnNorm));
        if l.per_layer.is_none() && l.out_scale.is_none() {
            steps.end_layer(il)?;
            steps.residual(has(il, VectorRole::PostFfnNorm), next)?;
            continue;
        }
        steps.residual(has(il, VectorRole::PostFfnNorm), None)?;
        if let Some(p) = &l.per_layer {
            steps.per_layer_input(il, p)?;
        }
        if let Some(scale) = l.out_scale {
            steps.scale_stream(scale)?;
        }
        steps.end_layer(il)?;
        if let Some(id) = next {
            steps.norm(id)?;
        }
    }
    Ok(())
}

/// The ops a host-side block needs: weight matmuls (grouped), a feed-forward block, attention.
pub trait BlockOps {
    /// `outs[i] = x · W_iᵀ` for weights sharing one input.
    fn matmul_group(&self, ws: &[&Weight], x: &[f32], outs: &mut [&mut [f32]]) -> Result<(), EngineFailure>;
    /// `out = down · (act(gate · x) ⊙ (up · x))`.
    fn feed_forward(&self, f: &FeedForward<'_>, x: &[f32], out: &mut [f32]) -> Result<(), EngineFailure>;
    /// Causal attention of one sequence's queries over a layer's cache.
    fn attention(&self, s: &AttnShape, q: &[f32], positions: &[usize], kc: &[f16], vc: &[f16], out: &mut [f32]) -> Result<(), EngineFailure>;
    /// [`Self::attention`] with one sink logit per query head in every softmax (gpt-oss). No
    /// engine takes sinks yet: the CPU runs it.
    #[allow(clippy::too_many_arguments)]
    fn attention_with_sinks(&self, s: &AttnShape, sinks: &[f32], q: &[f32], positions: &[usize], kc: &[f16], vc: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        crate::cpu::attention::attention_with_sinks(s, Some(sinks), q, positions, kc, vc, out);
        Ok(())
    }
    /// `outs[i] = blocks[i](xs[i])`: a mixture of experts' active experts on their tokens.
    fn experts(&self, blocks: &[FeedForward<'_>], xs: &[&[f32]], outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        for ((b, x), out) in blocks.iter().zip(xs).zip(outs.iter_mut()) {
            self.feed_forward(b, x, out)?;
        }
        Ok(())
    }
}

/// The CPU path: every op placed by the dispatcher (which never fails: it falls back itself).
impl BlockOps for Dispatcher {
    fn matmul_group(&self, ws: &[&Weight], x: &[f32], outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        Dispatcher::matmul_group(self, ws, x, outs);
        Ok(())
    }
    fn feed_forward(&self, f: &FeedForward<'_>, x: &[f32], out: &mut [f32]) -> Result<(), EngineFailure> {
        Dispatcher::feed_forward(self, f, x, out);
        Ok(())
    }
    fn attention(&self, s: &AttnShape, q: &[f32], positions: &[usize], kc: &[f16], vc: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        Dispatcher::attention(self, s, q, positions, kc, vc, out);
        Ok(())
    }
    fn experts(&self, blocks: &[FeedForward<'_>], xs: &[&[f32]], outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        Dispatcher::experts(self, blocks, xs, outs);
        Ok(())
    }
    fn attention_with_sinks(&self, s: &AttnShape, sinks: &[f32], q: &[f32], positions: &[usize], kc: &[f16], vc: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        Dispatcher::attention_with_sinks(self, s, sinks, q, positions, kc, vc, out);
        Ok(())
    }
}

/// The block's steps on the host, each op through `ops`.
pub struct HostSteps<'a, 'c> {
    ops: &'a dyn BlockOps,
    input: &'a StackInput<'a>,
    x: &'a mut [f32],
    caches: &'a mut [&'c mut dyn KvRows],
    h: Vec<f32>,
    o: Vec<f32>,
}

impl<'a, 'c> HostSteps<'a, 'c> {
    /// Steps over the residual stream `x` (`[n, n_embd]`, updated in place) and the batch's caches.
    pub fn new(ops: &'a dyn BlockOps, input: &'a StackInput<'a>, x: &'a mut [f32], caches: &'a mut [&'c mut dyn KvRows]) -> Self {
        HostSteps { ops, input, x, caches, h: Vec::new(), o: Vec::new() }
    }

    fn vector(&self, (il, role): VectorId) -> (&'a [f32], f32) {
        let layers: &'a [Layer] = self.input.layers;
        let l = &layers[il];
        (l.vector(role).expect("run_layers names only vectors the layer has"), l.norm_eps)
    }
}

/// Every decoder block of `input` over `x` on the host, each op through `ops`.
pub fn run_on_host(ops: &dyn BlockOps, input: &StackInput<'_>, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Result<(), EngineFailure> {
    let layers = input.layers;
    run_layers(&mut HostSteps::new(ops, input, x, caches), layers, 0..layers.len())
}

impl BlockSteps for HostSteps<'_, '_> {
    type Error = EngineFailure;

    fn norm(&mut self, id: VectorId) -> Result<(), EngineFailure> {
        let (w, eps) = self.vector(id);
        self.h.resize(self.x.len(), 0.0);
        ops::rms_norm_into(self.x, w, eps, &mut self.h);
        Ok(())
    }

    fn attention(&mut self, il: usize, a: &Attention) -> Result<(), EngineFailure> {
        let (ops, s) = (self.ops, self.input);
        let eps = s.layers[il].norm_eps;
        let (n, positions) = (s.n(), s.positions);
        let sh = &a.shape;
        let (qd, kd, vd, od) = (sh.n_head * sh.head_dim, sh.n_head_kv * sh.head_dim, sh.n_head_kv * sh.head_dim_v, sh.n_head * sh.head_dim_v);
        // Q, K and V share one input (one quantization on the CPU, one transfer on an accelerator).
        let mut q = vec![0f32; n * a.q.rows];
        let (mut k, mut v) = (Vec::new(), Vec::new());
        match a.kv_projections() {
            Some((kw, Some(vw))) => {
                (k, v) = (vec![0f32; n * kd], vec![0f32; n * vd]);
                ops.matmul_group(&[&a.q, kw, vw], &self.h, &mut [&mut q, &mut k, &mut v])?;
            }
            Some((kw, None)) => {
                k = vec![0f32; n * kd];
                ops.matmul_group(&[&a.q, kw], &self.h, &mut [&mut q, &mut k])?;
                v = k.clone();
            }
            None => ops.matmul_group(&[&a.q], &self.h, &mut [&mut q])?,
        }
        for (t, b) in [(&mut q, &a.q_bias), (&mut k, &a.k_bias), (&mut v, &a.v_bias)] {
            if let Some(b) = b {
                ops::add_bias(t, b);
            }
        }
        // Qwen3.5's gated attention: each head's projection is [query, gate].
        let gate = a.output_gate.then(|| {
            let (mut queries, mut gates) = (Vec::with_capacity(n * qd), Vec::with_capacity(n * qd));
            for head in q.chunks_exact(2 * sh.head_dim) {
                queries.extend_from_slice(&head[..sh.head_dim]);
                gates.extend(head[sh.head_dim..].iter().map(|&g| 1.0 / (1.0 + (-g).exp())));
            }
            q = queries;
            gates
        });
        if let Some(qn) = &a.q_norm {
            ops::rms_norm(&mut q, qn, eps);
        }
        if let Some(kn) = &a.k_norm {
            ops::rms_norm(&mut k, kn, eps);
        }
        if a.v_norm {
            ops::rms_norm(&mut v, &vec![1.0; sh.head_dim_v], eps);
        }
        let neox = a.rope_style == RopeStyle::Neox;
        // RoPE and the query scale, token by token in parallel; each token's angles serve all its heads.
        let (hd, rd, pairs) = (sh.head_dim, a.rope_dims, a.rope_dims / 2);
        let own_kv = !k.is_empty();
        let rotate = |rows: &mut [f32], angles: &[(f32, f32)], scale: Option<f32>| {
            for head in rows.chunks_exact_mut(hd) {
                RopeTable::rotate(&mut head[..rd], angles, neox);
                if let Some(scale) = scale {
                    head.iter_mut().for_each(|v| *v *= scale);
                }
            }
        };
        let q_scale = |pos: usize| Some(a.temperature.map_or(a.scale, |t| t.factor(pos) * a.scale));
        let rows = q.par_chunks_mut(qd).zip(s.rope(il).par_chunks(pairs)).zip(positions.par_iter());
        if own_kv {
            // One pass over the tokens for both (a decode step pays one parallel region).
            rows.zip(k.par_chunks_mut(kd)).for_each(|(((qt, angles), &pos), kt)| {
                rotate(qt, angles, q_scale(pos));
                rotate(kt, angles, None);
            });
        } else {
            rows.for_each(|((qt, angles), &pos)| rotate(qt, angles, q_scale(pos)));
        }
        let source = a.kv_layer(il);
        let mut attn = vec![0f32; n * od];
        for (cache, span) in self.caches.iter_mut().zip(s.spans) {
            let (lo, hi) = (span.start, span.end);
            if own_kv {
                cache.store(il, positions[lo], &k[lo * kd..hi * kd], &v[lo * vd..hi * vd]);
            }
            let (kc, vc) = cache.layer(source);
            let (q, pos, out) = (&q[lo * qd..hi * qd], &positions[lo..hi], &mut attn[lo * od..hi * od]);
            match &a.sinks {
                Some(sinks) => ops.attention_with_sinks(sh, sinks, q, pos, kc, vc, out)?,
                None => ops.attention(sh, q, pos, kc, vc, out)?,
            }
        }
        if let Some(gate) = &gate {
            attn.iter_mut().zip(gate).for_each(|(v, g)| *v *= g);
        }
        self.o = vec![0f32; n * a.output.rows];
        ops.matmul_group(&[&a.output], &attn, &mut [&mut self.o])?;
        if let Some(b) = &a.output_bias {
            ops::add_bias(&mut self.o, b);
        }
        Ok(())
    }

    fn delta_net(&mut self, il: usize, d: &DeltaNet) -> Result<(), EngineFailure> {
        let (ops, s) = (self.ops, self.input);
        let n = s.n();
        let sh = d.shape;
        let (cd, vd, hv) = (sh.conv_dim(), sh.value_dim(), sh.n_v_heads);
        let (mut mixed, mut z, mut beta, mut alpha) = (vec![0f32; n * cd], vec![0f32; n * vd], vec![0f32; n * hv], vec![0f32; n * hv]);
        match &d.beta_alpha {
            BetaAlpha::Separate { beta: b, alpha: a } => {
                ops.matmul_group(&[&d.qkv, &d.gate, b, a], &self.h, &mut [&mut mixed, &mut z, &mut beta, &mut alpha])?
            }
            BetaAlpha::Fused(ba) => {
                let mut fused = vec![0f32; n * 2 * hv];
                ops.matmul_group(&[&d.qkv, &d.gate, ba], &self.h, &mut [&mut mixed, &mut z, &mut fused])?;
                // Per key head: its value heads' β, then their α.
                let per = hv / sh.n_k_heads;
                for ((row, b), a) in fused.chunks_exact(2 * hv).zip(beta.chunks_exact_mut(hv)).zip(alpha.chunks_exact_mut(hv)) {
                    for (g, group) in row.chunks_exact(2 * per).enumerate() {
                        b[g * per..(g + 1) * per].copy_from_slice(&group[..per]);
                        a[g * per..(g + 1) * per].copy_from_slice(&group[per..]);
                    }
                }
            }
        }
        let mut out = vec![0f32; n * vd];
        let eps = s.layers[il].norm_eps;
        for (cache, span) in self.caches.iter_mut().zip(s.spans) {
            let (lo, hi) = (span.start, span.end);
            let (conv, state) = cache.recurrent(il);
            let inputs = crate::cpu::delta_net::DeltaInputs {
                mixed: &mut mixed[lo * cd..hi * cd],
                z: &z[lo * vd..hi * vd],
                beta: &beta[lo * hv..hi * hv],
                alpha: &alpha[lo * hv..hi * hv],
            };
            crate::cpu::delta_net::forward(d, eps, inputs, conv, state, &mut out[lo * vd..hi * vd]);
        }
        self.o = vec![0f32; n * d.output.rows];
        ops.matmul_group(&[&d.output], &out, &mut [&mut self.o])
    }

    fn dense_ffn(&mut self, _il: usize, f: &DenseFfn) -> Result<(), EngineFailure> {
        self.o = vec![0f32; self.input.n() * f.down.rows];
        self.ops.feed_forward(&f.block(), &self.h, &mut self.o)
    }

    fn moe_ffn(&mut self, il: usize, m: &MoeFfn) -> Result<(), EngineFailure> {
        let len = self.input.n() * m.router.cols;
        self.o = vec![0f32; len];
        if let Some(se) = &m.shared_expert {
            // Qwen: the routed experts, plus the shared expert scaled by its sigmoid gate.
            crate::moe::run(self.ops, m, &self.h, &self.h, &mut self.o)?;
            let mut shared = vec![0f32; len];
            self.ops.feed_forward(&se.mlp.block(), &self.h, &mut shared)?;
            for ((o, s), h) in self.o.chunks_exact_mut(m.router.cols).zip(shared.chunks_exact(m.router.cols)).zip(self.h.chunks_exact(m.router.cols)) {
                let g = 1.0 / (1.0 + (-ops::dot(h, &se.gate)).exp());
                o.iter_mut().zip(s).for_each(|(o, s)| *o += s * g);
            }
            return Ok(());
        }
        let Some(s) = &m.shared else { return crate::moe::run(self.ops, m, &self.h, &self.h, &mut self.o) };
        // Gemma 4: the dense MLP on h, the experts on their own norm of the stream, the
        // router on the stream's plain RMS norm, weighted.
        let eps = self.input.layers[il].norm_eps;
        let mut mlp = vec![0f32; len];
        self.ops.feed_forward(&s.mlp.block(), &self.h, &mut mlp)?;
        ops::rms_norm(&mut mlp, &s.post_norm, eps);
        let (mut experts_in, mut router_in) = (vec![0f32; len], vec![0f32; len]);
        ops::rms_norm_into(self.x, &s.experts_norm, eps, &mut experts_in);
        ops::rms_norm_into(self.x, &s.router_input_scale, eps, &mut router_in);
        crate::moe::run(self.ops, m, &router_in, &experts_in, &mut self.o)?;
        ops::rms_norm(&mut self.o, &s.experts_post_norm, eps);
        ops::add_assign(&mut self.o, &mlp);
        Ok(())
    }

    fn residual(&mut self, post: Option<VectorId>, next: Option<VectorId>) -> Result<(), EngineFailure> {
        if let Some(id) = post {
            let (w, eps) = self.vector(id);
            ops::rms_norm(&mut self.o, w, eps);
        }
        ops::add_assign(self.x, &self.o);
        match next {
            Some(id) => self.norm(id),
            None => Ok(()),
        }
    }

    fn per_layer_input(&mut self, il: usize, p: &PerLayerInput) -> Result<(), EngineFailure> {
        let n = self.input.n();
        let width = p.gate.rows;
        let inputs = &self.input.per_layer_inputs[il * n * width..(il + 1) * n * width];
        let mut g = vec![0f32; n * width];
        self.ops.matmul_group(&[&p.gate], self.x, &mut [&mut g])?;
        ops::gelu_mul(&mut g, inputs);
        let mut o = vec![0f32; n * p.proj.rows];
        self.ops.matmul_group(&[&p.proj], &g, &mut [&mut o])?;
        ops::rms_norm(&mut o, &p.post_norm, self.input.layers[il].norm_eps);
        ops::add_assign(self.x, &o);
        Ok(())
    }

    fn scale_stream(&mut self, scale: f32) -> Result<(), EngineFailure> {
        self.x.iter_mut().for_each(|v| *v *= scale);
        Ok(())
    }
}
