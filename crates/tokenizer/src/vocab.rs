//! The plain-data description of a vocabulary (`Vocab`), and turning it into a
//! `Tokenizer` with llama.cpp's load-time rules (llama_vocab::impl::load): default
//! special ids per model type, flag defaults per pre-tokenizer, EOT/EOG detection
//! by token text, token attributes.

use crate::pre_table::{self, PreConfig};
use crate::pretokenize::PreTokenizer;
use crate::special::SpecialMatcher;
use crate::{FastMap, Kind, TokenData, Tokenizer, TokenizerError};

/// Token attributes (llama.cpp's `llama_token_attr` bits).
pub mod attr {
    pub const UNDEFINED: u16 = 0;
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// `tokenizer.ggml.token_type` values.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Everything a tokenizer is built from, as plain data: `Tokenizer::from_gguf`
/// only copies metadata in here; tests build small ones by hand. `None` means
/// "absent from the metadata" (llama.cpp's defaults then apply).
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    /// `tokenizer.ggml.model`: "llama" (SentencePiece), "gpt2" (byte-level BPE), "gemma4".
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priority).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (see [`token_type`]).
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: "left right" lines, highest priority first.
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `general.name` (llama.cpp sets per-token attributes for Phi-3 by name).
    pub model_name: Option<String>,
    /// `general.architecture`.
    pub architecture: Option<String>,
}

/// Token texts llama.cpp treats as end-of-turn (first match becomes the EOT id).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
    "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"];
const FIM_SUF_TEXTS: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"];
const FIM_MID_TEXTS: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Token texts that end generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>",
    "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
];

fn attr_of_type(t: i32) -> u16 {
    match t {
        token_type::NORMAL => attr::NORMAL,
        token_type::UNKNOWN => attr::UNKNOWN,
        token_type::CONTROL => attr::CONTROL,
        token_type::USER_DEFINED => attr::USER_DEFINED,
        token_type::UNUSED => attr::UNUSED,
        token_type::BYTE => attr::BYTE,
        _ => attr::UNDEFINED,
    }
}

struct Defaults {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
}

