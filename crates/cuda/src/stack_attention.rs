//! Attention inside a whole stack, on the card: the flash kernels where they fit (tensor-core
//! `mma.sync`, head sizes 64 and 128), otherwise scores and values through cuBLAS with a
//! masked softmax between; and a hook that runs either on host data for the GPU check.

use crate::gpu::{err, int, DevBuf, Gpu, KArg, Res, Strided};
use crate::stack::ROW_THREADS;
use crate::phases::Phases;
use cudarc::driver::result as drv;

/// Bytes of attention scores and probabilities per query chunk (6 per score).
pub(crate) const SCORE_BYTES: usize = 1 << 30;

/// The flash-attention kernel for this shape with `queries` per block (64 or 128; 0 = none),
/// if one fits: tensor-core `mma.sync` (compute capability 8.0 or newer) and equal key and
/// value head sizes of 64 or 128.
pub(crate) fn flash_kernel(gpu: &Gpu, sh: &engine::matrix::AttnShape, queries: usize) -> Option<&'static str> {
    if gpu.cc.0 < 8 || sh.head_dim != sh.head_dim_v {
        return None;
    }
    Some(match (sh.head_dim, queries) {
        (64, 64) => "flash_d64_q64",
        (128, 64) => "flash_d128_q64",
        (64, 128) => "flash_d64_q128",
        (128, 128) => "flash_d128_q128",
        _ => return None,
    })
}

/// Scratch of the attention GEMMs: scores (f32) and probabilities (f16) of `chunk` queries.
pub(crate) struct Scores {
    pub(crate) s: u64,
    pub(crate) p: u64,
    pub(crate) chunk: usize,
    /// Partials of the split decode kernels (0: none, single queries take the other paths).
    pub(crate) part: u64,
}

/// One sequence's attention operands on the card.
pub(crate) struct SeqAttention {
    /// Its queries, f16 `[len, n_head * d]` (scaled, rotated).
    pub(crate) q_h: u64,
    /// Its cache region: K f16 `[pos0 + len, n_kv * d]`, V f16 `[pos0 + len, n_kv * dv]`.
    pub(crate) k: u64,
    pub(crate) v: u64,
    /// Its tokens' positions (i32).
    pub(crate) pos: u64,
    /// Output, f16 `[len, n_head * dv]`.
    pub(crate) out: u64,
    pub(crate) len: usize,
    pub(crate) pos0: usize,
    /// The rows K/V have room for (fixes the split decode kernel's grid between steps).
    pub(crate) cap: usize,
}

/// Causal attention on tensor cores, chunk by chunk of queries: scores `S = Q·Kᵀ` over the
/// keys the chunk can see (one strided-batched GEMM per query head of a KV group, batched
/// over the KV heads), a masked softmax to f16 probabilities, `O = P·V` written as f16 straight
/// into the output projection's input.
pub(crate) fn attention(gpu: &Gpu, sh: &engine::matrix::AttnShape, a: &SeqAttention, sc: &Scores, flash: usize, prof: &mut Option<Phases>) -> Res<()> {
    let (d, dv, nkv, group) = (sh.head_dim, sh.head_dim_v, sh.n_head_kv, sh.n_head / sh.n_head_kv);
    let (qd, kvd, vd, od) = (sh.n_head * d, nkv * d, nkv * dv, sh.n_head * dv);
    // One query with partials to spare: split over the keys.
    if a.len == 1 && sc.part != 0 && crate::decode_attention::launch(gpu, sh, a, sc.part)? {
        return Phases::mark(prof, gpu, "decode attention");
    }
    if let Some(kernel) = flash_kernel(gpu, sh, flash) {
        let args = [
            KArg::P(a.q_h),
            KArg::P(a.k),
            KArg::P(a.v),
            KArg::P(a.out),
            KArg::I(int(a.len)?),
            KArg::P(a.pos),
            KArg::I(int(sh.n_head)?),
            KArg::I(int(nkv)?),
            KArg::I(int(sh.window.unwrap_or(0))?),
        ];
        gpu.launch_grid(kernel, (int(a.len.div_ceil(flash))? as u32, int(sh.n_head)? as u32), (flash / 16 * 32) as u32, &args)?;
        return Phases::mark(prof, gpu, "flash attention");
    }
    for c0 in (0..a.len).step_by(sc.chunk) {
        let cl = sc.chunk.min(a.len - c0);
        let hi = a.pos0 + c0 + cl;
        let lo = sh.window.map_or(0, |w| (a.pos0 + c0 + 1).saturating_sub(w));
        let keys = hi - lo;
        let ld = keys.next_multiple_of(8);
        let at = |base: u64, elems: usize, size: usize| Strided { ptr: base + (elems * size) as u64, ld: 0, stride: 0 };
        for j in 0..group {
            let k = Strided { ld: kvd, stride: d, ..at(a.k, lo * kvd, 2) };
            let q = Strided { ld: qd, stride: group * d, ..at(a.q_h, c0 * qd + j * d, 2) };
            let s = Strided { ld, stride: group * cl * ld, ..at(sc.s, j * cl * ld, 4) };
            gpu.gemm_batched(true, k, q, s, (keys, cl, d), nkv, false)?;
        }
        Phases::mark(prof, gpu, "attention scores")?;
        gpu.launch(
            "attn_softmax",
            int(sh.n_head * cl)? as u32,
            ROW_THREADS,
            &[KArg::P(sc.s), KArg::P(sc.p), KArg::P(a.pos + (c0 * 4) as u64), KArg::I(int(cl)?), KArg::I(int(keys)?), KArg::I(int(ld)?), KArg::I(int(lo)?), KArg::I(int(sh.window.unwrap_or(0))?)],
        )?;
        Phases::mark(prof, gpu, "softmax")?;
        for j in 0..group {
            let v = Strided { ld: vd, stride: dv, ..at(a.v, lo * vd, 2) };
            let p = Strided { ld, stride: group * cl * ld, ..at(sc.p, j * cl * ld, 2) };
            let o = Strided { ld: od, stride: group * dv, ..at(a.out, c0 * od + j * dv, 2) };
            gpu.gemm_batched(false, v, p, o, (dv, cl, keys), nkv, true)?;
        }
        Phases::mark(prof, gpu, "attention values")?;
    }
    Ok(())
}

