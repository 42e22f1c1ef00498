//! `/v1/embeddings` (OpenAI's; llama-server's with `--embeddings`): each input (a string, or
//! token ids) tokenized as llama.cpp does (the model's special tokens added), run through the
//! model in a fresh context, pooled (`--pooling`, else the model's own, else mean) and scaled
//! to unit length, as llama-server returns them. `encoding_format: base64` (what the official
//! Python client asks for) gives the little-endian f32 bytes in base64.

use crate::api::{ApiError, ApiJson};
use crate::http::{blocking, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use engine::embed::Pooling;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The request: OpenAI's fields; `dimensions` (shortened vectors) is not offered.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    input: Value,
    #[allow(dead_code)]
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<Value>,
    #[allow(dead_code)]
    user: Option<Value>,
}

/// The inputs as token lists: a string, a list of strings, a list of ids, or a list of lists of ids.
fn inputs(s: &AppState, input: &Value) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = |msg: &str| ApiError::bad("invalid_value", format!("input {msg}"));
    let n_vocab = s.tok.vocab_size();
    let ids = |v: &[Value]| -> Result<Vec<u32>, ApiError> {
        v.iter()
            .map(|t| t.as_u64().filter(|&t| (t as usize) < n_vocab).map(|t| t as u32).ok_or_else(|| bad(&format!("token ids must be integers in 0..{n_vocab}"))))
            .collect()
    };
    let text = |t: &str| s.tok.encode(t, true, true);
    let lists = match input {
        Value::String(t) => vec![text(t)],
        Value::Array(items) if items.is_empty() => return Err(bad("is an empty list")),
        Value::Array(items) if items.iter().all(Value::is_string) => items.iter().map(|t| text(t.as_str().expect("checked"))).collect(),
        Value::Array(items) if items.iter().all(Value::is_number) => vec![ids(items)?],
        Value::Array(items) if items.iter().all(Value::is_array) => items.iter().map(|t| ids(t.as_array().expect("checked"))).collect::<Result<_, _>>()?,
        _ => return Err(bad("must be a string, a list of strings, a list of token ids or a list of such lists")),
    };
    if lists.iter().any(Vec::is_empty) {
        return Err(bad("holds an empty text or token list"));
    }
    Ok(lists)
}

/// POST /v1/embeddings.
pub async fn embeddings(State(s): State<Arc<AppState>>, ApiJson(req): ApiJson<EmbeddingRequest>) -> Result<Json<Value>, ApiError> {
    let Some(pooling) = s.pooling else {
        let msg = "this server does not serve embeddings: start it with --embeddings";
        return Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported_error", "embeddings_disabled", msg));
    };
    if req.dimensions.is_some() {
        return Err(ApiError::bad("unsupported_field", "dimensions is not supported: embeddings have the model's width"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::bad("invalid_value", format!("encoding_format '{other}' (float or base64)"))),
    };
    let lists = inputs(&s, &req.input)?;
    let n_ctx = s.sched.n_ctx();
    if let Some(long) = lists.iter().find(|t| t.len() > n_ctx) {
        return Err(ApiError::context_exceeded(long.len(), n_ctx));
    }
    let tokens: usize = lists.iter().map(Vec::len).sum();
    let runner = s.runner.clone();
    let vectors = blocking(move || lists.iter().map(|t| runner.embedding(t, pooling)).collect::<Result<Vec<_>, _>>()).await?;
    let vectors = vectors.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "embedding_failed", e.to_string()))?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": s.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// The pooling a server started with `--embeddings` uses: `--pooling`, else the model's, else mean.
pub fn pooling_for(flag: Option<&str>, c: &engine::arch::Config) -> Result<Pooling, engine::EngineError> {
    match flag {
        Some(name) => Pooling::parse(name),
        None => Ok(Pooling::of_model(c).unwrap_or(Pooling::Mean)),
    }
}
