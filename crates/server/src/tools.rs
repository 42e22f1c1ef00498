//! Tool calls: each model family writes them its own way; the format is read off the chat
//! template (as llama.cpp's `common/chat.cpp` does), calls are parsed back out of the
//! answer into OpenAI's `tool_calls`, and `tool_choice: "required"` is enforced with a
//! grammar that only lets the model write a call to one of the given tools.

use serde_json::{json, Map, Value};

/// How a family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Qwen 2.5/3, Hermes, SmolLM3: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`.
    Hermes,
    /// Qwen 3.5, Qwen3-Coder: `<tool_call>\n<function=NAME>\n<parameter=P>\nvalue\n</parameter>\n</function>\n</tool_call>`.
    QwenXml,
    /// Llama 3.x: `{"name": …, "parameters": {…}}`, optionally after `<|python_tag|>`.
    Llama3,
    /// Mistral Nemo/Small: `[TOOL_CALLS][{"name": …, "arguments": {…}}]`.
    MistralJson,
    /// Ministral 3, Devstral, Magistral: `[TOOL_CALLS]NAME[ARGS]{…}`.
    MistralArgs,
    /// gpt-oss (harmony): `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{…}<|call|>`.
    Harmony,
    /// Gemma 4: `<|tool_call>call:NAME{key:value,…}<tool_call|>`, strings in `<|"|>`.
    Gemma4,
}

/// The format a template's source shows (Hermes when it shows none: the most common).
pub fn detect(template: &str) -> ToolFormat {
    if template.contains("to=functions") || template.contains("<|channel|>") {
        ToolFormat::Harmony
    } else if template.contains("<|tool_call>") {
        ToolFormat::Gemma4
    } else if template.contains("<function=") && template.contains("<parameter=") {
        ToolFormat::QwenXml
    } else if template.contains("[TOOL_CALLS]") && template.contains("[ARGS]") {
        ToolFormat::MistralArgs
    } else if template.contains("[TOOL_CALLS]") {
        ToolFormat::MistralJson
    } else if template.contains("<tool_call>") {
        ToolFormat::Hermes
    } else if template.contains("<|python_tag|>") || template.contains("\"parameters\": ") {
        ToolFormat::Llama3
    } else {
        ToolFormat::Hermes
    }
}

/// One parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as a JSON object.
    pub arguments: Value,
}

impl ToolCall {
    /// OpenAI's shape; `index` numbers the calls of one answer.
    pub fn to_openai(&self, id: &str, index: usize) -> Value {
        json!({"index": index, "id": id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments.to_string()}})
    }
}

impl ToolFormat {
    /// A fresh call id: Mistral's templates insist on 9 letters and digits, others get
    /// OpenAI's `call_…`.
    pub fn call_id(self) -> String {
        let raw = crate::api::new_id("");
        match self {
            ToolFormat::MistralJson | ToolFormat::MistralArgs => raw.chars().rev().filter(char::is_ascii_alphanumeric).take(9).collect(),
            _ => format!("call_{raw}"),
        }
    }

