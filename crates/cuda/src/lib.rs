//! The CUDA matrix engine: NVIDIA tensor cores take the large-N (prefill) matmuls.
//!
//! - Builds anywhere: cudarc loads the driver, cuBLAS and NVRTC at run time. With no
//!   driver or device, [`CudaEngine::availability`] says why and nothing else runs.
//! - Weights are prepared once: their ggml blocks are uploaded as they are and expanded
//!   to f16 `[M, K]` on the card by NVRTC-compiled kernels (`kernels.rs`); they stay
//!   resident while the dispatcher's `PreparedCache` keeps them (LRU over `gpu_mem`).
//! - A matmul sends the activations in f16 from pinned memory once per group, runs one
//!   cuBLAS GEMM per weight (f16 operands, f32 accumulation) and brings the outputs back
//!   in f32, pipelined over token chunks (`pipeline.rs`).
//! - Every CUDA error is an [`EngineFailure`]: the dispatcher recomputes on the CPU.
#![deny(missing_docs)]

mod attention;
mod decode_attention;
mod flash_attention;
#[cfg(test)]
mod formulas;
mod gpu;
mod graph;
pub mod kernel_probe;
pub mod kernels;
mod matvec;
mod source_text;
mod pipeline;
mod phases;
mod device_rows;
mod stack;
mod stack_attention;
mod stack_delta;
mod stack_moe;
mod streaming;
mod weights;

pub use pipeline::PhaseTimes;
pub use weights::WeightFormat;

use engine::matrix::{KvRows, AttentionOp, AttnShape, Availability, Capabilities, DecoderStack, EngineFailure, FeedForward, FusedFeedForward, MatmulShape, MatrixEngine, StackInput, WeightKey};
use engine::plan::{Layer, WeightRole};
use half::f16;
use engine::weights::Weight;
use gpu::{DevBuf, Gpu, Res};
use quant::GgmlType;
use weights::{DevWeight, Prepared};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Options of the engine (`--gpu-mem`, device choice).
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// Bytes of prepared weights to keep on the card (`--gpu-mem`); `None` = what was free
    /// at start-up less a reserve for activations, outputs and cuBLAS. The dispatcher's
    /// `PreparedCache` enforces it (give it [`CudaEngine::memory_budget`]); the engine only
    /// refuses a single weight larger than it.
    pub gpu_mem: Option<usize>,
    /// Bring outputs back in f16 (half the bus traffic, f16 range and rounding) instead of f32.
    pub out_half: bool,
    /// Token chunks per call in the transfer pipeline (1 = no overlap).
    pub chunks: usize,
    /// Smallest chunk in tokens.
    pub min_chunk: usize,
    /// Largest chunk in tokens.
    pub max_chunk: usize,
    /// Run whole feed-forward blocks on the card (gate, up, activation, down), so their
    /// wide intermediate never crosses the bus. Off: each matmul crosses on its own.
    pub fuse_feed_forward: bool,
    /// Directory keeping the NVRTC-compiled kernels across processes (`--kernel-cache`).
    pub kernel_cache: Option<std::path::PathBuf>,
    /// Run a prefill's causal attention on the card (the KV cache stays in host memory).
    pub attention: bool,
    /// Run a prefill's whole decoder stack on the card when the model fits the budget
    /// (hidden states stay there; only they and the new K/V cross the bus).
    pub stack: bool,
    /// In whole stacks, attention by the fused flash kernels where they fit (head size 64 or
    /// 128, compute 8.0+), with this many queries per block (64 or 128); 0: scores and values
    /// through cuBLAS with a softmax between.
    pub flash_attention: usize,
    /// Time the card's phases of every whole-stack call ([`CudaEngine::stack_phases`]).
    pub profile_stack: bool,
    /// Replay decode steps on the card as CUDA graphs (one launch a step) when their
    /// launches equal the last captured step's (`TANDEM_CUDA_GRAPHS=1` in the CLI; off by
    /// default until a GPU has run them).
    pub graphs: bool,
    /// Paths inside whole stacks built without a GPU, off until one has run them (the CLI's
    /// `TANDEM_CUDA_SPLIT_ATTENTION=1`, `TANDEM_CUDA_MOE=1`, `TANDEM_CUDA_DELTANET=1`).
    pub untried: Untried,
    /// Also run decode steps as whole stacks on the card when the policy finds it faster
    /// (weights resident; each sequence's K/V rows kept on the card between steps).
    pub decode: bool,
    /// What the card keeps of each weight: its GGUF blocks, an f16 expansion, both, or
    /// `Auto` (f16 when `model_f16_bytes` fits the budget).
    pub weights: WeightFormat,
    /// The f16 expansion of every weight the model may put on the card (for `Auto`).
    pub model_f16_bytes: usize,
    /// Benchmark only: time the card and the bus alone (no host conversion or copy-out;
    /// outputs are left unwritten). Never set this for real work.
    #[doc(hidden)]
    pub bench_device_only: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            gpu_mem: None,
            out_half: false,
            chunks: 4,
            min_chunk: 128,
            max_chunk: 1024,
            fuse_feed_forward: true,
            attention: true,
            stack: true,
            profile_stack: false,
            graphs: false,
            untried: Untried::default(),
            decode: true,
            weights: WeightFormat::Gguf,
            model_f16_bytes: 0,
            flash_attention: 64,
            kernel_cache: None,
            bench_device_only: false,
        }
    }
}

