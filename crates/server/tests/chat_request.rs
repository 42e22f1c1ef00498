//! What a chat request gives the template, as llama-server gives it: `tools`,
//! `chat_template_kwargs` over the server's `--chat-template-kwargs`, `reasoning_effort`,
//! `add_generation_prompt`, text parts joined with newlines; seen through /apply-template
//! (llama-server's endpoint) on a real server with a template that prints its inputs, and
//! the chat endpoint tokenizing that same prompt. Bad values get one 400 each.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// A template that writes out what it was given (`{{ '' }}` keeps the newline after a
/// block tag, which trim_blocks would eat).
const ECHO: &str = "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}{{ '' }}
tools={% if tools is defined %}{% for t in tools %}{{ t.type }}:{{ t.function.name }}:{{ t.function.description }}:{{ t.function.parameters.type | default('-') }}:{{ 'strict' if t.function.strict is defined else 'plain' }};{% endfor %}{% else %}none{% endif %}{{ '' }}
thinking={{ 'on' if enable_thinking else 'off' }}
effort={{ reasoning_effort | default('unset') }}/{{ reasoning_strength | default('unset') }}
greeting={{ greeting | default('-') }} style={{ style | default('-') }}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}";

fn echo_server() -> server::RunningServer {
    let mut cfg = config(1, 4, 1024);
    cfg.chat_template = Some(ECHO.into());
    let defaults = json!({"greeting": "server", "style": "terse", "reasoning_effort": "low"});
    cfg.chat_template_kwargs = defaults.as_object().unwrap().clone();
    start(SMOL, cfg)
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// /apply-template's prompt for a request body.
fn prompt(a: SocketAddr, body: &Value) -> String {
    let r = post(a, "/apply-template", body);
    assert_eq!(r.status, 200, "{body}: {}", r.text());
    r.json()["prompt"].as_str().unwrap_or_else(|| panic!("no prompt: {}", r.text())).to_string()
}

#[test]
fn tools_and_kwargs_reach_the_template_over_the_server_defaults() {
    let srv = echo_server();
    let a = srv.addr;

    // Nothing asked: the server's kwargs (reasoning_effort also as reasoning_strength), no tools.
    let plain = prompt(a, &json!({"messages": user("Hi")}));
    assert_eq!(
        plain,
        "[user:Hi]\ntools=none\nthinking=on\neffort=low/low\ngreeting=server style=terse\n<|im_start|>assistant\n"
    );

    // Tools as llama.cpp passes them on (description "" and parameters {} filled in, other
    // fields dropped); request kwargs over the server's; a boolean enable_thinking kwarg.
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "strict": true,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "noop"}},
    ]);
    let body = json!({"messages": user("Hi"), "tools": tools, "tool_choice": "auto", "parallel_tool_calls": false,
                      "chat_template_kwargs": {"greeting": "request", "enable_thinking": false}});
    let got = prompt(a, &body);
    assert!(got.contains("\ntools=function:get_weather:Weather now:object:plain;function:noop::-:plain;\n"), "{got}");
    assert!(got.contains("\nthinking=off\n"), "{got}");
    assert!(got.contains("\ngreeting=request style=terse\n"), "{got}");
    assert!(got.contains("\neffort=low/low\n"), "{got}");

    // reasoning_effort: a level replaces the kwarg; "none" turns thinking off and drops it.
    let high = prompt(a, &json!({"messages": user("Hi"), "reasoning_effort": "high"}));
    assert!(high.contains("\nthinking=on\neffort=high/high\n"), "{high}");
    let none = prompt(a, &json!({"messages": user("Hi"), "reasoning_effort": "none"}));
    assert!(none.contains("\nthinking=off\neffort=unset/unset\n"), "{none}");
    let kwarg = prompt(a, &json!({"messages": user("Hi"), "chat_template_kwargs": {"reasoning_effort": "medium"}}));
    assert!(kwarg.contains("\neffort=medium/medium\n"), "{kwarg}");

    // An empty tool list is no tools; tool_choice "none" still shows them (it only limits calls).
    assert!(prompt(a, &json!({"messages": user("Hi"), "tools": []})).contains("\ntools=none\n"));
    let shown = prompt(a, &json!({"messages": user("Hi"), "tools": tools, "tool_choice": "none"}));
    assert!(shown.contains("tools=function:get_weather"), "{shown}");
    // A tool_choice naming a function must name one of the tools.
    let named = |n: &str| json!({"type": "function", "function": {"name": n}});
    assert_eq!(post(a, "/apply-template", &json!({"messages": user("Hi"), "tools": tools, "tool_choice": named("get_weather")})).status, 200);
    assert_eq!(post(a, "/apply-template", &json!({"messages": user("Hi"), "tools": tools, "tool_choice": named("missing")})).error(400), "invalid_value");

    // add_generation_prompt false: no assistant opening.
    let open = prompt(a, &json!({"messages": user("Hi"), "add_generation_prompt": false}));
    assert!(open.ends_with("style=terse\n"), "{open:?}");

    // The chat endpoint tokenizes exactly that prompt.
    let want = prompt(a, &body);
    let ids = post(a, "/tokenize", &json!({"content": want, "add_special": true})).json();
    let n = ids["tokens"].as_array().unwrap().len();
    let mut chat = body.clone();
    chat["max_tokens"] = json!(1);
    chat["temperature"] = json!(0);
    let r = post(a, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], n);
    chat["stream"] = json!(true);
    let (status, events) = stream(a, "/v1/chat/completions", &chat);
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    srv.shutdown().unwrap();
}

