//! llama-server's own endpoints, in its shapes: `POST /completion` (its native
//! completion, streamed without `[DONE]`), `GET /props` and `GET /slots`.

use crate::api::{self, ApiError, ApiJson, CommonFields, GenParams};
use crate::http::{blocking, engine_error, error_event, shutting_down, sse_response, submit_all, AppState, Ask, KEEPALIVE};
use crate::response::{logprob_entries, timings};
use crate::scheduler::{Event, Finish, FinishReason};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type S = Arc<AppState>;

/// /completion's fields besides [`CommonFields`].
#[derive(Debug, Deserialize)]
struct NativeFields {
    prompt: Value,
    /// Alternatives per token (0: no probabilities).
    #[serde(default)]
    n_probs: i64,
}

/// What a generation was asked, as llama-server echoes it in `generation_settings`.
fn settings(p: &GenParams, n_ctx: usize) -> Value {
    let c = &p.sampler;
    json!({"n_ctx": n_ctx, "n_predict": p.rules.max_tokens.map_or(-1, |n| n as i64), "temperature": c.temperature,
           "top_k": c.top_k, "top_p": c.top_p, "min_p": c.min_p, "repeat_penalty": c.repeat_penalty,
           "repeat_last_n": c.repeat_last_n, "presence_penalty": c.presence_penalty,
           "frequency_penalty": c.frequency_penalty, "seed": c.seed, "stop": p.rules.stop,
           "ignore_eos": p.rules.ignore_eos, "n_probs": p.logprobs.unwrap_or(0), "cache_prompt": p.cache_prompt})
}

/// The fields of the last (or only) answer.
fn final_fields(s: &AppState, content: &str, f: &Finish, settings: Value) -> Value {
    json!({"index": 0, "content": content, "tokens": [], "id_slot": -1, "stop": true, "model": s.model,
           "tokens_predicted": f.completion_tokens, "tokens_evaluated": f.prompt_tokens,
           "tokens_cached": f.cached_tokens, "generation_settings": settings, "has_new_line": content.contains('\n'),
           "truncated": false, "stop_type": f.reason.stop_type(), "stopping_word": "", "timings": timings(f)})
}

