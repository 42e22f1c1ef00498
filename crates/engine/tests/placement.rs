//! Placement, the prepared-weight cache, N buckets and CPU fallback, on real engines:
//! the reference accelerator, and the CPU wrapped as an accelerator with injected faults.

mod common;

use engine::matrix::cache::CacheBudget;
use engine::matrix::cpu_engine::CpuEngine;
use engine::matrix::fault::FaultyEngine;
use engine::matrix::policy::{Backend, Calibration, CalibrationEntry, PlacementPolicy};
use engine::matrix::reference::ReferenceEngine;
use engine::matrix::{Availability, Capabilities, Dispatcher, EngineFailure, MatmulShape, MatrixEngine, WeightKey};
use engine::random_model::RandomModelSpec;
use engine::weights::Weight;
use engine::{Model, Runner};
use gguf::GgmlType;
use std::sync::Arc;

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// A CPU so slow in the cost model that any accelerator wins: isolates the min-batch rule.
const SLOW_CPU: (f64, f64) = (1.0, 1.0);

fn tiny_model(ty: GgmlType) -> Model {
    let spec = RandomModelSpec::preset("tiny", ty).unwrap();
    let file = gguf::GgufFile::from_bytes(spec.build().unwrap().to_bytes()).unwrap();
    Model::from_file(Arc::new(file), &mut |_, _| {}).unwrap()
}

fn runner(model: Model, engines: Vec<Arc<dyn MatrixEngine>>, backend: Backend, min_batch: usize, budget: CacheBudget) -> Runner {
    let policy = PlacementPolicy::new(backend, min_batch, None, SLOW_CPU);
    Runner::with_dispatcher(model, 2, Dispatcher::new(engines, policy, budget, false).unwrap()).unwrap()
}

fn logits_of(r: &Runner, tokens: &[u32]) -> Vec<f32> {
    let mut cache = r.new_cache(tokens.len());
    r.forward(&mut cache, tokens, 0..tokens.len()).unwrap()
}

fn prompt(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7919 + 13) % vocab).collect()
}

struct Unavailable;
impl MatrixEngine for Unavailable {
    fn name(&self) -> &str {
        "gone"
    }
    fn availability(&self) -> Availability {
        Availability::Unavailable("no driver found".into())
    }
    fn supports(&self, _: &MatmulShape) -> Result<(), String> {
        Ok(())
    }
    fn throughput_hint(&self) -> (f64, f64) {
        (1e15, 1e12)
    }
    fn prepare(&self, _: &WeightKey, _: &Weight, _: usize) -> Result<usize, EngineFailure> {
        unreachable!("never chosen")
    }
    fn evict(&self, _: &WeightKey, _: usize) {}
    fn matmul(&self, _: &[&WeightKey], _: &[&Weight], _: usize, _: &[f32], _: usize, _: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        unreachable!("never chosen")
    }
}

#[test]
fn policy_decides_with_reasons() {
    let refe = ReferenceEngine::new();
    let gone = Unavailable;
    let engines: [&dyn MatrixEngine; 2] = [&gone, &refe];
    let shape = |n| MatmulShape { m: 576, k: 576, n, ty: GgmlType::Q4_1 };
    let auto = PlacementPolicy::new(Backend::Auto, 64, None, SLOW_CPU);
    let d = auto.decide(&engines, &shape(63));
    assert_eq!(d.engine, None);
    assert!(d.reason.contains("no driver found") && d.reason.contains("N=63 < --offload-min-batch 64"), "{}", d.reason);
    assert_eq!(auto.decide(&engines, &shape(64)).engine, Some(1));
    let d = auto.decide(&engines, &MatmulShape { k: 20000, ..shape(512) });
    assert!(d.engine.is_none() && d.reason.contains("does not support"), "{}", d.reason);
    assert_eq!(PlacementPolicy::new(Backend::Cpu, 64, None, SLOW_CPU).decide(&engines, &shape(4096)).engine, None);
    // The cost model keeps small work on a fast CPU even above min-batch.
    let fast_cpu = PlacementPolicy::new(Backend::Auto, 1, None, (1e20, 1e20));
    let d = fast_cpu.decide(&engines, &shape(64));
    assert!(d.engine.is_none() && d.reason.contains("cost model"), "{}", d.reason);
    // A calibration file overrides both rules.
    let cal = Calibration {
        machine: "test".into(),
        entries: vec![CalibrationEntry { engine: "ref".into(), m: 576, k: 576, ty: "Q4_1".into(), crossover_n: Some(8), timings: vec![] }],
    };
    let calibrated = PlacementPolicy::new(Backend::Auto, 64, Some(&cal), SLOW_CPU);
    assert_eq!(calibrated.decide(&engines, &shape(8)).engine, Some(1));
    assert_eq!(calibrated.decide(&engines, &shape(7)).engine, None);
}