    /// Where a call begins: text from here on is held back while streaming.
    pub fn opener(self) -> &'static str {
        match self {
            ToolFormat::Hermes | ToolFormat::QwenXml => "<tool_call>",
            ToolFormat::Llama3 => "{\"name\"",
            ToolFormat::MistralJson | ToolFormat::MistralArgs => "[TOOL_CALLS]",
            ToolFormat::Harmony => "<|channel|>commentary to=functions.",
            ToolFormat::Gemma4 => "<|tool_call>",
        }
    }

    /// Where a call's grammar engages with `tool_choice: auto`: at the opener, and for
    /// Llama 3 only when nothing but whitespace comes before it (a call is the whole answer).
    pub fn trigger(self) -> constrain::Trigger {
        constrain::Trigger { text: self.opener().to_string(), at_start_only: self == ToolFormat::Llama3 }
    }

    /// Split an answer into its text and its calls. Text that looks like a call but does
    /// not parse stays text.
    pub fn parse(self, text: &str) -> (String, Vec<ToolCall>) {
        let opener = if self == ToolFormat::Llama3 && text.trim_start().starts_with("<|python_tag|>") { "<|python_tag|>" } else { self.opener() };
        let Some(at) = text.find(opener) else { return (text.to_string(), Vec::new()) };
        // Llama 3 writes a call as the whole answer.
        if self == ToolFormat::Llama3 && !text[..at].trim().is_empty() {
            return (text.to_string(), Vec::new());
        }
        let (content, rest) = text.split_at(at);
        let calls = match self {
            ToolFormat::Hermes => blocks(rest, "<tool_call>", "</tool_call>").filter_map(|b| json_call(b, "arguments")).collect(),
            ToolFormat::QwenXml => blocks(rest, "<tool_call>", "</tool_call>").filter_map(xml_call).collect(),
            ToolFormat::Llama3 => {
                let body = rest.trim_start().trim_start_matches("<|python_tag|>");
                body.split(';').filter_map(|b| json_call(b, "parameters").or_else(|| json_call(b, "arguments"))).collect()
            }
            ToolFormat::MistralJson => {
                let body = rest["[TOOL_CALLS]".len()..].trim();
                match serde_json::from_str::<Value>(body) {
                    Ok(Value::Array(list)) => list.iter().filter_map(|c| value_call(c, "arguments")).collect(),
                    _ => Vec::new(),
                }
            }
            ToolFormat::MistralArgs => rest
                .split("[TOOL_CALLS]")
                .skip(1)
                .filter_map(|c| {
                    let (name, args) = c.split_once("[ARGS]")?;
                    let arguments: Value = serde_json::from_str(args.trim()).ok()?;
                    arguments.is_object().then(|| ToolCall { name: name.trim().to_string(), arguments })
                })
                .collect(),
            ToolFormat::Harmony => rest
                .split("<|channel|>commentary to=functions.")
                .skip(1)
                .filter_map(|c| {
                    let (head, body) = c.split_once("<|message|>")?;
                    let name = head.split_whitespace().next()?.trim_end_matches("<|constrain|>json").to_string();
                    let body = body.split("<|call|>").next()?;
                    let arguments: Value = serde_json::from_str(body.trim()).ok()?;
                    arguments.is_object().then_some(ToolCall { name, arguments })
                })
                .collect(),
            ToolFormat::Gemma4 => blocks(rest, "<|tool_call>", "<tool_call|>").filter_map(gemma_call).collect(),
        };
        if calls.is_empty() {
            return (text.to_string(), Vec::new());
        }
        (content.trim_end().to_string(), calls)
    }

    /// A Lark grammar (llguidance) that lets the model write only calls to `tools`, one or
    /// (`parallel`) several. `special` gives a token's id when the vocabulary has it as one
    /// token, so markers like `[TOOL_CALLS]` are written as the model's own token.
    pub fn required_grammar(self, tools: &[Value], parallel: bool, special: &dyn Fn(&str) -> Option<u32>) -> String {
        let mark = |s: &str| match special(s) {
            Some(id) => format!("<[{id}]>"),
            None => Value::String(s.to_string()).to_string(),
        };
        let functions: Vec<(&str, Value)> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                Some((f.get("name")?.as_str()?, f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))))
            })
            .collect();
        let lit = |s: &str| Value::String(s.to_string()).to_string();
        // Arguments: an object with only the declared keys (as OpenAI's strict mode), laid
        // out compactly (free whitespace lets a small model ramble inside the braces).
        let args_of = |p: &Value| {
            let mut p = p.clone();
            if p.as_object().is_some_and(|m| m.is_empty()) {
                p = json!({"type": "object"});
            }
            if let Some(m) = p.as_object_mut() {
                m.entry("additionalProperties").or_insert(Value::Bool(false));
            }
            compact(p)
        };
        let named = |key: &str| -> String {
            let any: Vec<Value> = functions
                .iter()
                .map(|(n, p)| {
                    json!({"type": "object", "properties": {"name": {"const": n}, key: args_of(p)},
                           "required": ["name", key], "additionalProperties": false})
                })
                .collect();
            format!("%json {}", compact(json!({"anyOf": any})))
        };
        let per_function = |f: &dyn Fn(&str, &Value) -> String| -> String {
            functions.iter().map(|(n, p)| f(n, p)).collect::<Vec<_>>().join(" | ")
        };
        let many = if parallel { "+" } else { "" };
        match self {
            ToolFormat::Hermes => format!("start: call{many}\ncall: \"<tool_call>\\n\" {} \"\\n</tool_call>\"\n", named("arguments")),
            ToolFormat::Llama3 => format!("start: {}\n", named("parameters")),
            ToolFormat::MistralJson => {
                let any = named("arguments");
                let list = if parallel { format!("\"[\" item (\", \" item)* \"]\"\nitem: {any}") } else { format!("\"[\" item \"]\"\nitem: {any}") };
                format!("start: {} {list}\n", mark("[TOOL_CALLS]"))
            }
            ToolFormat::MistralArgs => {
                let call = per_function(&|n, p| format!("{} {} %json {}", lit(n), mark("[ARGS]"), args_of(p)));
                format!("start: call{many}\ncall: {} ({call})\n", mark("[TOOL_CALLS]"))
            }
            ToolFormat::Harmony => {
                let call = per_function(&|n, p| {
                    format!("{} \" \" {} \"json\" {} %json {}", lit(&format!("commentary to=functions.{n}")), mark("<|constrain|>"), mark("<|message|>"), args_of(p))
                });
                format!("start: {} ({call}) {}\n", mark("<|channel|>"), mark("<|call|>"))
            }
            ToolFormat::QwenXml => {
                // Each function's parameters in order, the required ones mandatory, each
                // value shaped by its type (one line of text for strings).
                let mut rules = String::new();
                let mut calls = Vec::new();
                for (fi, (n, p)) in functions.iter().enumerate() {
                    let required: Vec<&str> = p.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
                    let mut seq = Vec::new();
                    for (pi, (k, prop)) in p.get("properties").and_then(Value::as_object).into_iter().flatten().enumerate() {
                        let rule = format!("p_{fi}_{pi}");
                        rules.push_str(&format!("{rule}: {} {} \"\\n</parameter>\\n\"\n", lit(&format!("<parameter={k}>\n")), xml_value(prop)));
                        seq.push(if required.contains(&k.as_str()) { rule } else { format!("{rule}?") });
                    }
                    calls.push(format!("{} {} \"</function>\\n\"", lit(&format!("<function={n}>\n")), seq.join(" ")));
                }
                format!("start: call{many}\ncall: \"<tool_call>\\n\" ({}) \"</tool_call>\"\n{rules}", calls.join(" | "))
            }
            ToolFormat::Gemma4 => {
                let quote = mark("<|\"|>");
                let call = per_function(&|n, p| format!("{} {} \"}}\"", lit(&format!("call:{n}{{")), gemma_args(p, &quote)));
                format!("start: call{many}\ncall: {} ({call}) {}\n", mark("<|tool_call>"), mark("<tool_call|>"))
            }
        }
    }
}

