//! Request parsing and validation, OpenAI-style errors and response bodies.

use crate::sampling;
use crate::template::ChatInput;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use engine::generate::StopRules;
use engine::sampler::SamplerConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// An error answered as `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// Machine-readable code.
    pub code: &'static str,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// A prompt over the context: (its tokens, the context), reported as llama-server's
    /// `n_prompt_tokens` and `n_ctx` beside the OpenAI fields.
    pub context: Option<(usize, usize)>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    /// Any status, type and code.
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, code, retry_after: None, context: None }
    }

    /// A prompt of `n_prompt` tokens that the context of `n_ctx` cannot hold: OpenAI's code
    /// (`context_length_exceeded`) with llama-server's type and counts.
    pub fn context_exceeded(n_prompt: usize, n_ctx: usize) -> Self {
        let msg = format!("the prompt has {n_prompt} tokens but the context holds {n_ctx}; shorten it");
        ApiError { context: Some((n_prompt, n_ctx)), ..Self::new(StatusCode::BAD_REQUEST, "exceed_context_size_error", "context_length_exceeded", msg) }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut e = json!({"message": self.message, "type": self.kind, "code": self.code});
        if let Some((n_prompt, n_ctx)) = self.context {
            e["n_prompt_tokens"] = json!(n_prompt);
            e["n_ctx"] = json!(n_ctx);
        }
        json!({ "error": e })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// A JSON body whose every rejection (too large, malformed, wrong types) is an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "invalid_request_error", "request_too_large", "the request body is too large")
            } else {
                ApiError::new(status, "invalid_request_error", "invalid_body", format!("cannot read the request body: {e}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parse JSON, naming the field whose type is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        describe(&path, e.into_inner())
    })
}

fn describe(path: &str, inner: serde_json::Error) -> ApiError {
    let msg = if inner.is_syntax() || inner.is_eof() {
        format!("malformed JSON body: {inner}")
    } else if path == "." {
        format!("invalid request: {inner}")
    } else {
        format!("invalid value for '{path}': {inner}")
    };
    ApiError::bad("invalid_request", msg)
}

/// Read typed fields out of a parsed JSON object, naming the field whose type is wrong.
pub fn fields<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad("invalid_request", "the request body must be a JSON object"));
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        describe(&path, e.into_inner())
    })
}

/// Fields shared by /v1/completions and /v1/chat/completions.
#[derive(Debug, Deserialize, Default)]
pub struct CommonFields {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    /// llama.cpp's name for max_tokens.
    pub n_predict: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    /// llama-server's window of the penalties.
    pub repeat_last_n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub logit_bias: Value,
    /// Chat: a boolean; completions: the alternatives per token.
    #[serde(default)]
    pub logprobs: Value,
    pub top_logprobs: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// llama-server's switch for reusing a cached prompt prefix (default on).
    pub cache_prompt: Option<bool>,
}

/// `stream_options`.
#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// POST /v1/chat/completions and /apply-template (besides [`CommonFields`]): the messages
/// and what llama-server's `oaicompat_chat_params_parse` reads for the template. Checked by
/// [`ChatFields::options`].
#[derive(Debug, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<Value>,
    #[serde(default)]
    pub tools: Value,
    #[serde(default)]
    pub tool_choice: Value,
    #[serde(default)]
    pub parallel_tool_calls: Value,
    #[serde(default)]
    pub chat_template_kwargs: Value,
    #[serde(default)]
    pub reasoning_effort: Value,
    #[serde(default)]
    pub add_generation_prompt: Value,
}

/// POST /v1/completions (besides [`CommonFields`]).
#[derive(Debug, Deserialize)]
pub struct CompletionFields {
    pub prompt: Value,
}

/// POST /tokenize (llama-server's shape).
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub add_special: bool,
    #[serde(default = "yes")]
    pub parse_special: bool,
    #[serde(default)]
    pub with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// POST /detokenize.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

/// What generation does with a request once its prompt is tokenized.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Token limit, end-of-generation rule, stop strings.
    pub rules: StopRules,
    /// Report each token's log-probability with this many alternatives (None: not asked).
    pub logprobs: Option<usize>,
    /// Reuse a cached prefix of the prompt.
    pub cache_prompt: bool,
    /// Render control tokens in the text (tools were given: their markers are parsed).
    pub render_special: bool,
}

/// Most stop strings per request.
pub const MAX_STOPS: usize = 16;

