//! The official `openai` Python package against a real server (chat and completions,
//! streaming and not, embeddings, errors). Needs `python3 -m pip install openai` (scripts/test.sh does it).

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn official_openai_client() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&python).args(["-c", "import openai"]).output();
    match check {
        Ok(o) if o.status.success() => {}
        _ => panic!("the openai Python package is missing: run `{python} -m pip install openai`"),
    }
    let mut cfg = config(2, 4, 512);
    cfg.api_keys = vec!["test-key".into()];
    cfg.pooling = Some(engine::embed::Pooling::Mean);
    let srv = start(SMOL, cfg);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}/v1", srv.addr))
        .arg("smol")
        .arg("test-key")
        .env("NO_PROXY", "*")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("the openai client script did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openai client failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
    srv.shutdown().unwrap();
}
