//! Chat templates: the GGUF's `tokenizer.chat_template` rendered with minijinja and the
//! helpers Hugging Face and llama.cpp templates use, or a built-in one per architecture.
//!
//! A template gets what llama.cpp's `common/chat.cpp` gives it (messages after its fix-ups,
//! `bos_token`, `eos_token`, `add_generation_prompt`, `enable_thinking`, `tools`,
//! `date_string`, `datetime`, chat-template kwargs) and Python's behaviour where Jinja
//! templates rely on it: string/dict/list methods (minijinja-contrib's pycompat),
//! `json.dumps`'s `tojson`, `raise_exception`, `strftime_now`.

mod messages;
mod python;
mod strftime;

use std::collections::BTreeMap;

use minijinja::{Environment, Error, ErrorKind, State, Value};
use tokenizer::Tokenizer;

pub use messages::Caps;
pub use strftime::strftime_utc;

/// ChatML (`<|im_start|>role ... <|im_end|>`): llama.cpp's default.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma (1-3): no system role, its text joins the first user turn; `model` is the assistant.
pub const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// Llama 3 headers.
pub const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Built-in templates by name (for `--chat-template NAME`).
pub const BUILTIN: &[(&str, &str)] = &[("chatml", CHATML), ("gemma", GEMMA), ("llama3", LLAMA3)];

/// A compiled chat template, what it was found to render, and the special-token texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from: `gguf` or a built-in name or `custom`.
    pub origin: String,
    /// The Jinja source (llama-server's /props shows it).
    pub source: String,
    bos: String,
    eos: String,
    add_bos: bool,
    caps: Caps,
    /// gpt-oss's template reads `developer` messages itself; others get them as `system`.
    keeps_developer: bool,
}

/// Everything a template is rendered with, as llama.cpp's `common/chat.cpp` passes it.
#[derive(Debug, Clone)]
pub struct ChatInput<'a> {
    /// OpenAI-shaped messages: role, content (string, text parts or null), and for tool use
    /// `tool_calls` (arguments a JSON string or an object), `tool_call_id`, `name`,
    /// `reasoning_content`.
    pub messages: &'a [serde_json::Value],
    /// OpenAI tool definitions; empty leaves `tools` undefined, as llama.cpp does.
    pub tools: &'a [serde_json::Value],
    /// End with the assistant's turn opening.
    pub add_generation_prompt: bool,
    /// `enable_thinking` (llama.cpp's default: true); a kwarg of the same name wins.
    pub enable_thinking: bool,
    /// `chat_template_kwargs`: more top-level variables (`reasoning_effort`,
    /// `builtin_tools`, `enable_thinking`, ...). A non-empty `reasoning_effort` is also
    /// `reasoning_strength`; a boolean `preserve_reasoning` sets `preserve_thinking` and
    /// clears `clear_thinking`, `truncate_history_thinking`, `drop_thinking`.
    pub kwargs: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The time `strftime_now`, `date_string` and `datetime` show (Unix seconds); `None`: now.
    pub now: Option<i64>,
}

impl<'a> ChatInput<'a> {
    /// The messages with llama.cpp's defaults: no tools, a generation prompt, thinking on.
    pub fn new(messages: &'a [serde_json::Value]) -> Self {
        ChatInput { messages, tools: &[], add_generation_prompt: true, enable_thinking: true, kwargs: None, now: None }
    }
}

/// The built-in template for a model without one: by architecture, then by vocabulary.
pub fn builtin_for(arch: &str, tok: &Tokenizer) -> &'static str {
    if arch.starts_with("gemma") {
        "gemma"
    } else if tok.token_id("<|start_header_id|>").is_some() && tok.token_id("<|eot_id|>").is_some() {
        "llama3"
    } else {
        "chatml"
    }
}

/// Why a chat template cannot be compiled or rendered (its own message, for the user or client).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

/// The message of a template's `raise_exception(...)`: the template's own words for the user.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// The context variable `strftime_now` reads the rendering's time from.
const NOW_VAR: &str = "__tandem_now";

