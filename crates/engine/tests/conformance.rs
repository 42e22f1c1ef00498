//! The conformance suite (`engine::conformance`) on the engines every machine has: the
//! CPU and the reference engine pass every case they do not lack; engines broken on
//! purpose fail the cases their defect touches, so the suite is shown able to fail.

use engine::arch::Activation;
use engine::conformance::{self, Options, Report, Verdict};
use engine::matrix::cpu_engine::CpuEngine;
use engine::matrix::reference::ReferenceEngine;
use engine::matrix::{
    KvRows,
    AttentionOp, AttnShape, Availability, Capabilities, DecoderStack, EngineFailure, FeedForward, FusedFeedForward, MatmulShape,
    MatrixEngine, StackInput, WeightKey,
};
use engine::plan::Layer;
use engine::weights::Weight;
use half::f16;
use std::sync::Arc;

fn run(engine: Arc<dyn MatrixEngine>) -> Report {
    let report = conformance::run(engine, &Options::default());
    println!("{report}");
    report
}

/// Every case passes but those lacking exactly `lacking` (prefixes of case names).
fn assert_passes(report: &Report, lacking: &[&str]) {
    assert!(report.failures().is_empty(), "{report}");
    for o in &report.outcomes {
        let expected = lacking.iter().any(|p| o.case.starts_with(p));
        assert_eq!(matches!(o.verdict, Verdict::Lacks(_)), expected, "{}: {:?}", o.case, o.verdict);
    }
}

#[test]
fn cpu_engine_passes_all_but_stacks() {
    assert_passes(&run(Arc::new(CpuEngine)), &["stack"]);
}

#[test]
fn reference_engine_passes_everything() {
    assert_passes(&run(Arc::new(ReferenceEngine::new().with_stacks())), &[]);
}

/// The reference engine (with stacks) with one defect, or one limit.
struct Broken {
    inner: ReferenceEngine,
    defect: Defect,
}

#[derive(Clone, Copy, PartialEq)]
enum Defect {
    /// The last token of every call is left as it was.
    DropsLastToken,
    /// Every output 3 % too large.
    ThreePercentHigh,
    /// Feed-forward blocks with the other activation.
    WrongActivation,
    /// Attention one key past the causal mask (the first query sees the second key).
    SeesTheFuture,
    /// A stack that leaves the batch's last token as it came in.
    SkipsLastToken,
    /// A stack that does not store the batch's K/V rows (zeros instead).
    StoresNoKv,
    /// Not a defect: `supports` refuses the K-quants.
    RefusesKQuants,
    /// Not a defect: keeps each sequence's rows in its mirror, as a card does, and reads
    /// back the rows the mirror says are still valid.
    MirrorsRows,
    /// Reads back every row its mirror holds, even those the host rewrote since.
    TrustsStaleMirror,
}

/// The rows a `Broken` stack keeps in a sequence's mirror, per layer (f16 bits), and how many.
struct Copy {
    rows: usize,
    layers: Vec<(Vec<u16>, Vec<u16>)>,
}

/// Layer `il`'s K and V widths.
fn widths(l: &Layer) -> (usize, usize) {
    let s = l.attention().expect("these models attend in every layer").shape;
    (s.n_head_kv * s.head_dim, s.n_head_kv * s.head_dim_v)
}

/// Writes back over the host rows what a mirroring stack would read from its copy.
fn read_mirror(input: &StackInput<'_>, caches: &mut [&mut dyn KvRows], trust_all: bool) {
    for (cache, span) in caches.iter_mut().zip(input.spans) {
        let p0 = input.positions[span.start];
        let mirror = cache.mirror();
        let valid = mirror.valid;
        let Some(copy) = mirror.data.take() else { continue };
        let copy = copy.downcast::<Copy>().expect("our own copy");
        let held = if trust_all { copy.rows } else { valid.min(copy.rows) }.min(p0);
        for (il, (k, v)) in cache.layers_mut().into_iter().enumerate() {
            let (kd, vd) = widths(&input.layers[il]);
            k[..held * kd].copy_from_slice(&copy.layers[il].0[..held * kd]);
            v[..held * vd].copy_from_slice(&copy.layers[il].1[..held * vd]);
        }
        cache.mirror().data = Some(copy);
    }
}