/// Whole-stack paths written without a GPU at hand, each off until a GPU check has run it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Untried {
    /// A decode step's attention split over the keys (`decode_attention.rs`).
    pub split_attention: bool,
    /// Mixture-of-experts layers inside the stack (`stack_moe.rs`).
    pub moe: bool,
    /// Gated DeltaNet layers inside the stack (`stack_delta.rs`).
    pub delta_net: bool,
}

/// Memory kept free for activations, outputs and cuBLAS's workspace when `gpu_mem` is not given.
const RESERVE: usize = 3 << 30;

/// See the crate docs.
pub struct CudaEngine {
    opts: CudaOptions,
    gpu: OnceLock<Result<Gpu, String>>,
    weights: Mutex<HashMap<WeightKey, Arc<Prepared>>>,
    /// `opts.weights` made concrete (and why), once the budget is known.
    format: OnceLock<(WeightFormat, String)>,
    scratch: Mutex<pipeline::Scratch>,
    stack: Mutex<stack::Buffers>,
}

fn fail(what: impl Into<String>) -> EngineFailure {
    EngineFailure { engine: "cuda".into(), what: what.into() }
}

/// Runs `f`, turning a panic inside cudarc or the driver bindings into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Res<T>) -> Res<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("{what}: panicked: {}", msg.unwrap_or_default()))
        }
    }
}

impl CudaEngine {
    /// A new engine. Never fails and touches no driver: the device is brought up on first
    /// use (availability, prepare), and a failure there makes it [`Availability::Unavailable`].
    pub fn new(opts: CudaOptions) -> Self {
        let (profile, flash, graphs, untried) = (opts.profile_stack, opts.flash_attention, opts.graphs, opts.untried);
        CudaEngine {
            opts,
            gpu: OnceLock::new(),
            weights: Mutex::new(HashMap::new()),
            format: OnceLock::new(),
            scratch: Mutex::new(pipeline::Scratch::default()),
            stack: Mutex::new(stack::Buffers::new(profile, flash, graphs, untried)),
        }
    }

