//! Tool calls through each family's own template (llama.cpp's real templates, on SmolLM2):
//! with `tool_choice: "required"` the answer is a call to a given tool, parsed into
//! `message.tool_calls` (and streamed as `delta.tool_calls`); the tool's result goes back
//! through the template.

mod common;

use common::*;
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";

fn template(file: &str) -> String {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| root.join("models"));
    let p = dir.join("llama-cpp/templates").join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (scripts/fetch-models.sh llama-cpp)", p.display()))
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                       "required": ["city", "days"]}}},
            {"type": "function", "function": {"name": "get_time", "description": "The time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}])
}

#[test]
fn every_family_calls_a_tool_and_reads_its_result() {
    for file in [
        "Qwen-Qwen3-0.6B.jinja",
        "Qwen3.5-4B.jinja",
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
        "openai-gpt-oss-120b.jinja",
        "google-gemma-4-31B-it.jinja",
    ] {
        let mut cfg = config(1, 2, 2048);
        cfg.chat_template = Some(template(file));
        let srv = start(SMOL, cfg);
        let a = srv.addr;
        let mut messages = vec![json!({"role": "user", "content": "What is the weather in Paris for the next 3 days?"})];
        let r = post(a, CHAT, &json!({"messages": messages, "tools": tools(), "tool_choice": "required", "max_tokens": 150, "temperature": 0}));
        assert_eq!(r.status, 200, "{file}: {}", r.text());
        let r = r.json();
        let choice = &r["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{file}: {r}");
        let call = &choice["message"]["tool_calls"][0];
        let name = call["function"]["name"].as_str().unwrap();
        assert!(["get_weather", "get_time"].contains(&name), "{file}: {r}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{file}: {args}");
        if name == "get_weather" {
            assert!(args["days"].as_i64().is_some_and(|d| (1..=7).contains(&d)), "{file}: {args}");
        }
        assert_eq!(call["type"], "function");
        let id = call["id"].as_str().unwrap().to_string();
        // The result goes back through the template, and the model answers in text.
        messages.push(choice["message"].clone());
        messages.push(json!({"role": "tool", "tool_call_id": id, "name": name, "content": "{\"forecast\": \"sunny, 21 C\"}"}));
        let prompt = post(a, "/apply-template", &json!({"messages": messages, "tools": tools()})).json();
        let prompt = prompt["prompt"].as_str().unwrap_or_else(|| panic!("{file}: {prompt}"));
        assert!(prompt.contains("sunny, 21 C") && prompt.contains(name), "{file}: {prompt}");
        let r = post(a, CHAT, &json!({"messages": messages, "tools": tools(), "tool_choice": "none", "max_tokens": 8, "temperature": 0}));
        assert_eq!(r.status, 200, "{file}: {}", r.text());
        assert!(r.json()["choices"][0]["message"]["tool_calls"].is_null(), "{file}");
        srv.shutdown().unwrap();
    }
}

#[test]
fn tool_calls_stream_as_deltas() {
    let mut cfg = config(1, 2, 2048);
    cfg.chat_template = Some(template("Qwen-Qwen3-0.6B.jinja"));
    let srv = start(SMOL, cfg);
    let body = json!({"messages": [{"role": "user", "content": "Time in Rome?"}], "tools": tools(), "tool_choice": "required",
                      "max_tokens": 120, "temperature": 0, "stream": true});
    let (status, events) = stream(srv.addr, CHAT, &body);
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let parsed: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let calls: Vec<&Value> = parsed.iter().filter_map(|e| e["choices"][0]["delta"].get("tool_calls")).collect();
    assert_eq!(calls.len(), 1, "{events:?}");
    assert!(calls[0][0]["function"]["name"].is_string() && calls[0][0]["id"].is_string());
    let text: String = parsed.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!text.contains("<tool_call>"), "the call's markup is not streamed as content: {text:?}");
    assert_eq!(parsed.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    // The non-streamed answer to the same request has the same call.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let r = post(srv.addr, CHAT, &plain).json();
    let want = &r["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(&calls[0][0]["function"], want);
    // A tool_choice naming a function: that function is called (OpenAI's meaning).
    for name in ["get_weather", "get_time"] {
        let mut forced = plain.clone();
        forced["tool_choice"] = json!({"type": "function", "function": {"name": name}});
        let r = post(srv.addr, CHAT, &forced).json();
        assert_eq!(r["choices"][0]["message"]["tool_calls"][0]["function"]["name"], name, "{r}");
    }
    srv.shutdown().unwrap();
}

/// Where the markers are the vocabulary's own control tokens (Gemma 4's `<|tool_call>`,
/// `<|"|>`), the grammar writes those tokens and the parser still finds the call: a
/// random-weight model with Gemma 4's real vocabulary and template.
#[test]
fn markers_that_are_control_tokens_are_parsed() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| root.join("models"));
    let vocab = gguf::GgufFile::open(dir.join("llama-cpp/vocab/ggml-vocab-gemma-4.gguf")).unwrap();
    let mut spec = engine::random_model::RandomModelSpec::preset("tiny", gguf::GgmlType::Q8_0).unwrap();
    spec.with_vocabulary_of(&vocab).unwrap();
    let path = std::env::temp_dir().join(format!("tandem-gemma4-vocab-{}.gguf", std::process::id()));
    spec.build().unwrap().write_file(&path).unwrap();
    let model = engine::Model::load(&path, &mut |_, _| {}).unwrap();
    let tok = tokenizer::Tokenizer::from_gguf(&model.file).unwrap();
    let marker = tok.token_id("<|tool_call>").expect("Gemma 4's vocabulary has <|tool_call>");
    assert!(tok.is_control(marker) || tok.token_attr(marker) != 0);
    let mut cfg = config(1, 2, 1024);
    cfg.chat_template = Some(template("google-gemma-4-31B-it.jinja"));
    let srv = server::start(engine::Runner::new(model, 2).unwrap(), tok, cfg, false).unwrap();
    let body = json!({"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": tools(), "tool_choice": "required",
                      "max_tokens": 80, "temperature": 0});
    let r = post(srv.addr, CHAT, &body).json();
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
    let call = &r["choices"][0]["message"]["tool_calls"][0]["function"];
    assert!(["get_weather", "get_time"].contains(&call["name"].as_str().unwrap()), "{r}");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    // `auto`: the random model writes whatever it writes, but once it opens a call (pushed
    // to, here, by a logit bias on the marker) the call's grammar holds: a random model left
    // alone after the marker would never write a call that parses.
    for seed in 0..3 {
        let mut auto = body.clone();
        auto["tool_choice"] = json!("auto");
        auto["temperature"] = json!(1.0);
        auto["seed"] = json!(seed);
        auto["logit_bias"] = json!({marker.to_string(): 100});
        let r = post(srv.addr, CHAT, &auto).json();
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
        let call = &r["choices"][0]["message"]["tool_calls"][0]["function"];
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{args}");
    }
    srv.shutdown().unwrap();
    std::fs::remove_file(&path).ok();
}

/// `tool_choice: auto` leaves an answer in text untouched: the same words as with
/// `tool_choice: none` (the call's grammar engages only at a call's opening marker).
#[test]
fn auto_leaves_text_answers_alone() {
    let mut cfg = config(1, 2, 2048);
    cfg.chat_template = Some(template("Qwen-Qwen3-0.6B.jinja"));
    let srv = start(SMOL, cfg);
    let body = |choice: &str| {
        json!({"messages": [{"role": "user", "content": "Write one sentence about the sea."}], "tools": tools(),
               "tool_choice": choice, "max_tokens": 40, "temperature": 0})
    };
    let auto = post(srv.addr, CHAT, &body("auto")).json();
    let none = post(srv.addr, CHAT, &body("none")).json();
    let text = auto["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("{auto}"));
    assert!(!text.is_empty() && auto["choices"][0]["message"]["tool_calls"].is_null(), "{auto}");
    assert_eq!(text, none["choices"][0]["message"]["content"].as_str().unwrap());
    srv.shutdown().unwrap();
}