/// Keeps every sequence's rows, new ones included, in its mirror.
fn write_mirror(input: &StackInput<'_>, caches: &mut [&mut dyn KvRows]) {
    for (cache, span) in caches.iter_mut().zip(input.spans) {
        let rows = input.positions[span.start] + span.len();
        let layers = cache
            .layers_mut()
            .into_iter()
            .enumerate()
            .map(|(il, (k, v))| {
                let (kd, vd) = widths(&input.layers[il]);
                (k[..rows * kd].to_vec(), v[..rows * vd].to_vec())
            })
            .collect();
        let mirror = cache.mirror();
        mirror.data = Some(Box::new(Copy { rows, layers }));
        mirror.valid = rows;
    }
}

impl MatrixEngine for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn supports(&self, s: &MatmulShape) -> Result<(), String> {
        if self.defect == Defect::RefusesKQuants && s.ty.block_size() == 256 {
            return Err("no K-quants here".into());
        }
        self.inner.supports(s)
    }
    fn n_buckets(&self) -> Option<&[usize]> {
        self.inner.n_buckets()
    }
    fn throughput_hint(&self) -> (f64, f64) {
        self.inner.throughput_hint()
    }
    fn prepare(&self, k: &WeightKey, w: &Weight, b: usize) -> Result<usize, EngineFailure> {
        self.inner.prepare(k, w, b)
    }
    fn evict(&self, k: &WeightKey, b: usize) {
        self.inner.evict(k, b)
    }
    fn matmul(&self, k: &[&WeightKey], ws: &[&Weight], b: usize, x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        match self.defect {
            Defect::DropsLastToken => {
                let kept = n - 1;
                let mut heads: Vec<&mut [f32]> = outs.iter_mut().zip(ws).map(|(o, w)| &mut o[..kept * w.rows]).collect();
                self.inner.matmul(k, ws, b, &x[..kept * ws[0].cols], kept, &mut heads)
            }
            Defect::ThreePercentHigh => {
                self.inner.matmul(k, ws, b, x, n, outs)?;
                outs.iter_mut().for_each(|o| o.iter_mut().for_each(|v| *v *= 1.03));
                Ok(())
            }
            _ => self.inner.matmul(k, ws, b, x, n, outs),
        }
    }
    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities { feed_forward: Some(self), attention: Some(self), stack: Some(self) }
    }
}

impl FusedFeedForward for Broken {
    fn feed_forward(&self, f: &FeedForward<'_>, b: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), EngineFailure> {
        let other = match f.activation {
            Activation::Silu => Activation::GeluTanh,
            Activation::GeluTanh | Activation::SwigluOai => Activation::Silu,
        };
        let activation = if self.defect == Defect::WrongActivation { other } else { f.activation };
        FusedFeedForward::feed_forward(&self.inner, &FeedForward { activation, ..*f }, b, x, n, out)
    }
}

impl AttentionOp for Broken {
    fn supports_attention(&self, s: &AttnShape) -> Result<(), String> {
        self.inner.supports_attention(s)
    }
    fn attention(&self, s: &AttnShape, q: &[f32], positions: &[usize], k: &[f16], v: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        let mut seen = positions.to_vec();
        if self.defect == Defect::SeesTheFuture && seen.len() > 1 && seen[0] + 1 == seen[1] {
            seen[0] += 1;
        }
        AttentionOp::attention(&self.inner, s, q, &seen, k, v, out)
    }
}

