//! One matmul group on the card, pipelined over token chunks across three streams:
//!
//! ```text
//! host (all cores): convert the pieces of chunk c, f32 → f16, into pinned memory;
//!                   whoever converts the chunk's last piece enqueues:
//!   h2d:  copy chunk c ─▶ event in[c]
//!   comp: wait in[c]; one GEMM per weight i ─▶ event gemm[c,i]
//!   d2h:  wait gemm[c,i]; copy outputs ─▶ event out[c,i]
//! host (all cores): wait out[c,i]; copy pinned → the caller's slice, in chunk order
//! ```
//!
//! The input crosses the bus once per group (Q/K/V share it) and in f16. All host work
//! of a call is one parallel region: on the lent VM each wake-up of the thread pool cost
//! about 100 µs.

use crate::gpu::{ensure_dev, ensure_host, err, Gpu, HostBuf, Res};
use cudarc::driver::{result as drv, CudaEvent};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the time of the calls since the last reset went.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    /// Matmul calls.
    pub calls: u64,
    /// Host: from the call's start until the last chunk is enqueued (conversion, API calls).
    pub convert_enqueue: Duration,
    /// Host: from then until the outputs are copied out.
    pub wait_copy: Duration,
    /// Card: first upload start to last download end.
    pub device: Duration,
}

/// Buffers and events reused across calls (grown on demand, never shrunk).
#[derive(Default)]
pub(crate) struct Scratch {
    d_x: Option<crate::gpu::DevBuf>,
    /// Gate, up (f32) and their activated product (f16) of one chunk of a feed-forward block.
    d_ffn: Option<crate::gpu::DevBuf>,
    d_out: Option<crate::gpu::DevBuf>,
    h_in: Option<HostBuf>,
    h_out: Option<HostBuf>,
    events: Vec<CudaEvent>,
    span: Option<(CudaEvent, CudaEvent)>,
    /// Device-only benchmarks: pinned input elements holding real (converted) values.
    primed: usize,
    pub(crate) times: PhaseTimes,
    /// Attention's buffers (it shares the compute stream, so it runs under the same lock).
    pub(crate) attention: crate::attention::Buffers,
    /// f16 expansions of weights kept only as raw blocks, made per call.
    pub(crate) expand: Option<crate::gpu::DevBuf>,
    /// Decode steps' f16 inputs and f32 outputs (the matrix-vector kernels).
    pub(crate) mv_x: Option<crate::gpu::DevBuf>,
    pub(crate) mv_out: Option<crate::gpu::DevBuf>,
}

/// How calls are cut into chunks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Chunks per call (1 = no overlap of transfers with each other or compute).
    pub chunks: usize,
    /// Smallest chunk in tokens (small GEMMs run far below the card's rate).
    pub min_chunk: usize,
    /// Largest chunk in tokens.
    pub max_chunk: usize,
    /// Outputs cross in f16.
    pub out_half: bool,
    /// Benchmark only: skip the host conversion and copy-out (outputs are left unwritten),
    /// to time what the card and the bus alone would take with pinned f16 buffers.
    pub device_only: bool,
}

/// The front of a fused feed-forward block: gate and up GEMMs and the activation, whose
/// f16 product (`[len, ff]`, never leaving the card) is the input of the call's one weight (down).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FfnStage {
    /// Prepared f16 gate weight `[ff, k]`.
    pub gate: u64,
    /// Prepared f16 up weight `[ff, k]`.
    pub up: u64,
    /// Feed-forward width.
    pub ff: usize,
    /// Activation kernel (`kernels::activation_kernel`).
    pub kernel: &'static str,
}

/// Token chunks `(start, len)` covering `0..n`.
pub(crate) fn chunks(n: usize, p: &Plan) -> Vec<(usize, usize)> {
    let size = n.div_ceil(p.chunks.max(1)).next_multiple_of(64).clamp(p.min_chunk.max(1), p.max_chunk.max(p.min_chunk).max(1));
    (0..n).step_by(size).map(|c0| (c0, size.min(n - c0))).collect()
}

/// Elements per piece of parallel host work: large enough to amortize scheduling.
const PIECE: usize = 1 << 16;

/// A raw pointer shared by the pieces of a parallel loop, each writing a disjoint range.
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
// SAFETY: pieces write disjoint ranges and the loop ends before the owner is used again.
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    /// The element at `i` (a method, so closures capture the wrapper, not the raw field).
    fn at(self, i: usize) -> *mut T {
        // SAFETY: callers stay inside the allocation.
        unsafe { self.0.add(i) }
    }
}

