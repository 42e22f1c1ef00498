//! `tandem serve`: an OpenAI-compatible HTTP server (flags follow llama-server's).

use crate::engines::PlacementArgs;
use crate::load;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Addresses to listen on, comma-separated: IPs (each at --port) and UNIX socket paths
    /// ending in .sock (loopback only unless you change it).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Model id clients pass as "model" (default: the file name without .gguf).
    #[arg(short = 'a', long)]
    alias: Option<String>,
    /// Total context in tokens, split evenly across the slots (0 = the model's training context per slot).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 8192)]
    ctx_size: usize,
    /// Requests served at once (slots); their decode steps share one batched pass.
    #[arg(long, visible_alias = "np", default_value_t = 4)]
    parallel: usize,
    /// Requests that may wait for a free slot; beyond that the server answers 503.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Prompt tokens per prefill pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Most slots per decode pass (0 = all in one). The default keeps each request's tokens
    /// independent of what else runs (bit for bit `tandem run`'s); more trades that for speed.
    #[arg(long = "decode-batch")]
    decode_batch: Option<usize>,
    /// CPU threads.
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// MiB of RAM for slot contents kept for later prompts (llama-server's flag: -1 = no
    /// limit, 0 = off; a slot's own cache is reused either way).
    #[arg(long = "cache-ram", visible_alias = "cram", default_value_t = 8192, allow_negative_numbers = true)]
    cache_ram: i64,
    #[command(flatten)]
    placement: PlacementArgs,
    /// Require "Authorization: Bearer KEY" on every endpoint except /health; several keys
    /// comma-separated (any one of them is accepted), as llama-server takes them.
    #[arg(long = "api-key", value_delimiter = ',')]
    api_key: Vec<String>,
    /// Read accepted API keys from a file, one per line (llama-server's --api-key-file).
    #[arg(long = "api-key-file")]
    api_key_file: Option<std::path::PathBuf>,
    /// Allow cross-origin requests from any browser origin (Access-Control-Allow-Origin: *).
    #[arg(long)]
    cors: bool,
    /// Allow cross-origin requests from these origins only (comma-separated, e.g.
    /// http://localhost:3000,https://app.example).
    #[arg(long = "cors-origins", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Defaults for requests that leave sampling fields out (llama-server's flags).
    #[command(flatten)]
    sampling: crate::sampling::SamplingArgs,
    /// Default token limit per request (-1 = until end of generation or a full context).
    #[arg(short = 'n', long = "n-predict", visible_alias = "predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Serve /slots (on by default, as in llama-server).
    #[arg(long = "slots", overrides_with = "no_slots")]
    slots: bool,
    /// Do not serve /slots.
    #[arg(long = "no-slots")]
    no_slots: bool,
    /// Serve /v1/embeddings (llama-server's --embeddings).
    #[arg(long = "embeddings", visible_alias = "embedding")]
    embeddings: bool,
    /// How embeddings pool the tokens: mean, cls or last (default: the model's, else mean).
    #[arg(long, requires = "embeddings", value_name = "TYPE")]
    pooling: Option<String>,
    /// Serve /metrics (always on in tandem; accepted for llama-server's scripts).
    #[arg(long)]
    metrics: bool,
    /// Use the model's Jinja chat template (always, in tandem; accepted for llama-server's scripts).
    #[arg(long)]
    jinja: bool,
    /// Flash attention (tandem's attention is always the fused kind; accepted for llama-server's scripts).
    #[arg(short = 'f', long = "flash-attn", visible_alias = "fa", num_args = 0..=1, default_missing_value = "on")]
    flash_attn: Option<String>,
    /// Chat template: a built-in name (chatml, gemma, llama3) or Jinja source; default: the model's.
    #[arg(long = "chat-template")]
    chat_template: Option<String>,
    /// Read the chat template from a file.
    #[arg(long = "chat-template-file", conflicts_with = "chat_template")]
    chat_template_file: Option<PathBuf>,
    /// Template variables every chat request starts from, as a JSON object, e.g.
    /// '{"reasoning_effort": "high"}'; a request's "chat_template_kwargs" go over them.
    /// As in llama-server, "preserve_reasoning" is true unless given here.
    #[arg(long = "chat-template-kwargs")]
    chat_template_kwargs: Option<String>,
    /// Largest request body, in KiB.
    #[arg(long = "max-body-kib", default_value_t = 4096)]
    max_body_kib: usize,
    /// Seconds running requests may go on after SIGINT/SIGTERM before they are cancelled.
    #[arg(long = "shutdown-grace", default_value_t = 5.0)]
    shutdown_grace: f64,
}