impl DecoderStack for Broken {
    fn supports_stack(&self, layers: &[Layer]) -> Result<(), String> {
        self.inner.supports_stack(layers)
    }
    fn stack(&self, input: &StackInput<'_>, x: &mut [f32], caches: &mut [&mut dyn KvRows]) -> Result<(), EngineFailure> {
        let before = x.to_vec();
        if matches!(self.defect, Defect::MirrorsRows | Defect::TrustsStaleMirror) {
            read_mirror(input, caches, self.defect == Defect::TrustsStaleMirror);
        }
        self.inner.stack(input, x, caches)?;
        if matches!(self.defect, Defect::MirrorsRows | Defect::TrustsStaleMirror) {
            write_mirror(input, caches);
        }
        let last = x.len() - x.len() / input.n();
        match self.defect {
            Defect::SkipsLastToken => x[last..].copy_from_slice(&before[last..]),
            Defect::StoresNoKv => {
                for (cache, span) in caches.iter_mut().zip(input.spans) {
                    for (il, layer) in input.layers.iter().enumerate() {
                        let s = layer.attention().expect("these models attend in every layer").shape;
                        let zeros = |dim: usize| vec![0f32; span.len() * s.n_head_kv * dim];
                        cache.store(il, input.positions[span.start], &zeros(s.head_dim), &zeros(s.head_dim_v));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn broken(defect: Defect, filter: &str) -> Report {
    let engine = Arc::new(Broken { inner: ReferenceEngine::new().with_stacks(), defect });
    let report = conformance::run(engine, &Options { filter: Some(filter), ..Options::default() });
    println!("{report}");
    report
}

fn failed(report: &Report) -> Vec<&str> {
    report.failures().iter().map(|o| o.case.as_str()).collect()
}

#[test]
fn broken_matmuls_fail() {
    // A dropped last token: every matmul case fails (one token: the whole output).
    let r = broken(Defect::DropsLastToken, "matmul");
    assert_eq!(failed(&r).len(), r.outcomes.len(), "{r}");
    let r = broken(Defect::ThreePercentHigh, "matmul");
    assert_eq!(failed(&r).len(), r.outcomes.len(), "{r}");
    let r = broken(Defect::ThreePercentHigh, "group");
    assert_eq!(failed(&r).len(), r.outcomes.len(), "{r}");
}

#[test]
fn broken_stacks_fail() {
    for defect in [Defect::SkipsLastToken, Defect::StoresNoKv, Defect::TrustsStaleMirror] {
        let r = broken(defect, "stack");
        assert_eq!(failed(&r).len(), r.outcomes.len(), "{r}");
    }
    // Keeping rows between calls is right when the host's rewrites are heeded.
    let r = broken(Defect::MirrorsRows, "stack");
    assert!(r.failures().is_empty() && !r.outcomes.is_empty(), "{r}");
}

#[test]
fn broken_blocks_and_attention_fail() {
    let r = broken(Defect::WrongActivation, "feed-forward");
    assert_eq!(failed(&r).len(), r.outcomes.len(), "{r}");
    // A query seeing one key past the mask: every case with more than one token fails.
    let r = broken(Defect::SeesTheFuture, "attention");
    let multi = r.outcomes.iter().filter(|o| !o.case.contains("decode")).count();
    assert_eq!(failed(&r).len(), multi, "{r}");
    assert!(r.outcomes.iter().all(|o| !matches!(o.verdict, Verdict::Lacks(_))), "{r}");
}

#[test]
fn refused_shapes_are_lacking_not_failed() {
    let r = broken(Defect::RefusesKQuants, "Q4_K");
    assert!(!r.outcomes.is_empty(), "{r}");
    for o in &r.outcomes {
        let refused = matches!(&o.verdict, Verdict::Lacks(why) if why.starts_with("unsupported: Q4_K") && why.ends_with("no K-quants here"));
        assert!(refused, "{}: {:?}", o.case, o.verdict);
    }
    let r = broken(Defect::RefusesKQuants, "matmul Q8_0");
    assert_eq!(r.counts(), (r.outcomes.len(), 0, 0), "{r}");
}
