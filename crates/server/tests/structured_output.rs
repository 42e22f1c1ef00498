//! Structured output on a real server: JSON mode, JSON schemas (50 varied ones checked by
//! Python's `jsonschema`, through the official openai client), llama.cpp's GBNF grammars
//! and its `json_schema` field; bad schemas get one clear 400.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;

const CHAT: &str = "/v1/chat/completions";

fn content(r: &Value) -> String {
    r["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("{r}")).to_string()
}

#[test]
fn json_mode_schemas_and_grammars() {
    let srv = start(SMOL, config(2, 4, 1024));
    let a = srv.addr;
    let msgs = json!([{"role": "user", "content": "Describe a cat."}]);
    // JSON mode: an object, whatever the model would have said.
    let r = post(a, CHAT, &json!({"messages": msgs, "max_tokens": 200, "temperature": 0, "response_format": {"type": "json_object"}})).json();
    let v: Value = serde_json::from_str(&content(&r)).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert!(v.is_object(), "{v}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    // A strict schema, streamed: the joined deltas follow it.
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8}, "colour": {"enum": ["black", "white", "ginger"]}},
        "required": ["name", "legs", "colour"], "additionalProperties": false});
    let body = json!({"messages": msgs, "max_tokens": 200, "temperature": 0.8, "seed": 3, "stream": true,
                      "response_format": {"type": "json_schema", "json_schema": {"name": "cat", "strict": true, "schema": schema}}});
    let (status, events) = stream(a, CHAT, &body);
    assert_eq!(status, 200);
    let (text, reason) = joined(&events);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(reason.as_deref(), Some("stop"));
    assert!(v["name"].as_str().is_some_and(|n| n.chars().count() <= 10), "{v}");
    assert!(v["legs"].as_i64().is_some_and(|l| (0..=8).contains(&l)), "{v}");
    assert!(["black", "white", "ginger"].contains(&v["colour"].as_str().unwrap()), "{v}");
    // llama-server's fields: a GBNF grammar on /completion, a json_schema on /v1/completions.
    let g = "root ::= (\"yes\" | \"no\") \", because \" [a-z ]{3,20} \".\"\n";
    let r = post(a, "/completion", &json!({"prompt": "Is the sky blue?", "n_predict": 40, "grammar": g})).json();
    let c = r["content"].as_str().unwrap();
    let rest = c.strip_prefix("yes, because ").or_else(|| c.strip_prefix("no, because ")).unwrap_or_else(|| panic!("{r}"));
    assert!(rest.ends_with('.') && rest.len() >= 4 && rest.len() <= 21, "{c:?}");
    assert_eq!(r["stop_type"], "eos", "{r}");
    let r = post(a, "/v1/completions", &json!({"prompt": "A number:", "max_tokens": 20, "json_schema": {"type": "integer", "minimum": 10, "maximum": 99}})).json();
    let n: i64 = r["choices"][0]["text"].as_str().unwrap().parse().unwrap_or_else(|e| panic!("{e}: {r}"));
    assert!((10..=99).contains(&n));
    // n choices each get their own constraint.
    let r = post(a, CHAT, &json!({"messages": msgs, "max_tokens": 60, "temperature": 1.0, "n": 2, "seed": 1,
                                  "response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": {"type": "boolean"}}}})).json();
    for c in r["choices"].as_array().unwrap() {
        assert!(["true", "false"].contains(&c["message"]["content"].as_str().unwrap()), "{r}");
    }
    // Bad specs: one clear 400 each, and the server goes on.
    for (body, code) in [
        (json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}}), "invalid_grammar"),
        (json!({"messages": msgs, "response_format": {"type": "xml"}}), "invalid_value"),
        (json!({"messages": msgs, "grammar": "root ::= [a-"}), "invalid_grammar"),
        (json!({"messages": msgs, "grammar": "root ::= \"a\"", "json_schema": {}}), "invalid_value"),
    ] {
        let r = post(a, CHAT, &body);
        assert_eq!(r.error(400), code, "{body}");
    }
    assert_eq!(post(a, CHAT, &json!({"messages": msgs, "max_tokens": 2})).status, 200);
    srv.shutdown().unwrap();
}

#[test]
fn fifty_schemas_validate_with_jsonschema() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&python).args(["-c", "import openai, jsonschema"]).output();
    assert!(
        check.is_ok_and(|o| o.status.success()),
        "the openai and jsonschema Python packages are missing: run `{python} -m pip install openai jsonschema`"
    );
    let srv = start(SMOL, config(4, 8, 1024));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/structured_output.py");
    let out = Command::new(&python).arg(&script).arg(format!("http://{}/v1", srv.addr)).arg("smol").env("NO_PROXY", "*").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("all answers valid"), "{text}");
    srv.shutdown().unwrap();
}
