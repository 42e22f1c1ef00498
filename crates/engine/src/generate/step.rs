//! One request's per-token decisions: sample, then stop (end of generation, stop string,
//! token limit, full context) or go on, with text streamed only once it is final.

use super::stop::StopMatcher;
use super::StopReason;
use crate::kv_cache::KvCache;
use crate::sampler::Sampler;
use tokenizer::{StreamDecoder, Tokenizer};

/// When a generation ends, besides a full context.
#[derive(Debug, Clone, Default)]
pub struct StopRules {
    /// Most tokens to generate (None: until end of generation or a full context).
    pub max_tokens: Option<usize>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Stop strings: generation ends where one appears, and it is not streamed.
    pub stop: Vec<String>,
}

/// What to do after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stream `text` (possibly empty: held back until it is final), run `token` through the
    /// model and step again with its logits.
    Continue {
        /// The sampled token.
        token: u32,
        /// Text now final.
        text: String,
    },
    /// Generation ended: stream `text`, the last of it.
    Done {
        /// Why.
        reason: StopReason,
        /// The rest of the text.
        text: String,
    },
}

/// Limits which tokens may come next: a grammar or JSON schema the output must follow.
pub trait TokenConstraint: Send {
    /// Set the logits of the tokens that may not come next to -inf (an error when none may).
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String>;
    /// Move past the sampled token.
    fn accept(&mut self, token: u32) -> Result<(), String>;
    /// True when the output is complete and nothing may follow.
    fn is_complete(&self) -> bool;
}

/// A generation's state between forward passes: sampler, stop rules, the detokenizer
/// holding back incomplete characters and the stop-string matcher holding back text
/// that may begin a stop string.
pub struct Generation<'t> {
    tok: &'t Tokenizer,
    sampler: Sampler,
    rules: StopRules,
    decoder: StreamDecoder<'t>,
    stop: StopMatcher,
    tokens: Vec<u32>,
    constraint: Option<Box<dyn TokenConstraint>>,
    constraint_error: Option<String>,
}

impl<'t> Generation<'t> {
    /// A generation sampling with `sampler` (its state carries on from earlier use) and ending by `rules`.
    pub fn new(tok: &'t Tokenizer, sampler: Sampler, rules: StopRules) -> Self {
        let stop = StopMatcher::new(rules.stop.clone());
        Generation {
            tok,
            sampler,
            rules,
            decoder: StreamDecoder::new(tok),
            stop,
            tokens: Vec::new(),
            constraint: None,
            constraint_error: None,
        }
    }

    /// Sample only tokens `c` allows, and end when it is complete.
    pub fn with_constraint(mut self, c: Box<dyn TokenConstraint>) -> Self {
        self.constraint = Some(c);
        self
    }

    /// Render control tokens into the text (a tool call's markers, e.g. `[TOOL_CALLS]`,
    /// are control tokens in their families' vocabularies).
    pub fn render_special(mut self) -> Self {
        self.decoder = StreamDecoder::with_special(self.tok, true);
        self
    }

    /// Why the constraint failed, after [`StopReason::ConstraintFailed`].
    pub fn constraint_error(&self) -> Option<&str> {
        self.constraint_error.as_deref()
    }

    /// Record the prompt (the part not seen before) for the sampler's repeat penalty.
    pub fn accept_prompt(&mut self, prompt: &[u32]) {
        for &t in prompt {
            self.sampler.accept(t);
        }
    }

    /// Sample from `logits`, the last position's, of a sequence whose cache is `cache`, and decide.
    pub fn step(&mut self, logits: &[f32], cache: &KvCache) -> Step {
        if self.limit_reached() {
            return self.end(StopReason::Length, String::new());
        }
        let token = match self.constraint.as_mut() {
            None => self.sampler.sample(logits),
            Some(c) => {
                let mut masked = logits.to_vec();
                if let Err(e) = c.mask(&mut masked) {
                    return self.fail(e);
                }
                self.sampler.sample(&masked)
            }
        };
        if !self.rules.ignore_eos && self.tok.is_eog(token) {
            return self.end(StopReason::EndOfGeneration, String::new());
        }
        let mut complete = false;
        if let Some(c) = self.constraint.as_mut() {
            if let Err(e) = c.accept(token) {
                return self.fail(e);
            }
            complete = c.is_complete();
        }
        self.tokens.push(token);
        let piece = self.decoder.push(token);
        let (text, stopped) = self.stop.push(&piece);
        if stopped {
            // Whatever follows the stop string, held back or not, is dropped.
            return Step::Done { reason: StopReason::StopString, text };
        }
        if complete {
            return self.end(StopReason::EndOfGeneration, text);
        }
        if cache.len() >= cache.n_ctx() {
            return self.end(StopReason::ContextFull, text);
        }
        if self.limit_reached() {
            return self.end(StopReason::Length, text);
        }
        Step::Continue { token, text }
    }

    /// Tokens generated so far (the end-of-generation token is not one).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The sampler, to carry its state on to the next generation (a chat's next turn).
    pub fn into_sampler(self) -> Sampler {
        self.sampler
    }

    fn limit_reached(&self) -> bool {
        self.rules.max_tokens.is_some_and(|max| self.tokens.len() >= max)
    }

    fn fail(&mut self, why: String) -> Step {
        self.constraint_error = Some(why);
        Step::Done { reason: StopReason::ConstraintFailed, text: String::new() }
    }

    /// Finish with `text` plus everything held back, unless that completes a stop string.
    fn end(&mut self, mut reason: StopReason, mut text: String) -> Step {
        let rest = self.decoder.finish();
        let (more, stopped) = self.stop.push(&rest);
        text.push_str(&more);
        if stopped {
            reason = StopReason::StopString;
        } else {
            text.push_str(&self.stop.flush());
        }
        Step::Done { reason, text }
    }
}
