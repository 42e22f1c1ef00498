//! Sampling and response fields clients use, against a real server on SmolLM2: log-probs
//! equal to the model's own log-softmax, `n` choices, penalties and logit bias equal to
//! the engine's sampler run alone.

mod common;

use common::*;
use engine::generate::prefill;
use engine::sampler::{token_logprob, SamplerConfig};
use serde_json::{json, Value};

const CMPL: &str = "/v1/completions";
const CHAT: &str = "/v1/chat/completions";

/// Each choice's text by index, from a streamed answer; every choice must finish.
fn streamed_choices(events: &[String], n: usize) -> Vec<String> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let mut texts = vec![String::new(); n];
    let mut finished = vec![false; n];
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c["delta"]["content"].as_str().or(c["text"].as_str()).unwrap_or(""));
            finished[i] |= c["finish_reason"].is_string();
        }
    }
    assert!(finished.iter().all(|&f| f), "a choice never finished: {events:?}");
    texts
}

#[test]
fn logprobs_are_the_models_log_softmax() {
    let srv = start(SMOL, config(2, 4, 512));
    let a = srv.addr;
    let (runner, tok) = load(SMOL);
    let prompt = tok.encode("The capital of France is", true, true);
    // Completions: logprobs = 3 alternatives; greedy, so each token is its position's top one.
    let r = post(a, CMPL, &json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 3})).json();
    let lp = &r["choices"][0]["logprobs"];
    let (tokens, values, tops) = (lp["tokens"].as_array().unwrap(), lp["token_logprobs"].as_array().unwrap(), lp["top_logprobs"].as_array().unwrap());
    assert_eq!(tokens.len(), 6, "{r}");
    assert_eq!(lp["text_offset"][0], 0, "{r}");
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, r["choices"][0]["text"].as_str().unwrap(), "{r}");
    // The same positions through the engine: prefill in the server's chunks, then one token at a time.
    let mut cache = runner.new_cache(512);
    let mut logits = prefill(&runner, &mut cache, &prompt, 64).unwrap();
    for i in 0..6 {
        let want = token_logprob(&logits, 0, 3);
        let best = want.top[0].0;
        let want = token_logprob(&logits, best, 3);
        assert_eq!(tokens[i], String::from_utf8_lossy(&tok.token_to_piece(best, true)).as_ref(), "token {i}");
        let got = values[i].as_f64().unwrap();
        assert!((got - want.logprob as f64).abs() < 1e-5, "token {i}: {got} vs {}", want.logprob);
        let top = tops[i].as_object().unwrap();
        assert!(top.len() <= 3 && !top.is_empty(), "{top:?}");
        for (t, l) in &want.top {
            let piece = String::from_utf8_lossy(&tok.token_to_piece(*t, true)).into_owned();
            if let Some(v) = top.get(&piece) {
                assert!((v.as_f64().unwrap() - *l as f64).abs() < 1e-5, "{piece}: {v} vs {l}");
            }
        }
        logits = runner.forward(&mut cache, &[best], 0..1).unwrap();
    }
    // Chat: the OpenAI shape, streamed and not, the same values.
    let body = json!({"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "temperature": 0,
                      "logprobs": true, "top_logprobs": 2});
    let r = post(a, CHAT, &body).json();
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
    assert!(!content.is_empty(), "{r}");
    let text: String = content.iter().map(|c| c["token"].as_str().unwrap()).collect();
    assert_eq!(text, r["choices"][0]["message"]["content"].as_str().unwrap());
    for c in &content {
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2, "{c}");
        assert_eq!(top[0]["token"], c["token"], "greedy takes the most likely token: {c}");
        assert_eq!(top[0]["logprob"], c["logprob"]);
        assert!(top[1]["logprob"].as_f64().unwrap() <= top[0]["logprob"].as_f64().unwrap());
        assert!(c["logprob"].as_f64().unwrap() <= 0.0);
        let bytes: Vec<u8> = c["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), c["token"].as_str().unwrap());
    }
    let mut body = body;
    body["stream"] = json!(true);
    let (status, events) = stream(a, CHAT, &body);
    assert_eq!(status, 200);
    let streamed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .flat_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    assert_eq!(streamed, content);
    // Not asked: null.
    let r = post(a, CHAT, &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})).json();
    assert!(r["choices"][0]["logprobs"].is_null(), "{r}");
    srv.shutdown().unwrap();
}