/// What a request gets for the fields it leaves out: llama.cpp's defaults, or the server's
/// sampling flags (`--temp`, `--top-k`, `-n`, `--seed`, … as llama-server takes them).
#[derive(Debug, Clone)]
pub struct RequestDefaults {
    /// Sampling (its seed used only when `random_seed` is false).
    pub sampler: SamplerConfig,
    /// Draw a fresh seed per request.
    pub random_seed: bool,
    /// Token limit (`-n`; None: until end of generation or a full context).
    pub max_tokens: Option<usize>,
}

impl Default for RequestDefaults {
    fn default() -> Self {
        RequestDefaults { sampler: SamplerConfig::default(), random_seed: true, max_tokens: None }
    }
}

fn finite(name: &str, v: Option<f64>, lo: f64, hi: f64, default: f32) -> Result<f32, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x as f32),
        Some(x) => Err(ApiError::bad("invalid_value", format!("'{name}' must be between {lo} and {hi}, got {x}"))),
    }
}

impl CommonFields {
    /// Check the fields and turn them into generation parameters (`chat`: the chat
    /// endpoint's reading of `logprobs`; `n_vocab` bounds `logit_bias`). Any `model` name is
    /// accepted: the one served model answers it (as llama-server does; clients configured
    /// for `gpt-4o-mini` work), and responses name the served model.
    pub fn params(&self, chat: bool, n_vocab: usize, d: &RequestDefaults) -> Result<GenParams, ApiError> {
        let max = self.max_completion_tokens.or(self.max_tokens).or(self.n_predict.filter(|&n| n >= 0));
        let max_tokens = match max {
            None => d.max_tokens,
            Some(n) if n > 0 => Some(n as usize),
            Some(n) => return Err(ApiError::bad("invalid_value", format!("'max_tokens' must be at least 1, got {n}"))),
        };
        let top_k = match self.top_k {
            None => d.sampler.top_k,
            Some(k) if k >= 0 => k as usize,
            Some(k) => return Err(ApiError::bad("invalid_value", format!("'top_k' must be 0 or more, got {k}"))),
        };
        let clock = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_nanos() as u64);
        let seed = match self.seed {
            Some(s) if s >= 0 && s != u32::MAX as i64 => s as u64,
            Some(_) => clock(),
            None if d.random_seed => clock(),
            None => d.sampler.seed,
        };
        let ds = &d.sampler;
        let penalty = |name: &str, v: Option<f64>, default: f32| v.map_or(Ok(default), |_| sampling::penalty(name, v));
        let sampler = SamplerConfig {
            temperature: finite("temperature", self.temperature, 0.0, 100.0, ds.temperature)?,
            top_k,
            top_p: finite("top_p", self.top_p, 0.0, 1.0, ds.top_p)?,
            min_p: finite("min_p", self.min_p, 0.0, 1.0, ds.min_p)?,
            repeat_penalty: finite("repeat_penalty", self.repeat_penalty, 0.0, 100.0, ds.repeat_penalty)?,
            repeat_last_n: match self.repeat_last_n {
                None => ds.repeat_last_n,
                Some(n) if (0..=1 << 20).contains(&n) => n as usize,
                Some(n) => return Err(ApiError::bad("invalid_value", format!("'repeat_last_n' must be 0 or more, got {n}"))),
            },
            frequency_penalty: penalty("frequency_penalty", self.frequency_penalty, ds.frequency_penalty)?,
            presence_penalty: penalty("presence_penalty", self.presence_penalty, ds.presence_penalty)?,
            logit_bias: sampling::logit_bias(&self.logit_bias, n_vocab)?,
            seed,
        };
        let logprobs = if chat {
            sampling::chat_logprobs(&self.logprobs, self.top_logprobs)?
        } else {
            sampling::completion_logprobs(&self.logprobs)?
        };
        let stop = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::bad("invalid_value", "'stop' must be a string or an array of strings"))?,
            Some(_) => return Err(ApiError::bad("invalid_value", "'stop' must be a string or an array of strings")),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::bad("invalid_value", format!("at most {MAX_STOPS} stop strings")));
        }
        let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
        Ok(GenParams { sampler, rules: StopRules { max_tokens, ignore_eos: self.ignore_eos, stop }, logprobs, cache_prompt: self.cache_prompt.unwrap_or(true), render_special: false })
    }

    /// How many choices (`n`).
    pub fn choices(&self) -> Result<usize, ApiError> {
        sampling::choices(self.n)
    }

    /// Whether a streamed response ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// Chat messages as template input: each an object with a string role; content a string,