/// One sequence's attention through the stack's own kernels on host data (for the GPU
/// check): queries f32 `[n, n_head * d]` (rounded to f16, as the stack's are) at positions
/// `pos0..pos0 + n`, cache rows `0..pos0 + n`, output f32. Returns the card's milliseconds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_once(
    gpu: &Gpu,
    sh: &engine::matrix::AttnShape,
    q: &[f32],
    pos0: usize,
    kc: &[half::f16],
    vc: &[half::f16],
    out: &mut [f32],
    flash: usize,
    split: bool,
) -> Res<f64> {
    let (qd, kvd, vd, od) = (sh.n_head * sh.head_dim, sh.n_head_kv * sh.head_dim, sh.n_head_kv * sh.head_dim_v, sh.n_head * sh.head_dim_v);
    let n = q.len() / qd;
    let rows = pos0 + n;
    if kc.len() < rows * kvd || vc.len() < rows * vd || out.len() < n * od {
        return Err("attention buffers do not match".into());
    }
    gpu.bind()?;
    let bits = |h: &[half::f16]| -> Vec<u16> { h.iter().map(|v| v.to_bits()).collect() };
    let q_h: Vec<u16> = q.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    let pos: Vec<i32> = (pos0..rows).map(|p| p as i32).collect();
    let (d_q, d_k, d_v) = (DevBuf::new(&gpu.ctx, n * qd * 2)?, DevBuf::new(&gpu.ctx, rows * kvd * 2)?, DevBuf::new(&gpu.ctx, rows * vd * 2)?);
    let (d_pos, d_out) = (DevBuf::new(&gpu.ctx, n * 4)?, DevBuf::new(&gpu.ctx, n * od * 2)?);
    let ld = rows.next_multiple_of(8);
    let qc = (SCORE_BYTES / (sh.n_head * ld * 6)).clamp(16, 4096).min(n);
    let (d_s, d_p) = (DevBuf::new(&gpu.ctx, sh.n_head * qc * ld * 4)?, DevBuf::new(&gpu.ctx, sh.n_head * qc * ld * 2)?);
    let stream = gpu.s_comp.cu_stream();
    unsafe {
        drv::memcpy_htod_async(d_q.ptr, &q_h[..], stream).map_err(err("upload"))?;
        drv::memcpy_htod_async(d_k.ptr, &bits(&kc[..rows * kvd])[..], stream).map_err(err("upload"))?;
        drv::memcpy_htod_async(d_v.ptr, &bits(&vc[..rows * vd])[..], stream).map_err(err("upload"))?;
        drv::memcpy_htod_async(d_pos.ptr, &pos[..], stream).map_err(err("upload"))?;
    }
    let seq = SeqAttention { q_h: d_q.ptr, k: d_k.ptr, v: d_v.ptr, pos: d_pos.ptr, out: d_out.ptr, len: n, pos0, cap: rows };
    // A single query takes the split decode kernel where it fits (as in a decode step).
    let d_part = DevBuf::new(&gpu.ctx, crate::decode_attention::partial_bytes(sh.n_head, sh.head_dim, rows))?;
    let scores = Scores { s: d_s.ptr, p: d_p.ptr, chunk: qc, part: if split { d_part.ptr } else { 0 } };
    let (e0, e1) = (gpu.event(true)?, gpu.event(true)?);
    e0.record(&gpu.s_comp).map_err(err("record"))?;
    attention(gpu, sh, &seq, &scores, flash, &mut None)?;
    e1.record(&gpu.s_comp).map_err(err("record"))?;
    let mut half_out = vec![0u16; n * od];
    unsafe { drv::memcpy_dtoh_async(&mut half_out[..], d_out.ptr, stream) }.map_err(err("download"))?;
    gpu.s_comp.synchronize().map_err(err("attention"))?;
    out[..n * od].iter_mut().zip(&half_out).for_each(|(o, &h)| *o = half::f16::from_bits(h).to_f32());
    Ok(e0.elapsed_ms(&e1).map_err(err("timing"))? as f64)
}
