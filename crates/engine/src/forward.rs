//! The forward pass over a batch of tokens: embeddings → decoder blocks → logits.
//! One function serves every architecture; the config's options switch the parts on.

use crate::block::{rope_angles, run_on_host};
use crate::cpu::ops::{self, RopeTable};
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::matrix::dispatch::Stacked;
use crate::matrix::{Dispatcher, KvRows, StackInput};
use crate::arch::{Config, Rope};
use crate::plan::RopeKind;
use crate::model::Model;
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

/// What a batch returns for its requested rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// The vocabulary's logits.
    Logits,
    /// The final norm's output.
    Hidden,
}

/// The RoPE tables of full-attention and sliding-window layers.
struct RopeTables {
    global: RopeTable,
    local: RopeTable,
}

impl RopeTables {
    /// Both tables, the frequency factors on the full-attention layers' (no architecture
    /// applies them to sliding-window layers: gemma4 loads them for its full layers only);
    /// YaRN's parameters as llama.cpp's context derives them (the same for both kinds of
    /// layer, each with its own base, scale and rotated dims).
    fn new(c: &Config, factors: Option<&[f32]>) -> Self {
        let yarn = c.rope_scaling.yarn(c.rope_global.freq_scale, c.n_ctx_train);
        let table = |dims: usize, r: &Rope, factors| RopeTable::new(dims, r.base, r.freq_scale, yarn, factors);
        RopeTables { global: table(c.rope_dims, &c.rope_global, factors), local: table(c.rope_dims_swa, &c.rope_local, None) }
    }
}

