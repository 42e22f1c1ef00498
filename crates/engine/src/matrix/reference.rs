//! The reference accelerator: a real engine that runs on the CPU with an accelerator's
//! shape — weights prepared once (dequantized to f32, per N bucket like a compiling
//! engine), plain f32 GEMM. It exercises placement, buckets, the prepared-weight cache
//! and fallback everywhere, and gives exact (unquantized-activation) results to compare
//! against. Chosen only with `--backend ref`, never by `auto`.

use super::disk_cache::{DiskCache, Lookup};
use super::{KvRows, AttentionOp, AttnShape, Availability, Capabilities, DecoderStack, EngineFailure, FeedForward, FusedFeedForward, MatmulShape, MatrixEngine, StackInput, WeightKey};
use super::cache::bucket_for;
use crate::block::{run_on_host, BlockOps};
use crate::cpu::ops::dot;
use crate::plan::Layer;
use half::f16;
use crate::weights::Weight;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Token tiles, as an engine that compiles per shape would use.
pub const REF_BUCKETS: [usize; 6] = [64, 128, 256, 512, 1024, 2048];

/// See the module docs.
#[derive(Default)]
pub struct ReferenceEngine {
    prepared: Mutex<HashMap<(WeightKey, usize), Arc<Vec<f32>>>>,
    disk: Option<DiskCache>,
    stacks: bool,
    streams: bool,
    decode_bandwidth: Option<f64>,
}

/// Bumped whenever the prepared format changes, so old disk entries are stale.
const VERSION: u32 = 1;

impl ReferenceEngine {
    /// A new engine with nothing prepared.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep prepared weights in `disk` across processes (`--kernel-cache`).
    pub fn with_disk_cache(disk: DiskCache) -> Self {
        ReferenceEngine { disk: Some(disk), ..Self::default() }
    }

    /// Also take whole decoder stacks (the shared block code over this engine's own ops),
    /// as an engine that keeps activations resident would — with its weights prepared, or
    /// streamed (converted per call) when the model is over the budget.
    pub fn with_stacks(mut self) -> Self {
        self.stacks = true;
        self.streams = true;
        self
    }

    /// Also decode steps as stacks, claiming `bandwidth` bytes/s of memory (the policy's
    /// decode cost model).
    pub fn with_decode(mut self, bandwidth: f64) -> Self {
        self.decode_bandwidth = Some(bandwidth);
        self
    }

    /// Whole stacks with prepared weights only (no streaming).
    pub fn without_streaming(mut self) -> Self {
        self.streams = false;
        self
    }

    fn load_or_convert(&self, w: &Weight, bucket: usize) -> Vec<f32> {
        let key = self.disk.as_ref().map(|_| DiskCache::key("ref", VERSION, w, bucket));
        if let (Some(disk), Some(key)) = (&self.disk, &key) {
            match disk.get(key) {
                Lookup::Hit(bytes) if bytes.len() == w.rows * w.cols * 4 => {
                    return bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect();
                }
                Lookup::Rejected(why) => eprintln!("warning: kernel cache: {why}"),
                _ => {}
            }
        }
        let mut f = vec![0f32; w.rows * w.cols];
        f.par_chunks_mut(w.cols).enumerate().for_each(|(r, row)| w.dequantize_row(r, row));
        if let (Some(disk), Some(key)) = (&self.disk, &key) {
            let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
            if let Err(e) = disk.put(key, &bytes) {
                eprintln!("warning: kernel cache: cannot write {key}: {e}");
            }
        }
        f
    }
}