pub fn main(a: Args) -> Result<()> {
    if a.parallel == 0 {
        anyhow::bail!("--parallel must be at least 1");
    }
    if !(a.shutdown_grace >= 0.0 && a.shutdown_grace < 86_400.0) {
        anyhow::bail!("--shutdown-grace must be between 0 and 86400 seconds");
    }
    let chat_template = match &a.chat_template_file {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?),
        None => a.chat_template.clone(),
    };
    let mut chat_template_kwargs = match a.chat_template_kwargs.as_deref().map(serde_json::from_str::<Value>) {
        None => serde_json::Map::new(),
        Some(Ok(Value::Object(map))) => map,
        Some(Ok(_)) => anyhow::bail!("--chat-template-kwargs must be a JSON object"),
        Some(Err(e)) => anyhow::bail!("--chat-template-kwargs is not valid JSON: {e}"),
    };
    if chat_template_kwargs.get("enable_thinking").is_some_and(Value::is_string) {
        anyhow::bail!("--chat-template-kwargs: \"enable_thinking\" must be a boolean");
    }
    chat_template_kwargs.entry("preserve_reasoning").or_insert(Value::Bool(true));
    if let Some(fa) = a.flash_attn.as_deref() {
        if !["on", "off", "auto", "1", "0"].contains(&fa) {
            anyhow::bail!("--flash-attn takes on, off or auto, got {fa:?}");
        }
    }
    let _ = (a.metrics, a.jinja, a.slots);
    if let Some(p) = a.pooling.as_deref() {
        engine::embed::Pooling::parse(p)?;
    }
    // Bind first: while the model loads, clients polling /health get 503 "Loading model".
    // Keys first: a bad key file is an error before the port is bound or the model read.
    let mut api_keys: Vec<String> = a.api_key.iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
    if !a.api_key.is_empty() && api_keys.is_empty() {
        // `--api-key ","` would otherwise start an open server while meaning to close it.
        anyhow::bail!("--api-key holds no key");
    }
    if let Some(path) = &a.api_key_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("--api-key-file {}", path.display()))?;
        // Lines starting with # are comments, as llama-server reads the file.
        let from_file: Vec<String> = text.lines().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('#')).map(str::to_string).collect();
        if from_file.is_empty() {
            anyhow::bail!("--api-key-file {} holds no key", path.display());
        }
        api_keys.extend(from_file);
    }
    let loading = server::bind_loading(&a.host, a.port)?;
    eprintln!("tandem serve: loading {} ({} answers 503 until it is ready)", a.model.display(), loading.describe());
    let (runner, tok) = load::model(&a.model, a.threads.unwrap_or_else(load::default_threads), &a.placement)?;
    let n_ctx = if a.ctx_size == 0 { runner.model.config.n_ctx_train } else { a.ctx_size / a.parallel };
    if n_ctx < 16 {
        anyhow::bail!("-c {} over {} slots leaves {n_ctx} tokens each: raise -c", a.ctx_size, a.parallel);
    }
    let model_name = a.alias.clone().unwrap_or_else(|| {
        let name = a.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        name.strip_suffix(".gguf").map(str::to_string).unwrap_or(name)
    });
    let cfg = server::Config {
        host: a.host,
        port: a.port,
        api_keys,
        cors: a.cors,
        sched: server::SchedConfig {
            parallel: a.parallel,
            queue: a.queue,
            n_ctx,
            chunk: a.batch_size.max(1),
            decode_batch: a.decode_batch.unwrap_or(server::scheduler::BATCH_INVARIANT),
            cache_ram: match a.cache_ram {
                -1 => usize::MAX,
                n if n >= 0 => (n as usize).saturating_mul(1 << 20),
                n => anyhow::bail!("--cache-ram must be -1 (no limit), 0 (off) or MiB, got {n}"),
            },
        },
        model_name,
        model_path: a.model.display().to_string(),
        defaults: server::api::RequestDefaults {
            sampler: a.sampling.config(),
            random_seed: a.sampling.seed == crate::sampling::RANDOM_SEED,
            max_tokens: usize::try_from(a.n_predict).ok().filter(|&n| n > 0),
        },
        slots_endpoint: !a.no_slots,
        pooling: match a.embeddings {
            true => Some(server::embeddings::pooling_for(a.pooling.as_deref(), &runner.model.config)?),
            false => None,
        },
        cors_origins: a.cors_origins.iter().map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect(),
        chat_template,
        chat_template_kwargs,
        max_body: a.max_body_kib.max(1) << 10,
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
        announce: true,
    };
    server::start_on(loading.into_listeners(), runner, tok, cfg, true)?.wait()?;
    eprintln!("tandem serve: stopped");
    Ok(())
}