#[test]
fn unknown_or_unavailable_backend_is_a_clear_error() {
    let policy = |b: &str| PlacementPolicy::new(Backend::parse(b), 64, None, SLOW_CPU);
    let engines = || -> Vec<Arc<dyn MatrixEngine>> { vec![Arc::new(Unavailable)] };
    let e = Dispatcher::new(engines(), policy("gone"), CacheBudget::default(), false).err().unwrap();
    assert!(e.to_string().contains("backend 'gone' is unavailable: no driver found"), "{e}");
    let e = Dispatcher::new(engines(), policy("tpu"), CacheBudget::default(), false).err().unwrap();
    assert!(e.to_string().contains("unknown backend 'tpu'"), "{e}");
}

#[test]
fn failing_engine_never_leaves_output_uncomputed() {
    // The CPU wrapped as an accelerator computes exactly what the CPU path does, so with
    // faults injected every k-th op the outputs must equal CPU-only outputs bit for bit.
    let model = common::model_path(SMOLLM);
    let load = || Model::load(&model, &mut |_, _| {}).unwrap();
    let tokens = prompt(80, 49152);
    let cpu = logits_of(&Runner::new(load(), 2).unwrap(), &tokens);
    for every in [1, 3, 7] {
        let faulty: Arc<dyn MatrixEngine> = Arc::new(FaultyEngine::new(Arc::new(CpuEngine), every));
        let r = runner(load(), vec![faulty], Backend::Auto, 64, CacheBudget::default());
        let got = logits_of(&r, &tokens);
        assert!(got.iter().all(|v| v.is_finite()));
        assert_eq!(got, cpu, "fault every {every}: outputs differ from CPU-only");
        let stats = r.dispatcher.stats.snapshot();
        let acc = &stats["cpu+faults"];
        // 30 layers × 4 dispatches (Q/K/V, attention, O, the fused feed-forward block) +
        // output = 121 ops offloaded; every k-th fails.
        assert_eq!(acc.failures, 121 / every as u64, "{stats:?}");
        assert_eq!(acc.attention + stats["cpu"].attention, 30, "every layer's attention, on one side or the other");
        assert!(stats["cpu"].matmuls > 0, "failed ops ran on the CPU");
    }
}

#[test]
fn reference_engine_agrees_with_cpu() {
    let model = common::model_path(SMOLLM);
    let load = || Model::load(&model, &mut |_, _| {}).unwrap();
    let tokens = prompt(100, 49152);
    let cpu = logits_of(&Runner::new(load(), 2).unwrap(), &tokens);
    let r = runner(load(), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 64, CacheBudget::default());
    let got = logits_of(&r, &tokens);
    // The reference engine skips activation quantization: close, not identical.
    let max_diff = got.iter().zip(&cpu).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    // Measured 1.2-1.6 over 100 rows x 49152 logits: 8-bit activation noise through 30 layers.
    assert!(max_diff < 2.5, "max logit difference {max_diff}");
    let argmax = |l: &[f32]| l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let rows = cpu.len() / 49152;
    let same = (0..rows).filter(|&t| argmax(&got[t * 49152..][..49152]) == argmax(&cpu[t * 49152..][..49152])).count();
    assert!(same * 10 >= rows * 9, "only {same}/{rows} argmaxes agree");
    // 30 layers × 7 weights + output, each counted once.
    assert_eq!(r.dispatcher.stats.snapshot()["ref"].matmuls, 211);
}

