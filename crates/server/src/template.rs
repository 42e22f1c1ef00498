//! Chat templates: the GGUF's `tokenizer.chat_template` rendered with minijinja and the
//! helpers Hugging Face and llama.cpp templates use, or a built-in one per architecture.

use minijinja::{Environment, Error, ErrorKind, Value};
use tokenizer::Tokenizer;

/// ChatML (`<|im_start|>role ... <|im_end|>`): llama.cpp's default.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma (1-3): no system role, its text joins the first user turn; `model` is the assistant.
pub const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// Llama 3 headers.
pub const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Built-in templates by name (for `--chat-template NAME`).
pub const BUILTIN: &[(&str, &str)] = &[("chatml", CHATML), ("gemma", GEMMA), ("llama3", LLAMA3)];

/// A compiled chat template and the special-token texts it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from: `gguf` or a built-in name or `custom`.
    pub origin: String,
    bos: String,
    eos: String,
    add_bos: bool,
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

    /// Compile `source`.
    pub fn new(origin: String, source: String, bos: String, eos: String, add_bos: bool) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // Hugging Face renders with trim_blocks and lstrip_blocks.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_utc(&fmt, unix_now()) });
        env.add_template_owned("chat", source).map_err(|e| TemplateError(format!("invalid chat template: {e:#}")))?;
        Ok(ChatTemplate { env, origin, bos, eos, add_bos })
    }

    /// Render messages (objects with role and content) to the prompt text.
    pub fn render(&self, messages: &[serde_json::Value], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("chat").map_err(|e| TemplateError(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        };
        tmpl.render(ctx).map_err(|e| {
            // raise_exception's message alone; other errors with their detail.
            TemplateError(if e.kind() == ErrorKind::InvalidOperation {
                e.detail().unwrap_or("the chat template failed").to_string()
            } else {
                format!("the chat template failed: {e}")
            })
        })
    }

    /// Render and tokenize as llama-server does: special tokens parsed, the tokenizer's BOS
    /// added once (a BOS the template wrote is dropped first).
    pub fn tokenize(&self, tok: &Tokenizer, messages: &[serde_json::Value]) -> Result<Vec<u32>, TemplateError> {
        let text = self.render(messages, true)?;
        let text = match text.strip_prefix(self.bos.as_str()) {
            Some(rest) if self.add_bos && !self.bos.is_empty() => rest,
            _ => &text,
        };
        Ok(tok.encode(text, true, true))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `strftime` in UTC for the codes templates use (%Y %m %d %e %H %M %S %B %b %A %a %y %j %p %I %%).
pub fn strftime_utc(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wd = days.rem_euclid(7) as usize;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[wd]),
            Some('a') => out.push_str(&DAYS[wd][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(src: &str) -> ChatTemplate {
        ChatTemplate::new("t".into(), src.into(), "<bos>".into(), "<eos>".into(), true).unwrap()
    }

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime_utc("%Y-%m-%d %H:%M:%S", 0), "1970-01-01 00:00:00");
        assert_eq!(strftime_utc("%d %B %Y %A %j", 1_709_251_199), "29 February 2024 Thursday 060");
        assert_eq!(strftime_utc("%d %b %Y %a", 1_767_225_600), "01 Jan 2026 Thu");
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
    fn chatml_shape() {
        let out = t(CHATML).render(&[json!({"role":"user","content":"Hi"})], true).unwrap();
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }
}