    fn gpu(&self) -> Res<&Gpu> {
        self.gpu
            .get_or_init(|| guarded("CUDA start-up", || Gpu::init(self.opts.device, self.opts.kernel_cache.as_deref())))
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Device name, compute capability, memory; `None` when unavailable.
    pub fn device_info(&self) -> Option<String> {
        let g = self.gpu().ok()?;
        Some(format!(
            "{} (compute {}.{}, {} SMs, {:.1} GiB, {:.1} GiB free at start, {:.0} GB/s)",
            g.name,
            g.cc.0,
            g.cc.1,
            g.sms,
            g.total_mem as f64 / (1u64 << 30) as f64,
            g.free_at_start as f64 / (1u64 << 30) as f64,
            g.mem_bandwidth / 1e9
        ))
    }

    /// Bytes of prepared weights the card should hold: `gpu_mem`, or free memory at
    /// start-up less a reserve. The caller gives this to the `PreparedCache` budget.
    pub fn memory_budget(&self) -> Option<usize> {
        let g = self.gpu().ok()?;
        Some(self.opts.gpu_mem.unwrap_or(g.free_at_start.saturating_sub(RESERVE)))
    }

    /// What the card keeps of each weight, `Auto` resolved against the budget, and why.
    pub fn weight_format(&self) -> &(WeightFormat, String) {
        self.format.get_or_init(|| {
            let (format, why) = self.opts.weights.resolve(self.opts.model_f16_bytes, self.memory_budget().unwrap_or(0));
            // `profile_stack` is the CLI's --verbose.
            if self.opts.profile_stack {
                eprintln!("cuda: weights kept as {why}");
            }
            (format, why)
        })
    }

    /// Where matmul time went since the last call of this (host work, waiting, the card).
    pub fn take_phase_times(&self) -> PhaseTimes {
        std::mem::take(&mut self.scratch.lock().unwrap_or_else(|e| e.into_inner()).times)
    }

    /// The card's time per phase of the last whole-stack call (milliseconds, in order), when
    /// `profile_stack` is set.
    pub fn stack_phases(&self) -> Vec<(&'static str, f64)> {
        self.stack.lock().unwrap_or_else(|e| e.into_inner()).phases.clone()
    }

    /// Decode steps captured as CUDA graphs and replayed so far, and why graphs are off
    /// (turned off, or a capture failed) when they are.
    pub fn graph_stats(&self) -> (usize, usize, Option<String>) {
        let b = self.stack.lock().unwrap_or_else(|e| e.into_inner());
        (b.graphs.captures, b.graphs.replays, b.graphs.off.clone())
    }

    /// GPU check only: one sequence's causal attention through the whole stack's kernels
    /// (`flash`: queries per block of the fused kernel where it fits, 0 = cuBLAS scores and values;
    /// `split`: a single query through the split decode kernel where it fits), queries at
    /// positions `pos0..`, cache rows from 0. Returns the card's milliseconds.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn stack_attention(&self, shape: &AttnShape, q: &[f32], pos0: usize, k_cache: &[f16], v_cache: &[f16], out: &mut [f32], flash: usize, split: bool) -> Result<f64, EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let _lock = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        guarded("attention", || stack_attention::attention_once(g, shape, q, pos0, k_cache, v_cache, out, flash, split)).map_err(fail)
    }

    /// Whether the whole stack's attention has a flash kernel for this shape here.
    pub fn has_flash_attention(&self, shape: &AttnShape) -> bool {
        self.gpu().is_ok_and(|g| stack_attention::flash_kernel(g, shape, 64).is_some())
    }

    /// Bytes of prepared weights held now.
    pub fn resident_bytes(&self) -> usize {
        self.weights.lock().unwrap_or_else(|e| e.into_inner()).values().map(|b| b.bytes()).sum()
    }

