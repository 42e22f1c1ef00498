//! Causal attention on the card (the `attn_causal` kernel): a prefill's queries and the
//! layer's cache rows go up once, the outputs come back; the cache itself stays in host
//! memory, where decode reads it. Worth it for long prompts, where the CPU's attention is
//! quadratic work and the card's is a few milliseconds.

use crate::gpu::{ensure_dev, err, int, DevBuf, Gpu, Res};
use crate::kernels::ATTN_MAX_DIM;
use cudarc::driver::result as drv;
use engine::matrix::AttnShape;
use half::f16;

/// Device buffers reused across calls (grown on demand).
#[derive(Default)]
pub(crate) struct Buffers {
    q: Option<DevBuf>,
    k: Option<DevBuf>,
    v: Option<DevBuf>,
    pos: Option<DevBuf>,
    out: Option<DevBuf>,
}

/// Whether the kernel handles this shape.
pub(crate) fn check(s: &AttnShape) -> Result<(), String> {
    if s.n_head_kv == 0 || s.n_head % s.n_head_kv != 0 {
        return Err(format!("{} query heads cannot share {} KV heads", s.n_head, s.n_head_kv));
    }
    if s.n_head / s.n_head_kv > 32 {
        return Err(format!("{} query heads per KV head (the kernel takes at most 32)", s.n_head / s.n_head_kv));
    }
    if s.head_dim > ATTN_MAX_DIM || s.head_dim_v > ATTN_MAX_DIM {
        return Err(format!("head dimension {}/{} above {ATTN_MAX_DIM}", s.head_dim, s.head_dim_v));
    }
    Ok(())
}

/// Tokens per block and shared-memory bytes of the tiled kernel, when the shape fits it
/// (even head size, within the 48 KiB every card gives without opting in); `None` = the
/// simple kernel.
fn tiled_plan(s: &AttnShape) -> Option<(usize, u32)> {
    let group = s.n_head / s.n_head_kv;
    // About 8 warps a block: enough rows to share each staged tile.
    let tq = (8 / group).max(1);
    let words = 32 * (s.head_dim / 2 + 1) + 16 * s.head_dim_v + group * tq * s.head_dim;
    (s.head_dim.is_multiple_of(2) && words * 4 <= 48 << 10).then_some((tq, (words * 4) as u32))
}

/// Launch attention of `n` tokens on the compute stream over device buffers `ptrs` = q (f32),
/// K and V cache rows from position `first` on (f16), positions (i32), out (f32).
pub(crate) fn launch(gpu: &Gpu, s: &AttnShape, ptrs: [u64; 5], n: usize, first: usize) -> Res<()> {
    let window = s.window.map_or(Ok(0), int)?;
    let mut ints = vec![int(s.n_head)?, int(s.n_head_kv)?, int(s.head_dim)?, int(s.head_dim_v)?, int(first)?, window];
    let group = s.n_head / s.n_head_kv;
    match tiled_plan(s) {
        Some((tq, smem)) => {
            ints.extend([int(n)?, int(tq)?]);
            gpu.launch_attention("attn_tiled", ptrs, &ints, (n.div_ceil(tq) as u32, s.n_head_kv as u32), (32 * group * tq) as u32, smem)
        }
        None => gpu.launch_attention("attn_causal", ptrs, &ints, (n as u32, s.n_head_kv as u32), (32 * group) as u32, 0),
    }
}

/// As `engine::cpu::attention::attention`, on the card's compute stream.
pub(crate) fn run(
    gpu: &Gpu,
    b: &mut Buffers,
    s: &AttnShape,
    q: &[f32],
    positions: &[usize],
    k_cache: &[f16],
    v_cache: &[f16],
    out: &mut [f32],
) -> Res<()> {
    check(s)?;
    let n = positions.len();
    if n == 0 {
        return Ok(());
    }
    let (qd, kvd, vd, od) = (s.n_head * s.head_dim, s.n_head_kv * s.head_dim, s.n_head_kv * s.head_dim_v, s.n_head * s.head_dim_v);
    let first = positions.iter().map(|&p| s.window.map_or(0, |w| (p + 1).saturating_sub(w))).min().unwrap_or(0);
    let last = positions.iter().copied().max().unwrap_or(0);
    let rows = last + 1 - first;
    if q.len() < n * qd || out.len() < n * od || k_cache.len() < (last + 1) * kvd || v_cache.len() < (last + 1) * vd {
        return Err(format!("attention buffers do not match {n} tokens up to position {last}"));
    }
    let pos: Vec<i32> = positions.iter().map(|&p| int(p)).collect::<Res<_>>()?;
    gpu.bind()?;
    let d_q = ensure_dev(&gpu.ctx, &mut b.q, n * qd * 4)?;
    let d_k = ensure_dev(&gpu.ctx, &mut b.k, rows * kvd * 2)?;
    let d_v = ensure_dev(&gpu.ctx, &mut b.v, rows * vd * 2)?;
    let d_pos = ensure_dev(&gpu.ctx, &mut b.pos, n * 4)?;
    let d_out = ensure_dev(&gpu.ctx, &mut b.out, n * od * 4)?;
    let stream = gpu.s_comp.cu_stream();
    // f16 is a 16-bit pattern: the kernel reads it as u16.
    let halves = |h: &[f16]| -> &[u16] { unsafe { std::slice::from_raw_parts(h.as_ptr() as *const u16, h.len()) } };
    let result = (|| -> Res<()> {
        unsafe {
            drv::memcpy_htod_async(d_q, &q[..n * qd], stream).map_err(err("upload queries"))?;
            drv::memcpy_htod_async(d_k, halves(&k_cache[first * kvd..(last + 1) * kvd]), stream).map_err(err("upload keys"))?;
            drv::memcpy_htod_async(d_v, halves(&v_cache[first * vd..(last + 1) * vd]), stream).map_err(err("upload values"))?;
            drv::memcpy_htod_async(d_pos, &pos[..], stream).map_err(err("upload positions"))?;
        }
        launch(gpu, s, [d_q, d_k, d_v, d_pos, d_out], n, first)?;
        unsafe { drv::memcpy_dtoh_async(&mut out[..n * od], d_out, stream) }.map_err(err("download attention"))?;
        gpu.s_comp.synchronize().map_err(err("attention"))
    })();
    if result.is_err() {
        gpu.sync_all();
    }
    result
}
