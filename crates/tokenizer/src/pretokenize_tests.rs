use super::*;
use crate::pre_table;

fn split_with(pre: &str, text: &str) -> Vec<String> {
    let cfg = pre_table::lookup(pre).unwrap();
    PreTokenizer::new(cfg.exprs).unwrap().split(text).into_iter().map(String::from).collect()
}

#[test]
fn gpt2_split() {
    assert_eq!(split_with("gpt-2", "Hello world 123 'tis  x\n\n y"), ["Hello", " world", " 123", " '", "tis", " ", " x", "\n\n", " y"]);
    assert_eq!(split_with("gpt-2", "I'm DON'T"), ["I", "'m", " DON", "'", "T"]);
}

#[test]
fn starcoder_splits_digits_first() {
    assert_eq!(split_with("smollm", "ab 123"), ["ab", " ", "1", "2", "3"]);
}

#[test]
fn llama3_split() {
    assert_eq!(split_with("llama-bpe", "Hello world 12345 I'M ok!!\n\n  x  "), ["Hello", " world", " ", "123", "45", " I", "'M", " ok", "!!\n\n", " ", " x", "  "]);
}

#[test]
fn qwen2_single_digits() {
    assert_eq!(split_with("qwen2", "x 123"), ["x", " ", "1", "2", "3"]);
}

#[test]
fn deepseek_llm_regex_path() {
    // The non-custom regexes go through the (collapsed) regex engine.
    assert_eq!(split_with("deepseek-llm", "Hello 世界 123\nok"), ["Hello", " ", "世界", " ", "123", "\n", "ok"]);
}

#[test]
fn collapse_rewrites_categories() {
    assert_eq!(collapse_regex(r"\p{N}+").unwrap(), r"[\x{D1}0-9]+");
    assert_eq!(collapse_regex(r"[^\s\p{L}]").unwrap(), r"[^\s\x{D2}A-Za-z]");
    assert!(collapse_regex("\\p{L}é").is_err());
}

#[test]
fn ascii_digits_rewrite() {
    assert_eq!(ascii_digits(r"\d{3}[\d,]\\d"), r"[0-9]{3}[0-9,]\\d");
}
