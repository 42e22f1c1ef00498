//! Dev tool: read JSON [{"text", "add_special", "parse_special"}] on stdin, print
//! a JSON array of id lists.  usage: batch MODEL.gguf < cases.json
fn main() {
    let path = std::env::args().nth(1).expect("usage: batch MODEL.gguf < cases.json");
    let file = gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let tok = tokenizer::Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"));
    let cases: serde_json::Value = serde_json::from_reader(std::io::stdin()).unwrap();
    let out: Vec<Vec<u32>> = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let text = c["text"].as_str().unwrap();
            tok.encode(text, c["add_special"].as_bool().unwrap(), c["parse_special"].as_bool().unwrap())
        })
        .collect();
    println!("{}", serde_json::to_string(&out).unwrap());
}
