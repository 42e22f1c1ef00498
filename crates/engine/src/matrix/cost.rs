//! What work costs, for the placement policy's cost model.

use super::{AttnShape, MatmulShape, StackInput};

/// The work of a decoder stack over `positions`, for the cost model: FLOPs (every matmul
/// and every attention) and the bytes that cross to an engine and back (hidden states in
/// and out in f32, new K/V out in f16).
pub fn stack_cost(input: &StackInput<'_>) -> (f64, f64) {
    let n = input.n();
    let (mut flops, mut kv_bytes) = (0.0, 0.0);
    for l in input.layers {
        flops += l.weights().map(|(_, w)| MatmulShape::of(w, n).flops()).sum::<f64>();
        let Some(a) = l.attention() else { continue };
        let s = &a.shape;
        for span in input.spans {
            flops += attention_cost(s, &input.positions[span.clone()]).0;
        }
        kv_bytes += (s.n_head_kv * (s.head_dim + s.head_dim_v) * 2) as f64;
    }
    let n_embd = input.layers.first().map_or(0, |l| l.n_embd());
    (flops, n as f64 * (8.0 * n_embd as f64 + kv_bytes))
}

/// The work of one attention call, for the cost model: FLOPs (QKᵀ and PV) and the bytes an
/// engine would move (queries and outputs in f32, the cache rows in f16).
pub fn attention_cost(s: &AttnShape, positions: &[usize]) -> (f64, f64) {
    let seen: f64 = positions
        .iter()
        .map(|&p| s.window.map_or(p + 1, |w| (p + 1).min(w)) as f64)
        .sum();
    let flops = 2.0 * s.n_head as f64 * (s.head_dim + s.head_dim_v) as f64 * seen;
    let rows = positions.iter().max().map_or(0, |p| p + 1) as f64;
    let bytes = 4.0 * positions.len() as f64 * (s.n_head * (s.head_dim + s.head_dim_v)) as f64
        + 2.0 * rows * (s.n_head_kv * (s.head_dim + s.head_dim_v)) as f64;
    (flops, bytes)
}
