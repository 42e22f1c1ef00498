//! Mixture of experts on the host: the router picks each token's experts ([`route`], as
//! llama.cpp's `build_moe_ffn` does), then the batch's tokens are grouped by expert and
//! each active expert runs once on all of its tokens ([`run`]): one GEMM per active expert
//! in prefill, only the chosen experts' rows in decode.

use crate::block::BlockOps;
use crate::cpu::ops;
use crate::cpu::matmul::{matmul_many, QuantizedInput};
use crate::matrix::{EngineFailure, FeedForward};
use crate::plan::{Gating, MoeFfn, Routing};

/// Each token's chosen experts and their weights, `[n, n_used]` in the router's order
/// (highest first).
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    /// Experts per token.
    pub n_used: usize,
    /// Chosen expert of each (token, slot).
    pub experts: Vec<usize>,
    /// Its weight.
    pub weights: Vec<f32>,
}

/// The smallest weight sum renormalization divides by (f16's smallest normal, as llama.cpp).
const MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

/// Route `n` tokens from their router logits (`[n, n_expert]`).
pub fn route(m: &Routing, logits: &[f32], n_expert: usize) -> Routes {
    let k = m.n_used;
    let n = logits.len() / n_expert;
    let (mut experts, mut weights) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
    let mut probs = vec![0f32; n_expert];
    for row in logits.chunks_exact(n_expert) {
        probs.copy_from_slice(row);
        if m.gating == Gating::Softmax {
            ops::softmax(&mut probs);
        }
        let top = top_k(&probs, k);
        let mut w: Vec<f32> = top.iter().map(|&e| probs[e]).collect();
        if m.gating == Gating::SoftmaxOfTopK {
            ops::softmax(&mut w);
        }
        if m.normalize {
            let sum = w.iter().sum::<f32>().max(MIN_WEIGHT_SUM);
            w.iter_mut().for_each(|v| *v /= sum);
        }
        if m.scale != 0.0 && m.scale != 1.0 {
            w.iter_mut().for_each(|v| *v *= m.scale);
        }
        experts.extend(top);
        weights.extend(w);
    }
    Routes { n_used: k, experts, weights }
}

/// The indices of the `k` largest values, largest first (ties: the lower index first).
fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let by_value = |a: &usize, b: &usize| v[*b].total_cmp(&v[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_value);
        idx.truncate(k);
    }
    idx.sort_by(by_value);
    idx
}

/// `out = Σ_slot weight · expert(x)` for the `n` tokens of `x` (`[n, n_embd]`): the router
/// (on `router_in`, usually `x` itself) through `ops`, then each active expert once on the
/// rows routed to it, its outputs summed per token in slot order (llama.cpp's order of additions).
pub fn run(ops: &dyn BlockOps, m: &MoeFfn, router_in: &[f32], x: &[f32], out: &mut [f32]) -> Result<(), EngineFailure> {
    let n_embd = m.router.cols;
    let n = x.len() / n_embd;
    let n_expert = m.experts.len();
    let mut logits = vec![0f32; n * n_expert];
    ops.matmul_group(&[&m.router], router_in, &mut [&mut logits])?;
    if let Some(b) = &m.router_bias {
        ops::add_bias(&mut logits, b);
    }
    let routes = route(&m.routing, &logits, n_expert);
    let k = routes.n_used;
    // Each expert's (token, slot) pairs, in token order.
    let mut assigned: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n_expert];
    for (i, &e) in routes.experts.iter().enumerate() {
        assigned[e].push((i / k, i % k));
    }
    let active: Vec<usize> = (0..n_expert).filter(|&e| !assigned[e].is_empty()).collect();
    // Each active expert's rows of x, and its outputs.
    let xs: Vec<Vec<f32>> = active
        .iter()
        .map(|&e| assigned[e].iter().flat_map(|&(t, _)| &x[t * n_embd..(t + 1) * n_embd]).copied().collect())
        .collect();
    let mut ys: Vec<Vec<f32>> = active.iter().map(|&e| vec![0f32; assigned[e].len() * n_embd]).collect();
    let blocks: Vec<FeedForward<'_>> = active.iter().map(|&e| m.experts[e].block()).collect();
    let x_refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
    let mut y_refs: Vec<&mut [f32]> = ys.iter_mut().map(|v| v.as_mut_slice()).collect();
    ops.experts(&blocks, &x_refs, &mut y_refs)?;
    // Each (token, slot)'s weighted expert output.
    let mut slots = vec![0f32; n * k * n_embd];
    for (&e, ye) in active.iter().zip(&ys) {
        let pairs = &assigned[e];
        for (&(t, s), y) in pairs.iter().zip(ye.chunks_exact(n_embd)) {
            let w = routes.weights[t * k + s] * m.expert_scales.as_ref().map_or(1.0, |sc| sc[e]);
            let dst = &mut slots[(t * k + s) * n_embd..(t * k + s + 1) * n_embd];
            dst.iter_mut().zip(y).for_each(|(d, v)| *d = v * w);
        }
    }
    for (o, token) in out.chunks_exact_mut(n_embd).zip(slots.chunks_exact(k * n_embd)) {
        o.copy_from_slice(&token[..n_embd]);
        for slot in token.chunks_exact(n_embd).skip(1) {
            ops::add_assign(o, slot);
        }
    }
    Ok(())
}

