//! Response bodies: whole answers and SSE chunks of /v1/chat/completions and
//! /v1/completions, with their choices, usage and log-probabilities in OpenAI's shapes.

use crate::scheduler::Finish;
use crate::tools::{ToolCall, ToolFormat};
use bytes::Bytes;
use engine::sampler::TokenLogprob;
use serde_json::{json, Value};
use std::sync::Arc;
use tokenizer::Tokenizer;

/// Which endpoint answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// /v1/chat/completions.
    Chat,
    /// /v1/completions.
    Text,
}

/// One finished choice.
#[derive(Debug)]
pub struct Choice {
    /// Its text.
    pub text: String,
    /// Its tokens' log-probabilities (when asked for).
    pub logprobs: Vec<TokenLogprob>,
    /// How it ended.
    pub finish: Finish,
    /// The tool calls parsed out of it (when tools were given).
    pub tool_calls: Vec<ToolCall>,
}

/// `usage`: the prompt counted once (with the tokens a cache supplied, OpenAI's
/// `prompt_tokens_details.cached_tokens`), the completions of every choice summed.
pub fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens,
           "prompt_tokens_details": {"cached_tokens": cached_tokens}})
}

/// llama-server's `timings` of one generation: prompt tokens run (`prompt_n`, besides the
/// `cache_n` a cache supplied) and generated, with their times.
pub fn timings(f: &Finish) -> Value {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let per = |n: usize, t: f64| if n > 0 { (t / n as f64, if t > 0.0 { n as f64 * 1e3 / t } else { 0.0 }) } else { (0.0, 0.0) };
    let prompt_n = f.prompt_tokens - f.cached_tokens;
    let (prompt_ms, predicted_ms) = (ms(f.prompt_time), ms(f.decode_time));
    let (p_tok, p_sec) = per(prompt_n, prompt_ms);
    let (d_tok, d_sec) = per(f.completion_tokens, predicted_ms);
    json!({"cache_n": f.cached_tokens, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
           "prompt_per_token_ms": p_tok, "prompt_per_second": p_sec,
           "predicted_n": f.completion_tokens, "predicted_ms": predicted_ms,
           "predicted_per_token_ms": d_tok, "predicted_per_second": d_sec})
}

/// Per token `{token, logprob, bytes, top_logprobs: [same]}` (OpenAI chat's `logprobs.content`);
/// with `ids`, each entry also has its `id` (llama-server's `completion_probabilities`).
pub fn logprob_entries(tok: &Tokenizer, probs: &[TokenLogprob], ids: bool) -> Value {
    let entry = |id: u32, lp: f32| {
        let bytes = tok.token_to_piece(id, true);
        let mut e = json!({"token": String::from_utf8_lossy(&bytes), "logprob": lp, "bytes": bytes});
        if ids {
            e["id"] = json!(id);
        }
        e
    };
    probs
        .iter()
        .map(|p| {
            let mut e = entry(p.token, p.logprob);
            e["top_logprobs"] = p.top.iter().map(|&(t, lp)| entry(t, lp)).collect();
            e
        })
        .collect()
}

/// The bodies of one request's answer.
pub struct Out {
    /// Endpoint.
    pub kind: Kind,
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// For the tokens' text in log-probabilities.
    pub tok: Arc<Tokenizer>,
    /// Whether log-probabilities were asked for (else `logprobs` is null).
    pub logprobs: bool,
    /// Tools were given: calls in this format are parsed out of the answers.
    pub tools: Option<ToolFormat>,
}

fn calls_json(format: Option<ToolFormat>, calls: &[ToolCall]) -> Value {
    let format = format.unwrap_or(ToolFormat::Hermes);
    calls.iter().enumerate().map(|(i, c)| c.to_openai(&format.call_id(), i)).collect()
}

