//! Dev tool mirroring a small llama.cpp driver, to compare detokenization:
//!   detok MODEL pieces          every id: hex(piece special=false) hex(piece special=true)
//!   detok MODEL decode < lines  each line "S id id ..." -> hex(decode(ids, S))
use std::io::BufRead;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = gguf::GgufFile::open(&args[0]).unwrap_or_else(|e| panic!("{e}"));
    let tok = tokenizer::Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    if args[1] == "pieces" {
        for id in 0..tok.vocab_size() as u32 {
            out += &format!("{} {}\n", hex(&tok.token_to_piece(id, false)), hex(&tok.token_to_piece(id, true)));
        }
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = line.unwrap();
            let mut it = line.split_whitespace();
            let special = it.next() == Some("1");
            let ids: Vec<u32> = it.map(|x| x.parse().unwrap()).collect();
            // decode() is lossy; compare bytes where the text is valid UTF-8.
            out += &format!("{}\n", hex(tok.decode(&ids, special).as_bytes()));
        }
    }
    print!("{out}");
}
