//! The device side: context, streams, cuBLAS handle, compiled kernels, and owned
//! device and pinned host buffers. Every call returns `Result<_, String>`; nothing here
//! panics on a CUDA error.
//!
//! cudarc's safe slices track cross-stream use with events and assert on lengths; we
//! order our three streams ourselves with explicit events, so buffers are raw
//! allocations with RAII wrappers and copies go through `cudarc::driver::result`.

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{result as drv, sys, CudaContext, CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use engine::matrix::disk_cache::{content_hash, DiskCache, Lookup};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) type Res<T> = Result<T, String>;

pub(crate) fn err(what: &str) -> impl Fn(drv::DriverError) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

/// A size as a kernel's `int` argument.
pub(crate) fn int(v: usize) -> Res<i32> {
    i32::try_from(v).map_err(|_| format!("{v} exceeds the kernels' int range"))
}

/// One kernel argument.
pub(crate) enum KArg {
    /// A device pointer.
    P(u64),
    /// An int.
    I(i32),
    /// A float.
    F(f32),
}

/// A batched GEMM operand: first element, leading dimension, elements between batch members.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub(crate) ptr: u64,
    pub(crate) ld: usize,
    pub(crate) stride: usize,
}

/// Device memory (cuMemAlloc), freed on drop with the context made current first.
pub(crate) struct DevBuf {
    ctx: Arc<CudaContext>,
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) bytes: usize,
}

impl DevBuf {
    pub(crate) fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Res<Self> {
        ctx.bind_to_thread().map_err(err("bind context"))?;
        let ptr = unsafe { drv::malloc_sync(bytes.max(1)) }.map_err(|e| format!("cuMemAlloc of {bytes} bytes: {e:?}"))?;
        Ok(DevBuf { ctx: ctx.clone(), ptr, bytes })
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = unsafe { drv::free_sync(self.ptr) };
    }
}

/// Page-locked host memory (cuMemHostAlloc); write-combined for buffers the host only writes.
pub(crate) struct HostBuf {
    ctx: Arc<CudaContext>,
    ptr: *mut u8,
    pub(crate) bytes: usize,
}

// SAFETY: plain memory owned by this value; access is serialized by the engine's lock.
unsafe impl Send for HostBuf {}
unsafe impl Sync for HostBuf {}

impl HostBuf {
    pub(crate) fn new(ctx: &Arc<CudaContext>, bytes: usize, write_combined: bool) -> Res<Self> {
        ctx.bind_to_thread().map_err(err("bind context"))?;
        let flags = if write_combined { sys::CU_MEMHOSTALLOC_WRITECOMBINED } else { 0 };
        let ptr = unsafe { drv::malloc_host(bytes.max(1), flags) }
            .map_err(|e| format!("cuMemHostAlloc of {bytes} bytes: {e:?}"))? as *mut u8;
        Ok(HostBuf { ctx: ctx.clone(), ptr, bytes })
    }

    /// The first `len` elements as `T` (callers keep `len * size_of::<T>() <= bytes`).
    pub(crate) fn slice_mut<T: Copy>(&mut self, len: usize) -> &mut [T] {
        assert!(len * std::mem::size_of::<T>() <= self.bytes, "pinned buffer overrun");
        // SAFETY: page-aligned allocation of `bytes`, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut T, len) }
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = unsafe { drv::free_host(self.ptr as *mut _) };
    }
}

/// Grow-only buffer slot: reallocated (with headroom) only when a call needs more.
pub(crate) fn ensure_dev(ctx: &Arc<CudaContext>, slot: &mut Option<DevBuf>, bytes: usize) -> Res<sys::CUdeviceptr> {
    if slot.as_ref().is_none_or(|b| b.bytes < bytes) {
        *slot = None; // free first: the old one may be most of what is left
        *slot = Some(DevBuf::new(ctx, bytes + bytes / 4)?);
    }
    Ok(slot.as_ref().expect("set above").ptr)
}

