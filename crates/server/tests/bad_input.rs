//! Bad input gets a 4xx with an OpenAI-style error and never hurts the server; API keys;
//! CORS only when asked.

mod common;

use common::*;
use serde_json::json;

fn ok_after(addr: std::net::SocketAddr) {
    let r = post(addr, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0}));
    assert_eq!(r.status, 200, "the server stopped serving: {}", r.text());
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let mut cfg = config(1, 2, 64);
    cfg.max_body = 64 << 10;
    let srv = start(SMOL, cfg);
    let a = srv.addr;
    let chat = "/v1/chat/completions";
    let cmpl = "/v1/completions";
    let raw = |path: &str, body: &[u8]| request(a, "POST", path, &[("Content-Type", "application/json")], body);
    let cases: Vec<(&str, Resp, u16, &str)> = vec![
        ("malformed JSON", raw(chat, b"{\"messages\": ["), 400, "invalid_request"),
        ("not JSON at all", raw(cmpl, b"hello"), 400, "invalid_request"),
        ("empty body", raw(cmpl, b""), 400, "invalid_request"),
        ("JSON array", raw(cmpl, b"[1,2]"), 400, "invalid_request"),
        ("missing prompt", post(a, cmpl, &json!({"max_tokens": 3})), 400, "invalid_request"),
        ("missing messages", post(a, chat, &json!({"model": "smol"})), 400, "invalid_request"),
        ("messages not a list", post(a, chat, &json!({"messages": "hi"})), 400, "invalid_request"),
        ("empty messages", post(a, chat, &json!({"messages": []})), 400, "invalid_value"),
        ("message not an object", post(a, chat, &json!({"messages": [3]})), 400, "invalid_value"),
        ("message without role", post(a, chat, &json!({"messages": [{"content": "x"}]})), 400, "invalid_value"),
        ("role a number", post(a, chat, &json!({"messages": [{"role": 1, "content": "x"}]})), 400, "invalid_value"),
        ("content a number", post(a, chat, &json!({"messages": [{"role": "user", "content": 5}]})), 400, "invalid_value"),
        ("image part", post(a, chat, &json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})), 400, "invalid_value"),
        ("max_tokens a string", post(a, cmpl, &json!({"prompt": "x", "max_tokens": "ten"})), 400, "invalid_request"),
        ("max_tokens 0", post(a, cmpl, &json!({"prompt": "x", "max_tokens": 0})), 400, "invalid_value"),
        ("max_tokens -5", post(a, cmpl, &json!({"prompt": "x", "max_tokens": -5})), 400, "invalid_value"),
        ("max_tokens 1.5", post(a, cmpl, &json!({"prompt": "x", "max_tokens": 1.5})), 400, "invalid_request"),
        ("temperature a string", post(a, cmpl, &json!({"prompt": "x", "temperature": "hot"})), 400, "invalid_request"),
        ("temperature negative", post(a, cmpl, &json!({"prompt": "x", "temperature": -1})), 400, "invalid_value"),
        ("top_p above 1", post(a, cmpl, &json!({"prompt": "x", "top_p": 1.5})), 400, "invalid_value"),
        ("top_k negative", post(a, cmpl, &json!({"prompt": "x", "top_k": -1})), 400, "invalid_value"),
        ("stream a string", post(a, cmpl, &json!({"prompt": "x", "stream": "yes"})), 400, "invalid_request"),
        ("stop a number", post(a, cmpl, &json!({"prompt": "x", "stop": 7})), 400, "invalid_value"),
        ("stop list of numbers", post(a, cmpl, &json!({"prompt": "x", "stop": [1]})), 400, "invalid_value"),
        ("n = 0", post(a, cmpl, &json!({"prompt": "x", "n": 0})), 400, "invalid_value"),
        ("n = 17", post(a, cmpl, &json!({"prompt": "x", "n": 17})), 400, "invalid_value"),
        ("presence_penalty 3", post(a, cmpl, &json!({"prompt": "x", "presence_penalty": 3})), 400, "invalid_value"),
        ("frequency_penalty a string", post(a, cmpl, &json!({"prompt": "x", "frequency_penalty": "x"})), 400, "invalid_request"),
        ("logit_bias id out of range", post(a, cmpl, &json!({"prompt": "x", "logit_bias": {"99999999": 1}})), 400, "invalid_value"),
        ("logit_bias above 100", post(a, cmpl, &json!({"prompt": "x", "logit_bias": {"1": 500}})), 400, "invalid_value"),
        ("completion logprobs a boolean", post(a, cmpl, &json!({"prompt": "x", "logprobs": true})), 400, "invalid_value"),
        ("top_logprobs without logprobs", post(a, chat, &json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})), 400, "invalid_value"),
        ("top_logprobs 21", post(a, chat, &json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})), 400, "invalid_value"),
        ("echo", post(a, cmpl, &json!({"prompt": "x", "echo": true})), 400, "unsupported_field"),
        ("best_of", post(a, cmpl, &json!({"prompt": "x", "best_of": 3})), 400, "unsupported_field"),
        ("audio output", post(a, chat, &json!({"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]})), 400, "unsupported_field"),
        ("functions", post(a, chat, &json!({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]})), 400, "unsupported_field"),
        ("prompt an object", post(a, cmpl, &json!({"prompt": {"a": 1}})), 400, "invalid_value"),
        ("token id out of range", post(a, cmpl, &json!({"prompt": [1, 99999999]})), 400, "invalid_value"),
        ("prompt longer than the context", post(a, cmpl, &json!({"prompt": "word ".repeat(200)})), 400, "context_length_exceeded"),
        ("chat longer than the context", post(a, chat, &json!({"messages": [{"role": "user", "content": "word ".repeat(200)}]})), 400, "context_length_exceeded"),
        ("oversized body", raw(cmpl, &vec![b' '; 100 << 10]), 413, "request_too_large"),
        ("detokenize bad id", post(a, "/detokenize", &json!({"tokens": [-1]})), 400, "invalid_value"),
        ("tokenize without content", post(a, "/tokenize", &json!({})), 400, "invalid_request"),
        ("unknown path", get(a, "/v2/nothing"), 404, "not_found"),
        ("wrong method", get(a, cmpl), 405, "method_not_allowed"),
    ];
    for (name, resp, status, code) in cases {
        assert_eq!(resp.status, status, "{name}: {}", resp.text());
        assert_eq!(resp.error(status), code, "{name}: {}", resp.text());
    }
    // Messages naming the field at fault.
    let r = post(a, cmpl, &json!({"prompt": "x", "max_tokens": "ten"})).json();
    assert!(r["error"]["message"].as_str().unwrap().contains("max_tokens"), "{r}");
    // Garbage on the socket does not take the server down.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(a).unwrap();
        let _ = s.write_all(b"\x00\x01\x02 NOT HTTP\r\n\r\n");
    }
    ok_after(a);
    // Fields that change nothing are accepted (clients send many); an empty model name is the default one.
    let r = post(a, cmpl, &json!({"prompt": "Hi", "max_tokens": 1, "frequency_penalty": 0, "user": "u", "store": false, "model": ""}));
    assert_eq!(r.status, 200, "{}", r.text());
    // Still serving; no CORS headers without --cors.
    let r = get(a, "/health");
    assert!(r.header("access-control-allow-origin").is_none());
    let pre = request(a, "OPTIONS", cmpl, &[("Origin", "http://x"), ("Access-Control-Request-Method", "POST")], b"");
    assert!(pre.header("access-control-allow-origin").is_none());
    srv.shutdown().unwrap();
}

