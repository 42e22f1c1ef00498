//! Structured output: OpenAI's `response_format` (`json_object`, `json_schema`) and
//! llama-server's `json_schema` and `grammar` fields, enforced while sampling: only tokens
//! that keep the answer inside the schema or grammar can be drawn ([`constrain`]).
//!
//! `json_object` asks for a JSON object (OpenAI's JSON mode; llama-server also takes a
//! `schema` inside it). `grammar` is llama.cpp's GBNF, or llguidance's Lark syntax when it
//! starts with `%llguidance`, as llama.cpp reads it.

use crate::api::ApiError;
use constrain::{Grammars, Spec, Trigger};
use engine::generate::TokenConstraint;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use tokenizer::Tokenizer;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::bad("invalid_value", msg)
}

/// What the request constrains its output to, if anything; more than one way is an error.
pub fn spec(body: &Value) -> Result<Option<Spec>, ApiError> {
    let mut found: Vec<(&str, Spec)> = Vec::new();
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(f) => match f.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                let schema = f.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"}));
                found.push(("response_format", Spec::JsonSchema(schema)));
            }
            Some("json_schema") => {
                let schema = f
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .ok_or_else(|| invalid("'response_format.json_schema.schema' is required for type json_schema"))?;
                found.push(("response_format", Spec::JsonSchema(schema.clone())));
            }
            _ => return Err(invalid("'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"")),
        },
    }
    match body.get("json_schema") {
        None | Some(Value::Null) => {}
        Some(s @ (Value::Object(_) | Value::Bool(_))) => found.push(("json_schema", Spec::JsonSchema(s.clone()))),
        Some(_) => return Err(invalid("'json_schema' must be a JSON schema object")),
    }
    match body.get("grammar") {
        None | Some(Value::Null) => {}
        Some(Value::String(g)) if g.trim().is_empty() => {}
        Some(Value::String(g)) => match g.trim_start().strip_prefix("%llguidance") {
            Some(rest) => found.push(("grammar", Spec::Lark(rest.split_once('\n').map_or("", |r| r.1).to_string()))),
            None => found.push(("grammar", Spec::Gbnf(g.clone()))),
        },
        Some(_) => return Err(invalid("'grammar' must be a string (GBNF)")),
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|f| f.1)),
        _ => Err(invalid(format!("give one of {}, not several", found.iter().map(|f| format!("'{}'", f.0)).collect::<Vec<_>>().join(", ")))),
    }
}

/// The vocabulary index for the server's tokenizer, built on the first structured request.
pub struct Index {
    cell: OnceLock<Result<Arc<Grammars>, String>>,
}

impl Index {
    /// Not built yet.
    pub fn new() -> Self {
        Index { cell: OnceLock::new() }
    }

    /// `n` fresh constraints for `spec` (one per choice), holding from `lazy`'s trigger on
    /// when given; an invalid schema or grammar is a 400.
    pub fn compile(&self, tok: &Arc<Tokenizer>, spec: &Spec, lazy: Option<&Trigger>, n: usize) -> Result<Vec<Box<dyn TokenConstraint>>, ApiError> {
        let grammars = self.cell.get_or_init(|| Grammars::new(tok.clone()).map(Arc::new));
        let grammars = grammars.as_ref().map_err(|e| invalid(format!("structured output is unavailable for this vocabulary: {e}")))?;
        (0..n)
            .map(|_| {
                match lazy {
                    None => grammars.compile(spec).map(|c| Box::new(c) as Box<dyn TokenConstraint>),
                    Some(t) => grammars.compile_lazy(spec, t.clone()).map(|c| Box::new(c) as Box<dyn TokenConstraint>),
                }
                    .map_err(|e| ApiError::bad("invalid_grammar", format!("invalid schema or grammar: {e}")))
            })
            .collect()
    }
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_give_one_spec() {
        assert!(spec(&json!({})).unwrap().is_none());
        assert!(spec(&json!({"response_format": {"type": "text"}})).unwrap().is_none());
        assert!(matches!(spec(&json!({"response_format": {"type": "json_object"}})).unwrap(), Some(Spec::JsonSchema(s)) if s == json!({"type": "object"})));
        let s = json!({"type": "integer"});
        let f = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": true, "schema": s}}});
        assert!(matches!(spec(&f).unwrap(), Some(Spec::JsonSchema(x)) if x == s));
        assert!(matches!(spec(&json!({"json_schema": s})).unwrap(), Some(Spec::JsonSchema(_))));
        assert!(matches!(spec(&json!({"grammar": "root ::= \"a\""})).unwrap(), Some(Spec::Gbnf(_))));
        assert!(matches!(spec(&json!({"grammar": "%llguidance {}\nstart: \"a\""})).unwrap(), Some(Spec::Lark(l)) if l == "start: \"a\""));
        assert!(spec(&json!({"response_format": {"type": "json_schema"}})).is_err());
        assert!(spec(&json!({"response_format": {"type": "yaml"}})).is_err());
        assert!(spec(&json!({"grammar": 3})).is_err());
        assert!(spec(&json!({"json_schema": s, "grammar": "root ::= \"a\""})).is_err());
    }
}