pub(crate) fn ensure_host<'a>(ctx: &Arc<CudaContext>, slot: &'a mut Option<HostBuf>, bytes: usize, wc: bool) -> Res<&'a mut HostBuf> {
    if slot.as_ref().is_none_or(|b| b.bytes < bytes) {
        *slot = None;
        *slot = Some(HostBuf::new(ctx, bytes + bytes / 4, wc)?);
    }
    Ok(slot.as_mut().expect("set above"))
}

/// A cuBLAS handle bound to one stream.
pub(crate) struct Blas {
    ctx: Arc<CudaContext>,
    handle: blas_sys::cublasHandle_t,
}

// SAFETY: the handle is used under the engine's lock only.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = unsafe { blas::destroy_handle(self.handle) };
    }
}

/// Bytes of cuBLAS workspace.
const CUBLAS_WORKSPACE: usize = 32 << 20;

/// Bumped when the way kernels are compiled changes (the source itself is part of the key).
const PTX_FORMAT: u32 = 1;

/// NVRTC: the kernels' source to PTX text for one virtual architecture.
fn nvrtc_compile(arch: &str) -> Res<String> {
    let opts = cudarc::nvrtc::CompileOptions { options: vec![format!("--gpu-architecture={arch}")], ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(crate::kernels::SOURCE, opts).map(|p| p.to_src()).map_err(|e| e.to_string())
}

/// The kernels' PTX for `arch`: from `cache` when it holds a valid entry for this source,
/// architecture and format (the cache checks its checksums), else `compile`d and stored.
/// Returns the PTX and whether it came from the cache.
pub(crate) fn kernels_ptx(arch: &str, cache: Option<&DiskCache>, compile: impl Fn(&str) -> Res<String>) -> Res<(String, bool)> {
    let key = format!("cuda-ptx-v{PTX_FORMAT}-{arch}-{:016x}", content_hash(crate::kernels::SOURCE.as_bytes()));
    if let Some(disk) = cache {
        match disk.get(&key) {
            Lookup::Hit(bytes) => match String::from_utf8(bytes) {
                Ok(text) if text.contains(".entry") => return Ok((text, true)),
                _ => eprintln!("warning: kernel cache: {key} is not PTX; recompiling"),
            },
            Lookup::Rejected(why) => eprintln!("warning: kernel cache: {why}; recompiling"),
            _ => {}
        }
    }
    let ptx = compile(arch)?;
    if let Some(disk) = cache {
        if let Err(e) = disk.put(&key, ptx.as_bytes()) {
            eprintln!("warning: kernel cache: cannot write {key}: {e}");
        }
    }
    Ok((ptx, false))
}

/// Everything that exists once a device is up.
pub(crate) struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    /// Host → device copies.
    pub(crate) s_h2d: Arc<CudaStream>,
    /// Kernels and GEMMs.
    pub(crate) s_comp: Arc<CudaStream>,
    /// Device → host copies.
    pub(crate) s_d2h: Arc<CudaStream>,
    pub(crate) blas: Blas,
    /// cuBLAS's workspace (set on the handle; dropped after it, fields drop in order).
    _workspace: DevBuf,
    kernels: HashMap<&'static str, CudaFunction>,
    pub(crate) name: String,
    pub(crate) cc: (i32, i32),
    pub(crate) sms: u32,
    pub(crate) total_mem: usize,
    pub(crate) free_at_start: usize,
    /// Peak memory bandwidth, bytes/s (memory clock × bus width, or by generation).
    pub(crate) mem_bandwidth: f64,
    /// Launches written down while a decode step is taped (`graph.rs`).
    pub(crate) tape: crate::graph::Tape,
}

