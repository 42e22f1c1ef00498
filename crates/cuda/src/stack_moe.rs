//! Mixture-of-experts feed-forward inside a whole stack on the card: the router's logits are
//! computed on the card and come down (one wait per MoE layer), the host routes them exactly
//! as the CPU does (`engine::moe::route`), and each active expert then runs on the card on
//! the rows routed to it: gathered, gate/up, activation, down, and added into the layer's
//! output with the token's weight. Only the chosen experts' weights are read.

use crate::gpu::{ensure_dev, err, int, DevBuf, Gpu, KArg, Res};
use crate::kernels::activation_kernel;
use crate::stack::{PartIo, FFN_CHUNK, ROW_THREADS};
use cudarc::driver::result as drv;
use engine::plan::{MoeFfn, WeightRole};

/// Per-call buffers of the MoE layers (grown on demand).
#[derive(Default)]
pub(crate) struct Buffers {
    logits: Option<DevBuf>,
    /// Each active expert's token rows and weights (i32 and f32), in expert order.
    routes: Option<DevBuf>,
    /// An expert's gathered rows (f16), gate/up (f32) and their product (f16), outputs (f32).
    rows: Option<DevBuf>,
    mid: Option<DevBuf>,
    out: Option<DevBuf>,
}

/// The kernels of this module (after the helpers).
pub(crate) const KERNELS: &str = r#"
// An expert's rows: dst[i] = src[idx[i]] (f16 rows of d), one block per row.
extern "C" __global__ void moe_gather(const u16* __restrict__ src, u16* __restrict__ dst, const int* __restrict__ idx, int d) {
    const i64 from = (i64)idx[blockIdx.x] * d, to = (i64)blockIdx.x * d;
    for (int e = threadIdx.x; e < d; e += blockDim.x) dst[to + e] = src[from + e];
}
// Its weighted outputs added to their tokens' rows: out[idx[i]] += w[i] * y[i] (f32 rows of d).
// A token appears once per expert, and experts run one after another: no two writers of a row.
extern "C" __global__ void moe_scatter(const float* __restrict__ y, float* __restrict__ out, const int* __restrict__ idx, const float* __restrict__ w, int d) {
    const i64 to = (i64)idx[blockIdx.x] * d, from = (i64)blockIdx.x * d;
    const float s = w[blockIdx.x];
    for (int e = threadIdx.x; e < d; e += blockDim.x) out[to + e] += s * y[from + e];
}
"#;

/// Whether the stack can run this MoE part: `allowed` (`Untried::moe`, until a GPU has run
/// it), experts without biases and with an activation kernel, no shared MLP or shared expert
/// beside them (those run op by op).
pub(crate) fn check(m: &MoeFfn, allowed: bool) -> Result<(), String> {
    if !allowed {
        return Err("mixture-of-experts layers run op by op, not as a stack on the card (TANDEM_CUDA_MOE=1 tries the card's, not yet run on a GPU)".into());
    }
    if m.shared.is_some() || m.shared_expert.is_some() {
        return Err("experts with a shared MLP or shared expert beside them run op by op, not as a stack on the card".into());
    }
    let Some(e) = m.experts.first() else { return Err("a mixture of no experts".into()) };
    if !m.experts.iter().all(|e| e.block().is_plain()) || activation_kernel(e.activation).is_none() {
        return Err(format!("no kernels for {:?} experts with biases {}", e.activation, e.biases.is_some()));
    }
    Ok(())
}

/// Each active expert's share of a batch: its tokens and their weights.
#[derive(Debug, PartialEq)]
pub(crate) struct ExpertRows {
    pub(crate) expert: usize,
    pub(crate) tokens: Vec<i32>,
    pub(crate) weights: Vec<f32>,
}

/// The router's logits (`[n, n_expert]`, bias not yet added) routed as the CPU routes them,
/// grouped by expert (ascending), each expert's tokens in token order, their weights times
/// the expert's scale.
pub(crate) fn group(m: &MoeFfn, mut logits: Vec<f32>) -> Vec<ExpertRows> {
    let n_expert = m.experts.len();
    if let Some(b) = &m.router_bias {
        logits.chunks_exact_mut(n_expert).for_each(|row| row.iter_mut().zip(b).for_each(|(l, b)| *l += b));
    }
    let routes = engine::moe::route(&m.routing, &logits, n_expert);
    let k = routes.n_used;
    let mut by_expert: Vec<ExpertRows> = (0..n_expert).map(|e| ExpertRows { expert: e, tokens: Vec::new(), weights: Vec::new() }).collect();
    for (i, (&e, &w)) in routes.experts.iter().zip(&routes.weights).enumerate() {
        let scale = m.expert_scales.as_ref().map_or(1.0, |s| s[e]);
        by_expert[e].tokens.push((i / k) as i32);
        by_expert[e].weights.push(w * scale);
    }
    by_expert.retain(|r| !r.tokens.is_empty());
    by_expert
}

