//! The conformance suite (`engine::conformance`) on ane-sim: our MIL programs run by the
//! interpreter, through the dispatcher. Every matmul case passes, with each group (one
//! weight, Q/K/V, a feed-forward block) planned as the engine plans a model's; the fused
//! feed-forward cases follow `fuse_mlp`; attention and whole stacks are lacking (the ANE
//! takes neither).

use ane::build::{Act, GroupOp};
use ane::sim::SimDriver;
use ane::engine::MLP_BOUND_CAP;
use ane::{AneConfig, AneEngine};
use engine::arch::Activation;
use engine::conformance::{self, Options, Planned, Report, Verdict};
use std::sync::Arc;

/// The suite on an interpreter engine with `cfg`, each group planned before its first case.
fn run(cfg: AneConfig, filter: Option<&str>) -> Report {
    let engine = Arc::new(AneEngine::new(SimDriver::new(), cfg));
    let plan = |p: Planned<'_>| match p {
        Planned::Group(ws) => engine.add_groups(vec![(ws.to_vec(), GroupOp::Linear { concat: false })]).map_err(Into::into),
        Planned::FeedForward(f) => {
            let act = match f.activation {
                Activation::Silu => Act::Silu,
                Activation::GeluTanh => Act::GeluTanh,
                Activation::SwigluOai => return Err("no fused program for gpt-oss's SwiGLU".to_string().into()),
            };
            // Scaled for inputs up to the cap, as `plan_model` scales a model's blocks.
            engine.add_groups_bounded(vec![(vec![f.gate.clone(), f.up.clone(), f.down.clone()], GroupOp::Mlp(act), Some(MLP_BOUND_CAP))]).map_err(Into::into)
        }
    };
    let report = conformance::run(engine.clone(), &Options { plan: Some(&plan), filter });
    println!("{report}");
    report
}

#[test]
fn ane_sim_passes_everything_it_offers() {
    let report = run(AneConfig::default(), None);
    assert!(report.failures().is_empty(), "{report}");
    for o in &report.outcomes {
        let offered = !o.case.starts_with("attention") && !o.case.starts_with("stack");
        assert_eq!(matches!(o.verdict, Verdict::Pass { .. }), offered, "{}: {:?}", o.case, o.verdict);
    }
}

#[test]
fn unfused_config_lacks_fused_blocks() {
    let report = run(AneConfig { fuse_mlp: false, ..AneConfig::default() }, Some("feed-forward"));
    let lacking = report.outcomes.iter().all(|o| o.verdict == Verdict::Lacks("no FusedFeedForward".into()));
    assert!(!report.outcomes.is_empty() && lacking, "{report}");
}
