//! Routes, handlers and middleware (auth, CORS, request counting).

use crate::api::{self, ApiError, ApiJson, ChatFields, CommonFields, CompletionFields, DetokenizeRequest, GenParams, TokenizeRequest};
use crate::metrics::Metrics;
use crate::scheduler::{Event, Finish, FinishReason, Scheduler, SubmitError, Ticket};
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
    /// `--chat-template-kwargs`: template variables every chat request starts from.
    pub chat_template_kwargs: Map<String, Value>,
    /// The model id clients name.
    pub model: String,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// When the server started (seconds since the epoch).
    pub created: u64,
}

type S = Arc<AppState>;

/// Seconds a silent stream waits before sending an SSE comment (which also notices a
/// client that went away while its request was queued).
const KEEPALIVE: Duration = Duration::from_secs(2);

/// The application: every route, auth on all but /health, optional CORS.
pub fn router(state: S, cors: bool, max_body: usize) -> Router {
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
    if cors {
        app.layer(middleware::from_fn(cors_layer))
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
    if let Some(key) = &s.api_key {
        let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        // llama-server also takes the key as `X-Api-Key` (Anthropic-style clients send it so).
        let x_api_key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
        if ![bearer, x_api_key].iter().any(|g| g.is_some_and(|g| same(g.as_bytes(), key.as_bytes()))) {
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

async fn cors_layer(req: Request, next: Next) -> Response {
    let any = HeaderValue::from_static("*");
    if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, any);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Authorization, Content-Type, X-Api-Key"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        return r;
    }
    let mut r = next.run(req).await;
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, any);
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", e.to_string()))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
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
    let params = common.params(&s.model)?;
    let (messages, options) = chat_request(&s, &body)?;
    let st = s.clone();
    let prompt = blocking(move || st.template.tokenize_input(&st.tok, &options.input(&messages))).await?.map_err(template_error)?;
    run(s, Kind::Chat, prompt, params, common.stream, common.include_usage()).await
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
    let params = common.params(&s.model)?;
    let prompt = match api::parse_prompt(&req.prompt, s.tok.vocab_size())? {
        api::Prompt::Tokens(ids) => ids,
        api::Prompt::Text(text) => {
            let tok = s.tok.clone();
            blocking(move || tok.encode(&text, true, true)).await?
        }
    };
    run(s, Kind::Text, prompt, params, common.stream, common.include_usage()).await
}

fn usage(f: &Finish) -> Value {
    json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
           "total_tokens": f.prompt_tokens + f.completion_tokens})
}

fn shutting_down() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "shutting_down", "the server is shutting down")
}

fn engine_error(e: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "engine_error", e)
}

async fn run(s: S, kind: Kind, prompt: Vec<u32>, params: GenParams, stream: bool, include_usage: bool) -> Result<Response, ApiError> {
    let n_ctx = s.sched.n_ctx();
    if prompt.is_empty() {
        return Err(ApiError::bad("empty_prompt", "the prompt is empty"));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::context_exceeded(prompt.len(), n_ctx));
    }
    let ticket = s.sched.submit(prompt, params).map_err(|e| match e {
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
    })?;
    let out = Out {
        kind,
        id: api::new_id(if kind == Kind::Chat { "chatcmpl-" } else { "cmpl-" }),
        created: api::now_secs(),
        model: s.model.clone(),
    };
    if stream {
        return Ok(sse(out, ticket, include_usage));
    }
    let mut ticket = ticket;
    let mut text = String::new();
    loop {
        match ticket.events.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done(f)) if f.reason == FinishReason::Cancelled => return Err(shutting_down()),
            Some(Event::Done(f)) => return Ok(Json(out.full(&text, &f)).into_response()),
            Some(Event::Error(e)) => return Err(engine_error(e)),
            None => return Err(shutting_down()),
        }
    }
}

/// Response bodies of one request.
struct Out {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Out {
    fn full(&self, text: &str, f: &Finish) -> Value {
        let reason = f.reason.as_str();
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": null, "finish_reason": reason}),
            Kind::Text => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": reason}),
        };
        let object = if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "system_fingerprint": "tandem", "choices": [choice], "usage": usage(f)})
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                           "system_fingerprint": "tandem", "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Bytes::from(format!("data: {v}\n\n"))
    }

    fn delta(&self, text: Option<&str>, reason: Option<&str>) -> Bytes {
        let choice = match (self.kind, text) {
            // The first chunk names the role with no content yet (null, as llama-server and
            // OpenAI send it, not an empty string).
            (Kind::Chat, None) if reason.is_none() => {
                json!({"index": 0, "delta": {"role": "assistant", "content": null}, "logprobs": null, "finish_reason": null})
            }
            (Kind::Chat, None) => json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}),
            (Kind::Chat, Some(t)) => json!({"index": 0, "delta": {"content": t}, "logprobs": null, "finish_reason": null}),
            (Kind::Text, t) => json!({"index": 0, "text": t.unwrap_or(""), "logprobs": null, "finish_reason": reason}),
        };
        self.chunk(json!([choice]), None)
    }
}

/// Phases of a streamed response.
enum Phase {
    Start,
    Events,
    End,
}

fn sse(out: Out, ticket: Ticket, include_usage: bool) -> Response {
    let init = (out, ticket, Phase::Start);
    let stream = futures_util::stream::unfold(init, move |(out, mut ticket, phase)| async move {
        let bytes = match phase {
            Phase::End => return None,
            Phase::Start if out.kind == Kind::Chat => out.delta(None, None),
            Phase::Start | Phase::Events => match tokio::time::timeout(KEEPALIVE, ticket.events.recv()).await {
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                Ok(Some(Event::Text(t))) => out.delta(Some(&t), None),
                Ok(Some(Event::Done(f))) if f.reason != FinishReason::Cancelled => {
                    let mut b = out.delta(None, Some(f.reason.as_str())).to_vec();
                    if include_usage {
                        b.extend_from_slice(&out.chunk(json!([]), Some(usage(&f))));
                    }
                    b.extend_from_slice(b"data: [DONE]\n\n");
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::from(b)), (out, ticket, Phase::End)));
                }
                Ok(Some(Event::Error(e))) => error_event(engine_error(e)),
                Ok(Some(Event::Done(_)) | None) => error_event(shutting_down()),
            },
        };
        let next = if bytes.starts_with(b"data: {\"error\"") { Phase::End } else { Phase::Events };
        Some((Ok(bytes), (out, ticket, next)))
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

fn error_event(e: ApiError) -> Bytes {
    Bytes::from(format!("data: {}\n\n", e.body()))
}
