//! Routes, handlers and middleware (auth, CORS, request counting).

use crate::api::{self, ApiError, ApiJson, ChatFields, CommonFields, CompletionFields, DetokenizeRequest, GenParams, TokenizeRequest};
use crate::metrics::Metrics;
use crate::response::{usage, Choice, Kind, Out};
use crate::native;
use crate::sampling;
use crate::scheduler::{Event, FinishReason, Scheduler, SubmitError, Ticket};
use crate::template::ChatTemplate;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use engine::Runner;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokenizer::Tokenizer;

/// Everything the handlers share.
pub struct AppState {
    /// Slots and engine threads.
    pub sched: Scheduler,
    /// The model's runner (metadata, engine counters).
    pub runner: Arc<Runner>,
    /// The model's tokenizer.
    pub tok: Arc<Tokenizer>,
    /// The chat template.
    pub template: ChatTemplate,
    /// How the template's family writes tool calls (read off it once).
    pub tool_format: crate::tools::ToolFormat,
    /// `--chat-template-kwargs`: template variables every chat request starts from.
    pub chat_template_kwargs: Map<String, Value>,
    /// The model id clients name.
    pub model: String,
    /// The model file.
    pub model_path: String,
    /// What requests get for the fields they leave out.
    pub defaults: api::RequestDefaults,
    /// Serve /slots (llama-server's `--no-slots` turns it off).
    pub slots_endpoint: bool,
    /// Structured output's vocabulary index (built on first use).
    pub grammars: crate::structured::Index,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Accepted keys (any one of them); empty: none required.
    pub api_keys: Vec<String>,
    /// When the server started (seconds since the epoch).
    pub created: u64,
    /// How /v1/embeddings pools (`None`: embeddings are off, llama-server's default).
    pub pooling: Option<engine::embed::Pooling>,
}

type S = Arc<AppState>;

/// Seconds a silent stream waits before sending an SSE comment (which also notices a
/// client that went away while its request was queued).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(2);

/// The application: every route, auth on all but /health, optional CORS.
pub fn router(state: S, cors_origins: Vec<String>, max_body: usize) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/apply-template", post(apply_template))
        .route("/metrics", get(metrics))
        .route("/completion", post(native::completion))
        .route("/props", get(native::props))
        .route("/slots", get(native::slots))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/embeddings", post(crate::embeddings::embeddings))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state);
    if !cors_origins.is_empty() {
        let origins = Arc::new(cors_origins);
        app.layer(middleware::from_fn(move |req, next| cors_layer(origins.clone(), req, next)))
    } else {
        app
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method_not_allowed", "method not allowed here")
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Constant time in the key's content.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<S>, req: Request, next: Next) -> Response {
    if !s.api_keys.is_empty() {
        let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        // llama-server also takes the key as `X-Api-Key` (Anthropic-style clients send it so).
        let x_api_key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
        let known = |g: &str| s.api_keys.iter().fold(false, |ok, key| ok | same(g.as_bytes(), key.as_bytes()));
        if ![bearer, x_api_key].iter().any(|g| g.is_some_and(known)) {
            let msg = "invalid or missing API key: send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'";
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", msg).into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn count(State(s): State<S>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("other", |p| p.as_str()).to_string();
    let r = next.run(req).await;
    s.metrics.request(&route, r.status().as_u16());
    r
}

/// CORS for the allowed origins: `*` answers any origin with `*`; a list echoes a listed
/// request `Origin` (with `Vary: Origin`) and leaves others without the header, which
/// browsers refuse.
async fn cors_layer(origins: Arc<Vec<String>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let any = origins.iter().any(|o| o == "*");
    let allow = if any {
        Some(HeaderValue::from_static("*"))
    } else {
        origin.filter(|o| o.to_str().is_ok_and(|o| origins.iter().any(|a| a.trim_end_matches('/') == o)))
    };
    if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        let Some(allow) = allow else { return r };
        if !any {
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        // The headers the browser asks for (the OpenAI SDKs send x-stainless-* ones).
        let asked = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.unwrap_or(HeaderValue::from_static("Authorization, Content-Type, X-Api-Key")));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        return r;
    }
    let mut r = next.run(req).await;
    if let Some(allow) = allow {
        if !any {
            r.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    }
    r
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn models(State(s): State<S>) -> Json<Value> {
    let c = &s.runner.model.config;
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.model,
            "object": "model",
            "created": s.created,
            "owned_by": "tandem",
            "meta": {"n_ctx_train": c.n_ctx_train, "n_ctx": s.sched.n_ctx(), "n_vocab": c.n_vocab,
                     "n_embd": c.n_embd, "slots": s.sched.slots(), "chat_template": s.template.origin},
        }],
    }))
}