/// llguidance's layout options on an inline schema: single spaces after `:` and `,`, no
/// other whitespace.
fn compact(mut schema: Value) -> Value {
    if let Some(m) = schema.as_object_mut() {
        m.insert("x-guidance".into(), json!({"whitespace_flexible": false, "key_separator": ": ", "item_separator": ", "}));
    }
    schema
}

/// A parameter's value in the XML form, by its JSON type.
fn xml_value(prop: &Value) -> String {
    match string_value(prop) {
        Some(max) => format!("/[^<\\n]{{1,{max}}}/"),
        None => typed_value(prop),
    }
}

/// A string parameter's longest length, or None for other types and enums.
fn string_value(prop: &Value) -> Option<u64> {
    (prop.get("type").and_then(Value::as_str) == Some("string") && prop.get("enum").is_none())
        .then(|| prop.get("maxLength").and_then(Value::as_u64).unwrap_or(200).clamp(1, 1000))
}

/// A non-string value: enums as their literals, the rest as JSON the schema allows.
fn typed_value(prop: &Value) -> String {
    match prop.get("enum").and_then(Value::as_array) {
        Some(e) if e.iter().all(Value::is_string) => {
            let alts: Vec<String> = e.iter().map(|v| v.to_string()).collect();
            format!("({})", alts.join(" | "))
        }
        _ => format!("%json {}", compact(prop.clone())),
    }
}

/// Gemma 4's `key:value` list for one function: required keys in order, then optional ones.
fn gemma_args(p: &Value, quote: &str) -> String {
    let required: Vec<&str> = p.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let props: Vec<(&String, &Value)> = p.get("properties").and_then(Value::as_object).into_iter().flatten().collect();
    let mut ordered: Vec<(&String, &Value, bool)> = props.iter().filter(|(k, _)| required.contains(&k.as_str())).map(|(k, v)| (*k, *v, true)).collect();
    ordered.extend(props.iter().filter(|(k, _)| !required.contains(&k.as_str())).map(|(k, v)| (*k, *v, false)));
    let mut out = Vec::new();
    for (i, (k, v, req)) in ordered.iter().enumerate() {
        let value = match string_value(v) {
            Some(max) => format!("{quote} /[^<]{{0,{max}}}/ {quote}"),
            None => typed_value(v),
        };
        let comma = if i > 0 { "\",\" " } else { "" };
        let item = format!("{comma}{} {value}", Value::String(format!("{k}:")));
        out.push(if *req { item } else { format!("({item})?") });
    }
    out.join(" ")
}