#[test]
fn context_overflow_reports_llama_server_counts() {
    let srv = start(SMOL, config(1, 1, 256));
    let r = post(srv.addr, "/v1/completions", &json!({"prompt": "word ".repeat(300)}));
    assert_eq!(r.status, 400);
    let e = &r.json()["error"];
    assert_eq!((e["code"].as_str(), e["type"].as_str(), e["n_ctx"].as_u64()), (Some("context_length_exceeded"), Some("exceed_context_size_error"), Some(256)), "{e}");
    assert!(e["n_prompt_tokens"].as_u64().unwrap() >= 256, "{e}");
    srv.shutdown().unwrap();
}

#[test]
fn api_key_guards_everything_but_health_and_cors_when_asked() {
    let mut cfg = config(1, 1, 256);
    cfg.api_keys = vec!["s3cret".into(), "other-key".into()];
    cfg.cors = true;
    let srv = start(SMOL, cfg);
    let a = srv.addr;
    let body = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
    for (path, method) in [("/v1/completions", "POST"), ("/v1/chat/completions", "POST"), ("/v1/models", "GET"),
                           ("/tokenize", "POST"), ("/detokenize", "POST"), ("/apply-template", "POST"), ("/metrics", "GET")] {
        let r = request(a, method, path, &[], body.as_bytes());
        assert_eq!(r.error(401), "invalid_api_key", "{path}");
        let r = request(a, method, path, &[("Authorization", "Bearer wrong")], body.as_bytes());
        assert_eq!(r.error(401), "invalid_api_key", "{path}");
        let r = request(a, method, path, &[("Authorization", "Basic s3cret")], body.as_bytes());
        assert_eq!(r.error(401), "invalid_api_key", "{path}");
        let r = request(a, method, path, &[("X-Api-Key", "wrong")], body.as_bytes());
        assert_eq!(r.error(401), "invalid_api_key", "{path}");
    }
    // The key as X-Api-Key, as llama-server takes it too; any of the keys given.
    assert_eq!(request(a, "GET", "/v1/models", &[("X-Api-Key", "s3cret")], b"").status, 200);
    assert_eq!(request(a, "GET", "/v1/models", &[("Authorization", "Bearer other-key")], b"").status, 200);
    assert_eq!(request(a, "GET", "/v1/models", &[("Authorization", "Bearer s3cret,other-key")], b"").error(401), "invalid_api_key");
    assert_eq!(get(a, "/health").status, 200);
    let auth = [("Authorization", "Bearer s3cret")];
    let r = request(a, "POST", "/v1/completions", &auth, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(request(a, "GET", "/v1/models", &auth, b"").status, 200);
    // A browser's preflight carries no key; it is answered.
    let pre = request(a, "OPTIONS", "/v1/chat/completions", &[("Origin", "http://x"), ("Access-Control-Request-Method", "POST")], b"");
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert!(pre.header("access-control-allow-headers").unwrap().contains("Authorization"));
    srv.shutdown().unwrap();
}