async fn metrics(State(s): State<S>) -> Response {
    let text = s.metrics.render(s.sched.slots(), &s.runner.dispatcher.stats.snapshot());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn tokenize(State(s): State<S>, ApiJson(req): ApiJson<TokenizeRequest>) -> Result<Json<Value>, ApiError> {
    let tok = s.tok.clone();
    let ids = blocking(move || tok.encode(&req.content, req.add_special, req.parse_special)).await?;
    if !req.with_pieces {
        return Ok(Json(json!({"tokens": ids})));
    }
    let pieces: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let bytes = s.tok.token_to_piece(id, true);
            let piece = match String::from_utf8(bytes) {
                Ok(text) => Value::String(text),
                Err(e) => Value::from(e.into_bytes()),
            };
            json!({"id": id, "piece": piece})
        })
        .collect();
    Ok(Json(json!({"tokens": pieces})))
}

async fn detokenize(State(s): State<S>, ApiJson(req): ApiJson<DetokenizeRequest>) -> Result<Json<Value>, ApiError> {
    let n = s.tok.vocab_size();
    let ids: Option<Vec<u32>> = req.tokens.iter().map(|&t| u32::try_from(t).ok().filter(|&t| (t as usize) < n)).collect();
    let ids = ids.ok_or_else(|| ApiError::bad("invalid_value", format!("token ids must be in 0..{n}")))?;
    Ok(Json(json!({"content": s.tok.decode(&ids, true)})))
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", e.to_string()))
}

/// The messages and template input of a chat request, checked as llama-server checks them.
fn chat_request(s: &AppState, body: &Value) -> Result<(Vec<Value>, api::ChatOptions), ApiError> {
    let req: ChatFields = api::fields(body)?;
    let options = req.options(&s.chat_template_kwargs)?;
    Ok((api::normalize_messages(&req.messages)?, options))
}

fn template_error(e: crate::template::TemplateError) -> ApiError {
    ApiError::bad("invalid_messages", e.to_string())
}

async fn chat(State(s): State<S>, ApiJson(body): ApiJson<Value>) -> Result<Response, ApiError> {
    let common: CommonFields = api::fields(&body)?;
    sampling::refuse_unsupported(&body, true)?;
    let mut ask = Ask::read(&common, &body, Kind::Chat, s.tok.vocab_size(), &s.defaults)?;
    let (messages, options) = chat_request(&s, &body)?;
    if !options.tools.is_empty() && options.tool_choice != api::ToolChoice::None {
        let format = s.tool_format;
        ask.tools = Some(format);
        ask.params.render_special = true;
        let required = options.tool_choice == api::ToolChoice::Required;
        if required && ask.spec.is_some() {
            return Err(ApiError::bad("invalid_value", "tool_choice \"required\" cannot be combined with a response format or grammar"));
        }
        // `required`: the answer is a call. `auto` (without a response format): the model
        // writes freely, and once it opens a call the same grammar holds the call's form.
        if ask.spec.is_none() {
            let special = |t: &str| s.tok.token_id(t);
            // A named tool: the grammar offers only that one (the template still shows all).
            let offered: Vec<Value> = match &options.forced_tool {
                Some(name) => options.tools.iter().filter(|t| t["function"]["name"] == name.as_str()).cloned().collect(),
                None => options.tools.clone(),
            };
            // `auto` keeps OpenAI's default of parallel calls (a second call is not cut off).
            let parallel = options.parallel_tool_calls.unwrap_or(!required);
            let grammar = format.required_grammar(&offered, parallel, &special);
            ask.spec = Some(constrain::Spec::Lark(grammar));
            ask.lazy = (!required).then(|| format.trigger());
        }
    }
    let st = s.clone();
    let prompt = blocking(move || st.template.tokenize_input(&st.tok, &options.input(&messages))).await?.map_err(template_error)?;
    run(s, Kind::Chat, prompt, ask).await
}