/// The reference engine with feed-forward fusion hidden: every matmul placed on its own.
struct Unfused(ReferenceEngine);
impl MatrixEngine for Unfused {
    fn name(&self) -> &str {
        "ref"
    }
    fn availability(&self) -> Availability {
        self.0.availability()
    }
    fn supports(&self, s: &MatmulShape) -> Result<(), String> {
        self.0.supports(s)
    }
    fn n_buckets(&self) -> Option<&[usize]> {
        self.0.n_buckets()
    }
    fn throughput_hint(&self) -> (f64, f64) {
        self.0.throughput_hint()
    }
    fn prepare(&self, k: &WeightKey, w: &Weight, b: usize) -> Result<usize, EngineFailure> {
        self.0.prepare(k, w, b)
    }
    fn evict(&self, k: &WeightKey, b: usize) {
        self.0.evict(k, b)
    }
    fn matmul(&self, k: &[&WeightKey], w: &[&Weight], b: usize, x: &[f32], n: usize, o: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        self.0.matmul(k, w, b, x, n, o)
    }
    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities { attention: self.0.capabilities().attention, ..Capabilities::default() }
    }
}

#[test]
fn fused_feed_forward_equals_separate_matmuls() {
    // Gemma's GELU and SmolLM2's SiLU; 300 tokens span two N tiles (256 + 44).
    for (ty, n) in [(GgmlType::Q8_0, 300), (GgmlType::Q4_K, 70)] {
        let tokens = prompt(n, 512);
        let fused = runner(tiny_model(ty), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 1, CacheBudget::default());
        let split = runner(tiny_model(ty), vec![Arc::new(Unfused(ReferenceEngine::new()))], Backend::Auto, 1, CacheBudget::default());
        let (a, b) = (logits_of(&fused, &tokens), logits_of(&split, &tokens));
        assert!(a.iter().all(|v| v.is_finite()));
        assert!(a == b, "{}: the fused block must compute what the three matmuls compute", ty.name());
        for (r, blocks) in [(&fused, 2), (&split, 0)] {
            // Every weight counted once either way: 2 layers × 7 + output.
            let s = r.dispatcher.stats.snapshot()["ref"].clone();
            assert_eq!((s.matmuls, s.fused_blocks), (15, blocks));
        }
    }
    let gelu = RandomModelSpec { arch: "gemma3".into(), ..RandomModelSpec::preset("tiny", GgmlType::Q8_0).unwrap() };
    let load = || Model::from_file(Arc::new(gguf::GgufFile::from_bytes(gelu.build().unwrap().to_bytes()).unwrap()), &mut |_, _| {}).unwrap();
    let tokens = prompt(80, 512);
    let fused = runner(load(), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 1, CacheBudget::default());
    let split = runner(load(), vec![Arc::new(Unfused(ReferenceEngine::new()))], Backend::Auto, 1, CacheBudget::default());
    assert!(logits_of(&fused, &tokens) == logits_of(&split, &tokens), "gemma3 (GELU)");
}

#[test]
fn new_prompt_lengths_reuse_bucketed_preparations() {
    let r = runner(tiny_model(GgmlType::Q8_0), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 1, CacheBudget::default());
    let weights = 2 * 7 + 1; // per layer q,k,v,o,gate,up,down + output
    logits_of(&r, &prompt(70, 512));
    let s = r.dispatcher.stats.snapshot()["ref"].clone();
    assert_eq!(s.compiles, weights, "one preparation per weight for bucket 128");
    for n in [65, 100, 128] {
        logits_of(&r, &prompt(n, 512));
    }
    let s2 = r.dispatcher.stats.snapshot()["ref"].clone();
    assert_eq!(s2.compiles, weights, "prompt lengths 65..=128 share bucket 128: no new compile");
    assert!(s2.hits >= 3 * weights);
    // 3000 tokens: tiles of 2048 + 952 (bucket 1024): two new buckets.
    logits_of(&r, &prompt(3000, 512));
    assert_eq!(r.dispatcher.stats.snapshot()["ref"].compiles, 3 * weights);
}

