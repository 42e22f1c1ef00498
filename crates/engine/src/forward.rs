//! The forward pass over a batch of tokens: embeddings → decoder blocks → logits.
//! One function serves every architecture; the config's options switch the parts on.

use crate::arch::RopeStyle;
use crate::cpu::attention::AttnShape;
use crate::cpu::ops::{self, RopeTable};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::matrix::{Dispatcher, FeedForward};
use crate::model::{Layer, Model};
use rayon::prelude::*;
use std::ops::Range;

/// One sequence of a batched forward pass.
pub struct Sequence<'a> {
    /// Its KV cache; the tokens go at positions `cache.len()..`.
    pub cache: &'a mut KvCache,
    /// New tokens.
    pub tokens: &'a [u32],
    /// Which of the new tokens need logits.
    pub logit_rows: Range<usize>,
}

/// Runs a model: holds the RoPE tables and the thread pool.
pub struct Runner {
    /// The model.
    pub model: Model,
    rope_global: RopeTable,
    rope_local: RopeTable,
    pool: rayon::ThreadPool,
    /// Prefill (batches with more than one token per sequence) runs on its own pool, so a
    /// server's long prefill on one thread cannot starve the decode steps of another.
    prefill_pool: rayon::ThreadPool,
    /// Routes every weight matmul to an engine.
    pub dispatcher: Dispatcher,
}

impl Runner {
    /// Prepare a model for running on `threads` CPU threads, every matmul on the CPU.
    pub fn new(model: Model, threads: usize) -> Result<Self> {
        Self::with_dispatcher(model, threads, Dispatcher::cpu_only())
    }

