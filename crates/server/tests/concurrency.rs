//! Slots under load: 8 concurrent streaming clients with batched decode; a client that
//! goes away frees its slot; a full queue answers 503; shutdown is bounded.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").text();
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    line.unwrap_or_else(|| panic!("{name} missing:\n{text}")).rsplit(' ').next().unwrap().parse().unwrap()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Greedy streamed completions of `n` tokens for every prompt at once, client i starting
/// `stagger_ms * i` after the first; each client's (status, events), in prompt order.
fn greedy_streams(a: std::net::SocketAddr, prompts: &[&str], n: i64, stagger_ms: u64) -> Vec<(u16, Vec<String>)> {
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let body = json!({"prompt": p, "max_tokens": n, "temperature": 0, "stream": true, "ignore_eos": true});
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(stagger_ms * i as u64));
                stream(a, "/v1/completions", &body)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn eight_streaming_clients_get_the_single_client_greedy_text() {
    let (runner, tok) = load(SMOL);
    let srv = start(SMOL, config(8, 8, 256));
    let a = srv.addr;
    let prompts = [
        "The capital of France is",
        "Water boils at",
        "Once upon a time",
        "def fibonacci(n):",
        "The three primary colors are",
        "My favourite food is",
        "In 1969, humans",
        "A list of fruits: apple,",
    ];
    let n = 24;
    let want: Vec<String> = prompts.iter().map(|p| reference(&runner, &tok, &tok.encode(p, true, true), n)).collect();
    drop(runner);
    let t0 = Instant::now();
    for (i, (status, events)) in greedy_streams(a, &prompts, n, 15).into_iter().enumerate() {
        assert_eq!(status, 200);
        let (text, reason) = joined(&events);
        assert_eq!(text, want[i], "client {i} ({:?})", prompts[i]);
        assert_eq!(reason.as_deref(), Some("length"));
    }
    eprintln!("8 clients × {n} tokens in {:.2?}", t0.elapsed());
    // Decode steps were batched: far fewer passes than tokens.
    let passes = metric(a, "tandem_decode_passes_total");
    let tokens = metric(a, "tandem_generated_tokens_total");
    assert_eq!(tokens, (8 * n) as f64);
    assert!(passes < tokens * 0.6, "{passes} decode passes for {tokens} tokens: not batched");
    // The last event can reach a client a moment before the scheduler frees its slot.
    wait_for("every slot to be free", Duration::from_secs(10), || metric(a, "tandem_slots_busy") == 0.0);
    srv.shutdown().unwrap();
}

#[test]
fn a_client_that_goes_away_frees_its_slot_and_a_full_queue_answers_503() {
    let srv = start(SMOL, config(1, 1, 2048));
    let a = srv.addr;
    let long = json!({"prompt": "Tell me a long story.", "max_tokens": 1000, "temperature": 0, "stream": true, "ignore_eos": true});
    // Client 1 takes the only slot and starts receiving tokens.
    let mut c1 = Conn::open(a, "POST", "/v1/completions", &[], long.to_string().as_bytes());
    assert_eq!(c1.status, 200);
    let first: Value = serde_json::from_str(&c1.next_data().unwrap()).unwrap();
    assert!(first["choices"].is_array());
    assert_eq!(metric(a, "tandem_slots_busy"), 1.0);
    // Client 2 waits in the queue (its response head comes when it starts).
    let body2 = json!({"prompt": "Hi", "max_tokens": 3, "temperature": 0});
    let waiter = std::thread::spawn(move || post(a, "/v1/completions", &body2));
    wait_for("client 2 to be queued", Duration::from_secs(10), || metric(a, "tandem_queue_depth") == 1.0);
    // Client 3 finds the slot busy and the queue full.
    let r = post(a, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 3}));
    assert_eq!(r.error(503), "queue_full");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(metric(a, "tandem_rejected_total"), 1.0);
    // Client 1 hangs up mid-stream: its generation is cancelled, client 2 gets the slot.
    c1.close();
    let r2 = waiter.join().unwrap();
    assert_eq!(r2.status, 200, "{}", r2.text());
    wait_for("the slot to be free", Duration::from_secs(10), || metric(a, "tandem_slots_busy") == 0.0);
    let cancelled = get(a, "/metrics").text();
    assert!(cancelled.contains("tandem_generations_total{reason=\"cancelled\"} 1"), "{cancelled}");
    let generated = metric(a, "tandem_generated_tokens_total");
    assert!(generated < 900.0, "client 1 kept generating after it left: {generated} tokens");

    // A client that leaves while still queued does not hold a queue place.
    let mut c1 = Conn::open(a, "POST", "/v1/completions", &[], long.to_string().as_bytes());
    c1.next_data().unwrap();
    let queued = Conn::open_nowait(a, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 3}));
    wait_for("the queued request", Duration::from_secs(10), || metric(a, "tandem_queue_depth") == 1.0);
    queued.close();
    // The server notices the departure asynchronously (when the connection's close reaches it).
    wait_for("the queued request to leave", Duration::from_secs(10), || metric(a, "tandem_queue_depth") == 0.0);
    // The queue has room again: the next request is queued, not refused, and runs once client 1 leaves.
    let next = Conn::open(a, "POST", "/v1/completions", &[], json!({"prompt": "Hi", "max_tokens": 3, "stream": true}).to_string().as_bytes());
    assert_eq!(next.status, 200);
    c1.close();
    let (text, reason) = joined(&stream_rest(next));
    assert!(!text.is_empty() && reason.is_some());
    srv.shutdown().unwrap();
}

