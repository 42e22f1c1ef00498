//! The request fields beyond the basic sampler: penalties, logit bias, log-probabilities,
//! several choices, and the OpenAI fields tandem refuses (400) rather than ignores.

use crate::api::ApiError;
use serde_json::Value;

/// Most choices (`n`) per request: each takes a slot, as that many requests would.
pub const MAX_CHOICES: usize = 16;
/// Most alternatives per token (`top_logprobs`, completions' `logprobs`, `n_probs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_value", msg)
}

/// `n`: how many independent choices to generate (1 when absent).
pub fn choices(n: Option<i64>) -> Result<usize, ApiError> {
    match n {
        None => Ok(1),
        Some(n) if n >= 1 && n as usize <= MAX_CHOICES => Ok(n as usize),
        Some(n) => Err(invalid(format!("'n' must be between 1 and {MAX_CHOICES}, got {n}"))),
    }
}

/// A penalty in OpenAI's range, -2 to 2 (0 = off).
pub fn penalty(name: &str, v: Option<f64>) -> Result<f32, ApiError> {
    match v {
        None => Ok(0.0),
        Some(x) if x.is_finite() && (-2.0..=2.0).contains(&x) => Ok(x as f32),
        Some(x) => Err(invalid(format!("'{name}' must be between -2 and 2, got {x}"))),
    }
}

/// `logit_bias` as OpenAI sends it (`{"token id": bias}`, bias -100 to 100) or as
/// llama-server also takes it (`[[id, bias]]`, where a bias of `false` bans the token).
pub fn logit_bias(v: &Value, n_vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let token = |t: u64| -> Result<u32, ApiError> {
        usize::try_from(t)
            .ok()
            .filter(|&t| t < n_vocab)
            .map(|t| t as u32)
            .ok_or_else(|| invalid(format!("'logit_bias': token id {t} is not in 0..{n_vocab}")))
    };
    let bias = |b: &Value| -> Result<f32, ApiError> {
        match b {
            Value::Bool(false) => Ok(f32::NEG_INFINITY),
            Value::Number(x) => match x.as_f64() {
                Some(x) if (-100.0..=100.0).contains(&x) => Ok(x as f32),
                _ => Err(invalid(format!("'logit_bias': a bias must be between -100 and 100, got {x}"))),
            },
            _ => Err(invalid("'logit_bias': a bias must be a number (or false to ban the token)")),
        }
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, b)| {
                let id = k.trim().parse::<u64>().map_err(|_| invalid(format!("'logit_bias': key '{k}' is not a token id")))?;
                Ok((token(id)?, bias(b)?))
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([id, b]) => Ok((token(id.as_u64().ok_or_else(|| invalid("'logit_bias': a token id must be a number"))?)?, bias(b)?)),
                _ => Err(invalid("'logit_bias' as an array holds [token id, bias] pairs")),
            })
            .collect(),
        _ => Err(invalid("'logit_bias' must be an object mapping token ids to biases")),
    }
}

/// Chat's `logprobs` (a boolean) and `top_logprobs` (0 to 20, only with `logprobs`):
/// `Some(top)` when log-probabilities are asked for.
pub fn chat_logprobs(logprobs: &Value, top: Option<i64>) -> Result<Option<usize>, ApiError> {
    let on = match logprobs {
        Value::Null | Value::Bool(false) => false,
        Value::Bool(true) => true,
        _ => return Err(invalid("'logprobs' must be a boolean")),
    };
    let top = match top {
        None => 0,
        Some(t) if t >= 0 && t as usize <= MAX_TOP_LOGPROBS => t as usize,
        Some(t) => return Err(invalid(format!("'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {t}"))),
    };
    if top > 0 && !on {
        return Err(invalid("'top_logprobs' needs 'logprobs': true"));
    }
    Ok(on.then_some(top))
}

/// Completions' `logprobs`: the number of alternatives per token (0 to 20; null = none).
pub fn completion_logprobs(logprobs: &Value) -> Result<Option<usize>, ApiError> {
    match logprobs {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64() {
            Some(k) if k as usize <= MAX_TOP_LOGPROBS => Ok(Some(k as usize)),
            _ => Err(invalid(format!("'logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"))),
        },
        _ => Err(invalid("'logprobs' must be an integer (the alternatives per token)")),
    }
}