    /// Median seconds of a plain cuBLAS GEMM of `m × k` f16 weights by `n × k` f16
    /// activations (f32 out), all on the card: the ceiling the engine is measured against.
    pub fn bench_cublas(&self, m: usize, k: usize, n: usize, reps: usize) -> Result<f64, EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let _lock = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        guarded("cuBLAS benchmark", || {
            g.bind()?;
            let a = DevBuf::new(&g.ctx, m * k * 2)?;
            let b = DevBuf::new(&g.ctx, n * k * 2)?;
            let c = DevBuf::new(&g.ctx, n * m * 4)?;
            g.launch_elementwise("fill_f16", 0, a.ptr, m * k, Some(1))?;
            g.launch_elementwise("fill_f16", 0, b.ptr, n * k, Some(2))?;
            let (e0, e1) = (g.event(true)?, g.event(true)?);
            let mut times = Vec::with_capacity(reps);
            for r in 0..reps + 3 {
                e0.record(&g.s_comp).map_err(gpu::err("record"))?;
                g.gemm(a.ptr, b.ptr, c.ptr, m, k, n, false)?;
                e1.record(&g.s_comp).map_err(gpu::err("record"))?;
                let ms = e0.elapsed_ms(&e1).map_err(gpu::err("GEMM"))?;
                if r >= 3 {
                    times.push(ms as f64 / 1e3);
                }
            }
            g.s_comp.synchronize().map_err(gpu::err("sync"))?;
            times.sort_by(f64::total_cmp);
            Ok(times[times.len() / 2])
        })
        .map_err(fail)
    }

    /// Microseconds per call of decode matrix-vector kernel `kernel` (a name in
    /// [`kernels::NAMES`]: `mv_*` over f16 tokens, `mv_*_q8*` over 8-bit ones, `_s2`/`_s4`
    /// with 2 or 4 warps per row) for a `rows × cols` weight of type `ty` and `n` tokens:
    /// `reps` calls back to back, each on another copy of the weight (256 MiB in all, so the
    /// L2 cache cannot hold them), between two events.
    pub fn bench_matvec(&self, ty: GgmlType, rows: usize, cols: usize, n: usize, kernel: &str, reps: usize) -> Result<f64, EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let _lock = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        guarded("matrix-vector benchmark", || kernel_probe::bench(g, ty, rows, cols, n, kernel, reps)).map_err(fail)
    }

    /// GPU check only: `y = x · Wᵀ` (`[n, rows]`) by decode kernel `kernel` alone, for the raw
    /// blocks `w` of a `rows × cols` weight of type `ty` and `n` f32 tokens `x` (rounded to
    /// f16 on the way up, then to 8 bits on the card for the dp4a kernels).
    pub fn matvec_once(&self, ty: GgmlType, rows: usize, cols: usize, kernel: &str, w: &[u8], x: &[f32]) -> Result<Vec<f32>, EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let _lock = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        guarded("matrix-vector kernel", || kernel_probe::once(g, ty, rows, cols, kernel, w, x)).map_err(fail)
    }

    /// Pinned host↔device bandwidth in bytes/s (host to device, device to host) for `bytes` per copy.
    pub fn bench_bus(&self, bytes: usize) -> Result<(f64, f64), EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let _lock = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        guarded("bus benchmark", || {
            g.bind()?;
            let d = DevBuf::new(&g.ctx, bytes)?;
            let mut h = gpu::HostBuf::new(&g.ctx, bytes, false)?;
            let host = h.slice_mut::<u8>(bytes);
            host.fill(1);
            let mut best = (0f64, 0f64);
            for _ in 0..5 {
                let t = Instant::now();
                unsafe { cudarc::driver::result::memcpy_htod_async(d.ptr, &*host, g.s_comp.cu_stream()) }.map_err(gpu::err("h2d"))?;
                g.s_comp.synchronize().map_err(gpu::err("h2d"))?;
                best.0 = best.0.max(bytes as f64 / t.elapsed().as_secs_f64());
                let t = Instant::now();
                unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut *host, d.ptr, g.s_comp.cu_stream()) }.map_err(gpu::err("d2h"))?;
                g.s_comp.synchronize().map_err(gpu::err("d2h"))?;
                best.1 = best.1.max(bytes as f64 / t.elapsed().as_secs_f64());
            }
            Ok(best)
        })
        .map_err(fail)
    }
}

/// Whether the engine can take a matmul of this shape at all (device aside).
pub fn check_shape(s: &MatmulShape) -> Result<(), String> {
    kernels::dequant_kernel(s.ty)?;
    if !s.k.is_multiple_of(s.ty.block_size()) {
        return Err(format!("K={} is not a whole number of {} blocks", s.k, s.ty.name()));
    }
    let limit = i32::MAX as usize;
    if s.m > limit || s.k > limit || s.n > limit {
        return Err(format!("{}x{} by N={} exceeds cuBLAS's 32-bit dimensions", s.m, s.k, s.n));
    }
    Ok(())
}

