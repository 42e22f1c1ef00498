//! Program counts for the two test models under the ~100-program budget (§4).

use ane::plan::{model_groups, GroupKind, ModelShapes, Plan, PlanConfig};

fn count(shapes: &ModelShapes, fuse_mlp: bool, cfg: &PlanConfig) -> Result<Plan, String> {
    Plan::pack(model_groups(shapes, fuse_mlp), cfg)
}

#[test]
fn smollm2_and_gemma_fit_the_budget() {
    for (name, shapes) in [("smollm2", ModelShapes::smollm2_135m()), ("gemma3", ModelShapes::gemma3_270m())] {
        let groups = model_groups(&shapes, false);
        assert_eq!(groups.len(), shapes.layers * 4 + 1);
        let matrices = shapes.layers * 7 + 1;
        let defaults = PlanConfig::default();
        // The naive design: one program per matrix per bucket.
        assert!(matrices * defaults.buckets.len() > 100, "{name}: naive count {}", matrices * 4);
        let plan = count(&shapes, false, &defaults).unwrap();
        let n = plan.programs.len();
        eprintln!("{name}: {} matrices, {} groups, {} functions in {n} programs (default)", matrices, groups.len(), plan.functions());
        assert!(n <= 100 && n < matrices / 10, "{name}: {n} programs");
        assert_eq!(plan.functions(), groups.len() * 4, "every group × bucket is one function");
        assert!(plan.programs.iter().all(|p| p.bytes() <= defaults.max_program_bytes && p.functions() <= defaults.max_functions));
        // Every group and bucket is served by exactly one program.
        for g in 0..groups.len() {
            for &b in &defaults.buckets {
                assert_eq!(plan.programs_of(g, b).len(), 1, "{name} group {g} bucket {b}");
            }
        }
        // One program per bucket (no shared weights) still fits, at 4× the programs.
        let sep = count(&shapes, false, &PlanConfig { share_buckets: false, max_functions: 16, ..defaults.clone() }).unwrap();
        eprintln!("{name}: {} programs with one bucket each", sep.programs.len());
        assert!(sep.programs.len() <= 100);
        // Whole-MLP groups (the engine's default plan): Q/K/V, output, MLP per layer; the
        // MLP holds 3 functions per bucket (the fused block, gate/up and down on their own).
        let fused = count(&shapes, true, &defaults).unwrap();
        let nf = fused.programs.len();
        eprintln!("{name}: {} groups, {} functions in {nf} programs with whole-MLP groups (default; {n} without)", fused.groups.len(), fused.functions());
        assert_eq!(fused.groups.len(), shapes.layers * 3 + 1);
        assert_eq!(fused.functions(), (shapes.layers * 5 + 1) * 4);
        assert!(nf <= 100 && nf < matrices / 10, "{name}: {nf} programs");
        assert!(fused.programs.iter().all(|p| p.bytes() <= defaults.max_program_bytes && p.functions() <= defaults.max_functions));
        for g in 0..fused.groups.len() {
            for &b in &defaults.buckets {
                assert_eq!(fused.programs_of(g, b).len(), 1, "{name} fused group {g} bucket {b}");
            }
        }
        // One program per layer: 5 functions per bucket.
        let per_layer = PlanConfig { max_functions: 5 * 4, ..defaults.clone() };
        let fused = count(&shapes, true, &per_layer).unwrap();
        eprintln!("{name}: {} programs, one per layer with fused MLP", fused.programs.len());
        assert_eq!(fused.programs.len(), shapes.layers + 1);
        assert!(fused.programs.iter().take(shapes.layers).all(|p| p.units.len() == 3));
        // An MLP group cannot fit fewer functions than its three per bucket.
        let e = count(&shapes, true, &PlanConfig { max_functions: 8, ..defaults.clone() }).unwrap_err();
        assert!(e.contains("needs 12 functions per program, more than 8"), "{e}");
        // Naive packing is refused, with the count.
        let naive = PlanConfig { share_buckets: false, max_functions: 1, ..defaults.clone() };
        let e = count(&shapes, false, &naive).unwrap_err();
        assert!(e.contains(&format!("{} programs needed, budget 100", groups.len() * 4)), "{e}");
    }
}

#[test]
fn large_vocabulary_splits_into_programs() {
    // Gemma's 262144 × 640 fp16 head is 320 MiB: with a 100 MiB cap it becomes 4 row units.
    let shapes = ModelShapes::gemma3_270m();
    let cfg = PlanConfig { max_program_bytes: 100 << 20, ..PlanConfig::default() };
    let plan = count(&shapes, false, &cfg).unwrap();
    let vocab = plan.groups.iter().position(|g| g.kind == GroupKind::Vocab).unwrap();
    let progs = plan.programs_of(vocab, 128);
    assert_eq!(progs.len(), 4);
    let mut rows: Vec<_> = progs.iter().flat_map(|&p| plan.programs[p].units.iter().filter(|u| u.group == vocab)).map(|u| u.rows.clone().unwrap()).collect();
    rows.sort_by_key(|r| r.start);
    assert_eq!(rows.first().unwrap().start, 0);
    assert_eq!(rows.last().unwrap().end, 262144);
    assert!(rows.windows(2).all(|w| w[0].end == w[1].start));
    assert!(plan.programs.iter().all(|p| p.bytes() <= 100 << 20));
}