#[test]
fn cache_respects_memory_and_compile_budgets() {
    let model = tiny_model(GgmlType::Q8_0);
    // Each f32 weight: 256x256 = 256 KiB (q,o), 256x128 (k,v), 256x512 (gate, up, down), vocab 512x256.
    let budget = CacheBudget { memory_bytes: 1 << 20, max_compiles: usize::MAX };
    let r = runner(model, vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 1, budget);
    let a = logits_of(&r, &prompt(20, 512));
    assert!(r.dispatcher.cache().used("ref") <= 1 << 20);
    assert!(r.dispatcher.stats.snapshot()["ref"].evictions > 0);
    let b = logits_of(&r, &prompt(20, 512));
    assert_eq!(a, b, "evicted weights are prepared again, results unchanged");

    let r = runner(tiny_model(GgmlType::Q8_0), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 1,
        CacheBudget { memory_bytes: usize::MAX, max_compiles: 5 });
    let got = logits_of(&r, &prompt(20, 512));
    let cpu = logits_of(&Runner::new(tiny_model(GgmlType::Q8_0), 2).unwrap(), &prompt(20, 512));
    let s = r.dispatcher.stats.snapshot();
    assert_eq!(s["ref"].compiles, 5);
    assert!(s["ref"].failures > 0 && s["cpu"].matmuls > 0, "{s:?}");
    let max_diff = got.iter().zip(&cpu).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 0.5, "{max_diff}");
}

#[test]
fn kernel_cache_on_disk_is_reused_and_corruption_rebuilt() {
    use engine::matrix::disk_cache::DiskCache;
    let dir = std::env::temp_dir().join(format!("tandem-kernel-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let make = || -> Arc<dyn MatrixEngine> { Arc::new(ReferenceEngine::with_disk_cache(DiskCache::new(&dir).unwrap())) };
    let toks = prompt(30, 512);
    let first = logits_of(&runner(tiny_model(GgmlType::Q4_0), vec![make()], Backend::Auto, 1, CacheBudget::default()), &toks);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 15, "one entry per weight for bucket 64");
    // Corrupt one entry: it is detected and rebuilt; results are unchanged.
    let mut b = std::fs::read(&files[0]).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&files[0], &b).unwrap();
    let second = logits_of(&runner(tiny_model(GgmlType::Q4_0), vec![make()], Backend::Auto, 1, CacheBudget::default()), &toks);
    assert_eq!(first, second);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 15);
    assert_ne!(std::fs::read(&files[0]).unwrap(), b, "the corrupt entry was rewritten");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two sequences in one batch — one fresh, one continuing a 10-token prefix — then three
/// decode steps of both: every logit row of the batch and of the steps.
fn two_sequences(r: &Runner, a: &[u32], b: &[u32]) -> Vec<f32> {
    use engine::forward::Sequence;
    let (mut ca, mut cb) = (r.new_cache(256), r.new_cache(256));
    r.forward(&mut cb, &prompt(10, 97), 9..10).unwrap();
    let mut out = Vec::new();
    let mut seqs = [
        Sequence { cache: &mut ca, tokens: a, logit_rows: 0..a.len() },
        Sequence { cache: &mut cb, tokens: b, logit_rows: 0..b.len() },
    ];
    r.forward_batch(&mut seqs).unwrap().into_iter().for_each(|l| out.extend(l));
    for step in 0..3u32 {
        let t = [step * 31 + 5];
        let mut seqs = [
            Sequence { cache: &mut ca, tokens: &t, logit_rows: 0..1 },
            Sequence { cache: &mut cb, tokens: &t, logit_rows: 0..1 },
        ];
        r.forward_batch(&mut seqs).unwrap().into_iter().for_each(|l| out.extend(l));
    }
    out
}