impl MatrixEngine for CudaEngine {
    fn name(&self) -> &str {
        "cuda"
    }

    fn memory_budget(&self) -> Option<usize> {
        CudaEngine::memory_budget(self)
    }

    fn availability(&self) -> Availability {
        match self.gpu() {
            Ok(_) => Availability::Available,
            Err(why) => Availability::Unavailable(why),
        }
    }

    fn supports(&self, s: &MatmulShape) -> Result<(), String> {
        check_shape(s)?;
        if let Some(budget) = self.memory_budget() {
            if self.weight_format().0.bytes(s) > budget {
                return Err(format!("{}x{} {} is larger than the {budget}-byte GPU budget", s.m, s.k, s.ty.name()));
            }
        }
        Ok(())
    }

    fn prepared_bytes(&self, s: &MatmulShape) -> usize {
        self.weight_format().0.bytes(s)
    }

    fn throughput_hint(&self) -> (f64, f64) {
        // Sustained f16 tensor rate by generation; the byte rate is what a whole call
        // reaches end to end (host conversion and copies included), measured on the H100
        // at about 1e10 B/s for N = 256 and 2.5e10 for N = 4096, not the 55 GB/s of PCIe.
        match self.gpu().map(|g| g.cc.0) {
            Ok(9..) => (4e14, 1e10),
            Ok(8) => (1.5e14, 8e9),
            _ => (5e13, 5e9),
        }
    }

    fn prepare(&self, key: &WeightKey, w: &Weight, _bucket: usize) -> Result<usize, EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let shape = MatmulShape::of(w, 1);
        check_shape(&shape).map_err(fail)?;
        let buf = {
            // The compute stream is shared with matmuls: hold the scratch lock.
            let _lock = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            guarded("prepare", || Prepared::upload(g, w, self.weight_format().0)).map_err(|e| fail(format!("{}: {e}", w.name)))?
        };
        let bytes = buf.bytes();
        self.weights.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), Arc::new(buf));
        Ok(bytes)
    }

    fn evict(&self, key: &WeightKey, _bucket: usize) {
        // Matmuls hold their own Arc and synchronize before returning, so this frees nothing in use.
        self.weights.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn matmul(&self, keys: &[&WeightKey], weights: &[&Weight], _bucket: usize, x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        if keys.is_empty() || keys.len() != weights.len() || outs.len() != weights.len() {
            return Err(fail("a group needs one key and one output per weight"));
        }
        let k = weights[0].cols;
        if weights.iter().any(|w| w.cols != k) {
            return Err(fail("the weights of a group share their input width"));
        }
        let bufs = self.resident(keys, weights)?;
        let ws: Vec<DevWeight> = bufs.iter().map(|b| b.dev()).collect();
        self.run_pipeline(None, &ws, k, x, n, outs)
    }

    fn device_memory(&self) -> Option<usize> {
        // What the card had free when this process started, less what it has free now (the
        // driver's own context is not counted; another process's allocations would be).
        let g = self.gpu.get()?.as_ref().ok()?;
        let free = g.ctx.mem_get_info().ok()?.0;
        Some(g.free_at_start.saturating_sub(free))
    }

    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities {
            feed_forward: self.opts.fuse_feed_forward.then_some(self as &dyn FusedFeedForward),
            attention: Some(self),
            stack: Some(self),
        }
    }
}

impl AttentionOp for CudaEngine {
    fn supports_attention(&self, shape: &AttnShape) -> Result<(), String> {
        if !self.opts.attention {
            return Err("attention on the card is off".into());
        }
        attention::check(shape)
    }

    fn attention(&self, shape: &AttnShape, q: &[f32], positions: &[usize], k_cache: &[f16], v_cache: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        guarded("attention", || attention::run(g, &mut scratch.attention, shape, q, positions, k_cache, v_cache, out)).map_err(fail)
    }
}

