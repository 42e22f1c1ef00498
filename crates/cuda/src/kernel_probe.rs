//! Decode matrix-vector kernels run alone, for the GPU check and `gpu_check --bench-mv`:
//! any kernel by name, timed back to back on weights past the L2 cache, or run once on
//! given blocks so its output can be held against a host reference.

use crate::gpu::{err, int, DevBuf, Gpu, KArg, Res};
use crate::kernels::MV_MAX_N;
use crate::matvec::{q8_token_bytes, split_of};
use cudarc::driver::result as drv;
use quant::GgmlType;

/// The card's buffers of one kernel's tokens: f16 `x`, and their 8-bit form `q` with one
/// scale per 32 at `d` (made on the card), output `y`.
struct Tokens {
    x: DevBuf,
    q: DevBuf,
    d: u64,
    y: DevBuf,
}

impl Tokens {
    fn new(g: &Gpu, rows: usize, cols: usize, n: usize) -> Res<Self> {
        let q = DevBuf::new(&g.ctx, q8_token_bytes(n, cols))?;
        let d = q.ptr + (n * cols) as u64;
        Ok(Tokens { x: DevBuf::new(&g.ctx, n * cols * 2)?, q, d, y: DevBuf::new(&g.ctx, n * rows * 4)? })
    }
}

fn check_shape(ty: GgmlType, cols: usize, n: usize) -> Res<()> {
    if !cols.is_multiple_of(ty.block_size()) || !cols.is_multiple_of(32) || n == 0 || n > MV_MAX_N {
        return Err(format!("{cols} columns of {} by {n} tokens is not a decode matrix-vector shape", ty.name()));
    }
    Ok(())
}

/// Whether decode kernel `kernel` takes 8-bit tokens (`mv_*_q8`, `mv_*_q8w`, and their
/// `_s2`/`_s4` forms; `mv_q8_0` itself takes f16 ones).
pub fn takes_8bit_tokens(kernel: &str) -> bool {
    let base = split_of(kernel).0;
    base.ends_with("_q8") || base.ends_with("_q8w")
}

/// Launches `kernel` (its split form's warps per row from its `_s2`/`_s4` suffix) on weight `w`.
fn launch(g: &Gpu, kernel: &str, w: u64, t: &Tokens, rows: usize, cols: usize, n: usize) -> Res<()> {
    let split = split_of(kernel).1;
    let ins = if takes_8bit_tokens(kernel) { vec![KArg::P(w), KArg::P(t.q.ptr), KArg::P(t.d)] } else { vec![KArg::P(w), KArg::P(t.x.ptr)] };
    let args: Vec<KArg> = ins.into_iter().chain([KArg::P(t.y.ptr), KArg::I(int(rows)?), KArg::I(int(cols)?), KArg::I(int(n)?)]).collect();
    g.launch(kernel, int(rows.div_ceil(4 / split))? as u32, 128, &args)
}

/// Microseconds per call (see `CudaEngine::bench_matvec`).
pub(crate) fn bench(g: &Gpu, ty: GgmlType, rows: usize, cols: usize, n: usize, kernel: &str, reps: usize) -> Res<f64> {
    g.bind()?;
    check_shape(ty, cols, n)?;
    let bytes = rows * cols / ty.block_size() * ty.block_bytes();
    let copies = (256usize << 20).div_ceil(bytes).clamp(1, 64);
    let ws = (0..copies).map(|_| DevBuf::new(&g.ctx, bytes)).collect::<Res<Vec<_>>>()?;
    for (i, w) in ws.iter().enumerate() {
        g.launch_elementwise("fill_f16", 0, w.ptr, bytes / 2, Some(i as u32 + 1))?;
    }
    let t = Tokens::new(g, rows, cols, n)?;
    g.launch_elementwise("fill_f16", 0, t.x.ptr, n * cols, Some(99))?;
    g.quantize_q8(t.x.ptr, t.q.ptr, t.d, n, cols)?;
    for w in &ws {
        launch(g, kernel, w.ptr, &t, rows, cols, n)?;
    }
    let (e0, e1) = (g.event(true)?, g.event(true)?);
    e0.record(&g.s_comp).map_err(err("record"))?;
    for r in 0..reps {
        launch(g, kernel, ws[r % copies].ptr, &t, rows, cols, n)?;
    }
    e1.record(&g.s_comp).map_err(err("record"))?;
    g.s_comp.synchronize().map_err(err(kernel))?;
    Ok(e0.elapsed_ms(&e1).map_err(err("timing"))? as f64 * 1e3 / reps.max(1) as f64)
}

/// The kernel's output for blocks `w` and tokens `x` (see `CudaEngine::matvec_once`).
pub(crate) fn once(g: &Gpu, ty: GgmlType, rows: usize, cols: usize, kernel: &str, w: &[u8], x: &[f32]) -> Res<Vec<f32>> {
    g.bind()?;
    let n = x.len() / cols.max(1);
    check_shape(ty, cols, n)?;
    if w.len() != rows * cols / ty.block_size() * ty.block_bytes() || x.len() != n * cols {
        return Err("matrix-vector operands do not match their shape".into());
    }
    let dw = DevBuf::new(&g.ctx, w.len())?;
    let t = Tokens::new(g, rows, cols, n)?;
    let xh: Vec<u16> = x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    let stream = g.s_comp.cu_stream();
    unsafe {
        drv::memcpy_htod_async(dw.ptr, w, stream).map_err(err("upload weight"))?;
        drv::memcpy_htod_async(t.x.ptr, &xh[..], stream).map_err(err("upload tokens"))?;
    }
    g.quantize_q8(t.x.ptr, t.q.ptr, t.d, n, cols)?;
    launch(g, kernel, dw.ptr, &t, rows, cols, n)?;
    let mut y = vec![0f32; n * rows];
    unsafe { drv::memcpy_dtoh_async(&mut y[..], t.y.ptr, stream) }.map_err(err("download"))?;
    g.s_comp.synchronize().map_err(err(kernel))?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_kinds_by_name() {
        for k in ["mv_q4_k_q8", "mv_q4_k_q8_s2", "mv_q4_k_q8w", "mv_q4_k_q8w_s4", "mv_q8_0_q8", "mv_q8_0_q8_s4", "mv_q6_k_q8"] {
            assert!(super::takes_8bit_tokens(k), "{k}");
        }
        for k in ["mv_q8_0", "mv_q4_k", "mv_q6_k", "mv_f16", "deq_q8_0_mv"] {
            assert!(!super::takes_8bit_tokens(k), "{k}");
        }
    }
}