#[test]
fn non_streaming_client_that_goes_away_is_cancelled() {
    let srv = start(SMOL, config(1, 1, 1024));
    let a = srv.addr;
    let body = json!({"prompt": "Count:", "max_tokens": 900, "temperature": 0, "ignore_eos": true});
    let c = Conn::open_nowait(a, "/v1/completions", &body);
    wait_for("generation to start", Duration::from_secs(10), || metric(a, "tandem_generated_tokens_total") > 0.0);
    c.close();
    wait_for("the slot to be free", Duration::from_secs(20), || metric(a, "tandem_slots_busy") == 0.0);
    assert!(metric(a, "tandem_generated_tokens_total") < 800.0);
    srv.shutdown().unwrap();
}

#[test]
fn shutdown_cancels_running_streams_within_the_grace_period() {
    let srv = start(SMOL, config(2, 2, 2048));
    let a = srv.addr;
    let long = json!({"prompt": "Once", "max_tokens": 1900, "temperature": 0, "stream": true, "ignore_eos": true});
    let mut c = Conn::open(a, "POST", "/v1/completions", &[], long.to_string().as_bytes());
    c.next_data().unwrap();
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut last = String::new();
        while let Some(d) = c.next_data() {
            last = d;
        }
        last
    });
    srv.shutdown().unwrap();
    let took = t0.elapsed();
    // Grace is 2 s; the server bounds the rest to 2 s more and its runtime's exit to 1 s
    // (the margin is for a loaded machine).
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    let last = reader.join().unwrap();
    assert!(last.contains("shutting_down"), "the stream should end with an error event, got {last}");
    assert!(std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_err(), "still accepting");
}

#[test]
fn recurrent_state_stays_with_each_conversation() {
    // A Qwen3.5-shaped random model: three of its four layers carry a recurrent state per slot.
    let spec = engine::random_model::RandomModelSpec {
        arch: "qwen35".into(),
        layers: 4,
        ..engine::random_model::RandomModelSpec::preset("tiny", gguf::GgmlType::Q8_0).unwrap()
    };
    let path = std::env::temp_dir().join(format!("tandem-qwen35-{}.gguf", std::process::id()));
    spec.build().unwrap().write_file(&path).unwrap();
    let load = || {
        let model = engine::Model::load(&path, &mut |_, _| {}).unwrap();
        let tok = tokenizer::Tokenizer::from_gguf(&model.file).unwrap();
        (engine::Runner::new(model, 2).unwrap(), tok)
    };
    let (runner, tok) = load();
    let prompts = ["The quick brown fox jumps", "Once upon a time, in a land far away"];
    let n = 24;
    let want: Vec<String> = prompts.iter().map(|p| reference(&runner, &tok, &tok.encode(p, true, true), n)).collect();
    assert_ne!(want[0], want[1]);
    let (runner, tok) = load();
    let srv = server::start(runner, tok, config(2, 2, 256), false).unwrap();
    let a = srv.addr;
    // Both conversations at once (their decode steps share passes), then the first again in a
    // slot the other used: each gets the text it gets alone.
    for (i, (status, events)) in greedy_streams(a, &prompts, n, 10).into_iter().enumerate() {
        assert_eq!(status, 200);
        assert_eq!(joined(&events).0, want[i], "conversation {i} beside the other");
    }
    let body = json!({"prompt": prompts[0], "max_tokens": n, "temperature": 0, "stream": true, "ignore_eos": true});
    assert_eq!(joined(&stream(a, "/v1/completions", &body).1).0, want[0], "a reused slot starts from a clean state");
    srv.shutdown().unwrap();
    std::fs::remove_file(&path).ok();
}