impl ChatTemplate {
    /// The template for a model: `choice` (a built-in name or Jinja source) if given, else the
    /// GGUF's `tokenizer.chat_template`, else the built-in one for its architecture.
    pub fn for_model(file: &gguf::GgufFile, tok: &Tokenizer, choice: Option<&str>) -> Result<Self, TemplateError> {
        let named = |n: &str| BUILTIN.iter().find(|(name, _)| *name == n).map(|(_, s)| *s);
        let (origin, source) = match choice {
            Some(c) => match named(c) {
                Some(s) => (c.to_string(), s.to_string()),
                None => ("custom".to_string(), c.to_string()),
            },
            None => match file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
                Some(s) if !s.trim().is_empty() => ("gguf".to_string(), s.to_string()),
                _ => {
                    let name = builtin_for(file.architecture().unwrap_or(""), tok);
                    (name.to_string(), named(name).unwrap_or(CHATML).to_string())
                }
            },
        };
        let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        Self::new(origin, source, text(tok.bos()), text(tok.eos()), tok.add_bos())
    }

    /// Compile `source` and probe what it renders (system role, content shape, arguments).
    pub fn new(origin: String, source: String, bos: String, eos: String, add_bos: bool) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // Hugging Face renders with trim_blocks and lstrip_blocks.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, "raise_exception").with_source(Raised(msg)))
        });
        env.add_function("strftime_now", |state: &State, fmt: String| -> String {
            let now = state.lookup(NOW_VAR).and_then(|v| v.as_i64()).unwrap_or_else(unix_now);
            strftime_utc(&fmt, now)
        });
        env.add_filter("tojson", python::tojson);
        env.add_filter("string", python::string);
        env.add_filter("length", python::length);
        env.add_filter("count", python::length);
        env.set_formatter(python::format);
        let keeps_developer = source.contains("<|channel|>");
        env.add_template_owned("chat", compat_source(&source))
            .map_err(|e| TemplateError(format!("invalid chat template: {e:#}")))?;
        let mut tmpl = ChatTemplate {
            env,
            origin,
            source,
            bos,
            eos,
            add_bos,
            caps: Caps { system_role: true, typed_content: false, object_arguments: true },
            keeps_developer,
        };
        tmpl.caps = Caps::probe(|messages, tools| {
            let input = ChatInput { tools, now: Some(0), ..ChatInput::new(messages) };
            tmpl.render_context(&input, messages).ok()
        });
        Ok(tmpl)
    }

    /// What the template was found to render.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Render messages (objects with role and content) to the prompt text.
    pub fn render(&self, messages: &[serde_json::Value], add_generation_prompt: bool) -> Result<String, TemplateError> {
        self.render_input(&ChatInput { add_generation_prompt, ..ChatInput::new(messages) })
    }

    /// Render a conversation with tools and template kwargs, after llama.cpp's message fix-ups.
    pub fn render_input(&self, input: &ChatInput) -> Result<String, TemplateError> {
        let messages = messages::prepare(input.messages, self.caps, self.keeps_developer).map_err(TemplateError)?;
        self.render_context(input, &messages)
    }

    fn render_context(&self, input: &ChatInput, messages: &[serde_json::Value]) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("chat").map_err(|e| TemplateError(e.to_string()))?;
        let now = input.now.unwrap_or_else(unix_now);
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert("bos_token".into(), Value::from(self.bos.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos.as_str()));
        ctx.insert("enable_thinking".into(), Value::from(input.enable_thinking));
        if !input.tools.is_empty() {
            ctx.insert("tools".into(), Value::from_serialize(input.tools));
        }
        ctx.insert("date_string".into(), Value::from(strftime_utc("%d %b %Y", now)));
        ctx.insert("datetime".into(), Value::from(strftime_utc("%b %d %Y", now)));
        for (k, v) in input.kwargs.into_iter().flatten() {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        ctx.insert("add_generation_prompt".into(), Value::from(input.add_generation_prompt));
        if let Some(effort) = ctx.get("reasoning_effort").filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
            let effort = effort.clone();
            ctx.insert("reasoning_strength".into(), effort);
        }
        if let Some(keep) = ctx.get("preserve_reasoning").and_then(|v| bool::try_from(v.clone()).ok()) {
            ctx.insert("preserve_thinking".into(), Value::from(keep));
            for name in ["clear_thinking", "truncate_history_thinking", "drop_thinking"] {
                ctx.insert(name.into(), Value::from(!keep));
            }
        }
        ctx.insert(NOW_VAR.into(), Value::from(now));
        tmpl.render(Value::from(ctx)).map_err(|e| {
            // raise_exception's message alone; other errors with where they happened.
            use std::error::Error as _;
            match e.source().and_then(|s| s.downcast_ref::<Raised>()) {
                Some(Raised(msg)) => TemplateError(msg.clone()),
                None => TemplateError(format!("the chat template failed: {e}")),
            }
        })
    }

    /// Render and tokenize as llama-server does: special tokens parsed, the tokenizer's BOS
    /// added once (a BOS the template wrote is dropped first).
    pub fn tokenize(&self, tok: &Tokenizer, messages: &[serde_json::Value]) -> Result<Vec<u32>, TemplateError> {
        self.tokenize_input(tok, &ChatInput::new(messages))
    }

    /// [`ChatTemplate::tokenize`] for a conversation with tools and template kwargs.
    pub fn tokenize_input(&self, tok: &Tokenizer, input: &ChatInput) -> Result<Vec<u32>, TemplateError> {
        let text = self.render_input(input)?;
        let text = match text.strip_prefix(self.bos.as_str()) {
            Some(rest) if self.add_bos && !self.bos.is_empty() => rest,
            _ => &text,
        };
        Ok(tok.encode(text, true, true))
    }
}