#[test]
fn text_parts_join_with_newlines_as_llama_cpp() {
    let srv = echo_server();
    let a = srv.addr;
    let parts = |texts: &[&str]| {
        let content: Vec<Value> = texts.iter().map(|t| json!({"type": "text", "text": t})).collect();
        json!({"messages": [{"role": "user", "content": content}], "add_generation_prompt": false})
    };
    let first = |p: String| p.split('\n').next().unwrap().to_string();
    assert!(prompt(a, &parts(&["a", "b", "c"])).starts_with("[user:a\nb\nc]"));
    // No newline while nothing has been written yet; an empty part after text still adds one.
    assert_eq!(first(prompt(a, &parts(&["", "", "a"]))), "[user:a]");
    assert!(prompt(a, &parts(&["a", "", "b"])).starts_with("[user:a\n\nb]"));
    assert!(prompt(a, &parts(&["a", ""])).starts_with("[user:a\n]"));
    assert_eq!(first(prompt(a, &parts(&[]))), "[user:]");
    srv.shutdown().unwrap();
}

#[test]
fn bad_template_inputs_get_one_400_each_and_the_server_keeps_serving() {
    let srv = echo_server();
    let a = srv.addr;
    let with = |extra: Value| {
        let mut b = json!({"messages": user("Hi"), "max_tokens": 1});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let fun = |f: Value| json!({"tools": [{"type": "function", "function": f}]});
    let parts = |p: Value| json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, p]}]});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("tools a string", with(json!({"tools": "get_weather"})), "'tools' must be an array"),
        ("tools an object", with(json!({"tools": {"type": "function"}})), "'tools' must be an array"),
        ("tool a number", with(json!({"tools": [1]})), "tools[0]: a tool must be an object"),
        ("tool of another type", with(json!({"tools": [{"type": "retrieval"}]})), "tools[0]: 'type' must be \"function\""),
        ("tool without function", with(json!({"tools": [{"type": "function"}]})), "'function' must be an object"),
        ("function without name", with(fun(json!({"description": "d"}))), "'function.name' must be a string"),
        ("name a number", with(fun(json!({"name": 3}))), "'function.name' must be a string"),
        ("description a list", with(fun(json!({"name": "f", "description": ["d"]}))), "'function.description'"),
        ("parameters a string", with(fun(json!({"name": "f", "parameters": "{}"}))), "'function.parameters'"),
        ("tool_choice unknown", with(json!({"tool_choice": "sometimes"})), "'tool_choice' must be"),
        ("tool_choice a number", with(json!({"tool_choice": 1})), "'tool_choice' must be"),
        ("parallel_tool_calls a string", with(json!({"parallel_tool_calls": "yes"})), "'parallel_tool_calls' must be a boolean"),
        ("kwargs a list", with(json!({"chat_template_kwargs": [1, 2]})), "'chat_template_kwargs' must be a JSON object"),
        ("kwargs a string", with(json!({"chat_template_kwargs": "{\"a\": 1}"})), "'chat_template_kwargs' must be a JSON object"),
        ("enable_thinking a string", with(json!({"chat_template_kwargs": {"enable_thinking": "false"}})), "expected boolean, got string"),
        ("reasoning_effort a number", with(json!({"reasoning_effort": 3})), "'reasoning_effort' must be a string"),
        ("add_generation_prompt a string", with(json!({"add_generation_prompt": "no"})), "'add_generation_prompt' must be a boolean"),
        ("image part", with(parts(json!({"type": "image_url", "image_url": {"url": "data:,"}}))), "content[1]: image input is not supported"),
        ("audio part", with(parts(json!({"type": "input_audio", "input_audio": {"data": ""}}))), "audio input is not supported"),
        ("unknown part", with(parts(json!({"type": "file"}))), "unsupported content part type 'file'"),
        ("text part without text", with(parts(json!({"type": "text"}))), "needs a 'text' string"),
        ("part without type", with(parts(json!({"text": "x"}))), "needs a string 'type'"),
    ];
    for path in ["/v1/chat/completions", "/apply-template"] {
        for (name, body, words) in &cases {
            let r = post(a, path, body);
            assert_eq!(r.error(400), "invalid_value", "{path} {name}: {}", r.text());
            let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(msg.contains(words), "{path} {name}: {msg:?} lacks {words:?}");
        }
    }
    // The shared checks hold on /apply-template too; a template's own error is a 400 as well.
    assert_eq!(post(a, "/apply-template", &json!({"messages": []})).error(400), "invalid_value");
    assert_eq!(post(a, "/apply-template", &json!({"prompt": "x"})).error(400), "invalid_request");
    let r = post(a, "/v1/chat/completions", &with(json!({})));
    assert_eq!(r.status, 200, "the server stopped serving: {}", r.text());
    srv.shutdown().unwrap();
}

#[test]
fn template_errors_are_400s_on_apply_template() {
    let mut cfg = config(1, 2, 256);
    cfg.chat_template = Some("{% if tools is defined %}{{ raise_exception('no tools here') }}{% endif %}{{ messages[0].content }}".into());
    let srv = start(SMOL, cfg);
    let a = srv.addr;
    assert_eq!(prompt(a, &json!({"messages": user("Hi")})), "Hi");
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    for path in ["/apply-template", "/v1/chat/completions"] {
        let r = post(a, path, &json!({"messages": user("Hi"), "tools": tools}));
        assert_eq!(r.error(400), "invalid_messages", "{path}");
        assert_eq!(r.json()["error"]["message"], "no tools here");
    }
    srv.shutdown().unwrap();
}
