//! f32 ↔ fp16 between the engine's activations (`[N, K]` f32, token-major) and surface
//! memory holding one `[1, C, 1, S]` fp16 tensor: channel `c` is the row of `S` values at
//! `c · stride`, `stride ≥ S` (§2: S innermost, rows padded; we keep S a multiple of 32 so
//! rows are 64-byte multiples and the packed and padded readings agree).
//!
//! Two mappings, one per [`crate::mil::Layout`]:
//! - token-major: surface channel = token, S = features (`[1, N, 1, K]`, GA's layout,
//!   transposed inside the program). A straight row copy.
//! - channel-major: surface channel = feature, S = token (`[1, K, 1, N]`, OM's layout,
//!   no transposes in the program). A transposing copy, done in cache-sized blocks.
//!
//! Both write every byte of the tensor, padding included (zeros), so a reused surface
//! never leaks stale values into padded tokens. Conversions use `half`'s slice routines
//! (F16C / NEON when the CPU has them) and rayon above a size where threads pay.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::ops::Range;

/// Below this many elements one thread converts (thread hand-off costs more).
const PAR_MIN: usize = 1 << 15;
/// Channels per block of the transposing copies.
const BLOCK: usize = 32;

/// View surface bytes as fp16 (surfaces are page- or `Vec<u16>`-aligned).
pub fn as_f16_mut(bytes: &mut [u8]) -> &mut [f16] {
    assert!((bytes.as_ptr() as usize).is_multiple_of(2) && bytes.len().is_multiple_of(2), "surface memory must be 2-byte aligned");
    // SAFETY: f16 is a 2-byte plain-old-data type with alignment 2; checked above.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<f16>(), bytes.len() / 2) }
}

/// View surface bytes as fp16, read-only.
pub fn as_f16(bytes: &[u8]) -> &[f16] {
    assert!((bytes.as_ptr() as usize).is_multiple_of(2) && bytes.len().is_multiple_of(2), "surface memory must be 2-byte aligned");
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f16>(), bytes.len() / 2) }
}

/// Where one `[1, C, 1, S]` tensor lies in a surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SurfaceShape {
    /// Channels (C).
    pub channels: usize,
    /// Spatial width (S).
    pub width: usize,
    /// fp16 elements from one channel to the next (≥ width).
    pub stride: usize,
}

impl SurfaceShape {
    /// A packed tensor (stride = width).
    pub fn packed(channels: usize, width: usize) -> Self {
        SurfaceShape { channels, width, stride: width }
    }
    /// fp16 elements the tensor spans.
    pub fn len(&self) -> usize {
        self.channels * self.stride
    }
    /// Whether it spans nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn scaled(src: &[f32], inv_scale: f32, tmp: &mut Vec<f32>) -> bool {
    if inv_scale == 1.0 {
        return false;
    }
    tmp.clear();
    tmp.extend(src.iter().map(|v| v * inv_scale));
    true
}

/// Token-major write: surface channel `t` ← `x[t, cols] · inv_scale` for `t < n`
/// (`x` is `[n, k]`); columns past the slice and channels `n..` are zero.
pub fn write_token_major(x: &[f32], k: usize, n: usize, cols: Range<usize>, inv_scale: f32, dst: &mut [f16], s: SurfaceShape) {
    assert!(n <= s.channels && cols.len() <= s.width && dst.len() >= s.len() && x.len() >= n * k);
    let body = |t: usize, row: &mut [f16], tmp: &mut Vec<f32>| {
        if t >= n {
            row.fill(f16::ZERO);
            return;
        }
        let src = &x[t * k + cols.start..t * k + cols.end];
        let src: &[f32] = if scaled(src, inv_scale, tmp) { tmp } else { src };
        row[..src.len()].convert_from_f32_slice(src);
        row[src.len()..].fill(f16::ZERO);
    };
    let dst = &mut dst[..s.len()];
    if s.len() < PAR_MIN {
        let mut tmp = Vec::new();
        dst.chunks_mut(s.stride).enumerate().for_each(|(t, row)| body(t, row, &mut tmp));
    } else {
        dst.par_chunks_mut(s.stride).enumerate().for_each_init(Vec::new, |tmp, (t, row)| body(t, row, tmp));
    }
}