impl Out {
    /// The whole answer.
    pub fn full(&self, choices: &[Choice], prompt_tokens: usize) -> Value {
        let list: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let reason = if c.tool_calls.is_empty() { c.finish.reason.as_str() } else { "tool_calls" };
                let logprobs = self.logprobs_json(&c.logprobs, 0);
                match self.kind {
                    Kind::Chat if !c.tool_calls.is_empty() => {
                        let content = if c.text.is_empty() { Value::Null } else { Value::String(c.text.clone()) };
                        json!({"index": i, "message": {"role": "assistant", "content": content, "tool_calls": calls_json(self.tools, &c.tool_calls)},
                               "logprobs": logprobs, "finish_reason": reason})
                    }
                    Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.text},
                                         "logprobs": logprobs, "finish_reason": reason}),
                    Kind::Text => json!({"index": i, "text": c.text, "logprobs": logprobs, "finish_reason": reason}),
                }
            })
            .collect();
        let completion = choices.iter().map(|c| c.finish.completion_tokens).sum();
        let cached = choices.first().map_or(0, |c| c.finish.cached_tokens);
        let object = if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                           "system_fingerprint": "tandem", "choices": list, "usage": usage(prompt_tokens, completion, cached)});
        if let Some(c) = choices.first() {
            v["timings"] = timings(&c.finish);
        }
        v
    }

    /// An SSE event holding `choices` (and `usage`, for the last chunk).
    pub fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        self.chunk_with(choices, usage, None)
    }

    /// The same, with llama-server's `timings` (on a choice's last chunk).
    pub fn chunk_with(&self, choices: Value, usage: Option<Value>, timings: Option<Value>) -> Bytes {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                           "system_fingerprint": "tandem", "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        if let Some(t) = timings {
            v["timings"] = t;
        }
        Bytes::from(format!("data: {v}\n\n"))
    }

    /// A chat's first chunk for choice `index`: the role, with no content yet (null, as
    /// llama-server and OpenAI send it, not an empty string).
    pub fn role(&self, index: usize) -> Bytes {
        let choice = json!({"index": index, "delta": {"role": "assistant", "content": null}, "logprobs": null, "finish_reason": null});
        self.chunk(json!([choice]), None)
    }

    /// More text of choice `index`; `offset` is the completion's length so far in
    /// characters (completions' `text_offset`), advanced past `text`.
    pub fn delta(&self, index: usize, text: &str, probs: &[TokenLogprob], offset: &mut usize) -> Bytes {
        let logprobs = self.logprobs_json(probs, *offset);
        *offset += text.chars().count();
        let choice = match self.kind {
            Kind::Chat => json!({"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null}),
            Kind::Text => json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}),
        };
        self.chunk(json!([choice]), None)
    }

    /// Choice `index`'s tool calls, whole, in one delta.
    pub fn tool_calls(&self, index: usize, calls: &[ToolCall]) -> Bytes {
        let choice = json!({"index": index, "delta": {"tool_calls": calls_json(self.tools, calls)}, "logprobs": null, "finish_reason": null});
        self.chunk(json!([choice]), None)
    }

    /// The chunk ending choice `index`, with its timings (`called`: it ended in tool calls).
    pub fn finish(&self, index: usize, f: &Finish, called: bool) -> Bytes {
        let reason = if called { "tool_calls" } else { f.reason.as_str() };
        let choice = match self.kind {
            Kind::Chat => json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}),
            Kind::Text => json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason}),
        };
        self.chunk_with(json!([choice]), None, Some(timings(f)))
    }

    fn piece(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.tok.token_to_piece(id, true);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// Chat: `{"content": [{token, logprob, bytes, top_logprobs}]}`. Completions:
    /// `{tokens, token_logprobs, top_logprobs, text_offset}`, offsets counted in characters
    /// from the completion's start (`start`: where these tokens begin).
    fn logprobs_json(&self, probs: &[TokenLogprob], start: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.kind {
            Kind::Chat => json!({"content": logprob_entries(&self.tok, probs, false), "refusal": null}),
            Kind::Text => {
                let mut offset = start;
                let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
                for p in probs {
                    let (token, _) = self.piece(p.token);
                    offsets.push(offset);
                    offset += token.chars().count();
                    tokens.push(token);
                    lps.push(p.logprob);
                    let top: serde_json::Map<String, Value> = p.top.iter().map(|&(t, lp)| (self.piece(t).0, json!(lp))).collect();
                    tops.push(top);
                }
                json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
            }
        }
    }
}
