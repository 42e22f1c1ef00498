//! RoPE scaling read from GGUF metadata as llama.cpp reads it, for every architecture
//! gen-model writes: the scaling type and factor, YaRN's keys (only where llama.cpp's
//! architecture reads them), the original context, the magnitude factor, and which frequency
//! factor tensors are loaded. The angles themselves are pinned by `cpu::ops`' unit tests
//! against an f64 transcription of ggml's rope_yarn, and end to end by llama-perplexity's
//! KL divergence on the same files (by hand; docs/ARCHITECTURE.md, "Numerics against llama.cpp").

use engine::arch::{RopeFactorTensors, RopeScaling, RopeScalingType};
use engine::plan::AttnTemperature;
use engine::random_model::{RandomModelSpec, DEFAULT_ROPE_SCALE, YARN_KEYS};
use engine::Model;
use gguf::{GgmlType, Value};
use std::sync::Arc;

fn spec(arch: &str, scaling: &str) -> RandomModelSpec {
    RandomModelSpec { arch: arch.into(), rope_scaling: scaling.into(), ..RandomModelSpec::preset("tiny", GgmlType::Q8_0).unwrap() }
}

fn load(bytes: Vec<u8>) -> engine::Result<Model> {
    Model::from_file(Arc::new(gguf::GgufFile::from_bytes(bytes).unwrap()), &mut |_, _| {})
}

/// llama.cpp's `get_mscale`.
fn mscale(scale: f32, m: f32) -> f32 {
    if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 }
}

#[test]
fn every_architecture_reads_rope_scaling_as_llama_cpp_does() {
    for arch in RandomModelSpec::ARCHITECTURES {
        for kind in ["none", "linear", "yarn", "longrope"] {
            let s = spec(arch, kind);
            let c = load(s.build().unwrap().to_bytes()).unwrap_or_else(|e| panic!("{arch} {kind}: {e}")).config;
            let what = format!("{arch} with {kind} scaling");
            let r = &c.rope_scaling;
            let want_kind = match kind {
                "none" => RopeScalingType::None,
                "linear" => RopeScalingType::Linear,
                "yarn" => RopeScalingType::Yarn,
                _ => RopeScalingType::LongRope,
            };
            assert_eq!(r.kind, want_kind, "{what}");
            let scaled = matches!(kind, "linear" | "yarn");
            assert_eq!(c.rope_global.freq_scale, if scaled { 1.0 / DEFAULT_ROPE_SCALE } else { 1.0 }, "{what}: freq_scale");
            let orig_written = matches!(kind, "yarn" | "longrope") || arch == "phi3";
            assert_eq!(r.n_ctx_orig, if orig_written { s.ctx / 8 } else { s.ctx }, "{what}: original context");
            // The YaRN keys are in every yarn file; llama.cpp reads them for mistral3 only.
            let keys = if arch == "mistral3" && kind == "yarn" { YARN_KEYS } else { (32.0, 1.0, 0.0) };
            assert_eq!((r.yarn_beta_fast, r.yarn_beta_slow, r.yarn_log_mul), keys, "{what}: YaRN keys");
            let y = r.yarn(c.rope_global.freq_scale, c.n_ctx_train);
            assert_eq!(y.ext_factor, if kind == "yarn" { 1.0 } else { 0.0 }, "{what}: ext_factor");
            assert_eq!((y.beta_fast, y.beta_slow, y.n_ctx_orig), (keys.0, keys.1, r.n_ctx_orig), "{what}");
            // cos/sin magnitude: ggml multiplies YaRN's by 1 + 0.1 ln f, which llama.cpp divides out.
            let f = DEFAULT_ROPE_SCALE;
            let long_short = arch == "phi3" || (kind == "longrope" && matches!(arch, "llama" | "mistral3"));
            let file_attn = if long_short { (1.0 + (8f32).ln() / (64f32).ln()).sqrt() } else { 1.0 };
            let log_mul = keys.2;
            let yarn = if log_mul != 0.0 { mscale(f, 1.0) / mscale(f, log_mul) } else { mscale(f, 1.0) };
            let want_attn = file_attn * if kind == "yarn" { yarn / (1.0 + 0.1 * f.ln()) } else { 1.0 };
            assert!((y.attn_factor - want_attn).abs() < 1e-6, "{what}: attn_factor {} vs {want_attn}", y.attn_factor);
            let factors = match arch {
                "phi3" => RopeFactorTensors::LongShort,
                "llama" | "mistral3" if kind == "longrope" => RopeFactorTensors::LongShort,
                "llama" | "mistral3" => RopeFactorTensors::Freqs,
                // Proportional RoPE on its full layers, a table of half the full head.
                "gemma4" => RopeFactorTensors::FreqsOfHead,
                _ => RopeFactorTensors::None,
            };
            assert_eq!(c.rope_factors, factors, "{what}: factor tensors");
        }
    }
}