/// Fields of OpenAI's API that tandem does not implement: a request that sets one to
/// anything but its neutral value is answered 400 with the field's name, never served as
/// if the field were absent. (`user`, `store`, `metadata`, `service_tier` change nothing
/// about the answer and are accepted.)
pub fn refuse_unsupported(body: &Value, chat: bool) -> Result<(), ApiError> {
    let unset = |name: &str| body.get(name).map_or(true, Value::is_null);
    let refuse = |name: &str, why: &str| Err(ApiError::bad("unsupported_field", format!("'{name}' is not supported: {why}")));
    if chat {
        for name in ["audio", "prediction", "web_search_options"] {
            if !unset(name) {
                return refuse(name, "tandem serves text generation only");
            }
        }
        if !unset("functions") || !unset("function_call") {
            return refuse(if unset("functions") { "function_call" } else { "functions" }, "use 'tools' and 'tool_choice'");
        }
        match body.get("modalities") {
            None | Some(Value::Null) => {}
            Some(Value::Array(m)) if m.iter().all(|x| x == "text") => {}
            Some(_) => return refuse("modalities", "only [\"text\"] is served"),
        }
    } else {
        match body.get("echo") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => return refuse("echo", "the prompt is not repeated in the answer"),
        }
        match body.get("best_of") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64() == Some(1) => {}
            Some(_) => return refuse("best_of", "use 'n' for several choices"),
        }
        if body.get("suffix").is_some_and(|v| !v.is_null() && v != "") {
            return refuse("suffix", "fill-in-the-middle is not served");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn logit_bias_forms() {
        let mut got = logit_bias(&json!({"5": -100, " 7": 2.5}), 10).unwrap();
        got.sort_by_key(|b| b.0);
        assert_eq!(got, vec![(5, -100.0), (7, 2.5)]);
        assert_eq!(logit_bias(&json!([[3, false], [4, 1]]), 10).unwrap(), vec![(3, f32::NEG_INFINITY), (4, 1.0)]);
        assert!(logit_bias(&json!({"10": 1}), 10).is_err());
        assert!(logit_bias(&json!({"a": 1}), 10).is_err());
        assert!(logit_bias(&json!({"1": 101}), 10).is_err());
        assert!(logit_bias(&json!([[1]]), 10).is_err());
        assert!(logit_bias(&json!("x"), 10).is_err());
        assert!(logit_bias(&Value::Null, 10).unwrap().is_empty());
    }

    #[test]
    fn logprob_fields() {
        assert_eq!(chat_logprobs(&json!(true), Some(3)).unwrap(), Some(3));
        assert_eq!(chat_logprobs(&json!(true), None).unwrap(), Some(0));
        assert_eq!(chat_logprobs(&Value::Null, None).unwrap(), None);
        assert!(chat_logprobs(&json!(false), Some(2)).is_err());
        assert!(chat_logprobs(&json!(true), Some(21)).is_err());
        assert!(chat_logprobs(&json!(1), None).is_err());
        assert_eq!(completion_logprobs(&json!(2)).unwrap(), Some(2));
        assert!(completion_logprobs(&json!(-1)).is_err());
        assert!(completion_logprobs(&json!(true)).is_err());
    }

    #[test]
    fn unsupported_fields_are_named() {
        assert!(refuse_unsupported(&json!({"user": "x", "store": false, "response_format": {"type": "json_object"}}), true).is_ok());
        for (body, chat) in [
            (json!({"audio": {}}), true),
            (json!({"functions": []}), true),
            (json!({"modalities": ["text", "audio"]}), true),
            (json!({"echo": true}), false),
            (json!({"best_of": 2}), false),
            (json!({"suffix": "x"}), false),
        ] {
            let e = refuse_unsupported(&body, chat).unwrap_err();
            let name = body.as_object().unwrap().keys().next().unwrap().clone();
            assert!(e.message.contains(&format!("'{name}'")), "{}", e.message);
        }
    }
}
