//! `tandem perplexity`: llama-perplexity's method and final line.

use crate::engines::PlacementArgs;
use crate::load;
use anyhow::{bail, Context, Result};
use engine::kl_divergence::BaseHeader;
use engine::perplexity::{kl_divergence, perplexity_saving};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Text file to score (not needed with --kl-divergence: the base file holds its tokens).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
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
    /// Log-probabilities of a base model in llama-perplexity's format: written while scoring
    /// -f, or read with --kl-divergence.
    #[arg(long = "kl-divergence-base")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare this model with the --kl-divergence-base file (KL divergence, same top token, Δp).
    #[arg(long = "kl-divergence", requires = "kl_divergence_base")]
    kl_divergence: bool,
}

pub fn main(a: Args) -> Result<()> {
    if a.kl_divergence {
        return compare(&a);
    }
    let Some(file) = &a.file else { bail!("give the text to score with -f FILE") };
    let mut text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
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
    let mut base = match &a.kl_divergence_base {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?)),
        None => None,
    };
    let sink = base.as_mut().map(|w| w as &mut dyn Write);
    let r = perplexity_saving(&runner, &tokens, a.ctx_size, a.batch_size.min(a.ctx_size), bos, sink, &mut |r| {
        eprint!("[{}]{:.4},", r.chunks, r.ppl);
        let _ = std::io::stderr().flush();
    })?;
    if let (Some(w), Some(p)) = (base, &a.kl_divergence_base) {
        w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("\nsaved the log-probabilities to {}", p.display());
    }
    eprintln!();
    eprintln!("{:.2} s", t0.elapsed().as_secs_f64());
    eprint!("{}", runner.dispatcher.summary(&runner.model.layers));
    println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_err);
    Ok(())
}

/// `--kl-divergence`: the base file's chunks through this model, llama-perplexity's table and statistics.
fn compare(a: &Args) -> Result<()> {
    let path = a.kl_divergence_base.as_ref().expect("clap requires it");
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut rows = std::io::BufReader::new(file);
    let mut header = BaseHeader::read(&mut rows, &path.display().to_string())?;
    if let Some(n) = a.chunks {
        header.n_chunk = header.n_chunk.min(n);
    }
    let (runner, tok) = load::model(&a.model, a.threads.unwrap_or_else(load::default_threads), &a.placement)?;
    let bos = if tok.add_bos() { tok.bos() } else { None };
    eprintln!("kl-divergence: {} chunks of {} tokens from {}", header.n_chunk, header.n_ctx, path.display());
    println!("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p");
    let stats = kl_divergence(&runner, &header, &mut rows, a.batch_size, bos, &mut |chunk, s| println!("{}", s.chunk_line(chunk)))?;
    println!();
    print!("{}", stats.report());
    eprint!("{}", runner.dispatcher.summary(&runner.model.layers));
    Ok(())
}