#[test]
fn yarn_magnitude_for_mistral3_divides_by_its_log_multiplier() {
    let c = load(spec("mistral3", "").build().unwrap().to_bytes()).unwrap().config;
    let y = c.rope_scaling.yarn(c.rope_global.freq_scale, c.n_ctx_train);
    let f = DEFAULT_ROPE_SCALE;
    // What ggml's rope_yarn then multiplies cos and sin by: mscale(f, 1) / mscale(f, log_mul).
    let net = y.attn_factor * (1.0 + 0.1 * f.ln());
    assert!((net - mscale(f, 1.0) / mscale(f, YARN_KEYS.2)).abs() < 1e-6, "{net}");
    assert!(net > 1.01, "the log multiplier 0.5 leaves a magnitude above 1 ({net})");
}

#[test]
fn an_explicit_yarn_ext_factor_wins_and_a_negative_one_means_by_type() {
    let r = RopeScaling {
        kind: RopeScalingType::Linear,
        n_ctx_orig: 0,
        yarn_ext_factor: Some(0.5),
        yarn_attn_factor: 1.0,
        yarn_beta_fast: 32.0,
        yarn_beta_slow: 1.0,
        yarn_log_mul: 0.0,
        attn_factor: 1.0,
    };
    let y = r.yarn(0.5, 1000);
    assert_eq!((y.ext_factor, y.n_ctx_orig), (0.5, 1000), "ext_factor as given; a zero original context is the training one");
    let y = RopeScaling { yarn_ext_factor: Some(-1.0), kind: RopeScalingType::Yarn, ..r }.yarn(0.5, 1000);
    assert_eq!(y.ext_factor, 1.0);
}

#[test]
fn an_unknown_rope_scaling_type_is_one_clear_error() {
    let mut w = spec("llama", "").build().unwrap();
    w.set("llama.rope.scaling.type", Value::String("dynamic".into()));
    let e = load(w.to_bytes()).err().expect("refused");
    assert!(e.to_string().contains("llama.rope.scaling.type 'dynamic'"), "{e}");
}

#[test]
fn llama_and_mistral3_read_rope_freqs_whatever_the_context() {
    for arch in ["llama", "mistral3"] {
        let s = RandomModelSpec { rope_freqs: true, ..spec(arch, "") };
        let m = load(s.build().unwrap().to_bytes()).unwrap();
        let f = m.rope_factors.freqs.as_deref().unwrap_or_else(|| panic!("{arch}: rope_freqs.weight read"));
        assert_eq!(f.len(), s.dim / s.heads / 2);
        assert!(f[0] == 1.0 && f[f.len() - 1] == 8.0, "{arch}: {f:?}");
        assert_eq!(m.rope_factors.for_context(1, 1 << 20), Some(f));
        assert_eq!(m.rope_factors.for_context(1 << 20, 1), Some(f));
    }
}

#[test]
fn llama_refuses_rope_over_part_of_the_head() {
    let s = spec("llama", "");
    let mut w = s.build().unwrap();
    w.set("llama.rope.dimension_count", Value::U32((s.dim / s.heads / 2) as u32));
    let e = load(w.to_bytes()).err().expect("refused");
    assert!(e.to_string().contains("rope.dimension_count"), "{e}");
}

#[test]
fn attention_temperature_steps_every_floor_scale_positions() {
    let t = AttnTemperature { scale: 0.1, floor_scale: 64, offset: 0.0 };
    assert_eq!(t.factor(0), 1.0);
    assert_eq!(t.factor(63), 1.0);
    assert_eq!(t.factor(64), (1.0 + 0.1 * 2f64.ln()) as f32);
    assert_eq!(t.factor(127), t.factor(64));
    assert_eq!(t.factor(128), (1.0 + 0.1 * 3f64.ln()) as f32);
}
