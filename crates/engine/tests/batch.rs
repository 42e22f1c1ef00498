//! A batched forward pass over several sequences equals running each one alone.

mod common;

use engine::forward::Sequence;
use engine::{Model, Runner};

#[test]
fn batched_sequences_match_separate_runs() {
    let model = Model::load(&common::model_path("gemma-3-270m-q4_k_m.gguf"), &mut |_, _| {}).unwrap();
    let r = Runner::new(model, 2).unwrap();
    // Every prompt has >= 8 tokens and the decode step has < 8 rows, so the separate and the
    // batched runs take the same kernel paths (tiled GEMM for N >= 8, dot products below):
    // the results must then agree to rounding, where a mix of paths would differ by the
    // 8-bit activation noise of two summation orders.
    let prompts: [&[u32]; 3] = [
        &[2, 9259, 236764, 1041, 1463, 563, 506, 5279],
        &[2, 3689, 563, 506, 5279, 529, 7001, 236881, 669, 5279, 529],
        &[2, 818, 4083, 529, 20124, 563, 496, 3925, 529],
    ];
    // Separately: prefill, then one decode step each.
    let mut alone = Vec::new();
    for p in prompts {
        let mut cache = r.new_cache(64);
        r.forward(&mut cache, p, 0..p.len()).unwrap();
        alone.push(r.forward(&mut cache, &[107], 0..1).unwrap());
    }
    // Together: prefill all in one batch, then one batched decode step.
    let mut caches: Vec<_> = (0..3).map(|_| r.new_cache(64)).collect();
    let mut seqs: Vec<Sequence> = caches
        .iter_mut()
        .zip(prompts)
        .map(|(cache, p)| Sequence { cache, tokens: p, logit_rows: p.len() - 1..p.len() })
        .collect();
    r.forward_batch(&mut seqs).unwrap();
    let step = [107u32];
    let mut seqs: Vec<Sequence> =
        caches.iter_mut().map(|cache| Sequence { cache, tokens: &step, logit_rows: 0..1 }).collect();
    let together = r.forward_batch(&mut seqs).unwrap();
    for (a, b) in alone.iter().zip(&together) {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-3, "batched logits differ by {diff}");
    }
}