/// POST /completion.
pub async fn completion(State(s): State<S>, ApiJson(body): ApiJson<Value>) -> Result<Response, ApiError> {
    let common: CommonFields = api::fields(&body)?;
    let native: NativeFields = api::fields(&body)?;
    let mut params = common.params(false, s.tok.vocab_size(), &s.defaults)?;
    params.logprobs = match native.n_probs {
        0 => None,
        n if n > 0 && n as usize <= crate::sampling::MAX_TOP_LOGPROBS => Some(n as usize),
        n => return Err(ApiError::bad("invalid_value", format!("'n_probs' must be between 0 and 20, got {n}"))),
    };
    let prompt = match api::parse_prompt(&native.prompt, s.tok.vocab_size())? {
        api::Prompt::Tokens(ids) => ids,
        api::Prompt::Text(text) => {
            let tok = s.tok.clone();
            blocking(move || tok.encode(&text, true, true)).await?
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::bad("empty_prompt", "the prompt is empty"));
    }
    if prompt.len() >= s.sched.n_ctx() {
        return Err(ApiError::context_exceeded(prompt.len(), s.sched.n_ctx()));
    }
    let settings = settings(&params, s.sched.n_ctx());
    let ask = Ask { params, spec: crate::structured::spec(&body)?, tools: None, lazy: None, n: 1, stream: common.stream, include_usage: false };
    let mut ticket = submit_all(&s, &prompt, &ask).await?.pop().expect("one ticket");
    if !ask.stream {
        let (mut content, mut probs) = (String::new(), Vec::new());
        loop {
            match ticket.events.recv().await {
                Some(Event::Text { text, logprobs }) => {
                    content.push_str(&text);
                    probs.extend(logprobs);
                }
                Some(Event::Done(f)) if f.reason == FinishReason::Cancelled => return Err(shutting_down()),
                Some(Event::Done(f)) => {
                    let mut v = final_fields(&s, &content, &f, settings);
                    if ask.params.logprobs.is_some() {
                        v["completion_probabilities"] = logprob_entries(&s.tok, &probs, true);
                    }
                    return Ok(Json(v).into_response());
                }
                Some(Event::Error(e)) => return Err(engine_error(e)),
                None => return Err(shutting_down()),
            }
        }
    }
    let with_probs = ask.params.logprobs.is_some();
    let n_prompt = prompt.len();
    let state = (s, ticket, settings, 0usize, false);
    let stream = futures_util::stream::unfold(state, move |(s, mut ticket, settings, predicted, ended)| async move {
        if ended {
            return None;
        }
        let (bytes, predicted, ended) = match tokio::time::timeout(KEEPALIVE, ticket.events.recv()).await {
            Err(_) => (Bytes::from_static(b": keep-alive\n\n"), predicted, false),
            Ok(Some(Event::Text { text, logprobs })) => {
                let predicted = predicted + logprobs.len().max(usize::from(!text.is_empty()));
                let mut v = json!({"index": 0, "content": text, "tokens": [], "stop": false, "id_slot": -1,
                                   "tokens_predicted": predicted, "tokens_evaluated": n_prompt});
                if with_probs {
                    v["completion_probabilities"] = logprob_entries(&s.tok, &logprobs, true);
                }
                (Bytes::from(format!("data: {v}\n\n")), predicted, false)
            }
            Ok(Some(Event::Done(f))) if f.reason != FinishReason::Cancelled => {
                let v = final_fields(&s, "", &f, settings.clone());
                (Bytes::from(format!("data: {v}\n\n")), predicted, true)
            }
            Ok(Some(Event::Error(e))) => (error_event(engine_error(e)), predicted, true),
            Ok(Some(Event::Done(_)) | None) => (error_event(shutting_down()), predicted, true),
        };
        Some((bytes, (s, ticket, settings, predicted, ended)))
    });
    Ok(sse_response(stream))
}

/// GET /props: the server's defaults, slots, template and special tokens.
pub async fn props(State(s): State<S>) -> Json<Value> {
    let defaults = CommonFields::default()
        .params(false, s.tok.vocab_size(), &s.defaults)
        .map(|p| settings(&p, s.sched.n_ctx()))
        .unwrap_or(Value::Null);
    let text = |id: Option<u32>| id.and_then(|i| s.tok.token_text(i)).unwrap_or("").to_string();
    Json(json!({
        "default_generation_settings": {"n_ctx": s.sched.n_ctx(), "params": defaults},
        "total_slots": s.sched.slots(),
        "model_alias": s.model,
        "model_path": s.model_path,
        "chat_template": s.template.source,
        "bos_token": text(s.tok.bos()),
        "eos_token": text(s.tok.eos()),
        "modalities": {"vision": false, "audio": false},
        "build_info": concat!("tandem ", env!("CARGO_PKG_VERSION")),
    }))
}

/// GET /slots: each slot's id, context, whether it is busy, and what its cache holds
/// (501 with `--no-slots`, as llama-server answers).
pub async fn slots(State(s): State<S>) -> Result<Json<Value>, ApiError> {
    if !s.slots_endpoint {
        return Err(ApiError::new(axum::http::StatusCode::NOT_IMPLEMENTED, "not_supported_error", "slots_disabled", "this server has the slots endpoint off (--no-slots)"));
    }
    let list: Vec<Value> = s
        .sched
        .slot_states()
        .into_iter()
        .map(|(id, busy, held)| json!({"id": id, "n_ctx": s.sched.n_ctx(), "is_processing": busy, "n_cached": held}))
        .collect();
    Ok(Json(Value::Array(list)))
}
