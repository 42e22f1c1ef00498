//! What llama-server's deployments rely on: /health answers 503 "Loading model" while the
//! model loads and 200 once the same socket serves; CORS for listed origins only; request
//! defaults from the server's flags.

mod common;

use common::*;
use serde_json::json;

#[test]
fn health_says_loading_until_the_server_takes_the_socket() {
    let loading = server::bind_loading("127.0.0.1", 0).unwrap();
    let a = loading.addr().unwrap();
    let r = get(a, "/health");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["message"], "Loading model");
    assert_eq!(post(a, "/v1/completions", &json!({"prompt": "x"})).status, 503);
    let (runner, tok) = load(SMOL);
    let srv = server::start_on(loading.into_listener(), runner, tok, config(1, 2, 256), false).unwrap();
    assert_eq!(srv.addr, a);
    assert_eq!(get(a, "/health").status, 200);
    srv.shutdown().unwrap();
}

#[test]
fn cors_answers_listed_origins_only_and_defaults_fill_requests() {
    let mut cfg = config(1, 2, 256);
    cfg.cors_origins = vec!["http://localhost:3000".into()];
    cfg.defaults.sampler.temperature = 0.0;
    cfg.defaults.max_tokens = Some(5);
    cfg.slots_endpoint = false;
    let (runner, tok) = load(SMOL);
    let want = reference(&runner, &tok, &tok.encode("Once upon a time", true, true), 5);
    let srv = start(SMOL, cfg);
    let a = srv.addr;
    let ok = request(a, "GET", "/v1/models", &[("Origin", "http://localhost:3000")], b"");
    assert_eq!(ok.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert_eq!(ok.header("vary"), Some("Origin"));
    let other = request(a, "GET", "/v1/models", &[("Origin", "http://evil.example")], b"");
    assert_eq!(other.status, 200);
    assert!(other.header("access-control-allow-origin").is_none());
    let pre = request(a, "OPTIONS", "/v1/completions", &[("Origin", "http://localhost:3000"), ("Access-Control-Request-Method", "POST")], b"");
    assert_eq!(pre.status, 204);
    assert!(pre.header("access-control-allow-methods").unwrap().contains("POST"));
    // The server's defaults: greedy, 5 tokens, unless the request says otherwise.
    let r = post(a, "/v1/completions", &json!({"prompt": "Once upon a time"})).json();
    assert_eq!(r["choices"][0]["text"], want.as_str());
    assert_eq!(r["usage"]["completion_tokens"], 5);
    let r = post(a, "/v1/completions", &json!({"prompt": "Once upon a time", "max_tokens": 2})).json();
    assert_eq!(r["usage"]["completion_tokens"], 2);
    assert_eq!(get(a, "/slots").status, 501);
    srv.shutdown().unwrap();
}
