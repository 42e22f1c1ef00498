//! Shared helpers of the server tests: start a real server on a loopback port, and a small
//! raw HTTP/1.1 client (so the tests see exactly what goes over the wire).
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// A test model by file name: fails (never skips) when it is absent.
pub fn model_path(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

/// Load a model and its tokenizer.
pub fn load(name: &str) -> (engine::Runner, tokenizer::Tokenizer) {
    let model = engine::Model::load(&model_path(name), &mut |_, _| {}).unwrap();
    let tok = tokenizer::Tokenizer::from_gguf(&model.file).unwrap();
    (engine::Runner::new(model, 2).unwrap(), tok)
}

/// Settings for a test server on 127.0.0.1, any free port.
pub fn config(parallel: usize, queue: usize, n_ctx: usize) -> server::Config {
    server::Config {
        host: "127.0.0.1".into(),
        port: 0,
        sched: server::SchedConfig {
            parallel,
            queue,
            n_ctx,
            chunk: 64,
            cache_ram: 256 << 20,
            decode_batch: server::scheduler::BATCH_INVARIANT,
        },
        model_name: "smol".into(),
        shutdown_grace: Duration::from_secs(2),
        ..server::Config::default()
    }
}

/// Start a server for a model.
pub fn start(name: &str, cfg: server::Config) -> server::RunningServer {
    let (runner, tok) = load(name);
    server::start(runner, tok, cfg, false).unwrap()
}

/// Greedy continuation of `prompt` with the engine alone (what `tandem run --temp 0` prints).
pub fn reference(runner: &engine::Runner, tok: &tokenizer::Tokenizer, prompt: &[u32], n: i64) -> String {
    let greedy = engine::sampler::SamplerConfig { temperature: 0.0, ..Default::default() };
    engine_text(runner, tok, prompt, greedy, usize::try_from(n).ok())
}

/// The continuation of `prompt` the engine alone generates with `cfg`, up to `n` tokens.
pub fn engine_text(
    runner: &engine::Runner,
    tok: &tokenizer::Tokenizer,
    prompt: &[u32],
    cfg: engine::sampler::SamplerConfig,
    n: Option<usize>,
) -> String {
    use engine::generate::{generate, Generation, StopRules};
    use engine::sampler::Sampler;
    let mut cache = runner.new_cache(1024);
    let sampler = Sampler::new(cfg);
    let rules = StopRules { max_tokens: n, ..StopRules::default() };
    let mut gen = Generation::new(tok, sampler, rules);
    let mut text = String::new();
    generate(runner, &mut cache, prompt, 512, &mut gen, &mut |t| {
        text.push_str(t);
        true
    })
    .unwrap();
    text
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// Assert an OpenAI-style error with this status; return its code.
    pub fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string() && e["code"].is_string(), "{v}");
        e["code"].as_str().unwrap().to_string()
    }
}

/// A connection with a response started: headers read, body readable (de-chunked).
pub struct Conn {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    left: usize,
    started: bool,
    done: bool,
}

impl Conn {
    /// Send a request (Connection: close) and read the response head.
    pub fn open(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Conn {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        // The server may answer (e.g. 413) before reading the whole body.
        let _ = s.write_all(body);
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("bad status line {line:?}")).parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
        let chunked = get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let left = if chunked { 0 } else { get("content-length").and_then(|v| v.parse().ok()).unwrap_or(usize::MAX) };
        Conn { status, headers, reader, chunked, left, started: false, done: false }
    }

    /// The rest of the body.
    pub fn body(mut self) -> Resp {
        let mut body = Vec::new();
        self.read_to_end(&mut body).unwrap();
        Resp { status: self.status, headers: self.headers, body }
    }

    /// The next SSE event's data (comments skipped); None at the end of the body.
    pub fn next_data(&mut self) -> Option<String> {
        let mut data = String::new();
        loop {
            let mut line = Vec::new();
            loop {
                let mut b = [0u8; 1];
                if self.read(&mut b).ok()? == 0 {
                    return None;
                }
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            let line = String::from_utf8(line).unwrap();
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return Some(data);
                }
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
    }

    /// Close the connection (as a client that goes away).
    pub fn close(self) {
        let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.chunked && self.left == 0 {
            if self.started {
                let mut crlf = String::new();
                self.reader.read_line(&mut crlf)?;
            }
            self.started = true;
            let mut size = String::new();
            self.reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = n;
        }
        if self.left == 0 {
            self.done = true;
            return Ok(0);
        }
        let want = buf.len().min(self.left);
        let got = self.reader.read(&mut buf[..want])?;
        if got == 0 {
            self.done = true;
        }
        if self.left != usize::MAX {
            self.left -= got;
        }
        Ok(got)
    }
}

/// A request sent without reading the answer (a client that may leave before it comes).
pub struct Pending(TcpStream);

impl Pending {
    /// Hang up.
    pub fn close(self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

impl Conn {
    /// POST a JSON body and return at once.
    pub fn open_nowait(addr: SocketAddr, path: &str, body: &Value) -> Pending {
        let mut s = TcpStream::connect(addr).unwrap();
        let body = body.to_string();
        let req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        Pending(s)
    }
}

/// Every remaining SSE data payload of a connection.
pub fn stream_rest(mut c: Conn) -> Vec<String> {
    let mut events = Vec::new();
    while let Some(d) = c.next_data() {
        events.push(d);
    }
    events
}

/// One request, whole response.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    Conn::open(addr, method, path, headers, body).body()
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

/// A streamed request: every data payload until the body ends.
pub fn stream(addr: SocketAddr, path: &str, body: &Value) -> (u16, Vec<String>) {
    let mut c = Conn::open(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes());
    let mut events = Vec::new();
    while let Some(d) = c.next_data() {
        events.push(d);
    }
    (c.status, events)
}

/// The text of a streamed chat or completion (deltas joined), and the finish reason.
pub fn joined(events: &[String]) -> (String, Option<String>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "stream must end with [DONE]: {events:?}");
    let mut text = String::new();
    let mut reason = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        for c in v["choices"].as_array().unwrap() {
            text.push_str(c["delta"]["content"].as_str().or(c["text"].as_str()).unwrap_or(""));
            if let Some(r) = c["finish_reason"].as_str() {
                reason = Some(r.to_string());
            }
        }
    }
    (text, reason)
}
