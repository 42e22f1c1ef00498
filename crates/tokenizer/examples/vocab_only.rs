//! Dev tool: write a vocab-only copy of a GGUF (metadata, no tensors), optionally
//! overriding keys (`key=text` or `key=bool:true`), e.g. to try other pre-tokenizers against llama.cpp.
//! usage: vocab_only IN.gguf OUT.gguf [key=value ...]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = gguf::GgufFile::open(&args[0]).unwrap_or_else(|e| panic!("{e}"));
    let mut w = gguf::GgufWriter::new();
    for (k, v) in file.metadata() {
        w.set(k, v.clone());
    }
    for kv in &args[2..] {
        let (k, v) = kv.split_once('=').expect("key=value");
        let value = match v.strip_prefix("bool:") {
            Some(b) => gguf::Value::Bool(b == "true"),
            None => gguf::Value::String(v.to_string()),
        };
        w.set(k, value);
    }
    w.write_file(std::path::Path::new(&args[1])).unwrap();
}
