//! One decoder block over a batch, written once: the CPU path runs it through the
//! [`Dispatcher`] (each matmul and attention placed on its own), an engine that takes
//! whole stacks but computes with host code (the reference engine) runs it through its
//! own ops. An engine with its own kernels (CUDA) mirrors these steps on the card.

use crate::arch::{Config, RopeStyle};
use crate::cpu::attention::AttnShape;
use crate::cpu::ops::{self, RopeTable};
use crate::kv_cache::KvCache;
use crate::matrix::{Dispatcher, EngineFailure, FeedForward};
use crate::model::{Layer, Model};
use crate::weights::Weight;
use half::f16;
use rayon::prelude::*;
use std::ops::Range;

/// A batch's pass through every decoder block: what an engine needs besides the hidden
/// states and the caches.
#[derive(Clone, Copy)]
pub struct StackInput<'a> {
    /// The model (config and layers).
    pub model: &'a Model,
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
}

impl StackInput<'_> {
    /// Tokens in the batch.
    pub fn n(&self) -> usize {
        self.positions.len()
    }

    /// The RoPE angles of layer `il`.
    pub fn rope(&self, il: usize) -> &[(f32, f32)] {
        if self.model.config.swa_layers[il] {
            self.rope_local
        } else {
            self.rope_global
        }
    }

    /// The attention shape of layer `il`.
    pub fn attn_shape(&self, il: usize) -> AttnShape {
        let c = &self.model.config;
        AttnShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            head_dim_v: c.head_dim_v,
            window: if c.swa_layers[il] { c.swa_window } else { None },
        }
    }

    /// Every weight matrix of layer `il`, in a fixed order (Q, K, V, O, gate, up, down).
    pub fn weights(l: &Layer) -> [&Weight; 7] {
        [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
    }
}

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

/// The ops a block needs: weight matmuls (grouped), a feed-forward block, attention.
pub trait BlockOps {
    /// `outs[i] = x · W_iᵀ` for weights sharing one input.
    fn matmul_group(&self, ws: &[&Weight], x: &[f32], outs: &mut [&mut [f32]]) -> Result<(), EngineFailure>;
    /// `out = down · (act(gate · x) ⊙ (up · x))`.
    fn feed_forward(&self, f: &FeedForward<'_>, x: &[f32], out: &mut [f32]) -> Result<(), EngineFailure>;
    /// Causal attention of one sequence's queries over a layer's cache.
    fn attention(&self, s: &AttnShape, q: &[f32], positions: &[usize], kc: &[f16], vc: &[f16], out: &mut [f32]) -> Result<(), EngineFailure>;
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
}

/// Block `il` over the batch: `x` (the residual stream, `[n, n_embd]`) is updated in place
/// and the new tokens' K/V are stored in each sequence's cache.
pub fn run_block(ops: &dyn BlockOps, s: &StackInput<'_>, il: usize, x: &mut [f32], caches: &mut [&mut KvCache]) -> Result<(), EngineFailure> {
    let c: &Config = &s.model.config;
    let l = &s.model.layers[il];
    let (n, positions) = (s.n(), s.positions);
    let mut h = vec![0f32; x.len()];
    ops::rms_norm_into(x, &l.attn_norm, c.norm_eps, &mut h);

    // Q, K and V share one input (one quantization on the CPU, one transfer on an accelerator).
    let mut q = vec![0f32; n * l.wq.rows];
    let mut k = vec![0f32; n * l.wk.rows];
    let mut v = vec![0f32; n * l.wv.rows];
    ops.matmul_group(&[&l.wq, &l.wk, &l.wv], &h, &mut [&mut q, &mut k, &mut v])?;
    for (t, b) in [(&mut q, &l.bq), (&mut k, &l.bk), (&mut v, &l.bv)] {
        if let Some(b) = b {
            ops::add_bias(t, b);
        }
    }
    if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
        ops::rms_norm(&mut q, qn, c.norm_eps);
        ops::rms_norm(&mut k, kn, c.norm_eps);
    }
    let neox = c.rope_style == RopeStyle::Neox;
    // RoPE and the query scale, token by token in parallel; each token's angles serve all its heads.
    let (qd, kd, hd, rd, pairs) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.head_dim, c.rope_dims, c.rope_dims / 2);
    q.par_chunks_mut(qd).zip(k.par_chunks_mut(kd)).zip(s.rope(il).par_chunks(pairs)).for_each(|((qt, kt), angles)| {
        for head in qt.chunks_exact_mut(hd) {
            RopeTable::rotate(&mut head[..rd], angles, neox);
            head.iter_mut().for_each(|v| *v *= c.attn_scale);
        }
        for head in kt.chunks_exact_mut(hd) {
            RopeTable::rotate(&mut head[..rd], angles, neox);
        }
    });
    let shape = s.attn_shape(il);
    let (qd, kd, vd, od) = (l.wq.rows, l.wk.rows, l.wv.rows, c.n_head * c.head_dim_v);
    let mut attn = vec![0f32; n * od];
    for (cache, span) in caches.iter_mut().zip(s.spans) {
        let (a, b) = (span.start, span.end);
        cache.store(il, positions[a], &k[a * kd..b * kd], &v[a * vd..b * vd]);
        let (kc, vc) = cache.layer(il);
        ops.attention(&shape, &q[a * qd..b * qd], &positions[a..b], kc, vc, &mut attn[a * od..b * od])?;
    }
    let mut o = vec![0f32; n * c.n_embd];
    ops.matmul_group(&[&l.wo], &attn, &mut [&mut o])?;
    if let Some(w) = &l.post_attn_norm {
        ops::rms_norm(&mut o, w, c.norm_eps);
    }
    ops::add_assign(x, &o);

    ops::rms_norm_into(x, &l.ffn_norm, c.norm_eps, &mut h);
    let mut down = vec![0f32; n * c.n_embd];
    let ffn = FeedForward { gate: &l.w_gate, up: &l.w_up, down: &l.w_down, activation: c.activation };
    ops.feed_forward(&ffn, &h, &mut down)?;
    if let Some(w) = &l.post_ffn_norm {
        ops::rms_norm(&mut down, w, c.norm_eps);
    }
    ops::add_assign(x, &down);
    Ok(())
}