/// llama-server's /apply-template: the chat request's prompt as text, without generating.
/// A BOS the template wrote is left out when the tokenizer adds one (as the chat endpoint
/// tokenizes it).
async fn apply_template(State(s): State<S>, ApiJson(body): ApiJson<Value>) -> Result<Json<Value>, ApiError> {
    let (messages, options) = chat_request(&s, &body)?;
    let st = s.clone();
    let text = blocking(move || st.template.render_input(&options.input(&messages))).await?.map_err(template_error)?;
    let bos = s.tok.bos().and_then(|id| s.tok.token_text(id)).filter(|b| s.tok.add_bos() && !b.is_empty());
    let prompt = bos.and_then(|b| text.strip_prefix(b)).unwrap_or(&text);
    Ok(Json(json!({"prompt": prompt})))
}

async fn completions(State(s): State<S>, ApiJson(body): ApiJson<Value>) -> Result<Response, ApiError> {
    let common: CommonFields = api::fields(&body)?;
    let req: CompletionFields = api::fields(&body)?;
    sampling::refuse_unsupported(&body, false)?;
    let ask = Ask::read(&common, &body, Kind::Text, s.tok.vocab_size(), &s.defaults)?;
    let prompt = match api::parse_prompt(&req.prompt, s.tok.vocab_size())? {
        api::Prompt::Tokens(ids) => ids,
        api::Prompt::Text(text) => {
            let tok = s.tok.clone();
            blocking(move || tok.encode(&text, true, true)).await?
        }
    };
    run(s, Kind::Text, prompt, ask).await
}

pub(crate) fn shutting_down() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "shutting_down", "the server is shutting down")
}

pub(crate) fn engine_error(e: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "engine_error", e)
}

/// What a generation request asks besides its prompt.
pub(crate) struct Ask {
    pub(crate) params: GenParams,
    /// What the output must follow (a JSON schema or grammar).
    pub(crate) spec: Option<constrain::Spec>,
    /// Tools were given: parse calls in this format out of the answer.
    pub(crate) tools: Option<crate::tools::ToolFormat>,
    /// `spec` holds only from this trigger on (a tool call's opening with `tool_choice: auto`).
    pub(crate) lazy: Option<constrain::Trigger>,
    /// Choices (`n`).
    pub(crate) n: usize,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

impl Ask {
    fn read(common: &CommonFields, body: &Value, kind: Kind, n_vocab: usize, defaults: &api::RequestDefaults) -> Result<Self, ApiError> {
        Ok(Ask {
            params: common.params(kind == Kind::Chat, n_vocab, defaults)?,
            spec: crate::structured::spec(body)?,
            tools: None,
            lazy: None,
            n: common.choices()?,
            stream: common.stream,
            include_usage: common.include_usage(),
        })
    }
}

/// Queue `n` generations of the prompt, choice i seeded with the request's seed + i (so
/// a sampled request's choices differ and a seeded one is reproducible).
pub(crate) async fn submit_all(s: &Arc<AppState>, prompt: &[u32], ask: &Ask) -> Result<Vec<Ticket>, ApiError> {
    let mut constraints: Vec<Option<Box<dyn engine::generate::TokenConstraint>>> = match &ask.spec {
        None => (0..ask.n).map(|_| None).collect(),
        Some(spec) => {
            let (st, spec, lazy, n) = (s.clone(), spec.clone(), ask.lazy.clone(), ask.n);
            match blocking(move || st.grammars.compile(&st.tok, &spec, lazy.as_ref(), n)).await? {
                Ok(cs) => cs.into_iter().map(Some).collect(),
                // Tools whose schemas the grammar engine refuses: with `auto` the answer is
                // then parsed as written, as before there was a grammar for it.
                Err(_) if ask.lazy.is_some() => (0..ask.n).map(|_| None).collect(),
                Err(e) => return Err(e),
            }
        }
    };
    (0..ask.n)
        .map(|i| {
            let mut params = ask.params.clone();
            params.sampler.seed = params.sampler.seed.wrapping_add(i as u64);
            s.sched.submit(prompt.to_vec(), params, constraints[i].take()).map_err(|e| match e {
                SubmitError::QueueFull => ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable_error",
                        "queue_full",
                        "every slot is busy and the queue is full; retry later",
                    )
                },
                SubmitError::ShuttingDown => shutting_down(),
            })
        })
        .collect()
}

