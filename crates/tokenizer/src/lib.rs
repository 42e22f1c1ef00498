//! Tokenizers built from GGUF metadata, producing exactly llama.cpp's token ids.
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE, pre-tokenizer chosen by
//!   `tokenizer.ggml.pre` (most of llama.cpp's table; see `pre_table.rs`).
//! * `"llama"`: SentencePiece-style merging by score with `<0xXX>` byte fallback
//!   (Llama 2, Mistral, Gemma, Phi-3).
//! * `"gemma4"`: SentencePiece-style BPE (merges on raw UTF-8, `<0xXX>` fallback).
//!
//! Build with [`Tokenizer::from_gguf`], or from plain data with
//! [`Tokenizer::from_vocab`] and a hand-made [`Vocab`].
//!
//! Where llama.cpp has a choice we follow it:
//! * a missing/empty `tokenizer.ggml.pre` means "default" (with a warning in
//!   [`Tokenizer::warnings`]); an unknown one is an error, as in llama.cpp;
//! * out-of-range special-token ids in metadata keep the default id (warning);
//! * EOT/EOM/FIM ids not in metadata are found by token text; where several
//!   texts match we take the lowest id (llama.cpp: hash-map order);
//! * duplicate token texts are an error (llama.cpp aborts);
//! * where llama.cpp would assert or throw while tokenizing (no BOS id but
//!   add_bos, no byte token for a byte) we skip the token / use the unknown id.

mod bpe;
mod decode;
mod gguf_meta;
mod pre_table;
mod pretokenize;
mod special;
mod spm;
mod stdsort;
mod unicode;
mod unicode_data;
mod vocab;

pub use decode::StreamDecoder;
pub use vocab::{attr, token_type, Vocab};

use special::{Fragment, SpecialMatcher};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("missing metadata key '{0}'")]
    MissingKey(&'static str),
    #[error("metadata key '{key}' has the wrong type (expected {expected})")]
    WrongType { key: &'static str, expected: &'static str },
    #[error("unknown tokenizer model '{0}' (tokenizer.ggml.model)")]
    UnknownModel(String),
    #[error("tokenizer model '{0}' is known to llama.cpp but not supported here (supported: gpt2, llama, gemma4)")]
    UnsupportedModel(String),
    #[error("unknown pre-tokenizer type '{pre}' (tokenizer.ggml.pre){}", if *.known_to_llama_cpp { "; llama.cpp knows it but it is not implemented here" } else { "; llama.cpp rejects it too" })]
    UnknownPreTokenizer { pre: String, known_to_llama_cpp: bool },
    #[error("'{key}' has {len} entries but there are {n_tokens} tokens")]
    LengthMismatch { key: &'static str, len: usize, n_tokens: usize },
    #[error("token text {text:?} appears twice (ids {first} and {second})")]
    DuplicateToken { text: String, first: u32, second: u32 },
    #[error("invalid vocabulary: {0}")]
    Invalid(String),
}

/// FNV-1a: token-string and pair lookups dominate tokenizing; SipHash is slower
/// and hash flooding is not a concern for vocabularies.
#[derive(Default)]
pub(crate) struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Spm,
    Bpe,
}

#[derive(Clone, Debug)]
pub(crate) struct TokenData {
    pub text: String,
    pub score: f32,
    pub attr: u16,
}

/// A tokenizer: text to token ids and back, identical to llama.cpp's.
/// Cheap to share: it is `Send + Sync` and never mutated after building.
#[derive(Clone)]
pub struct Tokenizer {
    kind: Kind,
    pre: Option<pretokenize::PreTokenizer>,
    byte_encode: bool,
    escape_whitespaces: bool,
    ignore_merges: bool,
    newline_words: bool,
    clean_spaces: bool,
    add_space_prefix: bool,
    add_bos: bool,
    add_eos: bool,
    tokens: Vec<TokenData>,
    token_to_id: FastMap<String, u32>,
    /// "left right" -> rank.
    merges: FastMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    sep: Option<u32>,
    pad: Option<u32>,
    mask: Option<u32>,
    /// pre, suf, mid, pad, rep, sep.
    fim: [Option<u32>; 6],
    /// Sorted end-of-generation ids.
    eog: Vec<u32>,
    /// Special-token cache (control, user-defined, unknown), longest text first.
    special: Vec<u32>,
    matcher: SpecialMatcher,
    pre_name: Option<&'static str>,
    warnings: Vec<String>,
}