/// `o = Σ_slot weight · expert(h)` on the card (see the module docs): the router and each
/// expert's gate, up and down weights (in expert order) from the layer's weights.
pub(crate) fn run(gpu: &Gpu, b: &mut Buffers, expand: &mut Option<DevBuf>, m: &MoeFfn, io: &PartIo<'_>) -> Res<()> {
    let w = io.weights;
    let router = w.get(WeightRole::FfnRouter)?;
    let (gate, up, down) = (w.all(WeightRole::ExpertGate), w.all(WeightRole::ExpertUp), w.all(WeightRole::ExpertDown));
    let (n, d, n_expert) = (io.n, router.cols, m.experts.len());
    if [gate.len(), up.len(), down.len()] != [n_expert; 3] || router.rows != n_expert {
        return Err("the experts' weights on the card do not match the layer".into());
    }
    let stream = gpu.s_comp.cu_stream();
    // Router logits down; the host routes (a wait per MoE layer).
    let logits_dev = ensure_dev(&gpu.ctx, &mut b.logits, n * n_expert * 4)?;
    router.matmul(gpu, io.h, logits_dev, n, expand)?;
    let mut logits = vec![0f32; n * n_expert];
    unsafe { drv::memcpy_dtoh_async(&mut logits[..], logits_dev, stream) }.map_err(err("download router logits"))?;
    gpu.s_comp.synchronize().map_err(err("router logits"))?;
    let experts = group(m, logits);
    // Every active expert's tokens then weights, up in one copy (from pageable memory: the
    // call returns once the driver holds the bytes).
    let total: usize = experts.iter().map(|e| e.tokens.len()).sum();
    let mut words: Vec<u32> = Vec::with_capacity(2 * total);
    for e in &experts {
        words.extend(e.tokens.iter().map(|&t| t as u32));
        words.extend(e.weights.iter().map(|w| w.to_bits()));
    }
    let routes = ensure_dev(&gpu.ctx, &mut b.routes, words.len().max(1) * 4)?;
    unsafe { drv::memcpy_htod_async(routes, &words[..], stream) }.map_err(err("upload routes"))?;
    // An expert's rows go through in chunks (its intermediate is 10 bytes per row and feature).
    let ff = gate.iter().map(|w| w.rows).max().unwrap_or(0);
    let chunk = n.min(FFN_CHUNK);
    let rows = ensure_dev(&gpu.ctx, &mut b.rows, chunk * d * 2)?;
    let mid = ensure_dev(&gpu.ctx, &mut b.mid, chunk * ff * 10)?;
    let out = ensure_dev(&gpu.ctx, &mut b.out, chunk * d * 4)?;
    unsafe { drv::memset_d8_async(io.o, 0, n * d * 4, stream) }.map_err(err("clear the output"))?;
    let kernel = activation_kernel(m.experts[0].activation).ok_or("the stack was checked for its activations")?;
    let mut at = 0u64;
    for e in &experts {
        let all = e.tokens.len();
        let (idx0, wts0) = (routes + at * 4, routes + (at + all as u64) * 4);
        at += 2 * all as u64;
        let (wg, wu, wd) = (&gate[e.expert], &up[e.expert], &down[e.expert]);
        if (wg.cols, wu.rows, wu.cols, wd.rows, wd.cols) != (d, wg.rows, d, d, wg.rows) {
            return Err(format!("expert {}: feed-forward weights do not chain", e.expert));
        }
        let f = wg.rows;
        for c0 in (0..all).step_by(chunk) {
            let len = chunk.min(all - c0);
            let (idx, wts) = (idx0 + (c0 * 4) as u64, wts0 + (c0 * 4) as u64);
            let (gate, up, act) = (mid, mid + (len * f * 4) as u64, mid + (len * f * 8) as u64);
            gpu.launch("moe_gather", int(len)? as u32, ROW_THREADS, &[KArg::P(io.h), KArg::P(rows), KArg::P(idx), KArg::I(int(d)?)])?;
            wg.matmul(gpu, rows, gate, len, expand)?;
            wu.matmul(gpu, rows, up, len, expand)?;
            gpu.launch_activation(kernel, gate, up, act, len * f)?;
            wd.matmul(gpu, act, out, len, expand)?;
            gpu.launch("moe_scatter", int(len)? as u32, ROW_THREADS, &[KArg::P(out), KArg::P(io.o), KArg::P(idx), KArg::P(wts), KArg::I(int(d)?)])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::plan::{Gating, Routing};

    /// Grouping keeps the CPU's routing: every (token, slot) once, under its expert, with the
    /// CPU's weight times the expert's scale; the router bias moves the choice as on the CPU.
    #[test]
    fn grouping_by_expert_keeps_every_route_and_its_weight() {
        let spec = engine::random_model::RandomModelSpec { arch: "qwen3moe".into(), ..engine::random_model::RandomModelSpec::preset("tiny", quant::GgmlType::Q8_0).unwrap() };
        let bytes = spec.build().unwrap().to_bytes();
        let model = engine::Model::from_file(std::sync::Arc::new(gguf::GgufFile::from_bytes(bytes).unwrap()), &mut |_, _| {}).unwrap();
        let Some(engine::plan::FeedForwardPart::Moe(m)) = model.layers.iter().map(|l| &l.ffn).find(|f| matches!(f, engine::plan::FeedForwardPart::Moe(_))) else {
            panic!("the tiny qwen3moe has MoE layers")
        };
        let n_expert = m.experts.len();
        let n = 7;
        let logits: Vec<f32> = (0..n * n_expert).map(|i| ((i * 7919) % 101) as f32 / 17.0 - 3.0).collect();
        let groups = group(m, logits.clone());
        let routes = engine::moe::route(&m.routing, &logits, n_expert);
        let k = routes.n_used;
        assert_eq!(groups.iter().map(|g| g.tokens.len()).sum::<usize>(), n * k);
        assert!(groups.windows(2).all(|w| w[0].expert < w[1].expert), "experts ascending");
        for (i, (&e, &w)) in routes.experts.iter().zip(&routes.weights).enumerate() {
            let g = groups.iter().find(|g| g.expert == e).expect("every chosen expert is active");
            let at = g.tokens.iter().position(|&t| t as usize == i / k).expect("its token is listed");
            assert_eq!(g.weights[at], w);
        }
        assert!(groups.iter().all(|g| g.tokens.windows(2).all(|t| t[0] < t[1])), "tokens in order, once per expert");
    }

    /// The router bias is added before routing (a large one picks its expert for every
    /// token), and each expert's scale multiplies its weights.
    #[test]
    fn router_bias_and_expert_scales_apply() {
        let spec = engine::random_model::RandomModelSpec { arch: "qwen3moe".into(), ..engine::random_model::RandomModelSpec::preset("tiny", quant::GgmlType::Q8_0).unwrap() };
        let bytes = spec.build().unwrap().to_bytes();
        let mut model = engine::Model::from_file(std::sync::Arc::new(gguf::GgufFile::from_bytes(bytes).unwrap()), &mut |_, _| {}).unwrap();
        let m = model.layers.iter_mut().find_map(|l| match &mut l.ffn {
            engine::plan::FeedForwardPart::Moe(m) => Some(m),
            _ => None,
        });
        let m = m.expect("the tiny qwen3moe has MoE layers");
        m.routing = Routing { gating: Gating::Softmax, normalize: false, scale: 1.0, ..m.routing };
        let n_expert = m.experts.len();
        let logits = vec![0f32; 3 * n_expert];
        let mut bias = vec![0f32; n_expert];
        bias[n_expert - 1] = 50.0;
        m.router_bias = Some(bias);
        m.expert_scales = Some((0..n_expert).map(|e| 1.0 + e as f32).collect());
        let groups = group(m, logits);
        let last = groups.iter().find(|g| g.expert == n_expert - 1).expect("the biased expert is chosen");
        assert_eq!(last.tokens, vec![0, 1, 2]);
        // Its softmax weight is ~1, times its scale.
        assert!(last.weights.iter().all(|&w| (w - n_expert as f32).abs() < 1e-3), "{:?}", last.weights);
    }
}