/// Hugging Face extensions minijinja lacks, rewritten to plain Jinja: transformers'
/// `{% generation %}...{% endgeneration %}` (marks the assistant's text for training
/// masks) renders its body.
fn compat_source(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = split_ws_control(inner, true);
        let (body, trail) = split_ws_control(body, false);
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Split a `-`/`+` whitespace-control mark off the start (or end) of a tag's inside.
fn split_ws_control(inner: &str, at_start: bool) -> (&str, &str) {
    let marked = |c: char| c == '-' || c == '+';
    if at_start {
        match inner.chars().next() {
            Some(c) if marked(c) => (&inner[..1], &inner[1..]),
            _ => ("", inner),
        }
    } else {
        match inner.chars().last() {
            Some(c) if marked(c) => (&inner[..inner.len() - 1], &inner[inner.len() - 1..]),
            _ => (inner, ""),
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(src: &str) -> ChatTemplate {
        ChatTemplate::new("t".into(), src.into(), "<bos>".into(), "<eos>".into(), true).unwrap()
    }

    #[test]
    fn gemma_merges_system_and_alternates() {
        let msgs = [json!({"role":"system","content":"Be brief."}), json!({"role":"user","content":" Hi "})];
        let out = t(GEMMA).render(&msgs, true).unwrap();
        assert_eq!(out, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
        let bad = [json!({"role":"user","content":"a"}), json!({"role":"user","content":"b"})];
        let err = t(GEMMA).render(&bad, true).unwrap_err().to_string();
        assert!(err.contains("must alternate"), "{err}");
    }

    #[test]
    fn helpers_hf_templates_use() {
        let src = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.content.strip() | tojson }}{% endfor %}{{ strftime_now('%Y')|length }}";
        let msgs = [json!({"role":"user","content":" a "}), json!({"role":"user","content":"b"}), json!({"role":"user","content":"c"})];
        assert_eq!(t(src).render(&msgs, false).unwrap(), "\"a\"\"b\"4");
        assert!(ChatTemplate::new("t".into(), "{% if %}".into(), String::new(), String::new(), false).is_err());
    }

    #[test]
    fn generation_blocks_render_their_body() {
        assert_eq!(compat_source("a{%- generation -%}b{% endgeneration +%}c"), "a{%- if true -%}b{% endif +%}c");
        assert_eq!(compat_source("{{ x }}{% if y %}{%}{% generation"), "{{ x }}{% if y %}{%}{% generation");
        let out = t("{% for m in messages %}{%- generation -%} {{ m.content }} {%- endgeneration %}{% endfor %}")
            .render(&[json!({"role": "user", "content": "Hi"})], false)
            .unwrap();
        assert_eq!(out, "Hi");
    }

    #[test]
    fn chatml_shape() {
        let out = t(CHATML).render(&[json!({"role":"user","content":"Hi"})], true).unwrap();
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }
}
