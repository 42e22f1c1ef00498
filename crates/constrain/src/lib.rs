//! Constrained decoding: the output must follow a JSON schema or a grammar, so only tokens
//! that keep it on track may be sampled ([`engine::generate::TokenConstraint`]).
//!
//! The grammar engine is llguidance, the Rust library llama.cpp itself can build with: it
//! compiles JSON Schema (with `$ref`s) and Lark-like grammars directly and computes each
//! step's allowed tokens from a trie of the vocabulary, typically in tens of microseconds,
//! which a hand-written matcher would take long to equal. llama.cpp's own GBNF is
//! translated to its Lark syntax ([`gbnf`]).

pub mod gbnf;
mod lazy;

pub use lazy::{Lazy, Trigger};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;
use tokenizer::Tokenizer;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

/// What the output must follow.
#[derive(Debug, Clone)]
pub enum Spec {
    /// A JSON schema (`{}` accepts any JSON value).
    JsonSchema(serde_json::Value),
    /// llguidance's Lark-like grammar.
    Lark(String),
    /// llama.cpp's GBNF grammar.
    Gbnf(String),
}

/// The vocabulary as llguidance sees it.
struct Vocabulary {
    trie: TokTrie,
    tok: Arc<Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Bytes the grammar forces continue the output: no SentencePiece space prefix.
        self.tok.encode_continuation(&String::from_utf8_lossy(s), false)
    }
}

/// Compiles specs for one tokenizer (building its trie once).
pub struct Grammars {
    factory: ParserFactory,
    eog: Arc<[u32]>,
    tok: Arc<Tokenizer>,
}

impl Grammars {
    /// Index the tokenizer's vocabulary: each token's bytes; control tokens marked as
    /// special, so a grammar never produces them as text.
    pub fn new(tok: Arc<Tokenizer>) -> Result<Self, String> {
        let n = tok.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let piece = tok.token_to_piece(id, true);
                if tok.is_control(id) || tok.is_eog(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(&piece);
                    w
                } else {
                    piece
                }
            })
            .collect();
        let eos = tok.eos().or_else(|| tok.eog_ids().first().copied()).ok_or("the vocabulary has no end-of-generation token")?;
        let info = TokRxInfo {
            vocab_size: n as u32,
            tok_eos: eos,
            tok_bos: tok.bos(),
            tok_pad: tok.pad(),
            tok_unk: tok.unk(),
            tok_end_of_turn: tok.eot(),
        };
        let trie = TokTrie::from(&info, &words);
        let eog: Arc<[u32]> = tok.eog_ids().into();
        let env: TokEnv = Arc::new(Vocabulary { trie, tok: tok.clone() });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        // Warnings and errors come back as values, not on stderr.
        factory.set_stderr_log_level(0);
        Ok(Grammars { factory, eog, tok })
    }

    /// A fresh constraint for one generation; an invalid schema or grammar is an error
    /// naming what is wrong.
    pub fn compile(&self, spec: &Spec) -> Result<Constraint, String> {
        let grammar = match spec {
            Spec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_layout(schema)),
            Spec::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
            Spec::Gbnf(text) => TopLevelGrammar::from_lark(gbnf::to_lark(text)?),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Constraint { matcher, eog: self.eog.clone() })
    }

    /// A constraint that lets the model write freely until `trigger` appears in its output,
    /// and from there holds it to `spec`, which must accept the trigger as its beginning
    /// (llama.cpp's lazy grammars: a tool call's markup when the model may also answer in
    /// text).
    pub fn compile_lazy(&self, spec: &Spec, trigger: Trigger) -> Result<Lazy, String> {
        Ok(Lazy::new(self.compile(spec)?, self.tok.clone(), trigger))
    }
}

/// JSON laid out as `{"a": 1, "b": [2, 3]}`: no whitespace beyond the separators' single
/// spaces, unless the schema says otherwise (llguidance's `x-guidance` options). Free
/// whitespace lets a model spin on blank lines without ever closing the object.
fn with_layout(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(m) = schema.as_object_mut() {
        m.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": false, "key_separator": ": ", "item_separator": ", "}));
    }
    schema
}

/// One generation's constraint.
pub struct Constraint {
    matcher: Matcher,
    eog: Arc<[u32]>,
}

impl Constraint {
    /// Move past `tokens` at once; false (and the constraint is spent) when the grammar
    /// does not take all of them.
    fn consume_all(&mut self, tokens: &[u32]) -> bool {
        matches!(self.matcher.try_consume_tokens(tokens), Ok(n) if n == tokens.len())
    }
}

impl engine::generate::TokenConstraint for Constraint {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| e.to_string())?;
        // Where the output may end, any end-of-generation token may end it (a chat model
        // ends its turn with its own, which need not be the vocabulary's EOS).
        let may_end = self.eog.iter().any(|&t| allowed.is_allowed(t));
        let mut any = false;
        for (t, l) in logits.iter_mut().enumerate() {
            let ok = allowed.is_allowed(t as u32) || (may_end && self.eog.contains(&(t as u32)));
            if ok {
                any |= l.is_finite() || *l == f32::INFINITY;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if any {
            Ok(())
        } else {
            Err("no token may follow".into())
        }
    }

    fn accept(&mut self, token: u32) -> Result<(), String> {
        if self.eog.contains(&token) {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}
