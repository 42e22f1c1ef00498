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
    let srv = server::start_on(loading.into_listeners(), runner, tok, config(1, 2, 256), false).unwrap();
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

/// `--host` as llama-server reads it: a comma-separated list of IP addresses and UNIX
/// socket paths (`.sock`); every one answers, the loading 503 included, and the socket
/// file is gone after shutdown.
#[test]
fn every_listed_host_answers() {
    use std::io::{Read, Write};
    let sock = std::env::temp_dir().join(format!("tandem-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let hosts = format!("127.0.0.1, {}", sock.display());
    let loading = server::bind_loading(&hosts, 0).unwrap();
    assert!(loading.describe().contains(&format!("unix:{}", sock.display())), "{}", loading.describe());
    let unix_get = |path: &str| -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(unix_get("/health").starts_with("HTTP/1.1 503"));
    let a = loading.addr().unwrap();
    assert_eq!(get(a, "/health").status, 503);
    let (runner, tok) = load(SMOL);
    let srv = server::start_on(loading.into_listeners(), runner, tok, config(1, 2, 256), false).unwrap();
    assert_eq!(srv.addrs.len(), 2);
    assert_eq!(get(srv.addr, "/health").status, 200);
    let models = unix_get("/v1/models");
    assert!(models.starts_with("HTTP/1.1 200") && models.contains("\"object\":\"list\""), "{models}");
    srv.shutdown().unwrap();
    assert!(!sock.exists(), "the socket file is removed at shutdown");
    // An address that cannot be bound is one error naming it (and leaves no socket file of
    // the addresses bound before it); an empty list too.
    let e = server::bind_loading(&format!("{},256.1.1.1", sock.display()), 0).err().unwrap().to_string();
    assert!(e.contains("256.1.1.1"), "{e}");
    assert!(!sock.exists());
    assert!(server::bind_loading(" , ", 0).is_err());
    // A server that never started (the model failed to load) removes its socket file too.
    drop(server::bind_loading(&sock.display().to_string(), 0).unwrap());
    assert!(!sock.exists());
}
