//! The CPU matmul driver: `out[N, M] = x[N, K] · W[M, K]ᵀ`.
//!
//! The activations are quantized once to the block type the weight's dot product
//! consumes (bit for bit as llama.cpp's CPU backend does), then rows of W are split
//! across threads.
//!
//! - Few tokens (decode): each weight row is loaded once and dotted against every token
//!   with the dot kernel, so it stays in cache.
//! - Many tokens (prefill, `N >= GEMM_MIN_TOKENS`) and a weight type with a tiled kernel
//!   ([`quant::gemm_kernel`]): the activations are re-laid out once into
//!   [`quant::ActPanels`] and each thread runs the tiled kernel over its rows, which
//!   expands each weight row once and reuses every loaded chunk across 16 tokens.

use std::sync::OnceLock;

use super::SharedMut;
use crate::weights::Weight;
use quant::{ActPanels, GgmlType};
use rayon::prelude::*;

/// From this many tokens on, weights with a tiled kernel use it (below, the dot
/// kernels: a panel of 16 tokens would be mostly padding).
pub const GEMM_MIN_TOKENS: usize = 8;

/// Activations quantized for one weight type's dot kernel.
pub struct QuantizedInput {
    ty: GgmlType,
    row_bytes: usize,
    n: usize,
    k: usize,
    bytes: Vec<u8>,
    /// The tiled kernels' layout, built on first use by a weight that has one.
    panels: OnceLock<ActPanels>,
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
        QuantizedInput { ty, row_bytes, n, k, bytes, panels: OnceLock::new() }
    }

    fn row(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.row_bytes..(i + 1) * self.row_bytes]
    }

    fn panels(&self) -> &ActPanels {
        self.panels.get_or_init(|| {
            ActPanels::new(self.ty, &self.bytes, self.k).expect("tiled kernels exist only for Q8 dot types")
        })
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
    matmul_many(&[w], &[input], &mut [out]);
}

/// Independent matmuls `outs[i] = inputs[i] · ws[i]ᵀ` in one parallel region: the row
/// chunks of all of them share the pool (a mixture of experts' many small blocks would
/// otherwise pay a fork/join each).
pub fn matmul_many(ws: &[&Weight], inputs: &[&QuantizedInput], outs: &mut [&mut [f32]]) {
    let threads = rayon::current_num_threads().max(1);
    let rows: usize = ws.iter().map(|w| w.rows).sum();
    let tiled = |w: &Weight, input: &QuantizedInput| input.n >= GEMM_MIN_TOKENS && quant::gemm_kernel(w.ty).is_some();
    // Enough chunks to balance load, big enough to amortize scheduling; the tiled kernel
    // takes multiples of 4 rows, at most one 32-row slab per chunk.
    let chunk_for = |w: &Weight, input: &QuantizedInput| {
        let even = rows.div_ceil(threads * 4);
        if tiled(w, input) {
            even.next_multiple_of(4).clamp(4, 32)
        } else {
            even.max(4)
        }
    };
    let mut tasks = Vec::new();
    for (i, ((w, input), out)) in ws.iter().zip(inputs).zip(outs.iter()).enumerate() {
        assert_eq!(input.ty, w.ty.vec_dot_type());
        assert_eq!(input.k, w.cols);
        assert_eq!(out.len(), input.n * w.rows);
        let chunk = chunk_for(w, input);
        tasks.extend((0..w.rows).step_by(chunk).map(|r0| (i, r0, (r0 + chunk).min(w.rows))));
    }
    let dsts: Vec<SharedMut<f32>> = outs.iter_mut().map(|o| SharedMut(o.as_mut_ptr())).collect();
    tasks.into_par_iter().for_each(|(i, r0, r1)| {
        let (w, input) = (ws[i], inputs[i]);
        // SAFETY: task (i, r0..r1) writes outs[i][t * m + r] for r in r0..r1, t < n only;
        // tasks of one matmul cover disjoint rows; outs[i] has n * m elements (asserted).
        unsafe {
            if tiled(w, input) {
                rows_tiled(w, input, r0, r1, dsts[i]);
            } else {
                rows_dot(w, input, r0, r1, dsts[i]);
            }
        }
    });
}

/// Tokens per block of the dot path: their quantized rows stay in L1/L2 while every row of
/// the task's chunk passes over them (a prefill's whole activations would not).
const DOT_TOKEN_BLOCK: usize = 16;

/// Bytes of weight rows per piece of the row-batch path (half of a 32 KiB L1).
const ROWS_PIECE_BYTES: usize = 16 * 1024;