/// an array of text parts (joined as llama.cpp joins them), or null.
pub fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad("invalid_value", "'messages' must not be empty"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let obj = m.as_object().ok_or_else(|| ApiError::bad("invalid_value", format!("messages[{i}] must be an object")))?;
            match obj.get("role") {
                Some(Value::String(r)) if !r.is_empty() => {}
                _ => return Err(ApiError::bad("invalid_value", format!("messages[{i}].role must be a non-empty string"))),
            }
            let content = match obj.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => join_text_parts(parts)
                    .map_err(|(j, why)| ApiError::bad("invalid_value", format!("messages[{i}].content[{j}]: {why}")))?,
                Some(_) => {
                    return Err(ApiError::bad("invalid_value", format!("messages[{i}].content must be a string or an array")))
                }
            };
            let mut out = obj.clone();
            out.insert("content".into(), Value::String(content));
            Ok(Value::Object(out))
        })
        .collect()
}

/// Content parts as one string, as llama.cpp's `concat_content_parts`: a newline before each
/// text part except while nothing has been written yet. Media parts are refused with
/// llama-server's words for a model without a multimodal projector.
fn join_text_parts(parts: &[Value]) -> Result<String, (usize, String)> {
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        let why = match p.get("type").and_then(Value::as_str) {
            Some("text") => match p.get("text").and_then(Value::as_str) {
                Some(t) => {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(t);
                    continue;
                }
                None => "a text part needs a 'text' string".to_string(),
            },
            Some("image_url") => "image input is not supported by this model".to_string(),
            Some("input_audio") => "audio input is not supported by this model".to_string(),
            Some("input_video" | "video_url") => "video input is not supported by this model".to_string(),
            Some(other) => format!("unsupported content part type '{other}' (only text parts are supported)"),
            None => "a content part needs a string 'type'".to_string(),
        };
        return Err((j, why));
    }
    Ok(text)
}

/// `tool_choice`. Checked and kept for the tool-call parser; the prompt does not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model may call tools.
    Auto,
    /// The model must not call tools (they are still shown to the template).
    None,
    /// The model must call a tool.
    Required,
}

/// What a chat request asks of the template, checked and merged as llama-server's
/// `oaicompat_chat_params_parse` does.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Tool definitions as llama.cpp passes them on: `{"type": "function", "function":
    /// {"name", "description" ("" when absent), "parameters" ({} when absent)}}`.
    pub tools: Vec<Value>,
    /// `tool_choice` (default `auto`).
    pub tool_choice: ToolChoice,
    /// `tool_choice: {"type": "function", "function": {"name": …}}`: this tool must be called
    /// (OpenAI's meaning; `tool_choice` is then `Required`).
    pub forced_tool: Option<String>,
    /// `parallel_tool_calls`; `None`: the template's own default.
    pub parallel_tool_calls: Option<bool>,
    /// `add_generation_prompt` (default true).
    pub add_generation_prompt: bool,
    /// true unless the kwargs' `enable_thinking` is false or `reasoning_effort` is "none".
    pub enable_thinking: bool,
    /// The server's `--chat-template-kwargs`, the request's `chat_template_kwargs` over them,
    /// then `reasoning_effort`.
    pub kwargs: Map<String, Value>,
}

impl ChatOptions {
    /// The template input for (normalized) messages.
    pub fn input<'a>(&'a self, messages: &'a [Value]) -> ChatInput<'a> {
        ChatInput {
            tools: &self.tools,
            add_generation_prompt: self.add_generation_prompt,
            enable_thinking: self.enable_thinking,
            kwargs: Some(&self.kwargs),
            ..ChatInput::new(messages)
        }
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_value", msg)
}

fn opt_bool(name: &str, v: &Value) -> Result<Option<bool>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        _ => Err(invalid(format!("'{name}' must be a boolean"))),
    }
}