/// The bodies between `open` and `close` markers, in order.
fn blocks<'a>(text: &'a str, open: &'a str, close: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.split(open).skip(1).filter_map(move |b| b.split_once(close).map(|(body, _)| body).or(Some(b)))
}

fn value_call(v: &Value, key: &str) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get(key) {
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(a @ Value::Object(_)) => a.clone(),
        None => json!({}),
        _ => return None,
    };
    arguments.is_object().then_some(ToolCall { name, arguments })
}

fn json_call(body: &str, key: &str) -> Option<ToolCall> {
    value_call(&serde_json::from_str::<Value>(body.trim()).ok()?, key)
}

/// `<function=NAME>` with `<parameter=P>value</parameter>` items; values that parse as JSON
/// (numbers, booleans, objects) are taken as such, others as strings.
fn xml_call(body: &str) -> Option<ToolCall> {
    let rest = body.trim().strip_prefix("<function=")?;
    let (name, mut rest) = rest.split_once('>')?;
    let mut args = Map::new();
    while let Some(p) = rest.find("<parameter=") {
        let after = &rest[p + "<parameter=".len()..];
        let (key, after) = after.split_once('>')?;
        let (value, after) = after.split_once("</parameter>")?;
        let value = value.strip_prefix('\n').unwrap_or(value).strip_suffix('\n').unwrap_or(value);
        let parsed = serde_json::from_str::<Value>(value).ok().filter(|v| !v.is_string()).unwrap_or_else(|| Value::String(value.to_string()));
        args.insert(key.to_string(), parsed);
        rest = after;
    }
    Some(ToolCall { name: name.trim().to_string(), arguments: Value::Object(args) })
}

/// `call:NAME{key:value,…}`: values are numbers, booleans, `<|"|>strings<|"|>`, lists and
/// nested objects in the same notation.
fn gemma_call(body: &str) -> Option<ToolCall> {
    let rest = body.trim().strip_prefix("call:")?;
    let brace = rest.find('{')?;
    let name = rest[..brace].trim().to_string();
    let json_text = gemma_to_json(&rest[brace..])?;
    let arguments: Value = serde_json::from_str(&json_text).ok()?;
    arguments.is_object().then_some(ToolCall { name, arguments })
}

fn gemma_to_json(s: &str) -> Option<String> {
    const Q: &str = "<|\"|>";
    let mut out = String::new();
    let mut i = 0;
    let b = s.as_bytes();
    while i < s.len() {
        if s[i..].starts_with(Q) {
            let end = s[i + Q.len()..].find(Q)? + i + Q.len();
            out.push_str(&Value::String(s[i + Q.len()..end].to_string()).to_string());
            i = end + Q.len();
        } else if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let start = i;
            while i < s.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &s[start..i];
            let is_key = s[i..].trim_start().starts_with(':');
            if is_key {
                out.push_str(&Value::String(word.to_string()).to_string());
            } else {
                out.push_str(word);
            }
        } else {
            // Whole characters: a non-ASCII one is several bytes.
            let c = s[i..].chars().next()?;
            out.push(c);
            i += c.len_utf8();
        }
    }
    Some(out)
}

/// Streaming with tools: text goes out as it comes until a call may begin; from there it
/// is held, and parsed when the answer ends.
pub struct ToolStream {
    format: ToolFormat,
    held: String,
    in_call: bool,
    /// Text already streamed: a Llama 3 call must be the whole answer, so after text
    /// nothing is held (as the whole answer's parse would find no call).
    spoke: bool,
}

impl ToolStream {
    /// A stream for `format`.
    pub fn new(format: ToolFormat) -> Self {
        ToolStream { format, held: String::new(), in_call: false, spoke: false }
    }

