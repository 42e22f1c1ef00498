//! Lazy constraints over SmolLM2's real vocabulary: text passes untouched until the
//! trigger is written, then only the grammar's continuations may follow.

use constrain::{Grammars, Spec, Trigger};
use engine::generate::TokenConstraint;
use serde_json::Value;
use tokenizer::Tokenizer;

mod common;
use common::smollm2;

const CALL: &str = "start: \"<tool_call>\\n\" %json {\"type\": \"object\", \"properties\": {\"name\": {\"const\": \"get_time\"}, \"arguments\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"maxLength\": 12}}, \"required\": [\"city\"], \"additionalProperties\": false}}, \"required\": [\"name\", \"arguments\"], \"additionalProperties\": false, \"x-guidance\": {\"whitespace_flexible\": false, \"key_separator\": \": \", \"item_separator\": \", \"}} \"\\n</tool_call>\"\n";

struct Rng(u64);
impl Rng {
    fn logits(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }
}

fn argmax(l: &[f32]) -> u32 {
    (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap() as u32
}

/// Feed `text`'s tokens, checking the mask leaves every logit as it was before each one.
fn feed_free(c: &mut dyn TokenConstraint, tok: &Tokenizer, text: &str, rng: &mut Rng) {
    for t in tok.encode(text, false, false) {
        let logits = rng.logits(tok.vocab_size());
        let mut masked = logits.clone();
        c.mask(&mut masked).unwrap();
        assert_eq!(masked, logits, "free text was masked before {:?}", tok.decode(&[t], false));
        c.accept(t).unwrap();
        assert!(!c.is_complete());
    }
}

#[test]
fn the_grammar_holds_from_the_trigger_on() {
    let tok = smollm2();
    let grammars = Grammars::new(tok.clone()).unwrap();
    let trigger = Trigger { text: "<tool_call>".into(), at_start_only: false };
    for seed in 1..9u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut c = grammars.compile_lazy(&Spec::Lark(CALL.into()), trigger.clone()).unwrap();
        // Text (with a near-miss of the marker), then the marker split over several tokens.
        let lead = "Let me look that up: <tool> is not it.\n<tool_call>";
        feed_free(&mut c, &tok, lead, &mut rng);
        assert!(c.engaged(), "seed {seed}");
        // From here random logits walk only through the grammar.
        let mut out = Vec::new();
        for _ in 0..80 {
            let mut l = rng.logits(tok.vocab_size());
            c.mask(&mut l).unwrap();
            let t = argmax(&l);
            c.accept(t).unwrap();
            out.push(t);
            if c.is_complete() {
                break;
            }
        }
        assert!(c.is_complete(), "seed {seed}: {:?}", tok.decode(&out, false));
        let text = tok.decode(&out, false);
        let body = text.strip_prefix('\n').and_then(|b| b.strip_suffix("\n</tool_call>")).unwrap_or_else(|| panic!("{text:?}"));
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
        assert_eq!(v["name"], "get_time");
        assert!(v["arguments"]["city"].is_string(), "{v}");
    }
}

#[test]
fn the_trigger_may_end_inside_a_token_with_text_after_it() {
    let tok = smollm2();
    let grammars = Grammars::new(tok.clone()).unwrap();
    let mut c = grammars.compile_lazy(&Spec::Lark(CALL.into()), Trigger { text: "<tool_call>".into(), at_start_only: false }).unwrap();
    // "<tool_call>\n{\"" as the model might write it: the grammar takes the part after the marker too.
    let mut rng = Rng(7);
    feed_free(&mut c, &tok, "Sure.", &mut rng);
    for t in tok.encode("<tool_call>\n{\"", false, false) {
        c.accept(t).unwrap();
    }
    assert!(c.engaged());
    let mut l = rng.logits(tok.vocab_size());
    c.mask(&mut l).unwrap();
    let allowed: Vec<u32> = (0..l.len() as u32).filter(|&t| l[t as usize].is_finite()).collect();
    assert!(!allowed.is_empty());
    for t in allowed {
        let piece = tok.decode(&[t], false);
        assert!("name\"".starts_with(&piece) || piece.starts_with("name\""), "{piece:?} may follow {{\"");
    }
    // What follows the marker in the marker's own last token and does not fit the grammar
    // leaves the answer free text (parsed as written).
    let mut c = grammars.compile_lazy(&Spec::Lark(CALL.into()), Trigger { text: "<tool_call>".into(), at_start_only: false }).unwrap();
    feed_free(&mut c, &tok, "<tool_call", &mut rng);
    let misfit = (0..tok.vocab_size() as u32)
        .find(|&t| {
            let p = tok.decode(&[t], false);
            p.len() > 1 && p.starts_with('>') && !p[1..].starts_with('\n')
        })
        .expect("a token '>' followed by more");
    c.accept(misfit).unwrap();
    assert!(!c.engaged());
    feed_free(&mut c, &tok, " and more text <tool_call>\n", &mut rng);
}

#[test]
fn a_start_only_trigger_after_text_never_engages() {
    let tok = smollm2();
    let grammars = Grammars::new(tok.clone()).unwrap();
    let llama = "start: %json {\"type\": \"object\", \"properties\": {\"name\": {\"const\": \"f\"}}, \"required\": [\"name\"]}\n";
    let trigger = Trigger { text: "{\"name\"".into(), at_start_only: true };
    let mut rng = Rng(3);
    let mut c = grammars.compile_lazy(&Spec::Lark(llama.into()), trigger.clone()).unwrap();
    feed_free(&mut c, &tok, "Here is JSON: {\"name\": \"g\"} and more", &mut rng);
    assert!(!c.engaged());
    let mut c = grammars.compile_lazy(&Spec::Lark(llama.into()), trigger).unwrap();
    feed_free(&mut c, &tok, "  \n{\"name", &mut rng);
    for t in tok.encode("\":", false, false) {
        c.accept(t).unwrap();
    }
    assert!(c.engaged());
}

#[test]
fn a_marker_while_reasoning_is_not_a_call() {
    let tok = smollm2();
    let grammars = Grammars::new(tok.clone()).unwrap();
    let mut rng = Rng(11);
    let mut c = grammars.compile_lazy(&Spec::Lark(CALL.into()), Trigger { text: "<tool_call>".into(), at_start_only: false }).unwrap();
    feed_free(&mut c, &tok, "<think>I could write <tool_call> and more here.</think>\nSure. ", &mut rng);
    assert!(!c.engaged());
    for t in tok.encode("<tool_call>\n", false, false) {
        c.accept(t).unwrap();
    }
    assert!(c.engaged(), "the marker after the reasoning engages");
}
