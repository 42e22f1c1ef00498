//! What the constraint tests share: SmolLM2's real vocabulary.

use std::path::PathBuf;
use std::sync::Arc;
use tokenizer::Tokenizer;

pub fn smollm2() -> Arc<Tokenizer> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("models"));
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
    Arc::new(Tokenizer::from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap())
}