#[test]
fn whole_stack_on_an_engine_equals_its_ops_placed_one_by_one() {
    // The stack runs the shared block code over the reference engine's own ops, so it must
    // give exactly what the dispatcher gives placing each op there — and leave in the caches
    // the K/V that the CPU's decode steps (N = 2 < 64) then read. llama and gemma3 (QK-norm,
    // post-norms, GELU, sliding-window layers crossed by 150 tokens).
    let (a, b) = (prompt(150, 512), prompt(70, 509));
    for arch in ["llama", "gemma3"] {
        let spec = RandomModelSpec { arch: arch.into(), ..RandomModelSpec::preset("tiny", GgmlType::Q8_0).unwrap() };
        let load = || Model::from_file(Arc::new(gguf::GgufFile::from_bytes(spec.build().unwrap().to_bytes()).unwrap()), &mut |_, _| {}).unwrap();
        let stack = runner(load(), vec![Arc::new(ReferenceEngine::new().with_stacks())], Backend::Auto, 64, CacheBudget::default());
        let ops = runner(load(), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 64, CacheBudget::default());
        let (got, want) = (two_sequences(&stack, &a, &b), two_sequences(&ops, &a, &b));
        assert!(got.iter().all(|v| v.is_finite()));
        assert!(got == want, "{arch}: the stack differs from its ops one by one");
        let s = stack.dispatcher.stats.snapshot();
        // Two layers once (the batch), then the batch's logits on the same engine; the
        // 10-token prefix and decode steps stay on the CPU.
        assert_eq!((s["ref"].blocks, s["ref"].attention, s["ref"].matmuls, s["ref"].failures), (2, 0, 1, 0), "{arch}: {s:?}");
        assert_eq!(ops.dispatcher.stats.snapshot()["ref"].blocks, 0);
        // An engine that decodes takes every call as a stack (the prefix and the steps too),
        // exactly what its ops give placed one by one there.
        let decodes = runner(load(), vec![Arc::new(ReferenceEngine::new().with_stacks().with_decode(1e12))], Backend::Auto, 64, CacheBudget::default());
        let all_ops = runner(load(), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 1, CacheBudget::default());
        assert!(two_sequences(&decodes, &a, &b) == two_sequences(&all_ops, &a, &b), "{arch}: decode steps as stacks");
        assert_eq!(decodes.dispatcher.stats.snapshot()["ref"].blocks, 2 * 5, "{arch}: five calls, two layers each");
        // The CPU alone differs (quantized activations) but not by much.
        let cpu = two_sequences(&runner(load(), vec![], Backend::Cpu, 64, CacheBudget::default()), &a, &b);
        let diff = got.iter().zip(&cpu).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 0.5, "{arch}: {diff}");
    }
}

#[test]
fn failed_stack_is_recomputed_and_its_cache_rows_rewritten() {
    // Every op fails: the stack leaves NaN in the hidden states and in the new cache rows,
    // then every op placed one by one fails too; everything runs on the CPU, bit for bit.
    let (a, b) = (prompt(100, 512), prompt(64, 509));
    let cpu = two_sequences(&runner(tiny_model(GgmlType::Q4_K), vec![], Backend::Cpu, 64, CacheBudget::default()), &a, &b);
    let faulty: Arc<dyn MatrixEngine> = Arc::new(FaultyEngine::new(Arc::new(ReferenceEngine::new().with_stacks()), 1));
    let r = runner(tiny_model(GgmlType::Q4_K), vec![faulty], Backend::Auto, 64, CacheBudget::default());
    assert_eq!(two_sequences(&r, &a, &b), cpu);
    let s = r.dispatcher.stats.snapshot();
    assert_eq!(s["ref+faults"].blocks, 0);
    // The stack, then per layer Q/K/V, two attentions, O, the feed-forward block, and the
    // output matmul of the batch's 164 logit rows.
    assert_eq!(s["ref+faults"].failures, 1 + 2 * 5 + 1, "{s:?}");
}