async fn run(s: S, kind: Kind, prompt: Vec<u32>, ask: Ask) -> Result<Response, ApiError> {
    let n_ctx = s.sched.n_ctx();
    if prompt.is_empty() {
        return Err(ApiError::bad("empty_prompt", "the prompt is empty"));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::context_exceeded(prompt.len(), n_ctx));
    }
    // Dropping the tickets of an earlier choice cancels it when a later one is refused.
    let tickets = submit_all(&s, &prompt, &ask).await?;
    let out = Out {
        kind,
        id: api::new_id(if kind == Kind::Chat { "chatcmpl-" } else { "cmpl-" }),
        created: api::now_secs(),
        model: s.model.clone(),
        tok: s.tok.clone(),
        logprobs: ask.params.logprobs.is_some(),
        tools: ask.tools,
    };
    if ask.stream {
        return Ok(sse(out, tickets, prompt.len(), ask.include_usage));
    }
    let mut choices = Vec::with_capacity(tickets.len());
    for mut ticket in tickets {
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        let finish = loop {
            match ticket.events.recv().await {
                Some(Event::Text { text: t, logprobs: p }) => {
                    text.push_str(&t);
                    logprobs.extend(p);
                }
                Some(Event::Done(f)) if f.reason == FinishReason::Cancelled => return Err(shutting_down()),
                Some(Event::Done(f)) => break f,
                Some(Event::Error(e)) => return Err(engine_error(e)),
                None => return Err(shutting_down()),
            }
        };
        let (text, tool_calls) = match ask.tools {
            Some(format) => format.parse(&text),
            None => (text, Vec::new()),
        };
        choices.push(Choice { text, logprobs, finish, tool_calls });
    }
    Ok(Json(out.full(&choices, prompt.len())).into_response())
}

/// Every choice's events as one stream of (choice, event); `None` when a choice's channel
/// closed.
fn merged(tickets: Vec<Ticket>) -> futures_util::stream::SelectAll<futures_util::stream::BoxStream<'static, (usize, Option<Event>)>> {
    use futures_util::StreamExt;
    futures_util::stream::select_all(tickets.into_iter().enumerate().map(|(i, t)| {
        futures_util::stream::unfold(Some(t), move |t| async move {
            let mut t = t?;
            match t.events.recv().await {
                Some(e) => Some(((i, Some(e)), Some(t))),
                None => Some(((i, None), None)),
            }
        })
        .boxed()
    }))
}

/// A streamed answer's progress.
struct Streaming {
    out: Out,
    events: futures_util::stream::SelectAll<futures_util::stream::BoxStream<'static, (usize, Option<Event>)>>,
    started: bool,
    ended: bool,
    done: Vec<bool>,
    offsets: Vec<usize>,
    /// Per choice, when tools were given: text held while a call may be under way.
    tool_streams: Vec<Option<crate::tools::ToolStream>>,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Cached prompt tokens of the first choice to finish.
    cached_tokens: Option<usize>,
    include_usage: bool,
}

