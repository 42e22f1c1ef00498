//! What a template can take, found by rendering probes, and the message fix-ups llama.cpp's
//! `common/chat.cpp` applies before rendering (OpenAI shapes in, the shapes the template
//! reads out).

use serde_json::{json, Map, Value};

/// What a template renders, found once by rendering marked probes (llama.cpp watches which
/// values a probe run touches; a marker in the output is the same question asked simply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// A leading system message shows up (else it joins the next message, as llama.cpp does).
    pub system_role: bool,
    /// Content must be a list of `{"type": "text", "text": ...}` parts (a string vanishes).
    pub typed_content: bool,
    /// Tool-call arguments are read as an object (else they are passed as a JSON string).
    pub object_arguments: bool,
}

const MARK_SYSTEM: &str = "<<SYSTEM-MARKER>>";
const MARK_USER: &str = "<<USER-MARKER>>";
const MARK_ARG: &str = "<<ARG-MARKER>>";

impl Caps {
    /// Probe a template through `render(messages, tools)`, which gives the text or `None`
    /// when the template fails.
    pub fn probe(render: impl Fn(&[Value], &[Value]) -> Option<String>) -> Caps {
        let shows = |out: Option<String>, mark: &str| out.is_some_and(|o| o.contains(mark));
        let system_role =
            shows(render(&[json!({"role": "system", "content": MARK_SYSTEM}), json!({"role": "user", "content": MARK_USER})], &[]), MARK_SYSTEM);
        let typed_content = !shows(render(&[json!({"role": "user", "content": MARK_USER})], &[]), MARK_USER)
            && shows(render(&[json!({"role": "user", "content": [{"type": "text", "text": MARK_USER}]})], &[]), MARK_USER);
        let call = json!({"id": "call00001", "type": "function", "function": {"name": "tool1", "arguments": {"arg": MARK_ARG}}});
        let tool = json!({"type": "function", "function": {"name": "tool1", "description": "Tool description",
            "parameters": {"type": "object", "properties": {"arg": {"type": "string", "description": "Arg description"}}, "required": ["arg"]}}});
        let messages = [
            json!({"role": "user", "content": "User message"}),
            json!({"role": "assistant", "content": "", "tool_calls": [call]}),
            json!({"role": "tool", "content": "Tool response", "tool_call_id": "call00001"}),
            json!({"role": "assistant", "content": "The tool response was 'tool response'"}),
            json!({"role": "user", "content": "User message"}),
        ];
        let object_arguments = shows(render(&messages, &[tool]), MARK_ARG);
        Caps { system_role, typed_content, object_arguments }
    }
}

/// The messages as the template gets them: content a string ("" when absent; text parts
/// joined with newlines) or, for a template that needs them, text parts; `developer` read
/// as `system` unless the template is gpt-oss's (`<|channel|>`); a system message the
/// template drops joined to the next message; tool-call arguments an object or a JSON
/// string, whichever the template reads.
pub fn prepare(messages: &[Value], caps: Caps, keeps_developer: bool) -> Result<Vec<Value>, String> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(format!("messages[{i}] must be an object"));
        };
        let mut obj = obj.clone();
        let content = content_text(obj.get("content")).map_err(|e| format!("messages[{i}].{e}"))?;
        obj.insert("content".into(), Value::String(content));
        if !keeps_developer && obj.get("role").and_then(Value::as_str) == Some("developer") {
            obj.insert("role".into(), "system".into());
        }
        if let Some(calls) = obj.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for (j, call) in calls.iter_mut().enumerate() {
                fix_arguments(call, caps.object_arguments).map_err(|e| format!("messages[{i}].tool_calls[{j}].{e}"))?;
            }
        }
        out.push(obj);
    }
    if !caps.system_role && out.first().is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("system")) {
        let first = out.remove(0);
        if let Some(next) = out.first_mut() {
            let joined = format!("{}\n{}", text_of(&first), text_of(next));
            next.insert("content".into(), Value::String(joined));
        }
    }
    if caps.typed_content {
        for m in &mut out {
            let text = text_of(m);
            m.insert("content".into(), json!([{"type": "text", "text": text}]));
        }
    }
    Ok(out.into_iter().map(Value::Object).collect())
}

fn text_of(m: &Map<String, Value>) -> String {
    m.get("content").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Content as one string: text parts joined with newlines, as llama.cpp joins them.
fn content_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => texts.push(t),
                    _ => return Err(format!("content[{j}]: only text parts are supported")),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err("content must be a string, an array of text parts or null".into()),
    }
}

/// `function.arguments` as an object (parsed from the OpenAI string) or as compact JSON text.
fn fix_arguments(call: &mut Value, as_object: bool) -> Result<(), String> {
    let Some(args) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) else {
        return Ok(());
    };
    match (as_object, &*args) {
        (true, Value::String(s)) => {
            *args = serde_json::from_str(s).map_err(|e| format!("function.arguments is not valid JSON: {e}"))?;
        }
        (false, v) if !v.is_string() => *args = Value::String(v.to_string()),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Caps = Caps { system_role: true, typed_content: false, object_arguments: true };

    #[test]
    fn openai_shapes_become_template_shapes() {
        let msgs = [
            json!({"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}),
        ];
        let out = prepare(&msgs, ALL, false).unwrap();
        assert_eq!(out[0], json!({"role": "system", "content": "a\nb"}));
        assert_eq!(out[1]["content"], "");
        assert_eq!(out[1]["tool_calls"][0]["function"]["arguments"], json!({"x": 1}));
        assert_eq!(prepare(&msgs, ALL, true).unwrap()[0]["role"], "developer");
        let strings = prepare(&msgs, Caps { object_arguments: false, ..ALL }, false).unwrap();
        assert_eq!(strings[1]["tool_calls"][0]["function"]["arguments"], "{\"x\": 1}");
        let objects = [json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]})];
        let strings = prepare(&objects, Caps { object_arguments: false, ..ALL }, false).unwrap();
        assert_eq!(strings[0]["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
    }

    #[test]
    fn dropped_system_joins_the_next_message_and_typed_content_wraps() {
        let msgs = [json!({"role": "system", "content": "S"}), json!({"role": "user", "content": "U"})];
        let caps = Caps { system_role: false, typed_content: true, object_arguments: false };
        assert_eq!(prepare(&msgs, caps, false).unwrap(), [json!({"role": "user", "content": [{"type": "text", "text": "S\nU"}]})]);
    }

    #[test]
    fn bad_shapes_are_named() {
        let bad = [json!({"role": "user", "content": [{"type": "image_url"}]})];
        assert_eq!(prepare(&bad, ALL, false).unwrap_err(), "messages[0].content[0]: only text parts are supported");
        let bad = [json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]})];
        assert!(prepare(&bad, ALL, false).unwrap_err().starts_with("messages[0].tool_calls[0].function.arguments is not valid JSON"));
        assert_eq!(prepare(&[json!("hi")], ALL, false).unwrap_err(), "messages[0] must be an object");
    }
}