impl DecoderStack for CudaEngine {
    fn supports_stack(&self, layers: &[Layer]) -> Result<(), String> {
        if !self.opts.stack {
            return Err("whole stacks on the card are off".into());
        }
        stack::check(layers, self.opts.untried)
    }

    fn streams_stack(&self, layers: &[Layer]) -> bool {
        // Streaming uploads every weight of a layer: for experts, all of them, where only a
        // few run. MoE models over the budget run op by op (only active experts cross).
        self.opts.stack && !stack::has_experts(layers)
    }

    fn decode_bandwidth(&self) -> Option<f64> {
        // What a GEMV over f16 weights sustains of the peak.
        self.gpu().ok().filter(|_| self.opts.stack && self.opts.decode).map(|g| 0.7 * g.mem_bandwidth)
    }

    fn stack(&self, input: &StackInput<'_>, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Result<(), EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let mut bufs = Vec::with_capacity(input.layers.len());
        let mut ptrs = Vec::with_capacity(input.layers.len());
        // Resident: the prepared buffers, held until the call is over. Streamed: none.
        for l in input.layers.iter().filter(|_| input.weights_resident) {
            let (roles, ws): (Vec<WeightRole>, Vec<&Weight>) = l.weights().unzip();
            let keys: Vec<WeightKey> = ws.iter().map(|w| WeightKey::of(w)).collect();
            let b = self.resident(&keys.iter().collect::<Vec<_>>(), &ws)?;
            ptrs.push(stack::LayerWeights(roles.into_iter().zip(b.iter().map(|b| b.dev())).collect()));
            bufs.push(b);
        }
        // One call at a time on the compute stream and cuBLAS handle.
        let _lock = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let mut buffers = self.stack.lock().unwrap_or_else(|e| e.into_inner());
        let weights = input.weights_resident.then_some(&ptrs[..]);
        let r = guarded("decoder stack", || stack::run(g, &mut buffers, input, weights, x, caches)).map_err(fail);
        drop(bufs);
        r
    }
}

impl FusedFeedForward for CudaEngine {
    fn feed_forward(&self, ffn: &FeedForward<'_>, _bucket: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), EngineFailure> {
        let (gate, up, down) = (ffn.gate, ffn.up, ffn.down);
        let (k, ff) = (gate.cols, gate.rows);
        if up.rows != ff || up.cols != k || down.cols != ff {
            return Err(fail(format!("feed-forward shapes do not chain: gate {ff}x{k}, up {}x{}, down {}x{}", up.rows, up.cols, down.rows, down.cols)));
        }
        let keys = [gate, up, down].map(WeightKey::of);
        let bufs = self.resident(&keys.each_ref(), &[gate, up, down])?;
        let kernel = kernels::activation_kernel(ffn.activation)
            .filter(|_| ffn.biases.is_none())
            .ok_or_else(|| fail(format!("no fused kernel for {:?} blocks with biases {}", ffn.activation, ffn.biases.is_some())))?;
        self.run_pipeline(Some((bufs[0].dev(), bufs[1].dev(), kernel)), &[bufs[2].dev()], k, x, n, &mut [out])
    }
}

impl CudaEngine {
    /// The prepared buffers of `weights`, checked against their shapes. The caller holds
    /// these references until its call has synchronized, so an eviction meanwhile frees nothing in use.
    fn resident(&self, keys: &[&WeightKey], weights: &[&Weight]) -> Result<Vec<Arc<Prepared>>, EngineFailure> {
        let map = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .zip(weights)
            .map(|(key, w)| {
                let b = map.get(*key).ok_or_else(|| fail(format!("{} is not prepared", key.tensor)))?;
                if !b.matches(w) {
                    return Err(fail(format!("{}: prepared as another type or shape than {} {}x{}", w.name, w.ty.name(), w.rows, w.cols)));
                }
                Ok(b.clone())
            })
            .collect()
    }