#[test]
fn several_choices() {
    let srv = start(SMOL, config(4, 8, 512));
    let a = srv.addr;
    // Greedy: every choice the same; the prompt counted once, the completions summed.
    let r = post(a, CMPL, &json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "n": 3})).json();
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{r}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], choices[0]["text"]);
    }
    let prompt_tokens = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(r["usage"]["completion_tokens"], 24, "{r}");
    assert_eq!(r["usage"]["total_tokens"], prompt_tokens + 24);
    // Sampled with a seed: reproducible, and the choices differ from one another.
    let body = json!({"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 16,
                      "temperature": 1.5, "top_k": 0, "top_p": 1, "min_p": 0, "seed": 11, "n": 3});
    let texts = |r: &Value| -> Vec<String> {
        r["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].as_str().unwrap().to_string()).collect()
    };
    let first = texts(&post(a, CHAT, &body).json());
    assert_eq!(first, texts(&post(a, CHAT, &body).json()));
    assert!(first[0] != first[1] || first[1] != first[2], "three sampled choices all equal: {first:?}");
    // Streamed: the same choices, each finished.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let (status, events) = stream(a, CHAT, &sbody);
    assert_eq!(status, 200);
    assert_eq!(streamed_choices(&events, 3), first);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    srv.shutdown().unwrap();
}

#[test]
fn penalties_and_logit_bias_sample_as_the_engine_does() {
    let srv = start(SMOL, config(2, 4, 512));
    let a = srv.addr;
    let (runner, tok) = load(SMOL);
    let text = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,";
    let prompt = tok.encode(text, true, true);
    let greedy = SamplerConfig { temperature: 0.0, ..Default::default() };
    let plain = engine_text(&runner, &tok, &prompt, greedy.clone(), Some(16));
    // Penalties: the server's answer is the engine's with the same settings, and not the plain one.
    let penalized = SamplerConfig { frequency_penalty: 1.5, presence_penalty: 0.5, ..greedy.clone() };
    let want = engine_text(&runner, &tok, &prompt, penalized, Some(16));
    assert_ne!(want, plain, "the penalties change nothing on this prompt: choose another");
    let r = post(a, CMPL, &json!({"prompt": text, "max_tokens": 16, "temperature": 0, "frequency_penalty": 1.5, "presence_penalty": 0.5})).json();
    assert_eq!(r["choices"][0]["text"], want.as_str(), "{r}");
    // A banned first token is never chosen; a favoured one always is.
    let first = tok.encode(&plain, false, false)[0];
    let r = post(a, CMPL, &json!({"prompt": text, "max_tokens": 1, "temperature": 0, "logit_bias": {first.to_string(): -100}})).json();
    assert_ne!(r["choices"][0]["text"], plain.as_str());
    let banned = SamplerConfig { logit_bias: vec![(first, -100.0)], ..greedy.clone() };
    assert_eq!(r["choices"][0]["text"], engine_text(&runner, &tok, &prompt, banned, Some(1)).as_str());
    let hello = tok.encode(" hello", false, false);
    assert_eq!(hello.len(), 1);
    let r = post(a, CMPL, &json!({"prompt": text, "max_tokens": 3, "temperature": 0.9, "logit_bias": [[hello[0], 100]]})).json();
    assert_eq!(r["choices"][0]["text"], " hello hello hello", "{r}");
    srv.shutdown().unwrap();
}
