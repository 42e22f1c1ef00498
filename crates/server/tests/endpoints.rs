//! Every endpoint against a real server on 127.0.0.1, over raw HTTP.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn completions_chat_and_llama_server_endpoints() {
    let (runner, tok) = load(SMOL);
    let srv = start(SMOL, config(2, 4, 512));
    let a = srv.addr;

    // /health, /v1/models
    let h = get(a, "/health");
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    let m = get(a, "/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "smol");
    assert_eq!(m["data"][0]["meta"]["chat_template"], "gguf");

    // /tokenize and /detokenize round trip, llama-server's shapes.
    let t = post(a, "/tokenize", &json!({"content": "Hello world"})).json();
    let ids: Vec<u32> = serde_json::from_value(t["tokens"].clone()).unwrap();
    assert_eq!(ids, tok.encode("Hello world", false, true));
    let p = post(a, "/tokenize", &json!({"content": "Hi", "with_pieces": true})).json();
    assert_eq!(p["tokens"][0]["piece"], "Hi");
    let d = post(a, "/detokenize", &json!({"tokens": ids})).json();
    assert_eq!(d["content"], "Hello world");

    // /v1/completions, non-streaming greedy: exactly the engine's own greedy continuation.
    let prompt = "The capital of France is";
    let want = reference(&runner, &tok, &tok.encode(prompt, true, true), 12);
    let r = post(a, "/v1/completions", &json!({"model": "smol", "prompt": prompt, "max_tokens": 12, "temperature": 0}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // Any model name is answered by the one served model, as llama-server does.
    let other = post(a, "/v1/completions", &json!({"model": "gpt-4o-mini", "prompt": prompt, "max_tokens": 12, "temperature": 0}));
    assert_eq!(other.status, 200, "{}", other.text());
    assert_eq!((other.json()["choices"][0]["text"].clone(), other.json()["model"].clone()), (v["choices"][0]["text"].clone(), v["model"].clone()));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let n_prompt = tok.encode(prompt, true, true).len();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": n_prompt, "completion_tokens": 12, "total_tokens": n_prompt + 12,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!((v["timings"]["prompt_n"].clone(), v["timings"]["predicted_n"].clone()), (json!(n_prompt), json!(12)), "{v}");

    // Streaming gives the same text, ends with [DONE], and the usage chunk when asked.
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let (status, events) = stream(a, "/v1/completions", &body);
    assert_eq!(status, 200);
    assert_eq!(joined(&events), (want.clone(), Some("length".into())));
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 12);

    // A stop string: the text ends just before it, finish_reason stop.
    let cut = want.char_indices().nth(want.chars().count() / 2).unwrap().0;
    let stop: String = want[cut..].chars().take(3).collect();
    let first = want.find(&stop).unwrap();
    let r = post(a, "/v1/completions", &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [stop]})).json();
    assert_eq!(r["choices"][0]["text"], &want[..first]);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    // Token-id prompts work too.
    let ids = tok.encode(prompt, true, true);
    let r = post(a, "/v1/completions", &json!({"prompt": ids, "max_tokens": 12, "temperature": 0})).json();
    assert_eq!(r["choices"][0]["text"], want.as_str());

    // Chat: the GGUF template, the same greedy text as the engine on the rendered prompt.
    let msgs = json!([{"role": "user", "content": "What is 2+2?"}]);
    let rendered = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    let chat_ids = tok.encode(rendered, true, true);
    let want = reference(&runner, &tok, &chat_ids, 40);
    let r = post(a, "/v1/chat/completions", &json!({"messages": msgs, "max_tokens": 40, "temperature": 0})).json();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"], json!({"role": "assistant", "content": want}));
    assert_eq!(r["usage"]["prompt_tokens"], chat_ids.len());
    let reason = r["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(reason == "stop" || reason == "length");
    let (status, events) =
        stream(a, "/v1/chat/completions", &json!({"messages": msgs, "max_tokens": 40, "temperature": 0, "stream": true}));
    assert_eq!(status, 200);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(first["choices"][0]["delta"]["content"].is_null(), "the first chunk's content is null: {first}");
    assert_eq!(joined(&events), (want, Some(reason.to_string())));

    // Sampling with a seed is reproducible; different seeds may differ but stay valid.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0, "top_k": 50,
                      "top_p": 0.9, "min_p": 0.01, "seed": 42});
    let x = post(a, "/v1/completions", &body).json();
    let y = post(a, "/v1/completions", &body).json();
    assert_eq!(x["choices"][0]["text"], y["choices"][0]["text"]);

    // /metrics counts what happened, in Prometheus text.
    let m = get(a, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    for needle in [
        "tandem_requests_total{route=\"/v1/completions\",status=\"200\"}",
        "# TYPE tandem_prompt_tokens_total counter",
        "tandem_decode_tokens_per_second",
        "tandem_prefill_tokens_per_second",
        "tandem_queue_depth 0",
        "tandem_slots_total 2",
        "tandem_engine_matmuls_total{engine=\"cpu\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let generated: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tandem_generated_tokens_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(generated >= 12.0 * 5.0, "{generated}");
    srv.shutdown().unwrap();
}

#[test]
fn gemma_uses_the_builtin_template() {
    let (runner, tok) = load(GEMMA);
    let mut cfg = config(1, 2, 512);
    cfg.model_name = "gemma".into();
    let srv = start(GEMMA, cfg);
    let m = get(srv.addr, "/v1/models").json();
    assert_eq!(m["data"][0]["meta"]["chat_template"], "gemma");
    let msgs = json!([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}]);
    let rendered = "<start_of_turn>user\nAnswer briefly.\n\nName a color.<end_of_turn>\n<start_of_turn>model\n";
    let ids = tok.encode(rendered, true, true);
    assert_eq!(ids.iter().filter(|&&t| Some(t) == tok.bos()).count(), 1);
    let want = reference(&runner, &tok, &ids, 24);
    let r = post(srv.addr, "/v1/chat/completions", &json!({"model": "gemma", "messages": msgs, "max_tokens": 24, "temperature": 0}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    // The template's own checks become 400s.
    let bad = json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]});
    let r = post(srv.addr, "/v1/chat/completions", &bad);
    assert_eq!(r.error(400), "invalid_messages");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("alternate"));
    srv.shutdown().unwrap();
}