impl ChatFields {
    /// Check the template fields and merge the kwargs over the server's `defaults`.
    pub fn options(&self, defaults: &Map<String, Value>) -> Result<ChatOptions, ApiError> {
        let tools = parse_tools(&self.tools)?;
        let choice_err = || invalid("'tool_choice' must be \"auto\", \"none\", \"required\" or an object naming a function");
        let tool_choice = match &self.tool_choice {
            Value::Null => ToolChoice::Auto,
            Value::String(s) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                _ => return Err(choice_err()),
            },
            Value::Object(_) => ToolChoice::Required,
            _ => return Err(choice_err()),
        };
        let forced_tool = match &self.tool_choice {
            Value::Object(o) => {
                let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(choice_err)?;
                if !tools.iter().any(|t| t["function"]["name"] == name) {
                    return Err(invalid(format!("'tool_choice' names '{name}', which is not among 'tools'")));
                }
                Some(name.to_string())
            }
            _ => None,
        };
        let parallel_tool_calls = opt_bool("parallel_tool_calls", &self.parallel_tool_calls)?;
        let add_generation_prompt = opt_bool("add_generation_prompt", &self.add_generation_prompt)?.unwrap_or(true);
        let mut kwargs = defaults.clone();
        match &self.chat_template_kwargs {
            Value::Null => {}
            Value::Object(m) => kwargs.extend(m.iter().map(|(k, v)| (k.clone(), v.clone()))),
            _ => return Err(invalid("'chat_template_kwargs' must be a JSON object")),
        }
        // llama-server: a boolean kwarg sets the flag, a string one is refused, others pass.
        let mut enable_thinking = true;
        match kwargs.get("enable_thinking") {
            Some(Value::Bool(b)) => enable_thinking = *b,
            Some(Value::String(_)) => {
                return Err(invalid("invalid type for 'enable_thinking' in 'chat_template_kwargs' (expected boolean, got string)"))
            }
            _ => {}
        }
        match &self.reasoning_effort {
            Value::Null => {}
            Value::String(e) if e == "none" => {
                enable_thinking = false;
                kwargs.remove("reasoning_effort");
            }
            Value::String(e) if !e.is_empty() => {
                kwargs.insert("reasoning_effort".into(), Value::String(e.clone()));
            }
            Value::String(_) => {}
            _ => return Err(invalid("'reasoning_effort' must be a string")),
        }
        Ok(ChatOptions { tools, tool_choice, forced_tool, parallel_tool_calls, add_generation_prompt, enable_thinking, kwargs })
    }
}

/// `tools` as llama.cpp's `common_chat_tools_parse_oaicompat` reads them and passes them on.
fn parse_tools(v: &Value) -> Result<Vec<Value>, ApiError> {
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => return Err(invalid("'tools' must be an array of tool definitions")),
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let err = |why: &str| invalid(format!("tools[{i}]: {why}"));
            if !t.is_object() {
                return Err(err("a tool must be an object"));
            }
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(err("'type' must be \"function\""));
            }
            let f = t.get("function").and_then(Value::as_object).ok_or_else(|| err("'function' must be an object"))?;
            let name = f.get("name").and_then(Value::as_str).ok_or_else(|| err("'function.name' must be a string"))?;
            let description = match f.get("description") {
                None | Some(Value::Null) => "",
                Some(Value::String(d)) => d,
                Some(_) => return Err(err("'function.description' must be a string")),
            };
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => json!({}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => return Err(err("'function.parameters' must be a JSON Schema object")),
            };
            Ok(json!({"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}))
        })
        .collect()
}

/// A completion prompt: a string, an array of one string, or an array of token ids.
pub enum Prompt {
    /// Text to tokenize.
    Text(String),
    /// Token ids as given.
    Tokens(Vec<u32>),
}

/// Read the `prompt` field.
pub fn parse_prompt(v: &Value, n_vocab: usize) -> Result<Prompt, ApiError> {
    let err = || ApiError::bad("invalid_value", "'prompt' must be a string, an array of one string, or an array of token ids");
    match v {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => Ok(Prompt::Text(a[0].as_str().unwrap_or("").to_string())),
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => {
            let ids: Option<Vec<u32>> = a.iter().map(|x| x.as_u64().filter(|&t| (t as usize) < n_vocab).map(|t| t as u32)).collect();
            ids.map(Prompt::Tokens)
                .ok_or_else(|| ApiError::bad("invalid_value", format!("'prompt' token ids must be in 0..{n_vocab}")))
        }
        _ => Err(err()),
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh response id with a prefix (`chatcmpl-`, `cmpl-`).
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("{prefix}{:016x}{n:04x}", t ^ (t >> 17).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}
