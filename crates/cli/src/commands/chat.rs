//! `tandem chat`: a conversation in the terminal, with the model's chat template (the same
//! one `tandem serve` uses). Each turn reuses the KV cache of the conversation so far.

use crate::engines::PlacementArgs;
use crate::load;
use crate::sampling::SamplingArgs;
use crate::text_out::TextOut;
use anyhow::Result;
use engine::generate::{generate, Generation, StopReason, StopRules};
use engine::sampler::Sampler;
use server::serde_json::{json, Value};
use server::template::ChatInput;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// System prompt.
    #[arg(long = "system")]
    system: Option<String>,
    /// Most tokens per reply (-1 = until end of turn or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Context size in tokens (0 = the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    ctx_size: usize,
    /// Prompt tokens per forward step.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// CPU threads.
    #[arg(short = 't', long)]
    threads: Option<usize>,
    #[command(flatten)]
    placement: PlacementArgs,
    /// Chat template: a built-in name (chatml, gemma, llama3) or Jinja source; default: the model's.
    #[arg(long = "chat-template")]
    chat_template: Option<String>,
    /// More template variables as a JSON object, e.g. '{"enable_thinking": false}' or
    /// '{"reasoning_effort": "high"}' (llama.cpp's --chat-template-kwargs).
    #[arg(long = "chat-template-kwargs")]
    chat_template_kwargs: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn main(a: Args) -> Result<()> {
    let kwargs = match a.chat_template_kwargs.as_deref().map(server::serde_json::from_str::<Value>) {
        None => None,
        Some(Ok(Value::Object(map))) => Some(map),
        Some(Ok(_)) => anyhow::bail!("--chat-template-kwargs must be a JSON object"),
        Some(Err(e)) => anyhow::bail!("--chat-template-kwargs is not valid JSON: {e}"),
    };
    let (runner, tok) = load::model(&a.model, a.threads.unwrap_or_else(load::default_threads), &a.placement)?;
    let template = server::ChatTemplate::for_model(&runner.model.file, &tok, a.chat_template.as_deref())?;
    let n_ctx = if a.ctx_size == 0 { runner.model.config.n_ctx_train } else { a.ctx_size };
    let mut sampler = Sampler::new(a.sampling.config());
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("tandem chat: {} (template: {}). /reset starts over, /exit or Ctrl-D quits.", a.model.display(), template.origin);
    }
    let start: Vec<Value> = a.system.iter().map(|s| json!({"role": "system", "content": s})).collect();
    let mut messages = start.clone();
    let mut cache = runner.new_cache(n_ctx);
    let mut cached: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = std::io::stdout();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let text = line.trim_end_matches(['\r', '\n']);
        match text.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = start.clone();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": text}));
        let input = ChatInput { kwargs: kwargs.as_ref(), ..ChatInput::new(&messages) };
        let tokens = match template.tokenize_input(&tok, &input) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                messages.pop();
                continue;
            }
        };
        if tokens.len() >= n_ctx {
            eprintln!("error: the conversation ({} tokens) no longer fits the context ({n_ctx}); /reset to start over", tokens.len());
            messages.pop();
            continue;
        }
        // Keep the cached prefix the new prompt shares (at least one token is re-run for logits).
        let common = cached.iter().zip(&tokens).take_while(|(x, y)| x == y).count().min(tokens.len() - 1);
        let common = cache.truncate(common);
        let rules = StopRules { max_tokens: usize::try_from(a.n_predict).ok(), ..StopRules::default() };
        let mut gen = Generation::new(&tok, sampler, rules);
        let mut reply = String::new();
        let mut text = TextOut::new(&mut out);
        let (reason, _) = generate(&runner, &mut cache, &tokens[common..], a.batch_size, &mut gen, &mut |piece| {
            reply.push_str(piece);
            text.write(piece)
        })?;
        if !text.finish()? {
            // The reader went away.
            return Ok(());
        }
        if reason == StopReason::ContextFull {
            eprintln!("(the context of {n_ctx} tokens is full; /reset to start over)");
        }
        cached = tokens.iter().chain(gen.tokens()).copied().take(cache.len()).collect();
        sampler = gen.into_sampler();
        messages.push(json!({"role": "assistant", "content": reply}));
    }
    Ok(())
}