    /// More text; returns what may be streamed as content now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.in_call {
            return String::new();
        }
        if self.format == ToolFormat::Llama3 && self.spoke {
            return std::mem::take(&mut self.held);
        }
        let out = self.split_off_call();
        self.spoke |= !out.trim().is_empty();
        out
    }

    fn split_off_call(&mut self) -> String {
        let opener = self.format.opener();
        if let Some(at) = self.held.find(opener).or_else(|| self.held.find("<|python_tag|>")) {
            if self.format == ToolFormat::Llama3 && !self.held[..at].trim().is_empty() {
                // Text first: no Llama 3 call can follow.
                return std::mem::take(&mut self.held);
            }
            self.in_call = true;
            let out = self.held[..at].to_string();
            self.held.drain(..at);
            return out;
        }
        // Hold back a tail that could be the start of the opener.
        let keep = (1..opener.len().min(self.held.len()) + 1)
            .rev()
            .find(|&n| self.held.is_char_boundary(self.held.len() - n) && opener.starts_with(&self.held[self.held.len() - n..]))
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// The end: content not yet streamed, and the calls.
    pub fn finish(self) -> (String, Vec<ToolCall>) {
        self.format.parse(&self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall { name: name.into(), arguments }
    }

    #[test]
    fn every_format_parses_its_calls() {
        let w = || call("get_weather", json!({"city": "Paris", "days": 2}));
        let cases = [
            (ToolFormat::Hermes, "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>", "Let me check."),
            (ToolFormat::QwenXml, "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>", ""),
            (ToolFormat::Llama3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": 2}}", ""),
            (ToolFormat::Llama3, "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": 2}}", ""),
            (ToolFormat::MistralJson, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}, \"id\": \"abc123def\"}]", ""),
            (ToolFormat::MistralArgs, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\", \"days\": 2}", ""),
            (ToolFormat::Harmony, "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\", \"days\": 2}<|call|>", ""),
            (ToolFormat::Gemma4, "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>,days:2}<tool_call|>", ""),
        ];
        for (f, text, content) in cases {
            assert_eq!(f.parse(text), (content.to_string(), vec![w()]), "{f:?}");
        }
        // Two calls; text that is no call stays text.
        let two = "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": 1}}\n</tool_call>";
        assert_eq!(ToolFormat::Hermes.parse(two).1, vec![call("a", json!({})), call("b", json!({"x": 1}))]);
        assert_eq!(ToolFormat::Hermes.parse("just <tool_call> words").1, vec![]);
        assert_eq!(ToolFormat::Llama3.parse("Sure: {\"name\": \"a\", \"parameters\": {}}").1, vec![]);
    }

    #[test]
    fn the_format_is_read_off_real_templates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/llama-cpp/templates");
        let dir = std::env::var_os("TANDEM_MODELS_DIR").map(|d| std::path::PathBuf::from(d).join("llama-cpp/templates")).unwrap_or(dir);
        for (file, want) in [
            ("Qwen-Qwen3-0.6B.jinja", ToolFormat::Hermes),
            ("Qwen3.5-4B.jinja", ToolFormat::QwenXml),
            ("meta-llama-Llama-3.1-8B-Instruct.jinja", ToolFormat::Llama3),
            ("mistralai-Mistral-Nemo-Instruct-2407.jinja", ToolFormat::MistralJson),
            ("mistralai-Ministral-3-14B-Reasoning-2512.jinja", ToolFormat::MistralArgs),
            ("openai-gpt-oss-120b.jinja", ToolFormat::Harmony),
            ("google-gemma-4-31B-it.jinja", ToolFormat::Gemma4),
        ] {
            let src = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e} (scripts/fetch-models.sh llama-cpp)"));
            assert_eq!(detect(&src), want, "{file}");
        }
    }

    #[test]
    fn streaming_holds_back_only_what_may_open_a_call() {
        let mut s = ToolStream::new(ToolFormat::Hermes);
        assert_eq!(s.push("Hello <to"), "Hello ");
        assert_eq!(s.push("day> there"), "<today> there");
        assert_eq!(s.push(" <tool_"), " ");
        assert_eq!(s.push("call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>"), "");
        assert_eq!(s.finish(), (String::new(), vec![call("a", json!({}))]));
        // Llama 3: a call after text is text, streamed or not.
        let text = "Sure: {\"name\": \"a\", \"parameters\": {}}";
        let mut s = ToolStream::new(ToolFormat::Llama3);
        let streamed = s.push(text);
        let (rest, calls) = s.finish();
        assert_eq!((streamed + &rest, calls), ToolFormat::Llama3.parse(text));
    }

    #[test]
    fn gemma_arguments_may_hold_any_characters() {
        let (_, calls) = ToolFormat::Gemma4.parse("<|tool_call>call:f{city:Zürich,n:2}<tool_call|>");
        assert!(calls.is_empty() || calls[0].name == "f", "no panic, and no made-up call");
        let (_, calls) = ToolFormat::Gemma4.parse("<|tool_call>call:f{city:<|\"|>Zürich ☀<|\"|>}<tool_call|>");
        assert_eq!(calls, vec![call("f", json!({"city": "Zürich ☀"}))]);
    }
}
