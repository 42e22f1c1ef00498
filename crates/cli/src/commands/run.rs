//! `tandem run`: stream a continuation of the prompt to stdout; speeds to stderr.

use crate::engines::PlacementArgs;
use crate::load;
use crate::sampling::SamplingArgs;
use crate::text_out::TextOut;
use anyhow::Result;
use engine::generate::{generate, Generation, StopReason, StopRules};
use engine::sampler::Sampler;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Prompt text.
    #[arg(short = 'p', long, default_value = "")]
    prompt: String,
    /// Read the prompt from a file.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Tokens to generate (-1 = until end of generation or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Context size in tokens (0 = the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    ctx_size: usize,
    /// Prompt tokens per forward step.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: usize,
    /// CPU threads.
    #[arg(short = 't', long)]
    threads: Option<usize>,
    #[command(flatten)]
    placement: PlacementArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Keep generating past end-of-generation tokens.
    #[arg(long = "ignore-eos")]
    ignore_eos: bool,
    /// Do not parse special-token text in the prompt.
    #[arg(long = "no-parse-special")]
    no_parse_special: bool,
}

pub fn main(a: Args) -> Result<()> {
    let prompt = match &a.file {
        Some(f) => {
            let mut text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
            // llama.cpp's -f drops one trailing newline.
            if text.ends_with('\n') {
                text.pop();
            }
            text
        }
        None => a.prompt.clone(),
    };
    let (runner, tok) = load::model(&a.model, a.threads.unwrap_or_else(load::default_threads), &a.placement)?;
    let n_ctx = if a.ctx_size == 0 { runner.model.config.n_ctx_train } else { a.ctx_size };
    let tokens = tok.encode(&prompt, true, !a.no_parse_special);
    if tokens.is_empty() {
        anyhow::bail!("the prompt is empty: pass one with -p or -f");
    }
    if tokens.len() > n_ctx {
        anyhow::bail!("prompt has {} tokens but the context holds {n_ctx} (raise -c or shorten the prompt)", tokens.len());
    }
    let rules = StopRules { max_tokens: usize::try_from(a.n_predict).ok(), ignore_eos: a.ignore_eos, stop: Vec::new() };
    let mut gen = Generation::new(&tok, Sampler::new(a.sampling.config()), rules);
    let mut cache = runner.new_cache(n_ctx);
    let mut out = TextOut::new(std::io::stdout().lock());
    let (reason, stats) = generate(&runner, &mut cache, &tokens, a.batch_size, &mut gen, &mut |text| out.write(text))?;
    out.finish()?;
    if reason == StopReason::ContextFull {
        eprintln!("stopped: the context ({n_ctx} tokens) is full");
    }
    eprint!("{}", runner.dispatcher.summary(&runner.model.layers));
    eprintln!(
        "prompt: {} tokens, {:.2} tokens/s | generation: {} tokens, {:.2} tokens/s",
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.generated_tokens,
        stats.generation_tps()
    );
    Ok(())
}