impl Streaming {
    /// The next SSE bytes, or None once the stream has ended.
    async fn next(&mut self) -> Option<Bytes> {
        use futures_util::StreamExt;
        if self.ended {
            return None;
        }
        if !self.started {
            self.started = true;
            if self.out.kind == Kind::Chat {
                let roles: Vec<u8> = (0..self.done.len()).flat_map(|i| self.out.role(i).to_vec()).collect();
                return Some(Bytes::from(roles));
            }
        }
        loop {
            let event = match tokio::time::timeout(KEEPALIVE, self.events.next()).await {
                Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                Ok(e) => e,
            };
            return Some(match event {
                Some((i, Some(Event::Text { text, logprobs }))) => {
                    let text = match self.tool_streams[i].as_mut() {
                        Some(t) => t.push(&text),
                        None => text,
                    };
                    if text.is_empty() && logprobs.is_empty() {
                        continue;
                    }
                    self.out.delta(i, &text, &logprobs, &mut self.offsets[i])
                }
                Some((i, Some(Event::Done(f)))) if f.reason != FinishReason::Cancelled => {
                    self.done[i] = true;
                    self.completion_tokens += f.completion_tokens;
                    let cached = *self.cached_tokens.get_or_insert(f.cached_tokens);
                    let mut b = Vec::new();
                    let mut calls = Vec::new();
                    if let Some(t) = self.tool_streams[i].take() {
                        let (rest, c) = t.finish();
                        if !rest.is_empty() {
                            b.extend_from_slice(&self.out.delta(i, &rest, &[], &mut self.offsets[i]));
                        }
                        if !c.is_empty() {
                            b.extend_from_slice(&self.out.tool_calls(i, &c));
                        }
                        calls = c;
                    }
                    b.extend_from_slice(&self.out.finish(i, &f, !calls.is_empty()));
                    if self.done.iter().all(|&d| d) {
                        if self.include_usage {
                            let u = usage(self.prompt_tokens, self.completion_tokens, cached);
                            b.extend_from_slice(&self.out.chunk(json!([]), Some(u)));
                        }
                        b.extend_from_slice(b"data: [DONE]\n\n");
                        self.ended = true;
                    }
                    Bytes::from(b)
                }
                // A finished choice's channel closing is expected.
                Some((i, None)) if self.done[i] => continue,
                Some((_, Some(Event::Error(e)))) => {
                    self.ended = true;
                    error_event(engine_error(e))
                }
                Some((_, Some(Event::Done(_)) | None)) | None => {
                    self.ended = true;
                    error_event(shutting_down())
                }
            });
        }
    }
}

fn sse(out: Out, tickets: Vec<Ticket>, prompt_tokens: usize, include_usage: bool) -> Response {
    let n = tickets.len();
    let tool_streams = (0..n).map(|_| out.tools.map(crate::tools::ToolStream::new)).collect();
    let state = Streaming {
        out,
        events: merged(tickets),
        started: false,
        ended: false,
        done: vec![false; n],
        offsets: vec![0; n],
        tool_streams,
        prompt_tokens,
        completion_tokens: 0,
        cached_tokens: None,
        include_usage,
    };
    sse_response(futures_util::stream::unfold(state, |mut st| async move {
        let bytes = st.next().await?;
        Some((bytes, st))
    }))
}

/// A server-sent-events response over `events` (proxies told not to buffer it).
pub(crate) fn sse_response(events: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Response {
    use futures_util::StreamExt;
    let mut r = Response::new(Body::from_stream(events.map(Ok::<_, std::convert::Infallible>)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

pub(crate) fn error_event(e: ApiError) -> Bytes {
    Bytes::from(format!("data: {}\n\n", e.body()))
}