impl MatrixEngine for ReferenceEngine {
    fn name(&self) -> &str {
        "ref"
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn supports(&self, s: &MatmulShape) -> Result<(), String> {
        // Like the ANE, refuse very wide matrices so the CPU path is exercised too.
        if s.k > 16384 || s.m > 1 << 20 {
            return Err(format!("{}x{} exceeds the 16384 input limit", s.m, s.k));
        }
        Ok(())
    }
    fn n_buckets(&self) -> Option<&[usize]> {
        Some(&REF_BUCKETS)
    }
    fn throughput_hint(&self) -> (f64, f64) {
        // Pretend to be a fast engine so the cost model offloads above min-batch.
        (1e13, 1e11)
    }
    fn prepare(&self, key: &WeightKey, w: &Weight, bucket: usize) -> Result<usize, EngineFailure> {
        let f = self.load_or_convert(w, bucket);
        let bytes = f.len() * 4;
        self.prepared.lock().unwrap_or_else(|e| e.into_inner()).insert((key.clone(), bucket), Arc::new(f));
        Ok(bytes)
    }
    fn evict(&self, key: &WeightKey, bucket: usize) {
        self.prepared.lock().unwrap_or_else(|e| e.into_inner()).remove(&(key.clone(), bucket));
    }
    fn matmul(&self, keys: &[&WeightKey], weights: &[&Weight], bucket: usize, x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        for ((key, w), out) in keys.iter().zip(weights).zip(outs.iter_mut()) {
            let wf = self
                .prepared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&((*key).clone(), bucket))
                .cloned()
                .ok_or_else(|| EngineFailure { engine: "ref".into(), what: format!("{} is not prepared", key.tensor) })?;
            gemm(&wf, w.rows, w.cols, x, n, out);
        }
        Ok(())
    }
    fn prepared_bytes(&self, s: &MatmulShape) -> usize {
        s.m * s.k * 4
    }
    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities { feed_forward: Some(self), attention: Some(self), stack: Some(self) }
    }
}

impl FusedFeedForward for ReferenceEngine {
    fn feed_forward(&self, ffn: &FeedForward<'_>, bucket: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), EngineFailure> {
        // The intermediate stays inside the engine: exact f32 throughout.
        debug_assert_eq!(x.len(), n * ffn.gate.cols);
        ffn.run_with(x, out, |ws, x, outs| {
            let keys: Vec<WeightKey> = ws.iter().map(|w| WeightKey::of(w)).collect();
            self.matmul(&keys.iter().collect::<Vec<_>>(), ws, bucket, x, x.len() / ws[0].cols, outs)
        })
    }
}

impl DecoderStack for ReferenceEngine {
    fn supports_stack(&self, _: &[Layer]) -> Result<(), String> {
        if self.stacks {
            Ok(())
        } else {
            Err("whole stacks are off (ReferenceEngine::with_stacks)".into())
        }
    }
    fn streams_stack(&self, _layers: &[Layer]) -> bool {
        self.streams
    }
    fn decode_bandwidth(&self) -> Option<f64> {
        self.decode_bandwidth
    }
    fn stack(&self, input: &StackInput<'_>, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Result<(), EngineFailure> {
        let ops = RefOps { engine: self, bucket: bucket_for(Some(&REF_BUCKETS), input.n()), resident: input.weights_resident };
        // On a copy: a failure must leave x as it was.
        let mut y = x.to_vec();
        run_on_host(&ops, input, &mut y, caches)?;
        x.copy_from_slice(&y);
        Ok(())
    }
}

impl AttentionOp for ReferenceEngine {
    fn supports_attention(&self, _: &AttnShape) -> Result<(), String> {
        Ok(())
    }
    fn attention(&self, s: &AttnShape, q: &[f32], positions: &[usize], k_cache: &[f16], v_cache: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        // The textbook definition: full softmax per (token, head) in f64 over f32 scores of
        // unrounded queries; the cache rows are converted to f32 once per call.
        let (d, dv, group) = (s.head_dim, s.head_dim_v, s.n_head / s.n_head_kv);
        let (kvd, vd) = (s.n_head_kv * d, s.n_head_kv * dv);
        let last = positions.iter().copied().max().unwrap_or(0);
        let keys: Vec<f32> = k_cache[..(last + 1) * kvd].iter().map(|v| v.to_f32()).collect();
        let vals: Vec<f32> = v_cache[..(last + 1) * vd].iter().map(|v| v.to_f32()).collect();
        out[..positions.len() * s.n_head * dv].par_chunks_mut(dv).enumerate().for_each(|(job, o)| {
            let (t, h) = (job / s.n_head, job % s.n_head);
            let (pos, g) = (positions[t], h / group);
            let lo = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qh = &q[(t * s.n_head + h) * d..][..d];
            let scores: Vec<f64> = (lo..=pos).map(|j| dot(qh, &keys[j * kvd + g * d..][..d]) as f64).collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut sum = vec![0f64; dv];
            for (j, w) in (lo..=pos).zip(&weights) {
                for (acc, v) in sum.iter_mut().zip(&vals[j * vd + g * dv..][..dv]) {
                    *acc += w * *v as f64;
                }
            }
            for (o, acc) in o.iter_mut().zip(&sum) {
                *o = (acc / total) as f32;
            }
        });
        Ok(())
    }
}

