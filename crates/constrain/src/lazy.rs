//! Lazy constraints: free text until a trigger appears in the output, a grammar from there.
//!
//! With `tool_choice: "auto"` a model may answer in text or call a tool. Constraining the
//! whole answer would forbid the text; constraining nothing lets a small model write a
//! call that does not parse. As llama.cpp's lazy grammars do, the grammar engages when
//! the model writes the call's opening marker: the output from the marker on (re-encoded,
//! so a marker split across tokens or sharing a token with text before it still counts)
//! is fed to the grammar, and every later token must follow it.

use crate::Constraint;
use engine::generate::TokenConstraint;
use std::sync::Arc;
use tokenizer::Tokenizer;

/// Where a lazy constraint engages.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The text that begins the constrained part (control tokens written as their text).
    pub text: String,
    /// Engage only when nothing but whitespace comes before the trigger (Llama 3 writes a
    /// call as the whole answer, so a call after text is text).
    pub at_start_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Free text so far.
    Waiting,
    /// The trigger appeared: the grammar holds.
    Engaged,
    /// The trigger cannot come any more, or what followed it in the same token did not
    /// fit the grammar: the rest is free text (parsed as written).
    Free,
}

/// A grammar that holds from the trigger on (see the module's comment).
pub struct Lazy {
    inner: Constraint,
    tok: Arc<Tokenizer>,
    trigger: Trigger,
    /// The output so far, control tokens rendered, while waiting (searched only where it
    /// grew, so a long answer costs no more per token).
    seen: Vec<u8>,
    state: State,
}

impl Lazy {
    pub(crate) fn new(inner: Constraint, tok: Arc<Tokenizer>, trigger: Trigger) -> Self {
        Lazy { inner, tok, trigger, seen: Vec::new(), state: State::Waiting }
    }

    /// True once the trigger appeared and the grammar holds.
    pub fn engaged(&self) -> bool {
        self.state == State::Engaged
    }

    /// Look for the trigger in what `accept` just added (from byte `from` of the output);
    /// engage at it.
    fn look(&mut self, from: usize) {
        let t = self.trigger.text.as_bytes();
        let start = from.saturating_sub(t.len() - 1);
        let Some(at) = self.seen[start..].windows(t.len()).position(|w| w == t).map(|i| start + i) else {
            if self.trigger.at_start_only && !t.starts_with(trim_ascii_start(&self.seen)) {
                self.state = State::Free;
            }
            return;
        };
        let before = &self.seen[..at];
        if self.trigger.at_start_only && !before.iter().all(u8::is_ascii_whitespace) {
            self.state = State::Free;
            return;
        }
        // A marker written while reasoning (an open `<think>`) is not a call.
        if rfind(before, b"<think>") > rfind(before, b"</think>") {
            return;
        }
        let tokens = match std::str::from_utf8(&self.seen[at..]) {
            Ok(tail) => self.tok.encode_continuation(tail, true),
            // A character split across tokens: wait for its other bytes.
            Err(e) if e.error_len().is_none() => return,
            Err(_) => {
                self.state = State::Free;
                return;
            }
        };
        self.state = if self.inner.consume_all(&tokens) { State::Engaged } else { State::Free };
        self.seen = Vec::new();
    }
}

/// Where `needle` last occurs in `hay` (None sorts before every position).
fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn trim_ascii_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

impl TokenConstraint for Lazy {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        match self.state {
            State::Engaged => self.inner.mask(logits),
            State::Waiting | State::Free => Ok(()),
        }
    }

    fn accept(&mut self, token: u32) -> Result<(), String> {
        match self.state {
            State::Engaged => self.inner.accept(token),
            State::Free => Ok(()),
            State::Waiting => {
                let from = self.seen.len();
                self.seen.extend_from_slice(&self.tok.token_to_piece(token, true));
                self.look(from);
                Ok(())
            }
        }
    }

    fn is_complete(&self) -> bool {
        self.state == State::Engaged && self.inner.is_complete()
    }
}
