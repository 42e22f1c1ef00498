//! The CPU matmul driver: `out[N, M] = x[N, K] · W[M, K]ᵀ`.
//!
//! The activations are quantized once to the block type the weight's dot product
//! consumes, then rows of W are split across threads; each weight row is loaded once
//! and dotted against every token, so it stays in cache.

use super::SharedMut;
use crate::weights::Weight;
use quant::GgmlType;
use rayon::prelude::*;

/// Activations quantized for one weight type's dot kernel.
pub struct QuantizedInput {
    ty: GgmlType,
    row_bytes: usize,
    n: usize,
    bytes: Vec<u8>,
}

impl QuantizedInput {
    /// Quantize `n` rows of `k` elements to `ty` (in parallel over rows), bit for bit as
    /// llama.cpp's CPU backend does on this architecture ([`quant::quantize_activations`]).
    pub fn new(ty: GgmlType, x: &[f32], k: usize) -> Self {
        let n = x.len() / k;
        let row_bytes = ty.bytes_for(k as u64).expect("k is a whole number of blocks") as usize;
        let mut bytes = vec![0u8; n * row_bytes];
        bytes.par_chunks_mut(row_bytes).zip(x.par_chunks(k)).for_each(|(dst, src)| {
            quant::quantize_activations(ty, src, dst).expect("activation quantizer exists for every dot type");
        });
        QuantizedInput { ty, row_bytes, n, bytes }
    }

    fn row(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.row_bytes..(i + 1) * self.row_bytes]
    }
}

/// `out[n * M + m] = Σ_k x[n, k] · W[m, k]` on the current rayon pool.
pub fn matmul(w: &Weight, x: &[f32], out: &mut [f32]) {
    let (m, k) = (w.rows, w.cols);
    let n = x.len() / k;
    assert_eq!(x.len(), n * k, "input is not [N, {k}] for {}", w.name);
    assert_eq!(out.len(), n * m, "output is not [N, {m}] for {}", w.name);
    let input = QuantizedInput::new(w.ty.vec_dot_type(), x, k);
    matmul_quantized(w, &input, out);
}

/// Like [`matmul`], with the activations already quantized (shared by Q/K/V and gate/up).
pub fn matmul_quantized(w: &Weight, input: &QuantizedInput, out: &mut [f32]) {
    let (m, k, n) = (w.rows, w.cols, input.n);
    assert_eq!(input.ty, w.ty.vec_dot_type());
    assert_eq!(out.len(), n * m);
    let dot = quant::dot_kernel(w.ty).expect("checked when the weight was loaded");
    let threads = rayon::current_num_threads().max(1);
    // Enough chunks to balance load, big enough to amortize scheduling.
    let rows_per_chunk = m.div_ceil(threads * 4).max(4);
    let dst = SharedMut(out.as_mut_ptr());
    (0..m.div_ceil(rows_per_chunk)).into_par_iter().for_each(|chunk| {
        let r0 = chunk * rows_per_chunk;
        let r1 = (r0 + rows_per_chunk).min(m);
        for r in r0..r1 {
            let wrow = w.row(r);
            for t in 0..n {
                let v = dot(k, wrow, input.row(t));
                // SAFETY: each (t, r) pair is written by exactly one chunk; out has n*m elements.
                unsafe { *dst.ptr().add(t * m + r) = v };
            }
        }
    });
}