/// Rows `r0..r1` of `out[n, m]` with the dot kernel (the row-batch form where the type
/// has one), token block by token block (each weight
/// row then comes from L2, each block's activations from L1, instead of every token's
/// activations streaming from memory once per weight row).
///
/// # Safety
/// `dst` points at `input.n * w.rows` floats; nothing else writes these rows meanwhile.
unsafe fn rows_dot(w: &Weight, input: &QuantizedInput, r0: usize, r1: usize, dst: SharedMut<f32>) {
    let (m, k) = (w.rows, w.cols);
    if let Some(rows) = quant::rows_dot_kernel(w.ty) {
        // Pieces of rows that stay in L1 while every token passes over them.
        let (data, rb) = (w.data(), w.row_bytes());
        // One token reuses nothing: one call over all its rows (the kernel's prefetch then
        // runs ahead across what would be piece boundaries).
        let piece = if input.n == 1 { r1 - r0 } else { (ROWS_PIECE_BYTES / rb).max(1) };
        for p0 in (r0..r1).step_by(piece) {
            let p1 = (p0 + piece).min(r1);
            for t in 0..input.n {
                // SAFETY: out[t * m + p0..t * m + p1] lies inside dst (p1 <= m) and is ours.
                let out = std::slice::from_raw_parts_mut(dst.ptr().add(t * m + p0), p1 - p0);
                rows(k, &data[p0 * rb..p1 * rb], input.row(t), out);
            }
        }
        return;
    }
    let dot = quant::dot_kernel(w.ty).expect("checked when the weight was loaded");
    for t0 in (0..input.n).step_by(DOT_TOKEN_BLOCK) {
        let t1 = (t0 + DOT_TOKEN_BLOCK).min(input.n);
        for r in r0..r1 {
            let wrow = w.row(r);
            for t in t0..t1 {
                *dst.ptr().add(t * m + r) = dot(k, wrow, input.row(t));
            }
        }
    }
}

/// Rows `r0..r1` (`r0` a multiple of 4) of `out[n, m]` with the tiled kernel, which expands
/// each weight row once and reuses every loaded chunk across 16 tokens.
///
/// # Safety
/// As [`rows_dot`].
unsafe fn rows_tiled(w: &Weight, input: &QuantizedInput, r0: usize, r1: usize, dst: SharedMut<f32>) {
    let kernel = quant::gemm_kernel(w.ty).expect("only called for types with a tiled kernel");
    let (data, rb) = (w.data(), w.row_bytes());
    // The kernel's contract with ldo = m: it writes out[t * m + r] for the rows it is given.
    kernel(&data[r0 * rb..r1 * rb], input.panels(), dst.ptr().add(r0), w.rows);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::TensorSource;
    use std::sync::Arc;

    /// A weight of `m` rows of `k` quantized from `wf`, inside an in-memory GGUF file.
    fn weight(ty: GgmlType, m: usize, k: usize, wf: &[f32]) -> Weight {
        let mut data = vec![0u8; m * ty.bytes_for(k as u64).unwrap() as usize];
        quant::quantize_row(ty, wf, &mut data).unwrap();
        let mut g = gguf::GgufWriter::new();
        g.add_tensor("w", &[k as u64, m as u64], ty, data).unwrap();
        let file = gguf::GgufFile::from_bytes(g.to_bytes()).unwrap();
        TensorSource::new(Arc::new(file)).matrix("w", k, m).unwrap()
    }

    /// Both paths (dot kernels below GEMM_MIN_TOKENS, tiled above) against the scalar
    /// reference dot, for every weight type of the test models and a few others.
    #[test]
    fn matmul_matches_scalar_reference() {
        let types = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Q2_K,
            GgmlType::F16,
        ];
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for ty in types {
            let k = if ty.block_size() == 256 { 512 } else { 96 };
            for (m, n) in [(7, 1), (13, 5), (41, 8), (69, 37)] {
                let wf: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let x: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let w = weight(ty, m, k, &wf);
                let mut out = vec![f32::NAN; n * m];
                pool.install(|| matmul(&w, &x, &mut out));
                let input = QuantizedInput::new(ty.vec_dot_type(), &x, k);
                let dot = quant::dot_kernel_scalar(ty).unwrap();
                for t in 0..n {
                    for r in 0..m {
                        let want = dot(k, w.row(r), input.row(t));
                        let got = out[t * m + r];
                        let tol = 1e-4 * (1.0 + want.abs()) + 1e-3;
                        assert!((got - want).abs() <= tol, "{} m={m} n={n} ({t},{r}): {got} vs {want}", ty.name());
                    }
                }
            }
        }
    }
}
