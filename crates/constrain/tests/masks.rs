//! Constraints over SmolLM2's real vocabulary: outputs walked with random logits through
//! the masks always parse and follow the schema or grammar; bad specs are errors.

use constrain::{Grammars, Spec};
use engine::generate::TokenConstraint;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokenizer::Tokenizer;

mod common;
use common::smollm2;

/// Walk a constraint with seeded random logits (greedy over what the mask allows) until it
/// is complete or a token that ends generation is chosen; the text, and time per mask.
fn walk(tok: &Tokenizer, grammars: &Grammars, spec: &Spec, seed: u64, max: usize) -> (String, bool, Duration) {
    let mut c = grammars.compile(spec).unwrap();
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut ids = Vec::new();
    let mut masking = Duration::ZERO;
    for _ in 0..max {
        let mut logits: Vec<f32> = (0..tok.vocab_size())
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let t0 = Instant::now();
        c.mask(&mut logits).unwrap();
        masking += t0.elapsed();
        let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap() as u32;
        if tok.is_eog(best) {
            return (tok.decode(&ids, false), true, masking / ids.len().max(1) as u32);
        }
        c.accept(best).unwrap();
        ids.push(best);
        if c.is_complete() {
            return (tok.decode(&ids, false), true, masking / ids.len() as u32);
        }
    }
    (tok.decode(&ids, false), false, masking / max as u32)
}

#[test]
fn outputs_follow_json_schemas_and_grammars() {
    let tok = smollm2();
    let t0 = Instant::now();
    let grammars = Grammars::new(tok.clone()).unwrap();
    eprintln!("vocabulary indexed in {:?}", t0.elapsed());
    let schema = json!({"type": "object", "properties": {
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 9},
        "colour": {"enum": ["red", "green", "blue"]}},
        "required": ["ok", "n", "colour"], "additionalProperties": false});
    let mut per_token = Vec::new();
    for seed in 0..20 {
        let (text, done, t) = walk(&tok, &grammars, &Spec::JsonSchema(schema.clone()), seed, 64);
        assert!(done, "seed {seed}: not complete after 64 tokens: {text:?}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {text:?}: {e}"));
        assert!(v["ok"].is_boolean(), "{v}");
        assert!(v["n"].as_i64().is_some_and(|n| (0..=9).contains(&n)), "{v}");
        assert!(["red", "green", "blue"].contains(&v["colour"].as_str().unwrap()), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
        per_token.push(t);
    }
    per_token.sort();
    eprintln!("mask per token (median over walks): {:?}", per_token[per_token.len() / 2]);
    // llama.cpp's GBNF and llguidance's Lark.
    let gbnf = Spec::Gbnf("root ::= (\"yes\" | \"no\") \"!\" [0-9]{2}\n".into());
    let lark = Spec::Lark("start: (\"up\" | \"down\") \" \" /[a-c]{3}/\n".into());
    for seed in 0..10 {
        let (text, done, _) = walk(&tok, &grammars, &gbnf, seed, 16);
        let digits = text.trim_start_matches("yes!").trim_start_matches("no!");
        assert!(done && (text.starts_with("yes!") || text.starts_with("no!")), "{text:?}");
        assert!(digits.len() == 2 && digits.chars().all(|c| c.is_ascii_digit()), "{text:?}");
        let (text, done, _) = walk(&tok, &grammars, &lark, seed, 16);
        let rest = text.strip_prefix("up ").or_else(|| text.strip_prefix("down ")).unwrap_or_else(|| panic!("{text:?}"));
        assert!(done && rest.len() == 3 && rest.chars().all(|c| ('a'..='c').contains(&c)), "{text:?}");
    }
}

#[test]
fn bad_specs_are_errors() {
    let grammars = Grammars::new(smollm2()).unwrap();
    for spec in [
        Spec::JsonSchema(json!({"type": "objekt"})),
        Spec::JsonSchema(json!({"$ref": "#/$defs/missing"})),
        Spec::Lark("start: undefined_rule\n".into()),
        Spec::Gbnf("root ::= [a-".into()),
    ] {
        assert!(grammars.compile(&spec).is_err(), "{spec:?} accepted");
    }
    // A multi-line JSON grammar in llama.cpp's layout compiles.
    let json_gbnf = include_str!("json-layout.gbnf");
    if let Err(e) = grammars.compile(&Spec::Gbnf(json_gbnf.into())) {
        panic!("json-layout.gbnf: {e}");
    }
}
