//! Mixture of experts: routing as llama.cpp's `build_moe_ffn` does it, and the expert-grouped
//! host path against a plain f64 reference that runs every token through its experts one by one.

use engine::arch::Activation;
use engine::matrix::Dispatcher;
use engine::moe::{route, run};
use engine::plan::{FeedForwardPart, Gating, MoeFfn, Routing};
use engine::random_model::RandomModelSpec;
use engine::weights::Weight;
use engine::Model;
use gguf::GgmlType;
use std::sync::Arc;

fn moe_model(ty: GgmlType, experts: usize, used: usize) -> Model {
    arch_model("qwen3moe", ty, None, experts, used)
}

fn arch_model(arch: &str, ty: GgmlType, expert_ty: Option<GgmlType>, experts: usize, used: usize) -> Model {
    let spec = RandomModelSpec { arch: arch.into(), experts, experts_used: used, expert_ty, ..RandomModelSpec::preset("tiny", ty).unwrap() };
    let file = gguf::GgufFile::from_bytes(spec.build().unwrap().to_bytes()).unwrap();
    Model::from_file(Arc::new(file), &mut |_, _| {}).unwrap()
}

fn moe_of(m: &Model, il: usize) -> &MoeFfn {
    match &m.layers[il].ffn {
        FeedForwardPart::Moe(moe) => moe,
        FeedForwardPart::Dense(_) => panic!("layer {il} is dense"),
    }
}

fn dense(w: &Weight) -> Vec<Vec<f64>> {
    let mut row = vec![0f32; w.cols];
    (0..w.rows)
        .map(|r| {
            w.dequantize_row(r, &mut row);
            row.iter().map(|&v| v as f64).collect()
        })
        .collect()
}

fn matvec(w: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
    w.iter().map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn softmax(v: &[f64]) -> Vec<f64> {
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

fn plus(a: Vec<f64>, b: Option<&Vec<f32>>) -> Vec<f64> {
    match b {
        Some(b) => a.iter().zip(b).map(|(a, b)| a + *b as f64).collect(),
        None => a,
    }
}

/// One token through the layer's MoE in f64, as llama.cpp's `build_moe_ffn` defines it: the
/// router's logits (+ bias); qwen3moe: softmax over all, top-k, renormalized; gpt-oss: top-k
/// of the logits, softmax over those; each chosen expert's gated block (+ biases; SiLU, or
/// gpt-oss's clamped SwiGLU).
fn reference(m: &MoeFfn, x: &[f64]) -> Vec<f64> {
    let logits = plus(matvec(&dense(&m.router), x), m.router_bias.as_ref());
    let scores = match m.routing.gating {
        Gating::Softmax => softmax(&logits),
        Gating::SoftmaxOfTopK => logits.clone(),
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let chosen = &order[..m.routing.n_used];
    let mut weights: Vec<f64> = chosen.iter().map(|&i| scores[i]).collect();
    if m.routing.gating == Gating::SoftmaxOfTopK {
        weights = softmax(&weights);
    }
    if m.routing.normalize {
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
    }
    let mut out = vec![0f64; x.len()];
    for (&i, w) in chosen.iter().zip(weights) {
        let ex = &m.experts[i];
        let b = ex.biases.as_ref();
        let g = plus(matvec(&dense(&ex.gate), x), b.map(|b| &b.gate));
        let u = plus(matvec(&dense(&ex.up), x), b.map(|b| &b.up));
        let mid: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| match ex.activation {
                Activation::Silu => g / (1.0 + (-g).exp()) * u,
                Activation::SwigluOai => {
                    let g = g.min(7.0);
                    g / (1.0 + (-1.702 * g).exp()) * (u.clamp(-7.0, 7.0) + 1.0)
                }
                other => panic!("{other:?} is no expert activation here"),
            })
            .collect();
        let y = plus(matvec(&dense(&ex.down), &mid), b.map(|b| &b.down));
        for (o, v) in out.iter_mut().zip(y) {
            *o += w * v;
        }
    }
    out
}

fn random_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * d)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

#[test]
fn routing_picks_the_top_k_and_weights_them_as_llama_cpp() {
    let logits = [1.0f32, 3.0, 2.0, 0.5, 3.0, -1.0];
    let softmax = Routing { n_used: 3, gating: Gating::Softmax, normalize: true, scale: 1.0 };
    let r = route(&softmax, &logits, 6);
    assert_eq!(r.experts, vec![1, 4, 2], "largest first, ties by index");
    let (e3, e2) = (3f32.exp(), 2f32.exp());
    let want = [e3 / (2.0 * e3 + e2), e3 / (2.0 * e3 + e2), e2 / (2.0 * e3 + e2)];
    for (a, b) in r.weights.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{:?} vs {want:?}", r.weights);
    }
    // Unnormalized: the full softmax's probabilities; scaled.
    let raw = route(&Routing { normalize: false, scale: 2.0, ..softmax }, &logits, 6);
    let z: f32 = logits.iter().map(|l| l.exp()).sum();
    assert!((raw.weights[0] - 2.0 * e3 / z).abs() < 1e-6);
    // gpt-oss: softmax over the chosen logits only.
    let topk = route(&Routing { gating: Gating::SoftmaxOfTopK, normalize: false, ..softmax }, &logits, 6);
    assert_eq!(topk.experts, r.experts);
    for (a, b) in topk.weights.iter().zip(r.weights) {
        assert!((a - b).abs() < 1e-6, "the same as the renormalized full softmax");
    }
    // Two tokens route independently.
    let two = route(&softmax, &[0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 4.0], 6);
    assert_eq!(&two.experts[..1], &[2]);
    assert_eq!(&two.experts[3..5], &[0, 5]);
}

