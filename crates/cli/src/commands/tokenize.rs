//! `tandem tokenize`: llama-tokenize's output formats.

use crate::load;
use anyhow::{Context, Result};
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "file", "stdin"])))]
pub struct Args {
    /// Model or vocab-only file (GGUF).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Text to tokenize.
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Read the text from a file.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Read the text from standard input.
    #[arg(long)]
    stdin: bool,
    /// Print only the ids, as `[id, id, ...]`.
    #[arg(long)]
    ids: bool,
    /// Add no special tokens (BOS/EOS).
    #[arg(long = "no-bos")]
    no_bos: bool,
    /// Treat special-token text as plain text.
    #[arg(long = "no-parse-special")]
    no_parse_special: bool,
    /// Print the token count too.
    #[arg(long = "show-count")]
    show_count: bool,
}

pub fn main(a: Args) -> Result<()> {
    let text = if let Some(p) = a.prompt {
        p
    } else if let Some(f) = &a.file {
        std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read standard input")?;
        s
    };
    let file = load::open_gguf(&a.model)?;
    let tok = load::tokenizer(&file, &a.model)?;
    let ids = tok.encode(&text, !a.no_bos, !a.no_parse_special);
    if a.ids {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("[{}]", list.join(", "));
    } else {
        for &id in &ids {
            let piece = tok.token_to_piece(id, true);
            println!("{id:6} -> '{}'", String::from_utf8_lossy(&piece));
        }
    }
    if a.show_count {
        println!("Total number of tokens: {}", ids.len());
    }
    Ok(())
}