#[test]
fn a_model_over_the_budget_is_streamed_or_placed_op_by_op() {
    use engine::matrix::policy::StackCost;
    // Tiny's weights in f32 take 2.5 MiB: with 1 MiB they cannot all stay resident. An engine
    // that streams runs the stack with weights converted per call (exactly what its ops one
    // by one compute, with weights coming and going through the cache); one that does not
    // leaves the ops to be placed one by one.
    let budget = CacheBudget { memory_bytes: 1 << 20, max_compiles: usize::MAX };
    let tokens = prompt(80, 512);
    let streamed = runner(tiny_model(GgmlType::Q8_0), vec![Arc::new(ReferenceEngine::new().with_stacks())], Backend::Auto, 1, budget);
    let resident_only = runner(tiny_model(GgmlType::Q8_0), vec![Arc::new(ReferenceEngine::new().with_stacks().without_streaming())], Backend::Auto, 1, budget);
    // Every op on the engine with room for all weights: what the streamed stack computes.
    let unbounded = runner(tiny_model(GgmlType::Q8_0), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 1, CacheBudget::default());
    assert!(logits_of(&streamed, &tokens) == logits_of(&unbounded, &tokens), "streamed stack vs ops one by one");
    // Ops one by one within the same small budget (a group may lose a member to eviction
    // and run on the CPU): what the engine without streaming falls back to.
    let ops = runner(tiny_model(GgmlType::Q8_0), vec![Arc::new(ReferenceEngine::new())], Backend::Auto, 1, budget);
    assert!(logits_of(&resident_only, &tokens) == logits_of(&ops, &tokens), "no streaming: ops one by one");
    let s = streamed.dispatcher.stats.snapshot()["ref"].clone();
    // Nothing of the stack prepared: only the output projection (its logits are placed on their own).
    assert!(s.blocks == 2 && s.compiles == 1 && s.matmuls == 1 && s.evictions == 0, "{s:?}");
    let s = resident_only.dispatcher.stats.snapshot()["ref"].clone();
    assert!(s.blocks == 0 && s.matmuls > 0 && s.evictions > 0, "{s:?}");

    // The policy's reasons.
    let policy = PlacementPolicy::new(Backend::Auto, 1, None, SLOW_CPU);
    let model = tiny_model(GgmlType::Q8_0);
    let need = |_: &dyn MatrixEngine| 5 << 19;
    let cost = |n| StackCost { n, flops: 1e9, bytes: 1e6, weight_bytes: 1e6, resident: &need };
    let (streams, no_streams) = (ReferenceEngine::new().with_stacks(), ReferenceEngine::new().with_stacks().without_streaming());
    let (d, s) = policy.decide_stack(&[&streams], &model.layers, &cost(80), 1 << 20);
    assert!(d.engine == Some(0) && s && d.reason.contains("streamed") && d.reason.contains("over its 0.00 GiB budget"), "{}", d.reason);
    let (d, s) = policy.decide_stack(&[&no_streams], &model.layers, &cost(80), 1 << 20);
    assert!(d.engine.is_none() && !s && d.reason.contains("ops placed one by one"), "{}", d.reason);
    let (d, s) = policy.decide_stack(&[&no_streams], &model.layers, &cost(80), 4 << 20);
    assert!(d.engine == Some(0) && !s && d.reason.contains("resident"), "{}", d.reason);
    let (d, _) = PlacementPolicy::new(Backend::Auto, 64, None, SLOW_CPU).decide_stack(&[&streams], &model.layers, &cost(63), 4 << 20);
    assert!(d.engine.is_none() && d.reason.contains("N=63 < --offload-min-batch 64"), "{}", d.reason);
    // Decode steps (below the minimum batch): only an engine that decodes, with the weights
    // resident, when reading them at its bandwidth beats the CPU streaming the stored ones.
    let min64 = PlacementPolicy::new(Backend::Auto, 64, None, (1e12, 1e10));
    let decodes = ReferenceEngine::new().with_stacks().with_decode(1e12);
    let (d, _) = min64.decide_stack(&[&decodes], &model.layers, &cost(1), 4 << 20);
    assert!(d.engine == Some(0) && d.reason.contains("(decode), resident"), "{}", d.reason);
    let (d, _) = min64.decide_stack(&[&decodes], &model.layers, &cost(1), 1 << 20);
    assert!(d.engine.is_none() && d.reason.contains("decode stays on the CPU"), "{}", d.reason);
    let (d, _) = PlacementPolicy::new(Backend::Auto, 64, None, (1e15, 1e13)).decide_stack(&[&decodes], &model.layers, &cost(1), 4 << 20);
    assert!(d.engine.is_none() && d.reason.contains("decode cost model"), "a CPU faster at streaming: {}", d.reason);
    let (d, _) = PlacementPolicy::new(Backend::Cpu, 64, None, (1e12, 1e10)).decide_stack(&[&decodes], &model.layers, &cost(1), 4 << 20);
    assert!(d.engine.is_none(), "--backend cpu");
    let (d, _) = policy.decide_stack(&[&ReferenceEngine::new()], &model.layers, &cost(80), 4 << 20);
    assert!(d.engine.is_none() && d.reason.contains("whole stacks are off"), "{}", d.reason);
    // Streaming pays the weights' transfer: a fast enough CPU keeps the stack.
    let fast_cpu = PlacementPolicy::new(Backend::Auto, 1, None, (5e12, 1e12));
    let heavy = StackCost { weight_bytes: 1e12, ..cost(80) };
    let (d, _) = fast_cpu.decide_stack(&[&streams], &model.layers, &heavy, 1 << 20);
    assert!(d.engine.is_none() && d.reason.contains("cost model"), "{}", d.reason);
    assert_eq!(fast_cpu.decide_stack(&[&streams], &model.layers, &heavy, 4 << 20).0.engine, Some(0), "resident: no transfer to pay");
}