/// Split the rows (of `row` elements) of each chunk into pieces of about PIECE elements,
/// at most `most` per chunk.
fn pieces(plan: &[(usize, usize)], row: usize, most: usize) -> Vec<(usize, usize, usize)> {
    plan.iter()
        .enumerate()
        .flat_map(|(c, &(c0, len))| {
            let rows = (PIECE / row.max(1)).max(len.div_ceil(most.max(1))).max(1);
            (c0..c0 + len).step_by(rows).map(move |r0| (c, r0, (r0 + rows).min(c0 + len)))
        })
        .collect()
}

/// `outs[i][t * m_i + r] = Σ_k x[t, k] · W_i[r, k]` for f16 weights resident at `weights[i] = (ptr, m_i)`;
/// with `ffn`, the weights (down) multiply the stage's activated product instead of x.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    gpu: &Gpu,
    s: &mut Scratch,
    ffn: Option<FfnStage>,
    weights: &[(u64, usize)],
    k: usize,
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    plan: &Plan,
) -> Res<()> {
    if x.len() < n * k || outs.iter().zip(weights).any(|(o, w)| o.len() < n * w.1) {
        return Err(format!("buffer lengths do not match n={n} k={k}"));
    }
    if n == 0 {
        return Ok(());
    }
    gpu.bind()?;
    if ffn.is_some_and(|f| weights.len() != 1 || f.ff == 0) {
        return Err("a feed-forward block has one down weight".into());
    }
    let r = run_inner(gpu, s, ffn, weights, k, x, n, outs, plan);
    if r.is_err() {
        // Nothing may still be reading or writing our buffers when the next call reuses them.
        gpu.sync_all();
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn run_inner(
    gpu: &Gpu,
    s: &mut Scratch,
    ffn: Option<FfnStage>,
    weights: &[(u64, usize)],
    k: usize,
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    plan: &Plan,
) -> Res<()> {
    let t0 = Instant::now();
    let msum: usize = weights.iter().map(|w| w.1).sum();
    let osize = if plan.out_half { 2 } else { 4 };
    let d_x = ensure_dev(&gpu.ctx, &mut s.d_x, n * k * 2)?;
    let d_out = ensure_dev(&gpu.ctx, &mut s.d_out, n * msum * osize)?;
    let h_in = Ptr(ensure_host(&gpu.ctx, &mut s.h_in, n * k * 2, true)?.slice_mut::<u16>(n * k).as_mut_ptr());
    let h_out = Ptr(ensure_host(&gpu.ctx, &mut s.h_out, n * msum * osize, false)?.slice_mut::<u8>(n * msum * osize).as_mut_ptr());
    let chunk_list = chunks(n, plan);
    let longest = chunk_list.iter().map(|c| c.1).max().unwrap_or(0);
    let d_ffn = match ffn {
        Some(f) => ensure_dev(&gpu.ctx, &mut s.d_ffn, longest * f.ff * (4 + 4 + 2))?,
        None => 0,
    };
    let per_chunk = 1 + 2 * weights.len();
    while s.events.len() < chunk_list.len() * per_chunk {
        s.events.push(gpu.event(false)?);
    }
    if s.span.is_none() {
        s.span = Some((gpu.event(true)?, gpu.event(true)?));
    }
    let span = s.span.as_ref().expect("set above");
    let events = &s.events;
    let ev = |c: usize, slot: usize| &events[c * per_chunk + slot];
    // Output region of weight i: [n, m_i] at element offset n * (m_0 + … + m_{i-1}).
    let offs: Vec<usize> = weights.iter().scan(0, |acc, w| Some(std::mem::replace(acc, *acc + n * w.1))).collect();
    span.0.record(&gpu.s_h2d).map_err(err("record"))?;

    // Everything one chunk puts on the streams once its input is converted.
    let enqueue = |c: usize| -> Res<()> {
        let (c0, len) = chunk_list[c];
        gpu.bind()?;
        let xb = d_x + (c0 * k * 2) as u64;
        // SAFETY: the chunk's pieces are all written (counted below) and nothing else touches them.
        let src = unsafe { std::slice::from_raw_parts(h_in.at(c0 * k), len * k) };
        unsafe { drv::memcpy_htod_async(xb, src, gpu.s_h2d.cu_stream()) }.map_err(err("upload activations"))?;
        ev(c, 0).record(&gpu.s_h2d).map_err(err("record"))?;
        gpu.s_comp.wait(ev(c, 0)).map_err(err("wait"))?;
        // The stream runs chunks in order, so one chunk's worth of gate/up/product space serves them all.
        let (src, src_k) = match ffn {
            None => (xb, k),
            Some(f) => {
                let (gate, up, mid) = (d_ffn, d_ffn + (len * f.ff * 4) as u64, d_ffn + (len * f.ff * 8) as u64);
                gpu.gemm(f.gate, xb, gate, f.ff, k, len, false)?;
                gpu.gemm(f.up, xb, up, f.ff, k, len, false)?;
                gpu.launch_activation(f.kernel, gate, up, mid, len * f.ff)?;
                (mid, f.ff)
            }
        };
        for (i, &(w, m)) in weights.iter().enumerate() {
            let at = (offs[i] + c0 * m) * osize;
            gpu.gemm(w, src, d_out + at as u64, m, src_k, len, plan.out_half)?;
            ev(c, 1 + 2 * i).record(&gpu.s_comp).map_err(err("record"))?;
            gpu.s_d2h.wait(ev(c, 1 + 2 * i)).map_err(err("wait"))?;
            // SAFETY: a disjoint range of the pinned output buffer, read only after out[c,i].
            let dst = unsafe { std::slice::from_raw_parts_mut(h_out.at(at), len * m * osize) };
            unsafe { drv::memcpy_dtoh_async(dst, d_out + at as u64, gpu.s_d2h.cu_stream()) }.map_err(err("download outputs"))?;
            ev(c, 2 + 2 * i).record(&gpu.s_d2h).map_err(err("record"))?;
        }
        Ok(())
    };

    if plan.device_only {
        if s.primed < n * k || s.h_in.as_ref().is_some_and(|b| b.bytes < n * k * 2) {
            // Real values once, untimed by the caller's later calls: zeros or garbage can run faster.
            let dst = unsafe { std::slice::from_raw_parts_mut(h_in.at(0) as *mut u8, n * k * 2) };
            quant::f32_to_f16_slice(&x[..n * k], dst);
            s.primed = n * k;
        }
        for c in 0..chunk_list.len() {
            enqueue(c)?;
        }
        span.1.record(&gpu.s_d2h).map_err(err("record"))?;
        let device = span.0.elapsed_ms(&span.1).map_err(err("matmul on the card"))?;
        s.times.calls += 1;
        s.times.device += Duration::from_secs_f64(device.max(0.0) as f64 / 1e3);
        return Ok(());
    }
    // Convert pieces; the last piece of a chunk enqueues it (one at a time: one cuBLAS handle).
    let threads = rayon::current_num_threads().max(1);
    let conv = pieces(&chunk_list, k, 2 * threads);
    let left: Vec<AtomicUsize> = chunk_list.iter().enumerate().map(|(c, _)| AtomicUsize::new(conv.iter().filter(|p| p.0 == c).count())).collect();
    // Per chunk: 0 not yet enqueued, 1 enqueued, 2 failed.
    let state: Vec<AtomicUsize> = chunk_list.iter().map(|_| AtomicUsize::new(0)).collect();
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let fail = |e: String| *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    let order = Mutex::new((0usize, None::<Instant>));
    let convert_piece = |&(c, r0, r1): &(usize, usize, usize)| {
        let body = || -> Res<bool> {
            // SAFETY: rows r0..r1 of the pinned input belong to this piece alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(h_in.at(r0 * k) as *mut u8, (r1 - r0) * k * 2) };
            quant::f32_to_f16_slice(&x[r0 * k..r1 * k], dst);
            if left[c].fetch_sub(1, Ordering::AcqRel) != 1 {
                return Ok(false);
            }
            let mut done = order.lock().unwrap_or_else(|e| e.into_inner());
            let r = enqueue(c);
            done.0 += 1;
            if done.0 == chunk_list.len() {
                done.1 = Some(Instant::now());
                // Every download is on the d2h stream now: close the timing span.
                span.1.record(&gpu.s_d2h).map_err(err("record"))?;
            }
            r.map(|_| true)
        };
        // A panic must not leave the chunk pending: its copies would wait for ever.
        match catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| Err("panic while enqueueing".into())) {
            Ok(true) => state[c].store(1, Ordering::Release),
            Ok(false) => {}
            Err(e) => {
                state[c].store(2, Ordering::Release);
                fail(e);
            }
        }
    };
    // Wait for one output range and copy it out.
    let outs_ptr: Vec<Ptr<f32>> = outs.iter_mut().map(|o| Ptr(o.as_mut_ptr())).collect();
    let mut copy: Vec<(usize, usize, usize, usize)> = weights
        .iter()
        .enumerate()
        .flat_map(|(i, &(_, m))| pieces(&chunk_list, m, 2 * threads).into_iter().map(move |(c, r0, r1)| (c, i, r0, r1)))
        .collect();
    copy.sort_by_key(|p| (p.0, p.1, p.2));
    let copy_piece = |&(c, i, r0, r1): &(usize, usize, usize, usize)| {
        let m = weights[i].1;
        // Copies may start before their chunk is enqueued (never before every conversion
        // has started, so this wait ends).
        while state[c].load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        if state[c].load(Ordering::Acquire) != 1 {
            return;
        }
        if let Err(e) = gpu.bind().and_then(|_| ev(c, 2 + 2 * i).synchronize().map_err(err("matmul on the card"))) {
            return fail(e);
        }
        // SAFETY: rows r0..r1 of output i are this piece's alone; the download has completed.
        let dst = unsafe { std::slice::from_raw_parts_mut(outs_ptr[i].at(r0 * m), (r1 - r0) * m) };
        let at = offs[i] + r0 * m;
        if plan.out_half {
            let src = unsafe { std::slice::from_raw_parts(h_out.at(at * 2), (r1 - r0) * m * 2) };
            quant::f16_to_f32_slice(src, dst);
        } else {
            let src = unsafe { std::slice::from_raw_parts(h_out.at(at * 4) as *const f32, (r1 - r0) * m) };
            dst.copy_from_slice(src);
        }
    };
    // One parallel region, one wake-up of the pool per call (two loops measured slower at
    // N >= 1024 on the H100 machine): FIFO order starts every conversion before any copy.
    let (convert_piece, copy_piece) = (&convert_piece, &copy_piece);
    rayon::scope_fifo(|sc| {
        for p in &conv {
            sc.spawn_fifo(move |_| convert_piece(p));
        }
        for p in &copy {
            sc.spawn_fifo(move |_| copy_piece(p));
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let t1 = order.into_inner().unwrap_or_else(|e| e.into_inner()).1.unwrap_or(t0);
    let device = span.0.elapsed_ms(&span.1).map_err(err("timing"))?;
    let t = &mut s.times;
    t.calls += 1;
    t.convert_enqueue += t1 - t0;
    t.wait_copy += t1.elapsed();
    t.device += Duration::from_secs_f64(device.max(0.0) as f64 / 1e3);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-region schedule relies on scope_fifo starting every conversion task before
    /// any copy task, which spins until its chunk is ready: with that order it cannot deadlock,
    /// even on one or two threads.
    #[test]
    fn fifo_region_starts_conversions_before_copies() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let chunks = 5;
                let left: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(7)).collect();
                let ready: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                let copied = AtomicUsize::new(0);
                pool.install(|| {
                    rayon::scope_fifo(|sc| {
                        for c in 0..chunks {
                            for _ in 0..7 {
                                let (left, ready) = (&left, &ready);
                                sc.spawn_fifo(move |_| {
                                    if left[c].fetch_sub(1, Ordering::AcqRel) == 1 {
                                        ready[c].store(1, Ordering::Release);
                                    }
                                });
                            }
                        }
                        for c in 0..chunks {
                            for _ in 0..7 {
                                let (ready, copied) = (&ready, &copied);
                                sc.spawn_fifo(move |_| {
                                    while ready[c].load(Ordering::Acquire) == 0 {
                                        std::thread::yield_now();
                                    }
                                    copied.fetch_add(1, Ordering::Relaxed);
                                });
                            }
                        }
                    })
                });
                tx.send(copied.load(Ordering::Relaxed)).unwrap();
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the region deadlocked");
            assert_eq!(got, 35, "{threads} threads");
        }
    }

    #[test]
    fn chunks_and_pieces_cover_every_token_once() {
        for n in [1, 63, 64, 65, 255, 256, 257, 4096, 5000] {
            for (c, min, max) in [(1, 64, 4096), (4, 64, 1024), (4, 128, 512), (2, 64, 64)] {
                let p = Plan { chunks: c, min_chunk: min, max_chunk: max, out_half: false, device_only: false };
                let list = chunks(n, &p);
                assert_eq!(list[0].0, 0);
                assert!(list.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0), "n={n}");
                assert_eq!(list.last().map(|l| l.0 + l.1), Some(n));
                assert!(list.iter().all(|&(_, l)| l >= 1 && l <= max));
                assert!(list.len() <= c.max(n.div_ceil(max)), "n={n} {p:?}: {list:?}");
                for (row, most) in [(1, 4), (333, 32), (4096, 32), (1 << 20, 1)] {
                    let ps = pieces(&list, row, most);
                    assert!(list.iter().enumerate().all(|(c, _)| ps.iter().filter(|p| p.0 == c).count() <= most));
                    assert_eq!(ps.iter().map(|p| p.2 - p.1).sum::<usize>(), n);
                    assert!(ps.iter().all(|&(c, r0, r1)| r0 >= list[c].0 && r1 <= list[c].0 + list[c].1 && r0 < r1));
                }
            }
        }
    }
}
