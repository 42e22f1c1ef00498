//! Dev tool: write a vocab-only copy of a GGUF (metadata, no tensors), optionally
//! overriding keys (`key=text`, `key=bool:true`, `token:ID=TEXT`, `+digit-merges`), e.g. to try other pre-tokenizers against llama.cpp.
//! usage: vocab_only IN.gguf OUT.gguf [key=value ...]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = gguf::GgufFile::open(&args[0]).unwrap_or_else(|e| panic!("{e}"));
    let mut w = gguf::GgufWriter::new();
    for (k, v) in file.metadata() {
        w.set(k, v.clone());
    }
    for kv in &args[2..] {
        if kv == "+digit-merges" {
            // Tokens and (lowest-priority) merges for every 2- and 3-digit string,
            // so that pre-tokenizers' digit grouping shows in the ids.
            let get = |k: &str| file.get(k).unwrap().as_array().unwrap();
            let mut tokens = get("tokenizer.ggml.tokens").as_strings().unwrap().to_vec();
            let mut types = get("tokenizer.ggml.token_type").as_i32s().unwrap().to_vec();
            let mut merges = get("tokenizer.ggml.merges").as_strings().unwrap().to_vec();
            for (t, m) in tokenizer::digit_merges() {
                tokens.push(t);
                types.push(1);
                merges.push(m);
            }
            w.set("tokenizer.ggml.tokens", gguf::Value::Array(gguf::Array::String(tokens)));
            w.set("tokenizer.ggml.token_type", gguf::Value::Array(gguf::Array::I32(types)));
            w.set("tokenizer.ggml.merges", gguf::Value::Array(gguf::Array::String(merges)));
            continue;
        }
        let (k, v) = kv.split_once('=').expect("key=value");
        if let Some(id) = k.strip_prefix("token:") {
            // Rename one token: `token:ID=TEXT`.
            let mut tokens = file.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().as_strings().unwrap().to_vec();
            tokens[id.parse::<usize>().unwrap()] = v.to_string();
            w.set("tokenizer.ggml.tokens", gguf::Value::Array(gguf::Array::String(tokens)));
            continue;
        }
        let value = match v.strip_prefix("bool:") {
            Some(b) => gguf::Value::Bool(b == "true"),
            None => gguf::Value::String(v.to_string()),
        };
        w.set(k, value);
    }
    w.write_file(std::path::Path::new(&args[1])).unwrap();
}