impl Tokenizer {
    /// Build a tokenizer from plain vocabulary data (see [`Vocab`]).
    pub fn from_vocab(v: Vocab) -> Result<Tokenizer, TokenizerError> {
        let mut warnings = Vec::new();
        let n = v.tokens.len();

        // Model type: defaults for special ids and flags.
        let (kind, defaults, cfg) = match v.model.as_str() {
            "llama" => (Kind::Spm, Defaults { bos: Some(1), eos: Some(2), unk: Some(0) }, None),
            "gpt2" | "gemma4" => {
                let pre = if v.model == "gemma4" { Some("gemma4") } else { v.pre.as_deref() };
                let cfg = match pre {
                    None | Some("") => {
                        warnings.push("missing pre-tokenizer type, using 'default' (generation quality will be degraded)".into());
                        pre_table::lookup("default").unwrap()
                    }
                    Some(p) => pre_table::lookup(p).ok_or_else(|| TokenizerError::UnknownPreTokenizer {
                        pre: p.to_string(),
                        known_to_llama_cpp: pre_table::known_unsupported(p),
                    })?,
                };
                let d = if v.model == "gemma4" {
                    Defaults { bos: None, eos: None, unk: None }
                } else {
                    Defaults { bos: if cfg.no_bos { None } else { Some(11) }, eos: Some(11), unk: None }
                };
                (Kind::Bpe, d, Some(cfg))
            }
            "bert" | "t5" | "rwkv" | "plamo2" | "hybriddna" | "whitespace" | "no_vocab" | "none" | "test" => {
                return Err(TokenizerError::UnsupportedModel(v.model.clone()))
            }
            other => return Err(TokenizerError::UnknownModel(other.to_string())),
        };
        if n == 0 {
            return Err(TokenizerError::MissingKey("tokenizer.ggml.tokens"));
        }
        if n > i32::MAX as usize {
            return Err(TokenizerError::Invalid(format!("{n} tokens is more than llama.cpp's token ids can hold")));
        }

        let spm_cfg = PreConfig { clean_spaces: false, add_bos: true, ..pre_table::lookup("default").unwrap() };
        let cfg_ref = cfg.as_ref().unwrap_or(&spm_cfg);
        let mut add_space_prefix = kind == Kind::Spm;
        if let Some(b) = v.add_space_prefix {
            add_space_prefix = b;
        }

        if let Some(s) = &v.scores {
            if s.len() < n {
                return Err(TokenizerError::LengthMismatch { key: "tokenizer.ggml.scores", len: s.len(), n_tokens: n });
            }
        }
        if let Some(t) = &v.token_types {
            if t.len() < n {
                return Err(TokenizerError::LengthMismatch { key: "tokenizer.ggml.token_type", len: t.len(), n_tokens: n });
            }
        }

        let mut tokens = Vec::with_capacity(n);
        let mut token_to_id = FastMap::with_capacity_and_hasher(n, Default::default());
        for (i, text) in v.tokens.into_iter().enumerate() {
            let text = if text.is_empty() {
                warnings.push(format!("empty token at index {i}"));
                format!("[EMPTY_{i}]")
            } else {
                text
            };
            if let Some(prev) = token_to_id.insert(text.clone(), i as u32) {
                return Err(TokenizerError::DuplicateToken { text, first: prev, second: i as u32 });
            }
            let score = v.scores.as_ref().map_or(0.0, |s| s[i]);
            let attr = v.token_types.as_ref().map_or(attr::NORMAL, |t| attr_of_type(t[i]));
            tokens.push(TokenData { text, score, attr });
        }

        let mut merges = FastMap::default();
        if kind == Kind::Bpe {
            let lines = v.merges.ok_or(TokenizerError::MissingKey("tokenizer.ggml.merges"))?;
            merges.reserve(lines.len());
            for (rank, line) in lines.into_iter().enumerate() {
                // llama.cpp splits at the first space after the first byte; a line
                // without one becomes the never-matching pair ("", "").
                let key = match line.bytes().skip(1).position(|b| b == b' ') {
                    Some(_) => line,
                    None => {
                        warnings.push(format!("merge {rank} has no separating space: {line:?}"));
                        " ".to_string()
                    }
                };
                merges.entry(key).or_insert(rank as u32);
            }
        }

        // Special ids: defaults (dropped when out of range), then metadata.
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let mut pick = |name: &str, default: Option<u32>, meta: Option<u32>| -> Option<u32> {
            let mut id = in_range(default);
            if let Some(m) = meta {
                if (m as usize) < n {
                    id = Some(m);
                } else {
                    warnings.push(format!("bad special token: '{name}' = {m}, using default id {id:?}"));
                }
            }
            id
        };
        let bos = pick("bos", defaults.bos, v.bos);
        let eos = pick("eos", defaults.eos, v.eos);
        let mut eot = pick("eot", None, v.eot);
        let mut eom = pick("eom", None, v.eom);
        let unk = pick("unk", defaults.unk, v.unk);
        let sep = pick("sep", None, v.sep);
        let pad = pick("pad", None, v.pad);
        let mask = pick("mask", None, v.mask);
        let mut fim = [
            pick("fim_pre", None, v.fim_pre),
            pick("fim_suf", None, v.fim_suf),
            pick("fim_mid", None, v.fim_mid),
            pick("fim_pad", None, v.fim_pad),
            pick("fim_rep", None, v.fim_rep),
            pick("fim_sep", None, v.fim_sep),
        ];

        let mut add_bos = cfg_ref.add_bos;
        let mut add_eos = false;
        if let Some(b) = v.add_bos {
            add_bos = b;
        }
        if let Some(b) = v.add_eos {
            add_eos = b;
        }
        if cfg_ref.newline_words && !add_bos {
            add_bos = true; // llama.cpp's Gemma 4 workaround
        }

        // Detect EOT/EOM/FIM ids by text. llama.cpp takes the first match in hash
        // map order; we take the lowest id (same for every model we know of).
        let find = |texts: &[&str]| texts.iter().filter_map(|t| token_to_id.get(*t).copied()).min();
        let mark_control = |id: u32, tokens: &mut Vec<TokenData>| tokens[id as usize].attr |= attr::CONTROL;
        for (slot, texts) in [(&mut eot, EOT_TEXTS), (&mut eom, EOM_TEXTS)] {
            if slot.is_none() {
                *slot = find(texts);
                if let Some(id) = *slot {
                    mark_control(id, &mut tokens);
                }
            }
        }
        let fim_texts = [FIM_PRE_TEXTS, FIM_SUF_TEXTS, FIM_MID_TEXTS, FIM_PAD_TEXTS, FIM_REP_TEXTS, FIM_SEP_TEXTS];
        for (slot, texts) in fim.iter_mut().zip(fim_texts) {
            if slot.is_none() {
                *slot = find(texts);
                if let Some(id) = *slot {
                    mark_control(id, &mut tokens);
                }
            }
        }

        // Control tokens named "...unused..." are unused.
        for t in tokens.iter_mut() {
            if t.attr & attr::CONTROL != 0 && t.text.contains("unused") {
                t.attr |= attr::UNUSED;
            }
        }

        // End-of-generation set.
        let mut eog: Vec<u32> = fim[3..].iter().flatten().copied().collect();
        for text in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*text) {
                eog.push(id);
                mark_control(id, &mut tokens);
            }
        }
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_to_id.get(text) {
                tokens[id as usize].attr = attr::USER_DEFINED; // gpt-oss: always rendered
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        fn has(tokens: &[TokenData], eog: &[u32], t: &str) -> Option<u32> {
            eog.iter().find(|&&id| tokens[id as usize].text == t).copied()
        }
        // gpt-oss / solar-open: "<|end|>" ends a message, not the generation.
        if let Some(end) = has(&tokens, &eog, "<|end|>") {
            let ret = has(&tokens, &eog, "<|return|>").is_some();
            let call = has(&tokens, &eog, "<|call|>").or(has(&tokens, &eog, "<|calls|>")).is_some();
            let flush = has(&tokens, &eog, "<|flush|>").is_some();
            if call && (ret || flush) {
                eog.retain(|&id| id != end);
                tokens[end as usize].attr = attr::USER_DEFINED;
            }
        }
        // gemma4 / plamo: "</s>" is an ordinary token there.
        if let Some(s) = has(&tokens, &eog, "</s>") {
            if has(&tokens, &eog, "<|tool_response>").is_some() || has(&tokens, &eog, "<|plamo:eos|>").is_some() {
                eog.retain(|&id| id != s);
                tokens[s as usize].attr = attr::NORMAL;
            }
        }

        // Tokens matched in raw text before tokenizing, longest first.
        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&id| tokens[id as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
            .collect();
        // Not stable: ties keep the order GCC's std::sort gives them in llama.cpp.
        crate::stdsort::sort(&mut special, &|&a, &b| tokens[a as usize].text.len() > tokens[b as usize].text.len());

        // Per-model attributes llama.cpp sets by name.
        let name = v.model_name.as_deref().unwrap_or("").to_lowercase();
        let pre_name = v.pre.as_deref().unwrap_or("");
        let arch = v.architecture.as_deref().unwrap_or("");
        let set = |tokens: &mut Vec<TokenData>, text: &str, bit: u16, on: bool| {
            if let Some(&id) = token_to_id.get(text) {
                let a = &mut tokens[id as usize].attr;
                *a = if on { *a | bit } else { *a & !bit };
            }
        };
        let any = |s: &str, subs: &[&str]| subs.iter().any(|x| s.contains(x));
        if any(pre_name, &["jina-v2-de", "jina-v2-es", "jina-v2-code", "mmbert"]) || any(arch, &["nomic-bert-moe", "jina-bert-v3"]) {
            set(&mut tokens, "<mask>", attr::LSTRIP, true);
        } else if any(&name, &["phi-3", "phi3"]) {
            for &id in &special {
                tokens[id as usize].attr |= attr::RSTRIP;
            }
            set(&mut tokens, "</s>", attr::RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(&mut tokens, t, attr::RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            set(&mut tokens, "[MASK]", attr::LSTRIP, true);
        }

        let pre = match &cfg {
            Some(c) => Some(PreTokenizer::new(c.exprs).map_err(|e| TokenizerError::Invalid(format!("pre-tokenizer '{}': {e}", c.kind)))?),
            None => None,
        };
        let matcher = SpecialMatcher::new(&tokens, &special);
        Ok(Tokenizer {
            kind,
            pre,
            byte_encode: cfg_ref.byte_encode,
            escape_whitespaces: cfg_ref.escape_whitespaces,
            ignore_merges: cfg_ref.ignore_merges,
            newline_words: cfg_ref.newline_words,
            clean_spaces: cfg_ref.clean_spaces,
            add_space_prefix,
            add_bos,
            add_eos,
            tokens,
            token_to_id,
            merges,
            bos,
            eos,
            eot,
            eom,
            unk,
            sep,
            pad,
            mask,
            fim,
            eog,
            special,
            matcher,
            pre_name: cfg.map(|c| c.kind),
            warnings,
        })
    }
}