/// llama-server's own /completion (text or token prompt, n_probs, its stream without
/// [DONE]), /props and /slots.
#[test]
fn llama_server_native_completion_props_and_slots() {
    let (runner, tok) = load(SMOL);
    let mut cfg = config(2, 4, 512);
    cfg.model_path = "/models/smol.gguf".into();
    let srv = start(SMOL, cfg);
    let a = srv.addr;
    let prompt = "The capital of France is";
    let ids = tok.encode(prompt, true, true);
    let want = reference(&runner, &tok, &ids, 10);
    let r = post(a, "/completion", &json!({"prompt": prompt, "n_predict": 10, "temperature": 0, "n_probs": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["content"], want.as_str(), "{v}");
    assert_eq!((v["stop"].clone(), v["stop_type"].clone()), (json!(true), json!("limit")));
    assert_eq!((v["tokens_predicted"].clone(), v["tokens_evaluated"].clone()), (json!(10), json!(ids.len())));
    assert_eq!(v["generation_settings"]["n_predict"], 10);
    let probs = v["completion_probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 10);
    let text: String = probs.iter().map(|p| p["token"].as_str().unwrap()).collect();
    assert_eq!(text, want);
    for p in probs {
        assert_eq!(p["top_logprobs"].as_array().unwrap().len(), 2);
        assert_eq!(p["top_logprobs"][0]["id"], p["id"], "greedy takes the most likely token");
    }
    // Token ids as the prompt: the same answer. A stop word ends it with stop_type "word".
    let r = post(a, "/completion", &json!({"prompt": ids, "n_predict": 10, "temperature": 0})).json();
    assert_eq!(r["content"], want.as_str());
    assert!(r.get("completion_probabilities").is_none());
    let word = want.split_whitespace().nth(1).unwrap().to_string();
    let r = post(a, "/completion", &json!({"prompt": prompt, "n_predict": 10, "temperature": 0, "stop": [word]})).json();
    assert_eq!(r["stop_type"], "word", "{r}");
    // Streamed: the same text in pieces, the last event stops with timings, no [DONE].
    let (status, events) = stream(a, "/completion", &json!({"prompt": prompt, "n_predict": 10, "temperature": 0, "stream": true}));
    assert_eq!(status, 200);
    let parsed: Vec<Value> = events.iter().map(|e| serde_json::from_str(e).unwrap_or_else(|_| panic!("{e}"))).collect();
    let text: String = parsed.iter().map(|e| e["content"].as_str().unwrap()).collect();
    assert_eq!(text, want);
    let last = parsed.last().unwrap();
    assert_eq!(last["stop"], true);
    assert!(last["timings"]["predicted_n"].as_u64().unwrap() == 10, "{last}");
    assert!(parsed[..parsed.len() - 1].iter().all(|e| e["stop"] == false));
    // Bad input: one clear error.
    let r = post(a, "/completion", &json!({"prompt": prompt, "n_probs": 50}));
    assert_eq!(r.error(400), "invalid_value");
    let r = post(a, "/completion", &json!({"n_predict": 3}));
    assert_eq!(r.error(400), "invalid_request");

    // /props: slots, template, special tokens, model.
    let p = get(a, "/props").json();
    assert_eq!(p["total_slots"], 2);
    assert_eq!(p["model_path"], "/models/smol.gguf");
    assert!(p["chat_template"].as_str().unwrap().contains("im_start"), "{p}");
    assert_eq!(p["default_generation_settings"]["n_ctx"], 512);
    assert_eq!(p["bos_token"], tok.bos().and_then(|b| tok.token_text(b)).unwrap());
    // /slots: both idle now, one holding the last prompt and answer.
    let slots = get(a, "/slots").json();
    let slots = slots.as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert!(slots.iter().all(|s| s["is_processing"] == false && s["n_ctx"] == 512));
    assert!(slots.iter().any(|s| s["n_cached"].as_u64().unwrap() >= ids.len() as u64), "{slots:?}");
    srv.shutdown().unwrap();
}