/// Channel-major write: surface channel `c` ← `x[0..n, cols.start + c] · inv_scale`
/// along S, zeros for tokens `n..` and for channels past the slice.
pub fn write_channel_major(x: &[f32], k: usize, n: usize, cols: Range<usize>, inv_scale: f32, dst: &mut [f16], s: SurfaceShape) {
    assert!(n <= s.width && cols.len() <= s.channels && dst.len() >= s.len() && x.len() >= n * k);
    let body = |b: usize, block: &mut [f16], tmp: &mut Vec<f32>| {
        let c0 = b * BLOCK;
        let nc = (block.len() / s.stride).min(cols.len().saturating_sub(c0));
        // Gather BLOCK channels × n tokens (contiguous reads per token), then convert rows.
        tmp.clear();
        tmp.resize(nc * n, 0.0);
        for t in 0..n {
            let src = &x[t * k + cols.start + c0..][..nc];
            for (c, v) in src.iter().enumerate() {
                tmp[c * n + t] = v * inv_scale;
            }
        }
        for (c, row) in block.chunks_mut(s.stride).enumerate() {
            if c < nc {
                row[..n].convert_from_f32_slice(&tmp[c * n..(c + 1) * n]);
                row[n..].fill(f16::ZERO);
            } else {
                row.fill(f16::ZERO);
            }
        }
    };
    let dst = &mut dst[..s.len()];
    if s.len() < PAR_MIN {
        let mut tmp = Vec::new();
        dst.chunks_mut(BLOCK * s.stride).enumerate().for_each(|(b, blk)| body(b, blk, &mut tmp));
    } else {
        dst.par_chunks_mut(BLOCK * s.stride).enumerate().for_each_init(Vec::new, |tmp, (b, blk)| body(b, blk, tmp));
    }
}

/// Token-major read: `out[t·m + col0 + j] = surface[t, ch.start + j] · scale` for `t < n`.
#[allow(clippy::too_many_arguments)]
pub fn read_token_major(src: &[f16], s: SurfaceShape, n: usize, ch: Range<usize>, scale: f32, out: &mut [f32], m: usize, col0: usize) {
    assert!(n <= s.channels && ch.end <= s.width && col0 + ch.len() <= m && out.len() >= n * m);
    let body = |t: usize, orow: &mut [f32]| {
        let dst = &mut orow[col0..col0 + ch.len()];
        src[t * s.stride + ch.start..t * s.stride + ch.end].convert_to_f32_slice(dst);
        if scale != 1.0 {
            dst.iter_mut().for_each(|v| *v *= scale);
        }
    };
    let out = &mut out[..n * m];
    if n * ch.len() < PAR_MIN {
        out.chunks_mut(m).enumerate().for_each(|(t, r)| body(t, r));
    } else {
        out.par_chunks_mut(m).enumerate().for_each(|(t, r)| body(t, r));
    }
}

/// Channel-major read: `out[t·m + col0 + j] = surface[ch.start + j, t] · scale` for `t < n`.
#[allow(clippy::too_many_arguments)]
pub fn read_channel_major(src: &[f16], s: SurfaceShape, n: usize, ch: Range<usize>, scale: f32, out: &mut [f32], m: usize, col0: usize) {
    assert!(n <= s.width && ch.end <= s.channels && col0 + ch.len() <= m && out.len() >= n * m);
    // Convert BLOCK channels to f32 (contiguous), then scatter them into token rows.
    // Parallel over token chunks so each thread owns its output rows.
    let tokens_per_job = if n * ch.len() < PAR_MIN { n.max(1) } else { n.div_ceil(rayon::current_num_threads() * 2).max(8) };
    out[..n * m].par_chunks_mut(tokens_per_job * m).enumerate().for_each(|(job, rows)| {
        let t0 = job * tokens_per_job;
        let nt = rows.len() / m;
        let mut tmp = vec![0f32; BLOCK * nt];
        for c0 in (0..ch.len()).step_by(BLOCK) {
            let nc = BLOCK.min(ch.len() - c0);
            for c in 0..nc {
                let at = (ch.start + c0 + c) * s.stride + t0;
                src[at..at + nt].convert_to_f32_slice(&mut tmp[c * nt..(c + 1) * nt]);
            }
            for t in 0..nt {
                let orow = &mut rows[t * m + col0 + c0..][..nc];
                for (c, o) in orow.iter_mut().enumerate() {
                    *o = tmp[c * nt + t] * scale;
                }
            }
        }
    });
}

/// Largest L2 norm over the `n` rows of `x` (`[n, k]`), restricted to columns `cols`.
pub fn max_row_norm(x: &[f32], k: usize, n: usize, cols: Range<usize>) -> f32 {
    let norm = |t: usize| x[t * k + cols.start..t * k + cols.end].iter().map(|v| v * v).sum::<f32>().sqrt();
    if n * cols.len() < PAR_MIN {
        (0..n).map(norm).fold(0.0, f32::max)
    } else {
        (0..n).into_par_iter().map(norm).reduce(|| 0.0, f32::max)
    }
}