    /// Like [`Runner::new`], with matmuls routed by `dispatcher`.
    pub fn with_dispatcher(model: Model, threads: usize, dispatcher: Dispatcher) -> Result<Self> {
        let c = &model.config;
        let freqs = model.rope_freqs.as_deref();
        let rope_global = RopeTable::new(c.rope_dims, c.rope_global.base, c.rope_global.freq_scale, freqs);
        let rope_local = RopeTable::new(c.rope_dims, c.rope_local.base, c.rope_local.freq_scale, freqs);
        let make_pool = |role: &str| {
            let role = role.to_string();
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.max(1))
                .thread_name(move |i| format!("tandem-{role}-{i}"))
                .build()
                .map_err(|e| EngineError::Invalid(format!("cannot start {threads} threads: {e}")))
        };
        let (pool, prefill_pool) = (make_pool("decode")?, make_pool("prefill")?);
        Ok(Runner { model, rope_global, rope_local, pool, prefill_pool, dispatcher })
    }

    /// A new empty KV cache of `n_ctx` positions.
    pub fn new_cache(&self, n_ctx: usize) -> KvCache {
        KvCache::new(&self.model.config, n_ctx)
    }

    /// Run `f` on this runner's thread pool.
    pub fn run_in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Process `tokens` at positions `cache.len()..`, append their K/V to the cache, and
    /// return logits `[rows.len(), n_vocab]` for the batch rows in `rows`.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32], rows: Range<usize>) -> Result<Vec<f32>> {
        let mut seqs = [Sequence { cache, tokens, logit_rows: rows }];
        Ok(self.forward_batch(&mut seqs)?.pop().expect("one sequence"))
    }

    /// Several independent sequences in one pass: their rows share every weight matmul
    /// (so decode steps of many requests cost about one weight read), while RoPE,
    /// the KV cache and attention stay per sequence. Returns each sequence's logits.
    pub fn forward_batch(&self, seqs: &mut [Sequence<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.model.config;
        for s in seqs.iter() {
            let pos0 = s.cache.len();
            if pos0 + s.tokens.len() > s.cache.n_ctx() {
                return Err(EngineError::ContextFull { tokens: pos0 + s.tokens.len(), ctx: s.cache.n_ctx() });
            }
            if s.logit_rows.end > s.tokens.len() || s.logit_rows.start > s.logit_rows.end {
                return Err(EngineError::Invalid(format!("logit rows {:?} outside the batch", s.logit_rows)));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
                return Err(EngineError::BadToken(bad, c.n_vocab));
            }
        }
        let is_prefill = seqs.iter().any(|s| s.tokens.len() > 1);
        let pool = if is_prefill { &self.prefill_pool } else { &self.pool };
        pool.install(|| {
            let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
            let mut x = self.embed(&tokens);
            let mut spans = Vec::with_capacity(seqs.len());
            let mut positions = Vec::with_capacity(tokens.len());
            let mut row = 0;
            for s in seqs.iter() {
                let pos0 = s.cache.len();
                spans.push(row..row + s.tokens.len());
                positions.extend(pos0..pos0 + s.tokens.len());
                row += s.tokens.len();
            }
            let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
            for (il, layer) in self.model.layers.iter().enumerate() {
                self.block(il, layer, &mut x, &positions, &spans, &mut caches);
            }
            for (cache, span) in caches.iter_mut().zip(&spans) {
                let len = cache.len() + span.len();
                cache.set_len(len);
            }
            // Only the requested rows go through the (large) vocabulary projection.
            let d = c.n_embd;
            let mut h = Vec::new();
            for (s, span) in seqs.iter().zip(&spans) {
                let r = span.start + s.logit_rows.start..span.start + s.logit_rows.end;
                h.extend_from_slice(&x[r.start * d..r.end * d]);
            }
            ops::rms_norm(&mut h, &self.model.output_norm, c.norm_eps);
            let mut logits = vec![0f32; h.len() / d * c.n_vocab];
            self.dispatcher.matmul(&self.model.output, &h, &mut logits);
            if let Some(cap) = c.logit_softcap {
                logits.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
            }
            let mut out = Vec::with_capacity(seqs.len());
            let mut at = 0;
            for s in seqs.iter() {
                let len = s.logit_rows.len() * c.n_vocab;
                out.push(logits[at..at + len].to_vec());
                at += len;
            }
            Ok(out)
        })
    }

    fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let c = &self.model.config;
        let mut x = vec![0f32; tokens.len() * c.n_embd];
        for (row, &t) in x.chunks_exact_mut(c.n_embd).zip(tokens) {
            self.model.tok_embd.dequantize_row(t as usize, row);
            if let Some(s) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        x
    }

    fn block(
        &self,
        il: usize,
        l: &Layer,
        x: &mut [f32],
        positions: &[usize],
        spans: &[Range<usize>],
        caches: &mut [&mut KvCache],
    ) {
        let c = &self.model.config;
        let n = positions.len();
        let mut h = vec![0f32; x.len()];
        ops::rms_norm_into(x, &l.attn_norm, c.norm_eps, &mut h);

        // Q, K and V share one input (one quantization on the CPU, one transfer on an accelerator).
        let mut q = vec![0f32; n * l.wq.rows];
        let mut k = vec![0f32; n * l.wk.rows];
        let mut v = vec![0f32; n * l.wv.rows];
        self.dispatcher.matmul_group(&[&l.wq, &l.wk, &l.wv], &h, &mut [&mut q, &mut k, &mut v]);
        for (t, b) in [(&mut q, &l.bq), (&mut k, &l.bk), (&mut v, &l.bv)] {
            if let Some(b) = b {
                ops::add_bias(t, b);
            }
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            ops::rms_norm(&mut q, qn, c.norm_eps);
            ops::rms_norm(&mut k, kn, c.norm_eps);
        }
        let local = c.swa_layers[il];
        let rope = if local { &self.rope_local } else { &self.rope_global };
        let neox = c.rope_style == RopeStyle::Neox;
        // RoPE and the query scale, token by token in parallel; each token's angles serve all its heads.
        let (qd, kd, hd, rd) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.head_dim, c.rope_dims);
        q.par_chunks_mut(qd).zip(k.par_chunks_mut(kd)).zip(positions.par_iter()).for_each_init(
            Vec::new,
            |angles, ((qt, kt), &pos)| {
                rope.angles(pos, angles);
                for head in qt.chunks_exact_mut(hd) {
                    RopeTable::rotate(&mut head[..rd], angles, neox);
                    head.iter_mut().for_each(|v| *v *= c.attn_scale);
                }
                for head in kt.chunks_exact_mut(hd) {
                    RopeTable::rotate(&mut head[..rd], angles, neox);
                }
            },
        );
        let shape = AttnShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            head_dim_v: c.head_dim_v,
            window: if local { c.swa_window } else { None },
        };
        let (qd, kd, vd, od) = (l.wq.rows, l.wk.rows, l.wv.rows, c.n_head * c.head_dim_v);
        let mut attn = vec![0f32; n * od];
        for (cache, span) in caches.iter_mut().zip(spans) {
            let (a, b) = (span.start, span.end);
            cache.store(il, positions[a], &k[a * kd..b * kd], &v[a * vd..b * vd]);
            let (kc, vc) = cache.layer(il);
            self.dispatcher.attention(&shape, &q[a * qd..b * qd], &positions[a..b], kc, vc, &mut attn[a * od..b * od]);
        }
        let mut o = vec![0f32; n * c.n_embd];
        self.dispatcher.matmul(&l.wo, &attn, &mut o);
        if let Some(w) = &l.post_attn_norm {
            ops::rms_norm(&mut o, w, c.norm_eps);
        }
        ops::add_assign(x, &o);

        ops::rms_norm_into(x, &l.ffn_norm, c.norm_eps, &mut h);
        let mut down = vec![0f32; n * c.n_embd];
        let ffn = FeedForward { gate: &l.w_gate, up: &l.w_up, down: &l.w_down, activation: c.activation };
        self.dispatcher.feed_forward(&ffn, &h, &mut down);
        if let Some(w) = &l.post_ffn_norm {
            ops::rms_norm(&mut down, w, c.norm_eps);
        }
        ops::add_assign(x, &down);
    }
}
