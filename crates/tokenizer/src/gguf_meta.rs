//! Copy the tokenizer keys of a GGUF file's metadata into a [`Vocab`].

use crate::{TokenizerError, Vocab};
use gguf::{Array, GgufFile, Value};

fn string_array(f: &GgufFile, key: &'static str) -> Result<Option<Vec<String>>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => match v.as_array().and_then(Array::as_strings) {
            Some(s) => Ok(Some(s.to_vec())),
            None => Err(TokenizerError::WrongType { key, expected: "array of strings" }),
        },
    }
}

fn id(f: &GgufFile, key: &'static str) -> Result<Option<u32>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_u32().map(Some).ok_or(TokenizerError::WrongType { key, expected: "unsigned 32-bit integer" }),
    }
}

fn flag(f: &GgufFile, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or(TokenizerError::WrongType { key, expected: "bool" }),
    }
}

fn string(f: &GgufFile, key: &'static str) -> Result<Option<String>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or(TokenizerError::WrongType { key, expected: "string" }),
    }
}

impl Vocab {
    /// Copy the tokenizer metadata of a GGUF file (checking only key types).
    pub fn from_gguf(f: &GgufFile) -> Result<Vocab, TokenizerError> {
        vocab_from_gguf(f)
    }
}

fn vocab_from_gguf(f: &GgufFile) -> Result<Vocab, TokenizerError> {
    let model = string(f, "tokenizer.ggml.model")?.ok_or(TokenizerError::MissingKey("tokenizer.ggml.model"))?;
    let tokens = string_array(f, "tokenizer.ggml.tokens")?.ok_or(TokenizerError::MissingKey("tokenizer.ggml.tokens"))?;
    // llama.cpp accepts f32 or i32 scores.
    let scores = match f.get("tokenizer.ggml.scores") {
        None => None,
        Some(Value::Array(Array::F32(s))) => Some(s.clone()),
        Some(Value::Array(Array::I32(s))) => Some(s.iter().map(|&x| x as f32).collect()),
        Some(_) => return Err(TokenizerError::WrongType { key: "tokenizer.ggml.scores", expected: "array of f32 or i32" }),
    };
    let token_types = match f.get("tokenizer.ggml.token_type") {
        None => None,
        Some(v) => match v.as_array().and_then(Array::as_i32s) {
            Some(t) => Some(t.to_vec()),
            None => return Err(TokenizerError::WrongType { key: "tokenizer.ggml.token_type", expected: "array of i32" }),
        },
    };
    // llama.cpp reads the deprecated FIM keys after the new ones: they win when in range.
    let n = tokens.len();
    let deprecated = |new: Option<u32>, old: Option<u32>| old.filter(|&i| (i as usize) < n).or(new);
    Ok(Vocab {
        model,
        pre: string(f, "tokenizer.ggml.pre")?,
        tokens,
        scores,
        token_types,
        merges: string_array(f, "tokenizer.ggml.merges")?,
        bos: id(f, "tokenizer.ggml.bos_token_id")?,
        eos: id(f, "tokenizer.ggml.eos_token_id")?,
        eot: id(f, "tokenizer.ggml.eot_token_id")?,
        eom: id(f, "tokenizer.ggml.eom_token_id")?,
        unk: id(f, "tokenizer.ggml.unknown_token_id")?,
        sep: id(f, "tokenizer.ggml.seperator_token_id")?,
        pad: id(f, "tokenizer.ggml.padding_token_id")?,
        mask: id(f, "tokenizer.ggml.mask_token_id")?,
        fim_pre: deprecated(id(f, "tokenizer.ggml.fim_pre_token_id")?, id(f, "tokenizer.ggml.prefix_token_id")?),
        fim_suf: deprecated(id(f, "tokenizer.ggml.fim_suf_token_id")?, id(f, "tokenizer.ggml.suffix_token_id")?),
        fim_mid: deprecated(id(f, "tokenizer.ggml.fim_mid_token_id")?, id(f, "tokenizer.ggml.middle_token_id")?),
        fim_pad: id(f, "tokenizer.ggml.fim_pad_token_id")?,
        fim_rep: id(f, "tokenizer.ggml.fim_rep_token_id")?,
        fim_sep: id(f, "tokenizer.ggml.fim_sep_token_id")?,
        add_bos: flag(f, "tokenizer.ggml.add_bos_token")?,
        add_eos: flag(f, "tokenizer.ggml.add_eos_token")?,
        add_space_prefix: flag(f, "tokenizer.ggml.add_space_prefix")?,
        model_name: string(f, "general.name")?,
        architecture: string(f, "general.architecture")?,
    })
}