/// `outs[i] = blocks[i](xs[i])` on the CPU, every expert's gate/up in one parallel region,
/// then every down: a decode step's few-row blocks would otherwise each pay fork/joins.
pub fn experts_on_cpu(blocks: &[FeedForward<'_>], xs: &[&[f32]], outs: &mut [&mut [f32]]) {
    let quantized = |ty: quant::GgmlType, x: &[f32], k: usize| QuantizedInput::new(ty.vec_dot_type(), x, k);
    let ins_gate: Vec<QuantizedInput> = blocks.iter().zip(xs).map(|(b, x)| quantized(b.gate.ty, x, b.gate.cols)).collect();
    // Up shares gate's input unless its type wants other activations.
    let ins_up: Vec<Option<QuantizedInput>> = blocks
        .iter()
        .zip(xs)
        .map(|(b, x)| (b.up.ty.vec_dot_type() != b.gate.ty.vec_dot_type()).then(|| quantized(b.up.ty, x, b.up.cols)))
        .collect();
    let rows = |b: &FeedForward<'_>, x: &[f32]| x.len() / b.gate.cols;
    let mut gates: Vec<Vec<f32>> = blocks.iter().zip(xs).map(|(b, x)| vec![0f32; rows(b, x) * b.gate.rows]).collect();
    let mut ups: Vec<Vec<f32>> = blocks.iter().zip(xs).map(|(b, x)| vec![0f32; rows(b, x) * b.up.rows]).collect();
    {
        let ws: Vec<&crate::weights::Weight> = blocks.iter().flat_map(|b| [b.gate, b.up]).collect();
        let ins: Vec<&QuantizedInput> = ins_gate.iter().zip(&ins_up).flat_map(|(g, u)| [g, u.as_ref().unwrap_or(g)]).collect();
        let mut outs_gu: Vec<&mut [f32]> = gates.iter_mut().zip(ups.iter_mut()).flat_map(|(g, u)| [g.as_mut_slice(), u.as_mut_slice()]).collect();
        matmul_many(&ws, &ins, &mut outs_gu);
    }
    for ((b, g), u) in blocks.iter().zip(&mut gates).zip(&mut ups) {
        if let Some(bias) = b.biases {
            bias.add_to_gate_up(g, u);
        }
        ops::gated(b.activation, g, u);
    }
    let ins_down: Vec<QuantizedInput> = blocks.iter().zip(&gates).map(|(b, g)| quantized(b.down.ty, g, b.down.cols)).collect();
    let ws: Vec<&crate::weights::Weight> = blocks.iter().map(|b| b.down).collect();
    let ins: Vec<&QuantizedInput> = ins_down.iter().collect();
    matmul_many(&ws, &ins, outs);
    for (b, out) in blocks.iter().zip(outs.iter_mut()) {
        if let Some(bias) = b.biases {
            bias.add_to_down(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.3, 0.5, -1.0], 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[2.0, 1.0], 2), vec![0, 1]);
        assert_eq!(top_k(&[f32::NEG_INFINITY, 0.0, 1.0], 1), vec![2]);
    }
}
