//! `tandem perplexity`: llama-perplexity's method and final line.

use crate::engines::PlacementArgs;
use crate::load;
use anyhow::{Context, Result};
use engine::perplexity::perplexity;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Text file to score.
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Tokens per forward step.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: usize,
    /// CPU threads.
    #[arg(short = 't', long)]
    threads: Option<usize>,
    #[command(flatten)]
    placement: PlacementArgs,
    /// Score at most this many chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
}

pub fn main(a: Args) -> Result<()> {
    let mut text = std::fs::read_to_string(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    // llama-perplexity's -f drops one trailing newline before tokenizing.
    if text.ends_with('\n') {
        text.pop();
    }
    let (runner, tok) = load::model(&a.model, a.threads.unwrap_or_else(load::default_threads), &a.placement)?;
    // llama.cpp tokenizes the whole text once, with special tokens added but not parsed.
    let mut tokens = tok.encode(&text, true, false);
    if let Some(n) = a.chunks {
        tokens.truncate(n * a.ctx_size);
    }
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let t0 = std::time::Instant::now();
    eprintln!("perplexity: {} tokens, {} chunks of {}", tokens.len(), tokens.len() / a.ctx_size, a.ctx_size);
    let r = perplexity(&runner, &tokens, a.ctx_size, a.batch_size.min(a.ctx_size), bos, &mut |r| {
        eprint!("[{}]{:.4},", r.chunks, r.ppl);
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    eprintln!("{:.2} s", t0.elapsed().as_secs_f64());
    eprint!("{}", runner.dispatcher.stats.summary());
    println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_err);
    Ok(())
}
