//! Pre-tokenizers and SentencePiece settings that the two test models do not use,
//! checked against llama.cpp: tests/fixtures/variants.json holds llama.cpp's ids
//! (and detokenized text) for vocab-only copies of the test models with metadata
//! overridden (see scripts/crosscheck.py, which regenerates it).

use serde_json::Value;
use std::path::PathBuf;
use tokenizer::{Tokenizer, Vocab};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn base_vocab(name: &str) -> Vocab {
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("models"));
    let path = dir.join(name);
    assert!(path.is_file(), "model {} is missing: run scripts/fetch-models.sh (or set TANDEM_MODELS_DIR)", path.display());
    let file = gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    Vocab::from_gguf(&file).unwrap()
}

fn apply(mut v: Vocab, variant: &Value) -> Vocab {
    for (key, val) in variant["set"].as_object().unwrap() {
        match key.as_str() {
            "tokenizer.ggml.pre" => v.pre = Some(val.as_str().unwrap().to_string()),
            "tokenizer.ggml.model" => v.model = val.as_str().unwrap().to_string(),
            "tokenizer.ggml.add_space_prefix" => v.add_space_prefix = Some(val.as_bool().unwrap()),
            "general.name" => v.model_name = Some(val.as_str().unwrap().to_string()),
            other => panic!("unhandled override {other}"),
        }
    }
    if variant["digit_merges"] == true {
        for (t, m) in tokenizer::digit_merges() {
            v.tokens.push(t);
            v.token_types.as_mut().unwrap().push(tokenizer::token_type::NORMAL);
            v.merges.as_mut().unwrap().push(m);
        }
    }
    if let Some(renames) = variant.get("rename").and_then(Value::as_object) {
        for (id, text) in renames {
            v.tokens[id.parse::<usize>().unwrap()] = text.as_str().unwrap().to_string();
        }
    }
    v
}

#[test]
fn variants_match_llama_cpp() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/variants.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let texts: Vec<&str> = fx["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let mut bases: Vec<(String, Vocab)> = Vec::new();
    let mut failures = Vec::new();
    let (mut n_enc, mut n_dec) = (0, 0);
    for variant in fx["variants"].as_array().unwrap() {
        let name = variant["name"].as_str().unwrap();
        let model = variant["model"].as_str().unwrap();
        if !bases.iter().any(|(m, _)| m == model) {
            bases.push((model.to_string(), base_vocab(model)));
        }
        let base = bases.iter().find(|(m, _)| m == model).unwrap().1.clone();
        let tok = Tokenizer::from_vocab(apply(base, variant)).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Variants tokenizing exactly like an earlier one share its ids.
        let ids = match variant["ids_same_as"].as_str() {
            Some(other) => &fx["variants"].as_array().unwrap().iter().find(|v| v["name"] == other).unwrap()["ids"],
            None => &variant["ids"],
        };
        for (text, expected) in texts.iter().zip(ids.as_array().unwrap()) {
            let expected: Vec<u32> = expected.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let got = tok.encode(text, tok.add_bos(), true);
            n_enc += 1;
            if got != expected {
                failures.push(format!("[{name}] encode {text:?}\n  expected: {expected:?}\n  got:      {got:?}"));
            }
        }
        for case in variant.get("decode").and_then(Value::as_array).into_iter().flatten() {
            let ids: Vec<u32> = case[0].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let special = case[1].as_u64().unwrap() == 1;
            let got = tok.decode(&ids, special);
            n_dec += 1;
            if got != case[2].as_str().unwrap() {
                failures.push(format!("[{name}] decode {ids:?} special={special}\n  expected: {:?}\n  got:      {got:?}", case[2]));
            }
        }
    }
    eprintln!("{n_enc} encodings and {n_dec} decodings checked");
    assert!(n_enc > 0 && n_dec > 0);
    assert!(failures.is_empty(), "{} mismatches with llama.cpp:\n{}", failures.len(), failures.join("\n"));
}