/// Runs a model: holds the RoPE tables and the thread pool.
pub struct Runner {
    /// The model.
    pub model: Model,
    /// RoPE for sequences whose context is within the original one (every sequence, unless
    /// the model has LongRoPE factors).
    rope: RopeTables,
    /// LongRoPE's tables for sequences whose context exceeds the original one.
    rope_long: Option<RopeTables>,
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
        let (f, orig) = (&model.rope_factors, c.rope_scaling.n_ctx_orig);
        let rope = RopeTables::new(c, f.for_context(orig, orig));
        let rope_long = f.by_context().then(|| RopeTables::new(c, f.for_context(orig + 1, orig)));
        let make_pool = |role: &str| {
            let role = role.to_string();
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.max(1))
                .thread_name(move |i| format!("tandem-{role}-{i}"))
                .build()
                .map_err(|e| EngineError::Invalid(format!("cannot start {threads} threads: {e}")))
        };
        let (pool, prefill_pool) = (make_pool("decode")?, make_pool("prefill")?);
        Ok(Runner { model, rope, rope_long, pool, prefill_pool, dispatcher })
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
        self.run_batch(seqs, Output::Logits)
    }

    /// The last layer's output after the final norm (what embedding models pool), `[n, n_embd]`
    /// for the batch rows in `rows`; the tokens' K/V go into the cache as with [`Runner::forward`].
    pub fn forward_hidden(&self, cache: &mut KvCache, tokens: &[u32], rows: Range<usize>) -> Result<Vec<f32>> {
        let mut seqs = [Sequence { cache, tokens, logit_rows: rows }];
        Ok(self.run_batch(&mut seqs, Output::Hidden)?.pop().expect("one sequence"))
    }

    fn run_batch(&self, seqs: &mut [Sequence<'_>], output: Output) -> Result<Vec<Vec<f32>>> {
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
            // Each sequence's angles from the tables of its context (LongRoPE picks by it).
            let any_local = self.model.layers.iter().any(|l| l.attention().is_some_and(|a| a.rope == RopeKind::Local));
            let (mut rope_global, mut rope_local) = (Vec::new(), Vec::new());
            for (s, span) in seqs.iter().zip(&spans) {
                let tables = match &self.rope_long {
                    Some(long) if s.cache.n_ctx() > c.rope_scaling.n_ctx_orig => long,
                    _ => &self.rope,
                };
                rope_global.extend(rope_angles(&tables.global, &positions[span.clone()]));
                if any_local {
                    rope_local.extend(rope_angles(&tables.local, &positions[span.clone()]));
                }
            }
            let per_layer_inputs = self.per_layer_inputs(&tokens, &x);
            let mut caches: Vec<&mut dyn KvRows> = seqs.iter_mut().map(|s| &mut *s.cache as &mut dyn KvRows).collect();
            let input = StackInput {
                layers: &self.model.layers,
                positions: &positions,
                spans: &spans,
                rope_global: &rope_global,
                rope_local: if any_local { &rope_local } else { &rope_global },
                weights_resident: true,
                per_layer_inputs: &per_layer_inputs,
            };
            // An engine may take the whole stack (activations stay on it); otherwise block by
            // block here, each op placed on its own.
            let stacked = self.dispatcher.stack(&input, &self.model.output, &mut x, &mut caches);
            if stacked == Stacked::No {
                run_on_host(&self.dispatcher, &input, &mut x, &mut caches).expect("the dispatcher falls back by itself");
            }
            drop(caches);
            for (s, span) in seqs.iter_mut().zip(&spans) {
                let len = s.cache.len() + span.len();
                s.cache.set_len(len);
            }
            // Only the requested rows go through the (large) vocabulary projection.
            let d = c.n_embd;
            let mut h = Vec::new();
            for (s, span) in seqs.iter().zip(&spans) {
                let r = span.start + s.logit_rows.start..span.start + s.logit_rows.end;
                h.extend_from_slice(&x[r.start * d..r.end * d]);
            }
            ops::rms_norm(&mut h, &self.model.output_norm, c.norm_eps);
            let (rows, width) = match output {
                Output::Hidden => (h, d),
                Output::Logits => (self.logits(&h, stacked), c.n_vocab),
            };
            let mut at = 0;
            Ok(seqs
                .iter()
                .map(|s| {
                    at += s.logit_rows.len() * width;
                    rows[at - s.logit_rows.len() * width..at].to_vec()
                })
                .collect())
        })
    }

    /// The vocabulary's logits of the normed rows `h`, on the engine of a resident stack (it
    /// holds the output weight too) or wherever the dispatcher places them.
    fn logits(&self, h: &[f32], stacked: Stacked) -> Vec<f32> {
        let c = &self.model.config;
        let mut logits = vec![0f32; h.len() / c.n_embd * c.n_vocab];
        match stacked {
            Stacked::Resident(engine) => self.dispatcher.matmul_on(engine, &self.model.output, h, &mut logits),
            _ => self.dispatcher.matmul(&self.model.output, h, &mut logits),
        }
        if let Some(cap) = c.logit_softcap {
            logits.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
        }
        logits
    }

    /// Gemma 4's per-layer inputs of the batch, `[n_layer, n, width]` (empty without them), as
    /// llama.cpp computes them: the scaled embeddings `x` projected (÷ √n_embd) and RMS-normed
    /// per layer, plus the token's per-layer embedding (× √width), the sum ÷ √2.
    fn per_layer_inputs(&self, tokens: &[u32], x: &[f32]) -> Vec<f32> {
        let Some(p) = &self.model.per_layer else { return Vec::new() };
        let c = &self.model.config;
        let (n, w, l) = (tokens.len(), p.width, c.n_layer);
        let mut proj = vec![0f32; n * l * w];
        self.dispatcher.matmul(&p.model_proj, x, &mut proj);
        let proj_scale = 1.0 / (c.n_embd as f32).sqrt();
        proj.iter_mut().for_each(|v| *v *= proj_scale);
        ops::rms_norm(&mut proj, &p.proj_norm, c.norm_eps);
        let (embd_scale, sum_scale) = ((w as f32).sqrt(), std::f32::consts::FRAC_1_SQRT_2);
        proj.par_chunks_mut(l * w).zip(tokens.par_iter()).for_each_init(
            || vec![0f32; l * w],
            |row, (token_proj, &t)| {
                p.tok_embd.dequantize_row(t as usize, row);
                for (v, e) in token_proj.iter_mut().zip(row.iter()) {
                    *v = (*v + e * embd_scale) * sum_scale;
                }
            },
        );
        // Token-major to layer-major: each layer's block reads one contiguous slice.
        let mut out = vec![0f32; n * l * w];
        for (t, token_proj) in proj.chunks_exact(l * w).enumerate() {
            for (il, slice) in token_proj.chunks_exact(w).enumerate() {
                out[(il * n + t) * w..(il * n + t + 1) * w].copy_from_slice(slice);
            }
        }
        out
    }

    fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let c = &self.model.config;
        let mut x = vec![0f32; tokens.len() * c.n_embd];
        let embed_row = |(row, &t): (&mut [f32], &u32)| {
            self.model.tok_embd.dequantize_row(t as usize, row);
            if let Some(s) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        };
        // A prefill's rows on the whole pool; a decode step's one row here.
        if tokens.len() > 1 {
            x.par_chunks_exact_mut(c.n_embd).zip(tokens.par_iter()).for_each(embed_row);
        } else {
            x.chunks_exact_mut(c.n_embd).zip(tokens).for_each(embed_row);
        }
        x
    }
}