#[test]
fn grouped_experts_match_a_token_by_token_f64_reference() {
    let cases = [
        ("qwen3moe", GgmlType::Q8_0, None, 8, 2),
        ("qwen3moe", GgmlType::Q4_K, None, 6, 3),
        ("qwen3moe", GgmlType::F16, None, 4, 4),
        ("gpt-oss", GgmlType::Q8_0, Some(GgmlType::MXFP4), 8, 4),
        ("gpt-oss", GgmlType::F16, None, 6, 2),
    ];
    for (arch, ty, expert_ty, experts, used) in cases {
        let model = arch_model(arch, ty, expert_ty, experts, used);
        let m = moe_of(&model, 1);
        let d = m.router.cols;
        // 40 tokens: some experts get ≥ 8 (the tiled GEMM path), some fewer (the dot kernels).
        let n = 40;
        let x = random_rows(n, d, experts as u64);
        let mut out = vec![0f32; n * d];
        run(&Dispatcher::cpu_only(), m, &x, &x, &mut out).unwrap();
        let (mut err, mut norm) = (0f64, 0f64);
        for (t, got) in out.chunks(d).enumerate() {
            let xt: Vec<f64> = x[t * d..(t + 1) * d].iter().map(|&v| v as f64).collect();
            for (a, b) in got.iter().zip(reference(m, &xt)) {
                err += (*a as f64 - b).powi(2);
                norm += b * b;
            }
        }
        // 8-bit activations against f64: small; a wrong expert, weight or order gives order 1.
        assert!(err / norm < 2e-3, "{arch} {}: normalized squared error {:.2e}", ty.name(), err / norm);
    }
}

#[test]
fn a_batch_gives_what_its_tokens_give_one_at_a_time() {
    let model = moe_model(GgmlType::Q8_0, 8, 2);
    let m = moe_of(&model, 0);
    let d = m.router.cols;
    let n = 24;
    let x = random_rows(n, d, 7);
    let cpu = Dispatcher::cpu_only();
    let mut batch = vec![0f32; n * d];
    run(&cpu, m, &x, &x, &mut batch).unwrap();
    for t in 0..n {
        let mut one = vec![0f32; d];
        run(&cpu, m, &x[t * d..(t + 1) * d], &x[t * d..(t + 1) * d], &mut one).unwrap();
        let dev = one.iter().zip(&batch[t * d..]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = one.iter().map(|v| v.abs()).fold(0f32, f32::max);
        assert!(dev <= 1e-4 * scale, "token {t}: batch and decode differ by {dev} (scale {scale})");
    }
}
