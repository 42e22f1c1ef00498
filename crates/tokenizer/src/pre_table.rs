//! `tokenizer.ggml.pre` values and what they select, following llama.cpp's
//! llama-vocab.cpp (regex lists and per-type flags).

use crate::pretokenize::{GPT2_RE, LLAMA3_RE, NEWLINES_RE, QWEN2_RE, QWEN35_RE};

/// Everything a pre-tokenizer name decides.
#[derive(Clone, Debug)]
pub(crate) struct PreConfig {
    /// llama.cpp's pre-type name (for messages).
    pub kind: &'static str,
    pub exprs: &'static [&'static str],
    /// GPT-2 byte-level encoding of words (false: raw UTF-8 with `<0xXX>` fallback).
    pub byte_encode: bool,
    pub clean_spaces: bool,
    pub ignore_merges: bool,
    /// Default for add_bos before metadata overrides it.
    pub add_bos: bool,
    /// Spaces become U+2581 before BPE (SPM-style BPE).
    pub escape_whitespaces: bool,
    /// No default BOS id (chatglm).
    pub no_bos: bool,
    /// Gemma 4: a word made only of newlines is taken whole when it is a token.
    pub newline_words: bool,
}

const LLAMA3: &[&str] = &[LLAMA3_RE];
const JAIS2: &[&str] = &[r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"];
// Non-ASCII characters are escaped: editors may NFC-normalize them (U+1F7D -> U+03CE).
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
    "\\p{N}+",
];
const DEEPSEEK3: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];
const SPARK2_5: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+",
    "\\p{N}",
];
const YOUTU: &[&str] = &[
    "[\u{AC00}-\u{D7A3}\u{3131}-\u{318E}]+|[\u{FF01}\u{2026}\u{201C}\u{201D}\u{2018}\u{2019}\u{2014}\u{FF1A}\u{FF1B}\u{FF0C}\u{3001}-\u{303F}\u{FE30}-\u{FE4F}]+|[\u{3105}-\u{312F}]+|[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];
const DEEPSEEK_CODER: &[&str] = &[
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
    "\\p{N}",
];
const FALCON: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_RE, "[0-9][0-9][0-9]"];
const STARCODER: &[&str] = &[r"\p{N}", GPT2_RE];
const GPT2: &[&str] = &[GPT2_RE];
const QWEN2: &[&str] = &[QWEN2_RE];
const QWEN35: &[&str] = &[QWEN35_RE];
const PORO: &[&str] = &[
    " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+",
];
const VIKING: &[&str] = &[
    " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+",
    "\\p{N}",
];
const TEKKEN: &[&str] = &[r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"];
const CHAMELEON: &[&str] = &[
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    r"([\t\n]|    |  )",
    r"\p{N}",
    r"[\p{P}!-/:-@\[-`{-~]",
    GPT2_RE,
];
const GPT4O: &[&str] = &[r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"];
const GRANITE_EMB_MULTI: &[&str] = &[r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"];
const BAILINGMOE: &[&str] = &[r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"];
const SEED_CODER: &[&str] = &[r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"];
const UFAKZEKA: &[&str] = &[r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"];
const LAGUNA: &[&str] = &[NEWLINES_RE, QWEN2_RE];
const EXAONE_MOE: &[&str] = &[r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"];
const NEWLINES: &[&str] = &[NEWLINES_RE];
const MINICPM5: &[&str] = &[r"\p{N}{1,3}", r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"];
const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_RE, r"\p{N}+", "[0-9][0-9][0-9]"];

const fn cfg(kind: &'static str, exprs: &'static [&'static str]) -> PreConfig {
    PreConfig {
        kind,
        exprs,
        byte_encode: true,
        clean_spaces: true,
        ignore_merges: false,
        add_bos: false,
        escape_whitespaces: false,
        no_bos: false,
        newline_words: false,
    }
}

/// The configuration for a `tokenizer.ggml.pre` value; `None` for values llama.cpp
/// rejects ("unknown pre-tokenizer type") or that we do not implement.
pub(crate) fn lookup(pre: &str) -> Option<PreConfig> {
    let no_clean = |c: PreConfig| PreConfig { clean_spaces: false, ..c };
    Some(match pre {
        "default" => cfg("default", DEFAULT),
        "minicpm5" => PreConfig { ignore_merges: true, ..cfg("minicpm5", MINICPM5) },
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
            PreConfig { ignore_merges: true, add_bos: true, ..cfg("llama3", LLAMA3) }
        }
        "deepseek-llm" => no_clean(cfg("deepseek-llm", DEEPSEEK_LLM)),
        "deepseek-coder" => no_clean(cfg("deepseek-coder", DEEPSEEK_CODER)),
        "deepseek-v3" => no_clean(cfg("deepseek3-llm", DEEPSEEK3)),
        "spark2_5" => no_clean(cfg("spark2_5", SPARK2_5)),
        "youtu" => PreConfig { ignore_merges: true, ..no_clean(cfg("youtu", YOUTU)) },
        "falcon" => cfg("falcon", FALCON),
        "mpt" => cfg("mpt", GPT2),
        "starcoder" => cfg("starcoder", STARCODER),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "exaone4" => cfg("gpt2", GPT2),
        "jais-2" => cfg("jais2", JAIS2),
        "gemma4" | "granite-embed-multi-311m" => {
            PreConfig { byte_encode: false, escape_whitespaces: true, newline_words: true, ..cfg("gemma4", NEWLINES) }
        }
        "sarvam-moe" => PreConfig { byte_encode: false, escape_whitespaces: true, ..no_clean(cfg("sarvam-moe", NEWLINES)) },
        "refact" => cfg("refact", STARCODER),
        "command-r" => no_clean(cfg("command-r", STARCODER)),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" => no_clean(cfg("qwen2", QWEN2)),
        "qwen35" => no_clean(cfg("qwen35", QWEN35)),
        "stablelm2" => cfg("stablelm2", QWEN2),
        "olmo" => cfg("olmo", GPT2),
        "dbrx" => cfg("dbrx", LLAMA3),
        "smaug-bpe" => cfg("smaug", LLAMA3),
        "poro-chat" => no_clean(cfg("poro", PORO)),
        "chatglm-bpe" => PreConfig { no_bos: true, ..cfg("chatglm4", LLAMA3) },
        "glm4" | "glm5" => PreConfig { no_bos: true, ignore_merges: true, ..cfg("chatglm4", LLAMA3) },
        "viking" => no_clean(cfg("viking", VIKING)),
        "jais" => cfg("jais", GPT2),
        "tekken" => PreConfig { ignore_merges: true, add_bos: true, ..no_clean(cfg("tekken", TEKKEN)) },
        "smollm" => no_clean(cfg("smollm", STARCODER)),
        "codeshell" => cfg("codeshell", STARCODER),
        "bloom" => cfg("bloom", PORO),
        "gpt3-finnish" => cfg("gpt3-finnish", PORO),
        "exaone" => cfg("exaone", STARCODER),
        "exaone-moe" => cfg("exaone-moe", EXAONE_MOE),
        "chameleon" => PreConfig { add_bos: true, ..no_clean(cfg("chameleon", CHAMELEON)) },
        "minerva-7b" => cfg("minerva", STARCODER),
        "megrez" => cfg("qwen2", QWEN2),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" => no_clean(cfg("gpt-4o", GPT4O)),
        "granite-embed-multi-97m" => PreConfig { ignore_merges: true, ..no_clean(cfg("granite-emb-multi", GRANITE_EMB_MULTI)) },
        "trillion" => no_clean(cfg("trillion", GPT2)),
        "granite-docling" => no_clean(cfg("granite-docling", GPT2)),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => no_clean(cfg("bailingmoe", BAILINGMOE)),
        "seed-coder" => no_clean(cfg("seed-coder", SEED_CODER)),
        "hunyuan" => no_clean(cfg("hunyuan", QWEN2)),
        "hunyuan-dense" => no_clean(cfg("hunyuan-dense", DEEPSEEK3)),
        "hy_v4" => no_clean(cfg("hy_v4", DEEPSEEK3)),
        "joyai-llm" => no_clean(cfg("joyai-llm", DEEPSEEK3)),
        "ufakzeka" => no_clean(cfg("ufakzeka", UFAKZEKA)),
        "grok-2" => no_clean(cfg("grok-2", QWEN2)),
        "laguna" => no_clean(cfg("laguna", LAGUNA)),
        "minimax-m2" => no_clean(cfg("minimax-m2", GPT4O)),
        "solar-open" => no_clean(cfg("solar-open", QWEN2)),
        "mellum2" => cfg("mellum2", STARCODER),
        // Known to llama.cpp but needing splitters we do not implement:
        // kimi-k2, afmoe, tiny_aya/cohere2moe, superbpe, mmbert, whitespace.
        _ => return None,
    })
}

/// Names llama.cpp knows that we do not implement (for a clearer error).
pub(crate) fn known_unsupported(pre: &str) -> bool {
    matches!(pre, "kimi-k2" | "afmoe" | "tiny_aya" | "cohere2moe" | "superbpe" | "mmbert" | "whitespace")
}

/// Every name `lookup` accepts (tests compile all their regexes).
#[cfg(test)]
pub(crate) const ALL_NAMES: &[&str] = &[
    "default", "minicpm5", "llama3", "llama-bpe", "deepseek-llm", "deepseek-coder", "deepseek-v3", "spark2_5", "youtu",
    "falcon", "mpt", "starcoder", "gpt-2", "jais-2", "gemma4", "sarvam-moe", "refact", "command-r", "qwen2", "qwen35",
    "stablelm2", "olmo", "dbrx", "smaug-bpe", "poro-chat", "chatglm-bpe", "glm4", "viking", "jais", "tekken", "smollm",
    "codeshell", "bloom", "gpt3-finnish", "exaone", "exaone-moe", "chameleon", "minerva-7b", "megrez", "gpt-4o",
    "granite-embed-multi-97m", "trillion", "granite-docling", "bailingmoe", "seed-coder", "hunyuan", "hunyuan-dense",
    "hy_v4", "joyai-llm", "ufakzeka", "grok-2", "laguna", "minimax-m2", "solar-open", "mellum2",
];