impl Gpu {
    /// Bring up device `ordinal`: context, streams, cuBLAS, and the NVRTC-compiled kernels.
    pub(crate) fn init(ordinal: usize, kernel_cache: Option<&std::path::Path>) -> Res<Gpu> {
        // Look before cudarc's loader would panic on a missing library.
        if !unsafe { sys::is_culib_present() } {
            return Err("no NVIDIA driver: libcuda.so was not found on the library path".into());
        }
        drv::init().map_err(|e| format!("cuInit failed (driver present, no usable GPU?): {e:?}"))?;
        let count = drv::device::get_count().map_err(err("cuDeviceGetCount"))?;
        if count <= 0 {
            return Err("the NVIDIA driver reports no CUDA device".into());
        }
        if ordinal >= count as usize {
            return Err(format!("CUDA device {ordinal} requested, {count} present"));
        }
        if !unsafe { blas_sys::is_culib_present() } {
            return Err("cuBLAS not found (libcublas.so or .so.12 on the library path; CUDA 13 ships only .so.13: link it as libcublas.so)".into());
        }
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err("NVRTC not found (libnvrtc.so or .so.12 on the library path; CUDA 13 ships only .so.13: link it as libnvrtc.so)".into());
        }
        let ctx = CudaContext::new(ordinal).map_err(err("create context"))?;
        // SAFETY: no slice of cudarc's is ever made; our buffers are ordered by our own events.
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx.compute_capability().map_err(err("compute capability"))?;
        if cc.0 < 7 {
            return Err(format!("compute capability {}.{} has no tensor cores (7.0 or newer needed)", cc.0, cc.1));
        }
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(err("SM count"))? as u32;
        let total_mem = ctx.total_mem().map_err(err("total memory"))?;
        let attr = |a| ctx.attribute(a).ok().filter(|&v| v > 0).map(|v| v as f64);
        let mem_bandwidth = match (
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE),
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH),
        ) {
            // kHz, double data rate, bits.
            (Some(khz), Some(bits)) => 2.0 * khz * 1e3 * bits / 8.0,
            _ => [5e11, 9e11, 1.5e12, 3e12][(cc.0 - 7).clamp(0, 3) as usize],
        };
        let free_at_start = ctx.mem_get_info().map_err(err("free memory"))?.0;
        let s_h2d = ctx.new_stream().map_err(err("create stream"))?;
        let s_comp = ctx.new_stream().map_err(err("create stream"))?;
        let s_d2h = ctx.new_stream().map_err(err("create stream"))?;
        let handle = blas::create_handle().map_err(|e| format!("cublasCreate: {e:?}"))?;
        let blas_h = Blas { ctx: ctx.clone(), handle };
        unsafe { blas::set_stream(handle, s_comp.cu_stream() as _) }.map_err(|e| format!("cublasSetStream: {e:?}"))?;
        // A workspace of our own (the size NVIDIA suggests for Hopper): without one, some GEMM
        // shapes were 10x slower inside a stream of work than alone (N = 512 Q/K/V on the H200).
        let workspace = DevBuf::new(&ctx, CUBLAS_WORKSPACE)?;
        let status = unsafe { blas_sys::cublasSetWorkspace_v2(handle, workspace.ptr as *mut _, CUBLAS_WORKSPACE) };
        if status != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(format!("cublasSetWorkspace: {status:?}"));
        }
        // The card's own architecture; an NVRTC older than the card may not know it, and
        // compute_70 PTX (nothing newer is used) is JIT-compiled by the driver for any card.
        let disk = kernel_cache.and_then(|d| DiskCache::new(d).map_err(|e| eprintln!("warning: kernel cache {}: {e}", d.display())).ok());
        let (ptx, _from_disk) = kernels_ptx(&format!("compute_{}{}", cc.0, cc.1), disk.as_ref(), nvrtc_compile)
            .or_else(|_| kernels_ptx("compute_70", disk.as_ref(), nvrtc_compile))
            .map_err(|e| format!("NVRTC could not compile the kernels: {e}"))?;
        let ptx = cudarc::nvrtc::Ptx::from_src(ptx);
        let module = ctx.load_module(ptx).map_err(err("load module"))?;
        let mut kernels = HashMap::new();
        for k in crate::kernels::NAMES {
            kernels.insert(k, module.load_function(k).map_err(err(k))?);
        }
        Ok(Gpu { ctx, s_h2d, s_comp, s_d2h, blas: blas_h, _workspace: workspace, kernels, name, cc, sms, total_mem, free_at_start, mem_bandwidth, tape: Default::default() })
    }

    pub(crate) fn bind(&self) -> Res<()> {
        self.ctx.bind_to_thread().map_err(err("bind context"))
    }

    pub(crate) fn event(&self, timing: bool) -> Res<CudaEvent> {
        let flags = if timing { sys::CUevent_flags::CU_EVENT_DEFAULT } else { sys::CUevent_flags::CU_EVENT_DISABLE_TIMING };
        self.ctx.new_event(Some(flags)).map_err(err("create event"))
    }

    /// Launch a grid-stride elementwise kernel over `n` elements on the compute stream.
    pub(crate) fn launch_elementwise(&self, kernel: &str, src: u64, dst: u64, n: usize, seed: Option<u32>) -> Res<()> {
        self.launch_elementwise_on(&self.s_comp, kernel, src, dst, n, seed)
    }

    /// [`Gpu::launch_elementwise`] on another stream.
    pub(crate) fn launch_elementwise_on(&self, stream: &Arc<CudaStream>, kernel: &str, src: u64, dst: u64, n: usize, seed: Option<u32>) -> Res<()> {
        let f = self.kernels.get(kernel).ok_or_else(|| format!("kernel {kernel} not loaded"))?;
        if self.tape.note(kernel, [stream.cu_stream() as u64, src, dst, n as u64, seed.map_or(u64::MAX, u64::from)]) {
            return Ok(());
        }
        let blocks = n.div_ceil(256).clamp(1, self.sms as usize * 32) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let n = n as i64;
        let mut b = stream.launch_builder(f);
        match seed {
            None => b.arg(&src).arg(&dst).arg(&n),
            Some(ref s) => b.arg(&dst).arg(&n).arg(s),
        };
        // SAFETY: the arguments match the kernel signatures in kernels.rs.
        unsafe { b.launch(cfg) }.map_err(err(kernel))?;
        Ok(())
    }

    /// `mid = f16(act(gate) ⊙ up)` over `n` elements on the compute stream.
    pub(crate) fn launch_activation(&self, kernel: &str, gate: u64, up: u64, mid: u64, n: usize) -> Res<()> {
        let f = self.kernels.get(kernel).ok_or_else(|| format!("kernel {kernel} not loaded"))?;
        if self.tape.note(kernel, [gate, up, mid, n as u64]) {
            return Ok(());
        }
        let blocks = n.div_ceil(256).clamp(1, self.sms as usize * 32) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let n = n as i64;
        let mut b = self.s_comp.launch_builder(f);
        b.arg(&gate).arg(&up).arg(&mid).arg(&n);
        // SAFETY: the arguments match ffn_silu / ffn_gelu in kernels.rs.
        unsafe { b.launch(cfg) }.map_err(err(kernel))?;
        Ok(())
    }

    /// An attention kernel: `ptrs` = q, k, v, positions, out; `ints` = n_head, n_kv, d, dv,
    /// first, window (and for `attn_tiled` n, tokens per block); grid (token blocks, KV heads).
    pub(crate) fn launch_attention(&self, kernel: &str, ptrs: [u64; 5], ints: &[i32], grid: (u32, u32), threads: u32, smem: u32) -> Res<()> {
        let f = self.kernels.get(kernel).ok_or_else(|| format!("kernel {kernel} not loaded"))?;
        let shape = [grid.0 as u64, grid.1 as u64, threads as u64, smem as u64];
        if self.tape.note(kernel, shape.into_iter().chain(ptrs).chain(ints.iter().map(|&i| i as u64))) {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem };
        let mut b = self.s_comp.launch_builder(f);
        for p in &ptrs {
            b.arg(p);
        }
        for i in ints {
            b.arg(i);
        }
        // SAFETY: the arguments match the kernel's signature in kernels.rs.
        unsafe { b.launch(cfg) }.map_err(err(kernel))?;
        Ok(())
    }

    /// Launch `kernel` on the compute stream with `grid` blocks of `threads` and these
    /// arguments (device pointers as `P`, 0 for an absent optional input).
    pub(crate) fn launch(&self, kernel: &str, grid: u32, threads: u32, args: &[KArg]) -> Res<()> {
        self.launch_grid(kernel, (grid, 1), threads, args)
    }

    /// [`Gpu::launch`] over a two-dimensional grid.
    pub(crate) fn launch_grid(&self, kernel: &str, grid: (u32, u32), threads: u32, args: &[KArg]) -> Res<()> {
        let f = self.kernels.get(kernel).ok_or_else(|| format!("kernel {kernel} not loaded"))?;
        let arg_word = |a: &KArg| match *a {
            KArg::P(p) => p,
            KArg::I(i) => i as u64,
            KArg::F(x) => x.to_bits() as u64,
        };
        if self.tape.note(kernel, [grid.0 as u64, grid.1 as u64, threads as u64].into_iter().chain(args.iter().map(arg_word))) {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: (grid.0.max(1), grid.1.max(1), 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.s_comp.launch_builder(f);
        for a in args {
            match a {
                KArg::P(p) => b.arg(p),
                KArg::I(i) => b.arg(i),
                KArg::F(x) => b.arg(x),
            };
        }
        // SAFETY: callers pass the arguments of the kernel's signature in kernels.rs, in order.
        unsafe { b.launch(cfg) }.map_err(err(kernel))?;
        Ok(())
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ` from a weight's raw blocks (`kernel`: kernels::gemv_kernel),
    /// `x` f16, `y` f32, `n <= MV_MAX_N`, on the compute stream: four rows per block of 128.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemv(&self, kernel: &str, w: u64, x: u64, y: u64, rows: usize, cols: usize, n: usize) -> Res<()> {
        let args = [KArg::P(w), KArg::P(x), KArg::P(y), KArg::I(int(rows)?), KArg::I(int(cols)?), KArg::I(int(n)?)];
        self.launch(kernel, int(rows.div_ceil(4))? as u32, 128, &args)
    }

    /// `n * cols` f16 tokens at `x` as 8-bit integers `q` with one f32 scale per 32 (`d`),
    /// for the dp4a matrix-vector kernels; `cols` a multiple of 32.
    pub(crate) fn quantize_q8(&self, x: u64, q: u64, d: u64, n: usize, cols: usize) -> Res<()> {
        let blocks = n * cols / 32;
        let args = [KArg::P(x), KArg::P(q), KArg::P(d), KArg::I(int(blocks)?)];
        self.launch("quantize_q8_32", int(blocks.div_ceil(4))? as u32, 128, &args)
    }

    /// [`Gpu::gemv`] over 8-bit tokens (`q`, scales `d`: [`Gpu::quantize_q8`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemv_q8(&self, kernel: &str, w: u64, q: u64, d: u64, y: u64, rows: usize, cols: usize, n: usize) -> Res<()> {
        let args = [KArg::P(w), KArg::P(q), KArg::P(d), KArg::P(y), KArg::I(int(rows)?), KArg::I(int(cols)?), KArg::I(int(n)?)];
        // S warps of the 128-thread block per row where the kernel has that form.
        match crate::matvec::split_kernel(kernel) {
            Some((name, split)) => self.launch(name, int(rows.div_ceil(4 / split))? as u32, 128, &args),
            None => self.launch(kernel, int(rows.div_ceil(4))? as u32, 128, &args),
        }
    }

    /// `C[n, m] = B[n, k] · A[m, k]ᵀ` on the compute stream: A, B f16, f32 accumulation,
    /// C f32 (or f16 when `c_half`). Row-major `[n, m]` is column-major `m × n`, so this is
    /// cuBLAS's TN case with A read transposed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(&self, a: u64, b: u64, c: u64, m: usize, k: usize, n: usize, c_half: bool) -> Res<()> {
        if self.tape.note("gemm", [a, b, c, m as u64, k as u64, n as u64, c_half as u64]) {
            return Ok(());
        }
        let (alpha, beta) = (1f32, 0f32);
        let ctype = if c_half { blas_sys::cudaDataType::CUDA_R_16F } else { blas_sys::cudaDataType::CUDA_R_32F };
        let dim = |v: usize| i32::try_from(v).map_err(|_| format!("dimension {v} exceeds cuBLAS's int range"));
        unsafe {
            blas::gemm_ex(
                self.blas.handle,
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                dim(m)?,
                dim(n)?,
                dim(k)?,
                &alpha as *const f32 as *const _,
                a as *const _,
                blas_sys::cudaDataType::CUDA_R_16F,
                dim(k)?,
                b as *const _,
                blas_sys::cudaDataType::CUDA_R_16F,
                dim(k)?,
                &beta as *const f32 as *const _,
                c as *mut _,
                ctype,
                dim(m)?,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| format!("cublasGemmEx m={m} n={n} k={k}: {e:?}"))
    }

    /// `batch` GEMMs on the compute stream, column-major as cuBLAS sees them:
    /// `C_i (m × n) = op(A_i) (m × k) · B_i (k × n)` with `op` = transpose when `trans_a`;
    /// A and B f16, f32 accumulation, C f32 or f16 (`c_half`); operand `i` of each starts
    /// `i * stride` elements after the first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_batched(&self, trans_a: bool, a: Strided, b: Strided, c: Strided, (m, n, k): (usize, usize, usize), batch: usize, c_half: bool) -> Res<()> {
        let operands = [a, b, c].into_iter().flat_map(|s| [s.ptr, s.ld as u64, s.stride as u64]);
        if self.tape.note("gemm_batched", operands.chain([trans_a as u64, m as u64, n as u64, k as u64, batch as u64, c_half as u64])) {
            return Ok(());
        }
        let (alpha, beta) = (1f32, 0f32);
        let f16 = blas_sys::cudaDataType::CUDA_R_16F;
        let ctype = if c_half { f16 } else { blas_sys::cudaDataType::CUDA_R_32F };
        let dim = |v: usize| i32::try_from(v).map_err(|_| format!("dimension {v} exceeds cuBLAS's int range"));
        let op = |t: bool| if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N };
        unsafe {
            blas::gemm_strided_batched_ex(
                self.blas.handle,
                op(trans_a),
                op(false),
                dim(m)?,
                dim(n)?,
                dim(k)?,
                &alpha as *const f32 as *const _,
                a.ptr as *const _,
                f16,
                dim(a.ld)?,
                a.stride as i64,
                b.ptr as *const _,
                f16,
                dim(b.ld)?,
                b.stride as i64,
                &beta as *const f32 as *const _,
                c.ptr as *mut _,
                ctype,
                dim(c.ld)?,
                c.stride as i64,
                dim(batch)?,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| format!("cublasGemmStridedBatchedEx m={m} n={n} k={k} batch={batch}: {e:?}"))
    }

    /// Wait for all three streams (after an error, before buffers are reused).
    pub(crate) fn sync_all(&self) {
        let _ = self.s_h2d.synchronize();
        let _ = self.s_comp.synchronize();
        let _ = self.s_d2h.synchronize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn compiled_kernels_are_kept_on_disk_and_a_damaged_entry_is_rebuilt() {
        let dir = std::env::temp_dir().join(format!("tandem-ptx-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let disk = DiskCache::new(&dir).unwrap();
        let compiles = Cell::new(0);
        let compile = |arch: &str| {
            compiles.set(compiles.get() + 1);
            Ok(format!("// {arch}\n.entry deq_q4_0 {{}}\n"))
        };
        let (first, cached) = kernels_ptx("compute_90", Some(&disk), compile).unwrap();
        assert!(!cached && compiles.get() == 1);
        let (again, cached) = kernels_ptx("compute_90", Some(&disk), compile).unwrap();
        assert!(cached && again == first && compiles.get() == 1, "the second start-up compiles nothing");
        // Another architecture is another entry.
        assert!(!kernels_ptx("compute_70", Some(&disk), compile).unwrap().1);
        assert_eq!(compiles.get(), 2);
        // Damage every entry: each is detected and rebuilt, never loaded.
        for f in std::fs::read_dir(&dir).unwrap() {
            let path = f.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x55;
            std::fs::write(&path, bytes).unwrap();
        }
        let (rebuilt, cached) = kernels_ptx("compute_90", Some(&disk), compile).unwrap();
        assert!(!cached && rebuilt == first && compiles.get() == 3);
        assert!(kernels_ptx("compute_90", Some(&disk), compile).unwrap().1, "stored again");
        // No cache: always compiled; a compile error is an error.
        assert!(!kernels_ptx("compute_90", None, compile).unwrap().1);
        assert!(kernels_ptx("compute_90", None, |_| Err("nvrtc: bad".to_string())).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
