//! Warm-up at model load: it compiles exactly the planned programs for the buckets asked
//! (all of them, or the common ones), reports progress, stops at the compile budget, and
//! later matmuls through the dispatcher compile nothing.

mod common;

use ane::build::GroupOp;
use ane::plan::PlanConfig;
use ane::sim::SimDriver;
use ane::{AneConfig, AneEngine, WarmUp};
use common::{reference, rel_err, weights, Rng};
use engine::matrix::cache::CacheBudget;
use engine::matrix::policy::{Backend, PlacementPolicy};
use engine::matrix::{Dispatcher, MatrixEngine};
use engine::weights::Weight;
use gguf::GgmlType;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Four groups, two per program, one program per bucket: 4 programs for buckets 64 and 128.
fn setup(max_programs: usize) -> (Arc<AneEngine<SimDriver>>, Vec<Weight>) {
    let ws = weights(
        &[("a", 64, 96, GgmlType::Q8_0), ("b", 48, 96, GgmlType::F32), ("c", 80, 96, GgmlType::Q4_0), ("d", 32, 96, GgmlType::Q8_0)],
        21,
        1.0,
    );
    let plan = PlanConfig { buckets: vec![64, 128], share_buckets: false, max_functions: 2, max_programs, ..PlanConfig::default() };
    let e = AneEngine::new(SimDriver::new(), AneConfig { plan, ..AneConfig::default() });
    e.add_groups(ws.iter().map(|w| (vec![w.clone()], GroupOp::Linear { concat: false })).collect()).unwrap();
    assert_eq!(e.planned_programs(), 4);
    (Arc::new(e), ws)
}

#[test]
fn warm_up_compiles_the_planned_programs_and_matmuls_then_compile_nothing() {
    let (e, ws) = setup(100);
    let mut calls = Vec::new();
    let report = e.warm_up(&[128], &mut |done, total| calls.push((done, total)));
    assert_eq!(report, WarmUp { loaded: 2, ..WarmUp::default() });
    assert_eq!(calls, vec![(0, 2), (1, 2), (2, 2)]);
    assert_eq!((e.compiles(), e.stats().builds, e.driver().loaded.load(Ordering::Relaxed)), (2, 2, 2));
    // Every weight through the dispatcher, 100 and 128 tokens (bucket 128 only): nothing compiles.
    let engines: Vec<Arc<dyn MatrixEngine>> = vec![e.clone()];
    let policy = PlacementPolicy::new(Backend::Named("ane-sim".into()), 64, None, (1.0, 1.0));
    let d = Dispatcher::new(engines, policy, CacheBudget::default(), false).unwrap();
    let mut rng = Rng(5);
    for n in [100, 128] {
        for w in &ws {
            let x = rng.vec(n * 96, 1.0);
            let mut out = vec![f32::NAN; n * w.rows];
            d.matmul(w, &x, &mut out);
            assert!(rel_err(&out, &reference(w, &x, n)) < 4e-3);
        }
    }
    let s = d.stats.snapshot();
    assert_eq!((s["ane-sim"].matmuls, s["ane-sim"].failures), (8, 0), "{s:?}");
    assert_eq!(e.compiles(), 2, "the warm-up compiled everything these matmuls needed");
    // The rest of the plan: the two bucket-64 programs.
    let report = e.warm_up(&[], &mut |_, _| {});
    assert_eq!(report, WarmUp { loaded: 2, already_ready: 2, ..WarmUp::default() });
    assert_eq!(e.compiles(), 4);
    assert_eq!(e.warm_up(&[], &mut |_, _| {}), WarmUp { already_ready: 4, ..WarmUp::default() });
}

#[test]
fn warm_up_stops_at_the_compile_budget() {
    let (e, _) = setup(3);
    let mut last = (0, 0);
    let report = e.warm_up(&[], &mut |d, t| last = (d, t));
    assert_eq!(report, WarmUp { loaded: 3, over_budget: 1, ..WarmUp::default() });
    assert_eq!(last, (3, 3));
    assert_eq!(e.compiles(), 3);
}