/// The reference engine, recording the weights it is asked to prepare; optionally refusing experts.
struct Recording {
    inner: ReferenceEngine,
    prepared: std::sync::Mutex<Vec<String>>,
    refuse_experts: bool,
}
impl MatrixEngine for Recording {
    fn name(&self) -> &str {
        "rec"
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn supports(&self, s: &MatmulShape) -> Result<(), String> {
        self.inner.supports(s)
    }
    fn throughput_hint(&self) -> (f64, f64) {
        self.inner.throughput_hint()
    }
    fn prepare(&self, k: &WeightKey, w: &Weight, b: usize) -> Result<usize, EngineFailure> {
        self.prepared.lock().unwrap().push(w.name.clone());
        self.inner.prepare(k, w, b)
    }
    fn evict(&self, k: &WeightKey, b: usize) {
        self.inner.evict(k, b)
    }
    fn matmul(&self, k: &[&WeightKey], w: &[&Weight], b: usize, x: &[f32], n: usize, o: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        self.inner.matmul(k, w, b, x, n, o)
    }
    fn takes_experts(&self) -> Result<(), String> {
        if self.refuse_experts { Err("no programs for experts".into()) } else { Ok(()) }
    }
}

#[test]
fn experts_kept_on_the_cpu_never_reach_an_engine() {
    let spec = RandomModelSpec { arch: "qwen3moe".into(), ..RandomModelSpec::preset("tiny", GgmlType::Q8_0).unwrap() };
    let bytes = spec.build().unwrap().to_bytes();
    let model = || Model::from_file(Arc::new(gguf::GgufFile::from_bytes(bytes.clone()).unwrap()), &mut |_, _| {}).unwrap();
    let tokens = prompt(32, 512);
    let cpu = logits_of(&Runner::new(model(), 2).unwrap(), &tokens);
    for (refuse, pin_first) in [(false, true), (true, false)] {
        let engine = Arc::new(Recording { inner: ReferenceEngine::new(), prepared: Default::default(), refuse_experts: refuse });
        let policy = PlacementPolicy::new(Backend::Auto, 1, None, SLOW_CPU);
        let mut d = Dispatcher::new(vec![engine.clone()], policy, CacheBudget::default(), false).unwrap();
        let m = model();
        if pin_first {
            // --n-cpu-moe 1: layer 0's experts stay on the CPU.
            d.keep_on_cpu(m.layers[0].experts().iter().flat_map(|e| [&e.gate, &e.up, &e.down]), "--n-cpu-moe");
        }
        let r = Runner::with_dispatcher(m, 2, d).unwrap();
        let logits = logits_of(&r, &tokens);
        let prepared = engine.prepared.lock().unwrap().clone();
        let experts_of = |il: usize| prepared.iter().filter(|n| n.starts_with(&format!("blk.{il}.ffn_")) && n.contains("_exps")).count();
        assert!(prepared.iter().any(|n| n.contains("attn_q")), "the engine still takes the dense weights: {prepared:?}");
        assert_eq!(experts_of(0), 0, "layer 0's experts reached the engine");
        assert_eq!(experts_of(1) > 0, !refuse, "layer 1's experts on the engine unless it refuses experts");
        let summary = r.dispatcher.summary(&r.model.layers);
        let line = if refuse { "experts on the CPU, not rec: no programs for experts" } else { "experts of 1 of 2 layers kept on the CPU (--n-cpu-moe)" };
        assert!(summary.contains(line), "{summary}");
        // The engine's f32 products against the CPU's 8-bit activations, amplified where a
        // router near-tie picks another expert (as the MoE tests measure): close, not equal.
        let (err, norm) = logits.iter().zip(&cpu).fold((0f64, 0f64), |(e, n), (a, b)| (e + ((a - b) as f64).powi(2), n + (*b as f64).powi(2)));
        assert!(err / norm < 2e-2, "normalized squared error {:.2e}", err / norm);
    }
}