impl Tokenizer {
    /// Build from GGUF metadata (the file may be vocab-only: no tensors).
    pub fn from_gguf(file: &gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_vocab(Vocab::from_gguf(file)?)
    }

    /// llama.cpp's `llama_tokenize(text, add_special, parse_special)`.
    ///
    /// `add_special` adds BOS/EOS where the vocabulary asks for them;
    /// `parse_special` matches control-token text in `text` as those tokens
    /// (user-defined tokens are always matched).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_with(text, add_special, parse_special, true)
    }

    /// Text that continues an output already under way (a grammar's next bytes, the rest of
    /// a generation): as [`Tokenizer::encode`] without BOS/EOS and without the space a
    /// SentencePiece vocabulary puts before a text's start (or after a control token).
    pub fn encode_continuation(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.encode_with(text, false, parse_special, false)
    }

    fn encode_with(&self, text: &str, add_special: bool, parse_special: bool, space_prefix: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let frags = if text.is_empty() { Vec::new() } else { self.partition(text, parse_special) };
        if add_special && self.add_bos {
            // llama.cpp asserts a BOS id exists here; we add none if there is none.
            out.extend(self.bos);
        }
        let mut prev_special = true;
        let mut buf = String::new();
        for f in frags {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(off, len) => {
                    let piece = &text[off..off + len];
                    buf.clear();
                    match self.kind {
                        Kind::Spm => {
                            if space_prefix && self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(piece);
                            let escaped = buf.replace(' ', "\u{2581}");
                            self.spm_tokenize(&escaped, &mut out);
                        }
                        Kind::Bpe if self.escape_whitespaces => self.bpe_tokenize(&piece.replace(' ', "\u{2581}"), &mut out),
                        Kind::Bpe => self.bpe_tokenize(piece, &mut out),
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    /// Beginning-of-sequence id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    /// End-of-sequence id.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// End of turn (from metadata, else detected by text like llama.cpp).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    /// End of message (tool calls), from metadata or `<|eom_id|>`.
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }
    /// Unknown-token id.
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }
    /// Padding id.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }
    /// Separator id.
    pub fn sep(&self) -> Option<u32> {
        self.sep
    }
    /// Mask id.
    pub fn mask(&self) -> Option<u32> {
        self.mask
    }
    /// Fill-in-the-middle ids: prefix, suffix, middle, pad, repo, file separator.
    pub fn fim(&self) -> [Option<u32>; 6] {
        self.fim
    }
    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    /// Whether the vocabulary prefixes text with a space (SentencePiece).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }
    /// Whether generating `id` ends generation (EOS, EOT, EOM, `<|im_end|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }
    /// Control tokens (not rendered by `token_to_piece(id, false)`).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_attr(id) & attr::CONTROL != 0
    }
    /// llama.cpp's attribute bits of a token (see [`attr`]); 0 when out of range.
    pub fn token_attr(&self, id: u32) -> u16 {
        self.tokens.get(id as usize).map_or(0, |t| t.attr)
    }
    /// The raw vocabulary string of a token.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }
    /// The id of a vocabulary string.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }
    /// SentencePiece score of a token.
    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.tokens.get(id as usize).map(|t| t.score)
    }
    /// "spm" or "bpe".
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Spm => "spm",
            Kind::Bpe => "bpe",
        }
    }
    /// The pre-tokenizer in use (llama.cpp's pre-type name), for BPE vocabularies.
    pub fn pre_tokenizer(&self) -> Option<&'static str> {
        self.pre_name
    }
    /// Ids of the tokens matched in raw input (control, user-defined, unknown),
    /// in llama.cpp's order: longest text first.
    pub fn special_tokens(&self) -> &[u32] {
        &self.special
    }
    /// Things llama.cpp would log as warnings while loading this vocabulary.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("pre", &self.pre_name)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// Test support: (token, merge) pairs making every 2- and 3-digit string a
/// token, used to make pre-tokenizers' digit grouping visible in variant tests.
#[doc(hidden)]
pub fn digit_merges() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in 0..10 {
        for b in 0..10 {
            out.push((format!("{a}{b}"), format!("{a} {b}")));
        }
    }
    for ab in 0..100 {
        for c in 0..10 {
            out.push((format!("{ab:02}{c}"), format!("{ab:02} {c}")));
        }
    }
    out
}

#[cfg(test)]
mod tests;