    /// A group (or a feed-forward block, `ffn`: gate, up and their activation before the one
    /// weight, down) over host activations: up to MV_MAX_N tokens by the raw blocks'
    /// matrix-vector kernels when every weight keeps them (no block then), else the pipeline
    /// of GEMMs, over f16 expansions made first for the weights that keep none.
    fn run_pipeline(
        &self,
        ffn: Option<(DevWeight, DevWeight, &'static str)>,
        ws: &[DevWeight],
        k: usize,
        x: &[f32],
        n: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<(), EngineFailure> {
        let g = self.gpu().map_err(fail)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if ffn.is_none() && n <= kernels::MV_MAX_N && ws.iter().all(|w| w.raw != 0) {
            return guarded("matrix-vector", || weights::matvec_host(g, &mut scratch, ws, k, x, n, outs)).map_err(fail);
        }
        let o = &self.opts;
        let plan = pipeline::Plan {
            chunks: o.chunks,
            min_chunk: o.min_chunk,
            max_chunk: o.max_chunk,
            out_half: o.out_half,
            device_only: o.bench_device_only,
        };
        guarded("matmul", || {
            g.bind()?;
            // Expansions side by side in one scratch buffer, sized before the first is made.
            let front = ffn.map_or(vec![], |(gate, up, _)| vec![gate, up]);
            let all: Vec<&DevWeight> = front.iter().chain(ws).collect();
            let need: usize = all.iter().map(|w| w.expansion_bytes()).sum();
            if need > 0 {
                gpu::ensure_dev(&g.ctx, &mut scratch.expand, need)?;
            }
            let mut offset = 0;
            let mut f16 = Vec::with_capacity(all.len());
            for w in &all {
                f16.push(w.f16_in(g, &mut scratch.expand, offset)?);
                offset += w.expansion_bytes();
            }
            let stage = ffn.map(|(gate, _, kernel)| pipeline::FfnStage { gate: f16[0], up: f16[1], ff: gate.rows, kernel });
            let list: Vec<(u64, usize)> = f16[front.len()..].iter().zip(ws).map(|(&p, w)| (p, w.rows)).collect();
            pipeline::run(g, &mut scratch, stage, &list, k, x, n, outs, &plan)
        })
        .map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quant::GgmlType;

    #[test]
    fn construction_never_fails_and_unavailability_has_a_reason() {
        let e = CudaEngine::new(CudaOptions::default());
        assert_eq!(e.name(), "cuda");
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        match e.availability() {
            // A GPU machine may run this test too.
            Availability::Available => assert!(driver && e.device_info().is_some()),
            Availability::Unavailable(why) => {
                assert!(!why.is_empty());
                if !driver {
                    assert!(why.contains("libcuda"), "{why}");
                }
                assert!(e.device_info().is_none() && e.memory_budget().is_none());
                let s = MatmulShape { m: 64, k: 256, n: 64, ty: GgmlType::Q4_K };
                assert!(e.supports(&s).is_ok(), "shape support does not depend on the device");
                let (mut o, x) = (vec![0f32; 64 * 64], vec![0f32; 64 * 256]);
                let key = WeightKey { tensor: "w".into(), file: "f".into() };
                let r = e.matmul(&[&key], &[], 0, &x, 64, &mut [&mut o]);
                assert!(r.is_err_and(|f| f.engine == "cuda" && !f.what.is_empty()));
                assert!(e.bench_cublas(64, 64, 64, 1).is_err());
            }
        }
        // Asking again gives the same answer without retrying the start-up.
        assert_eq!(e.availability(), e.availability());
    }

    #[test]
    fn shapes_and_formats() {
        let s = |ty, k| MatmulShape { m: 4096, k, n: 256, ty };
        for ty in GgmlType::ALL {
            let ok = check_shape(&s(ty, 4096)).is_ok();
            assert_eq!(ok, !matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K), "{}", ty.name());
        }
        assert!(check_shape(&s(GgmlType::Q4_K, 4000)).is_err());
        assert!(check_shape(&s(GgmlType::F16, 333)).is_ok());
    }
}
