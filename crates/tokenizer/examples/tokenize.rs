//! Print token ids like `llama-tokenize --ids`.
//! usage: tokenize MODEL.gguf TEXT [--no-bos] [--no-parse-special] [--decode]
use tokenizer::Tokenizer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: tokenize MODEL.gguf TEXT [--no-bos] [--no-parse-special] [--decode]");
        std::process::exit(2);
    }
    let file = gguf::GgufFile::open(&args[0]).unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("built in {:?}: {tok:?}", t0.elapsed());
    let flag = |f: &str| args.iter().any(|a| a == f);
    let ids = tok.encode(&args[1], tok.add_bos() && !flag("--no-bos"), !flag("--no-parse-special"));
    println!("{ids:?}");
    if flag("--decode") {
        println!("{:?}", tok.decode(&ids, true));
    }
}
