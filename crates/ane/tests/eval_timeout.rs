//! An evaluation that does not return within the bound is an EngineFailure (the
//! dispatcher recomputes on the CPU), its program is quarantined, and other programs go
//! on through a new evaluation thread. The hang is a SimDriver wrapper whose evaluate
//! blocks until the test releases it: nothing here depends on timing except the bound.

mod common;

use ane::build::GroupOp;
use ane::ffi::DriverError;
use ane::plan::PlanConfig;
use ane::{AneConfig, AneEngine, EvalTimeout};
use common::{reference, rel_err, weights, EvalHook, HookedSim, Rng};
use engine::matrix::cache::CacheBudget;
use engine::matrix::policy::{Backend, PlacementPolicy};
use engine::matrix::{Dispatcher, MatrixEngine, WeightKey};
use engine::weights::Weight;
use gguf::GgmlType;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// An evaluation hook: evaluation number `hang_at` (0-based) blocks until [`Hang::release`].
struct Hang {
    calls: AtomicUsize,
    hang_at: AtomicUsize,
    released: (Mutex<bool>, Condvar),
}

impl Hang {
    fn new() -> Self {
        Hang { calls: 0.into(), hang_at: usize::MAX.into(), released: (Mutex::new(false), Condvar::new()) }
    }
    /// Hang the `k`-th evaluation from now.
    fn hang_in(&self, k: usize) {
        self.hang_at.store(self.calls.load(Ordering::SeqCst) + k, Ordering::SeqCst);
    }
    fn release(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }
}

impl EvalHook for Hang {
    fn before(&self, _: usize) -> Option<Result<(), DriverError>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == self.hang_at.load(Ordering::SeqCst) {
            let mut r = self.released.0.lock().unwrap();
            while !*r {
                r = self.released.1.wait(r).unwrap();
            }
        }
        None
    }
}

fn engine() -> AneEngine<HookedSim<Hang>> {
    let cfg = AneConfig {
        plan: PlanConfig { buckets: vec![32, 64], ..PlanConfig::default() },
        eval_timeout: Some(EvalTimeout { base: Duration::from_millis(300), min_flops_per_s: f64::INFINITY }),
        ..AneConfig::default()
    };
    AneEngine::new(HookedSim::new("ane-sim", Hang::new()), cfg)
}

fn run(e: &AneEngine<HookedSim<Hang>>, w: &Weight, x: &[f32], n: usize, bucket: usize) -> Result<Vec<f32>, String> {
    let key = WeightKey::of(w);
    e.prepare(&key, w, bucket).map_err(|f| f.to_string())?;
    let mut out = vec![f32::NAN; n * w.rows];
    e.matmul(&[&key], &[w], bucket, x, n, &mut [&mut out]).map_err(|f| f.to_string())?;
    Ok(out)
}

#[test]
fn a_hung_evaluation_fails_the_op_and_quarantines_its_program() {
    let ws = weights(&[("a", 64, 96, GgmlType::Q8_0), ("b", 40, 96, GgmlType::F32)], 3, 1.0);
    let e = engine();
    for w in &ws {
        e.add_groups(vec![(vec![w.clone()], GroupOp::Linear { concat: false })]).unwrap();
    }
    let x = Rng(2).vec(64 * 96, 1.0);
    for w in &ws {
        assert!(rel_err(&run(&e, w, &x, 50, 64).unwrap(), &reference(w, &x, 50)) < 4e-3);
    }
    e.driver().hang_in(0);
    let err = run(&e, &ws[0], &x, 50, 64).unwrap_err();
    assert!(err.contains("did not return within 0.300 s") && err.contains("quarantined"), "{err}");
    assert_eq!(e.stats().timeouts, 1);
    // Quarantined: no further evaluation of that program, at any bucket it serves.
    let evals = e.driver().calls.load(Ordering::SeqCst);
    for bucket in [64, 32] {
        let err = run(&e, &ws[0], &x, 20, bucket).unwrap_err();
        assert!(err.contains("quarantined"), "{err}");
    }
    assert_eq!(e.driver().calls.load(Ordering::SeqCst), evals);
    // Eviction does not revive it.
    e.evict(&WeightKey::of(&ws[0]), 64);
    e.evict(&WeightKey::of(&ws[0]), 32);
    assert!(run(&e, &ws[0], &x, 20, 64).is_err());
    // The other program runs on a new evaluation thread.
    assert!(rel_err(&run(&e, &ws[1], &x, 50, 64).unwrap(), &reference(&ws[1], &x, 50)) < 4e-3);
    assert_eq!(e.eval_workers_started(), 2);
    e.driver().release();
}

#[test]
fn a_hang_inside_a_tiled_call_falls_back_to_the_cpu_through_the_dispatcher() {
    let ws = weights(&[("w", 72, 128, GgmlType::Q8_0)], 8, 1.0);
    let e = Arc::new(engine());
    let engines: Vec<Arc<dyn MatrixEngine>> = vec![e.clone()];
    let policy = PlacementPolicy::new(Backend::Named("ane-sim".into()), 32, None, (1.0, 1.0));
    let d = Dispatcher::new(engines, policy, CacheBudget::default(), false).unwrap();
    let x = Rng(9).vec(150 * 128, 1.0);
    // 150 tokens: tiles of 64, 64, 22; the second evaluation hangs.
    e.driver().hang_in(1);
    let mut out = vec![f32::NAN; 150 * 72];
    d.matmul(&ws[0], &x, &mut out);
    let s = d.stats.snapshot();
    assert!(s["ane-sim"].failures >= 1, "{s:?}");
    // The CPU quantizes activations to 8 bits: a looser bound than fp16's.
    assert!(rel_err(&out, &reference(&ws[0], &x, 150)) < 2e-2, "{}", rel_err(&out, &reference(&ws[0], &x, 150)));
    assert_eq!(e.stats().timeouts, 1);
    e.driver().release();
}

#[test]
fn a_hung_job_in_a_pipelined_call_loses_nothing_else() {
    // One engine call over 150 tokens (three tiles of 64, pipelined); the middle one hangs.
    let ws = weights(&[("w", 72, 128, GgmlType::F32), ("v", 40, 128, GgmlType::F32)], 4, 1.0);
    let e = engine();
    for w in &ws {
        e.add_groups(vec![(vec![w.clone()], GroupOp::Linear { concat: false })]).unwrap();
    }
    let x = Rng(1).vec(150 * 128, 1.0);
    e.driver().hang_in(1);
    assert!(run(&e, &ws[0], &x, 150, 64).unwrap_err().contains("quarantined"));
    // The job queued behind the hung one is dropped with its worker, not run later.
    let want = reference(&ws[1], &x, 150);
    let calls = e.driver().calls.load(Ordering::SeqCst);
    assert!(rel_err(&run(&e, &ws[1], &x, 150, 64).unwrap(), &want) < 4e-3);
    assert_eq!(e.driver().calls.load(Ordering::SeqCst), calls + 3);
    e.driver().release();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(e.driver().calls.load(Ordering::SeqCst), calls + 3, "the abandoned queue is not evaluated after the release");
}
