//! Prompt reuse across requests on a real server: a chat's next turn prefills only what is
//! new, a repeated request gets exactly the same answer from the cache, slot contents kept
//! in RAM come back for a later prompt, and recurrent (Qwen3.5) state is reused whole.

mod common;

use common::*;
use serde_json::{json, Value};

fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").text();
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    line.unwrap_or_else(|| panic!("{name} missing:\n{text}")).rsplit(' ').next().unwrap().parse().unwrap()
}

fn cached(r: &Value) -> u64 {
    r["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or_else(|| panic!("no cached_tokens: {r}"))
}

const SYSTEM: &str = "You are a careful assistant. Answer in one short sentence, and never use lists. \
                      Prefer plain words to technical ones, and say so when you do not know.";

#[test]
fn a_chats_next_turn_prefills_only_the_new_messages() {
    let srv = start(SMOL, config(2, 4, 1024));
    let a = srv.addr;
    let mut messages = vec![json!({"role": "system", "content": SYSTEM}), json!({"role": "user", "content": "What is the capital of France?"})];
    let turn = |messages: &Vec<Value>, cache: bool| {
        post(a, "/v1/chat/completions", &json!({"messages": messages, "max_tokens": 16, "temperature": 0, "cache_prompt": cache})).json()
    };
    let first = turn(&messages, true);
    assert_eq!(cached(&first), 0, "{first}");
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    messages.push(json!({"role": "assistant", "content": first["choices"][0]["message"]["content"]}));
    messages.push(json!({"role": "user", "content": "And of Italy?"}));
    let second = turn(&messages, true);
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    // The whole first prompt and (most of) the answer come from the slot's cache.
    assert!(cached(&second) >= first_prompt, "{second}");
    assert_eq!(second["timings"]["cache_n"], cached(&second));
    assert_eq!(second["timings"]["prompt_n"].as_u64().unwrap(), prompt - cached(&second));
    // Without the cache: the same answer, every prompt token run.
    let fresh = turn(&messages, false);
    assert_eq!(cached(&fresh), 0);
    assert_eq!(fresh["choices"][0]["message"]["content"], second["choices"][0]["message"]["content"]);
    assert!(metric(a, "tandem_prompt_cache_hits_total") >= 1.0);
    assert!(metric(a, "tandem_prompt_cached_tokens_total") >= first_prompt as f64);
    srv.shutdown().unwrap();
}

#[test]
fn a_repeated_request_gets_exactly_the_same_answer_from_the_cache() {
    let srv = start(SMOL, config(1, 4, 1024));
    let a = srv.addr;
    let body = json!({"prompt": format!("{SYSTEM} Now tell me about the sea."), "max_tokens": 12, "temperature": 0, "logprobs": 2, "ignore_eos": true});
    let one = post(a, "/v1/completions", &body).json();
    let two = post(a, "/v1/completions", &body).json();
    assert_eq!(cached(&one), 0);
    assert!(cached(&two) > 0, "{two}");
    assert_eq!(one["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), 12, "{one}");
    // Bit for bit: the suffix that runs again takes the same kernels as the whole prompt did.
    assert_eq!(one["choices"][0]["logprobs"], two["choices"][0]["logprobs"]);
    srv.shutdown().unwrap();
}

#[test]
fn slot_contents_kept_in_ram_serve_a_later_prompt() {
    let (p1, p2) = (format!("{SYSTEM} Tell me about rivers."), format!("Completely different: {SYSTEM} Mountains?"));
    for (ram, want_hit) in [(64usize << 20, true), (0, false)] {
        let mut cfg = config(1, 4, 1024);
        cfg.sched.cache_ram = ram;
        let srv = start(SMOL, cfg);
        let a = srv.addr;
        let ask = |p: &str| post(a, "/v1/completions", &json!({"prompt": p, "max_tokens": 4, "temperature": 0})).json();
        let first = ask(&p1);
        // One slot: the second prompt overwrites it (p1's content goes to RAM first).
        ask(&p2);
        let again = ask(&p1);
        assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);
        if want_hit {
            assert!(cached(&again) > 0, "{again}");
            assert!(metric(a, "tandem_ram_cache_entries") >= 1.0);
            assert!(metric(a, "tandem_ram_cache_bytes") > 0.0);
        } else {
            assert_eq!(cached(&again), 0, "--cache-ram 0 keeps nothing: {again}");
            assert_eq!(metric(a, "tandem_ram_cache_entries"), 0.0);
        }
        srv.shutdown().unwrap();
    }
}

#[test]
fn a_recurrent_models_state_is_reused_whole() {
    let spec = engine::random_model::RandomModelSpec {
        arch: "qwen35".into(),
        layers: 4,
        ..engine::random_model::RandomModelSpec::preset("tiny", gguf::GgmlType::Q8_0).unwrap()
    };
    let path = std::env::temp_dir().join(format!("tandem-qwen35-cache-{}.gguf", std::process::id()));
    spec.build().unwrap().write_file(&path).unwrap();
    let model = engine::Model::load(&path, &mut |_, _| {}).unwrap();
    let tok = tokenizer::Tokenizer::from_gguf(&model.file).unwrap();
    let runner = engine::Runner::new(model, 2).unwrap();
    let p1 = tok.encode("Once upon a time, in a land far away", true, true);
    let srv = server::start(runner, tok, config(1, 2, 256), false).unwrap();
    let a = srv.addr;
    let ask = |p: &[u32], n: usize, cache: bool| {
        post(a, "/v1/completions", &json!({"prompt": p, "max_tokens": n, "temperature": 0, "ignore_eos": true, "cache_prompt": cache})).json()
    };
    // One token: the slot then holds exactly the prompt (the sampled token never ran).
    ask(&p1, 1, true);
    // A prompt extending all the slot ran reuses its state whole, and continues exactly.
    let mut p2 = p1.clone();
    p2.extend([5, 6, 7, 8, 9, 10]);
    let hit = ask(&p2, 8, true);
    assert_eq!(cached(&hit), p1.len() as u64, "{hit}");
    let miss = ask(&p2, 8, false);
    assert_eq!(cached(&miss), 0);
    assert_eq!(hit["choices"][0]["text"], miss["choices"][0]["text"], "the reused state continues exactly");
    // A prompt diverging inside what the slot holds cannot reuse a recurrent state.
    let mut p3 = p2.clone();
    p3[3] = (p3[3] + 1) % 100;
    assert_eq!(cached(&ask(&p3, 2, true)), 0);
    srv.shutdown().unwrap();
    std::fs::remove_file(&path).ok();
}