/// The reference engine's own ops, for the shared block code: every matmul on its f32
/// GEMM (weights prepared by the dispatcher for `bucket`, or converted on the spot when
/// streamed), attention in f64.
struct RefOps<'a> {
    engine: &'a ReferenceEngine,
    bucket: usize,
    resident: bool,
}

impl BlockOps for RefOps<'_> {
    fn matmul_group(&self, ws: &[&Weight], x: &[f32], outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        let n = x.len() / ws[0].cols;
        if !self.resident {
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                gemm(&self.engine.load_or_convert(w, self.bucket), w.rows, w.cols, x, n, out);
            }
            return Ok(());
        }
        let keys: Vec<WeightKey> = ws.iter().map(|w| WeightKey::of(w)).collect();
        let refs: Vec<&WeightKey> = keys.iter().collect();
        self.engine.matmul(&refs, ws, self.bucket, x, n, outs)
    }
    fn feed_forward(&self, f: &FeedForward<'_>, x: &[f32], out: &mut [f32]) -> Result<(), EngineFailure> {
        if !self.resident || !f.is_plain() {
            return f.run_with(x, out, |ws, x, outs| self.matmul_group(ws, x, outs));
        }
        FusedFeedForward::feed_forward(self.engine, f, self.bucket, x, x.len() / f.gate.cols, out)
    }
    fn attention(&self, s: &AttnShape, q: &[f32], positions: &[usize], kc: &[f16], vc: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        AttentionOp::attention(self.engine, s, q, positions, kc, vc, out)
    }
}

/// Weight rows per parallel job (they stay in cache while every token block passes).
const ROWS: usize = 64;
/// Tokens per pass over a job's rows.
const TOKENS: usize = 8;

/// `out[t * m + r] = x_t · w_r`: plain f32 dot products, blocked so each weight row is
/// read from memory once per job rather than once per token.
fn gemm(wf: &[f32], m: usize, k: usize, x: &[f32], n: usize, out: &mut [f32]) {
    let dst = crate::cpu::SharedMut(out.as_mut_ptr());
    let block = pick_block();
    (0..m.div_ceil(ROWS)).into_par_iter().for_each(|c| {
        let rows = c * ROWS..((c + 1) * ROWS).min(m);
        for t0 in (0..n).step_by(TOKENS) {
            // SAFETY: the kernel matches the CPU; each job writes only its own rows' outputs.
            unsafe { block(wf, k, x, t0..(t0 + TOKENS).min(n), rows.clone(), m, dst) };
        }
    });
}

type Block = unsafe fn(&[f32], usize, &[f32], std::ops::Range<usize>, std::ops::Range<usize>, usize, crate::cpu::SharedMut<f32>);

fn pick_block() -> Block {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return block_avx512;
    }
    block_portable
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn block_avx512(wf: &[f32], k: usize, x: &[f32], t: std::ops::Range<usize>, r: std::ops::Range<usize>, m: usize, dst: crate::cpu::SharedMut<f32>) {
    block_body(wf, k, x, t, r, m, dst)
}

unsafe fn block_portable(wf: &[f32], k: usize, x: &[f32], t: std::ops::Range<usize>, r: std::ops::Range<usize>, m: usize, dst: crate::cpu::SharedMut<f32>) {
    block_body(wf, k, x, t, r, m, dst)
}

#[inline(always)]
unsafe fn block_body(wf: &[f32], k: usize, x: &[f32], tokens: std::ops::Range<usize>, rows: std::ops::Range<usize>, m: usize, dst: crate::cpu::SharedMut<f32>) {
    for r in rows {
        let w = &wf[r * k..][..k];
        for t in tokens.clone() {
            *dst.ptr().add(t * m + r) = dot(&x[t * k..][..k], w);
        }
    }
}

