//! `tandem serve`: an OpenAI-compatible HTTP server (llama-server's extra endpoints too).
//!
//! * [`http`] — routes: /v1/chat/completions, /v1/completions (SSE or JSON), /v1/models,
//!   /health, /tokenize, /detokenize, /apply-template, /metrics; bearer auth, optional CORS,
//!   body limit. [`native`] — llama-server's /completion, /props, /slots.
//! * [`scheduler`] — `--parallel` slots; a prefill thread and a decode thread that batches
//!   every active slot's step into one `forward_batch`; a bounded queue (503 when full);
//!   cancellation when a client goes away.
//! * [`template`] — chat templates (the GGUF's, with minijinja, or a built-in one).
//! * [`api`] — request validation and OpenAI-style errors; [`sampling`] — penalties, logit
//!   bias, log-probabilities, `n`, refused fields; [`response`] — response bodies and SSE
//!   chunks; [`metrics`] — Prometheus counters.
//!
//! Sampling, stop rules and streamed text are the engine's [`engine::generate::Generation`],
//! the same one `tandem run` and `tandem chat` drive.

pub mod api;
pub mod embeddings;
pub mod http;
pub mod metrics;
pub mod native;
pub mod prompt_cache;
pub mod response;
pub mod sampling;
pub mod listen;
pub mod scheduler;
pub mod structured;
pub mod template;
pub mod tools;

use engine::Runner;
use listen::Bound;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokenizer::Tokenizer;

pub use scheduler::SchedConfig;
pub use template::{ChatTemplate, TemplateError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The chat template does not compile.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// host:port asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A socket or runtime operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The HTTP thread or task died.
    #[error("the server {0}")]
    Crashed(String),
}

/// The server's result.
pub type Result<T> = std::result::Result<T, ServerError>;
/// Re-exported for the CLI (message lists for chat templates).
pub use serde_json;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to bind, comma-separated: IPs (at `port`) and UNIX socket paths ending
    /// in `.sock` (127.0.0.1 unless asked otherwise).
    pub host: String,
    /// Port (0 = any free port).
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (or `X-Api-Key: KEY`) with one of these keys on
    /// every endpoint but /health; empty: no key needed.
    pub api_keys: Vec<String>,
    /// Answer CORS preflights and add `Access-Control-Allow-Origin: *`.
    pub cors: bool,
    /// Slots, queue, per-slot context and prefill chunk.
    pub sched: SchedConfig,
    /// The id clients pass as `model`.
    pub model_name: String,
    /// The model file (shown by /props).
    pub model_path: String,
    /// What requests get for the fields they leave out.
    pub defaults: api::RequestDefaults,
    /// Serve /slots.
    pub slots_endpoint: bool,
    /// Serve /v1/embeddings, pooling so (llama-server's `--embeddings` and `--pooling`).
    pub pooling: Option<engine::embed::Pooling>,
    /// Origins allowed cross-origin requests (`*`: any); empty: none, unless `cors`.
    pub cors_origins: Vec<String>,
    /// A built-in template name or Jinja source replacing the GGUF's.
    pub chat_template: Option<String>,
    /// Template variables every chat request starts from; a request's `chat_template_kwargs`
    /// go over them (llama-server's `--chat-template-kwargs`).
    pub chat_template_kwargs: serde_json::Map<String, serde_json::Value>,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// How long running requests may go on after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Print the address and settings to stderr.
    pub announce: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 8080,
            api_keys: Vec::new(),
            cors: false,
            sched: SchedConfig {
                parallel: 4,
                queue: 16,
                n_ctx: 4096,
                chunk: 512,
                cache_ram: 8192 << 20,
                decode_batch: scheduler::BATCH_INVARIANT,
            },
            model_name: "model".into(),
            model_path: String::new(),
            defaults: api::RequestDefaults::default(),
            slots_endpoint: true,
            pooling: None,
            cors_origins: Vec::new(),
            chat_template: None,
            chat_template_kwargs: serde_json::Map::new(),
            max_body: 4 << 20,
            shutdown_grace: Duration::from_secs(5),
            announce: false,
        }
    }
}

/// A server running on its own thread.
pub struct RunningServer {
    /// The first bound TCP address (0.0.0.0:0 when it listens on UNIX sockets only).
    pub addr: SocketAddr,
    /// Every socket it answers on, as announced.
    pub addrs: Vec<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl RunningServer {
    /// Shut down as on SIGTERM and wait for it.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.wait_inner()
    }

    /// Wait until the server stops (after a signal, when started with signals).
    pub fn wait(mut self) -> Result<()> {
        self.wait_inner()
    }

    fn wait_inner(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| ServerError::Crashed("thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.wait_inner();
    }
}

/// The server's port, bound before the model loads: every request (and /health) is
/// answered 503 "Loading model", as llama-server answers, until [`start_on`] takes the
/// same socket over.
pub struct Loading {
    listeners: Vec<Bound>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Loading {
    /// The first bound TCP address.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.iter().find_map(Bound::tcp_addr).ok_or_else(|| std::io::Error::other("no TCP address bound"))
    }

    /// Every bound socket, as announced (`http://ip:port`, `unix:PATH`), comma-separated.
    pub fn describe(&self) -> String {
        self.listeners.iter().map(Bound::describe).collect::<Vec<_>>().join(", ")
    }

    /// Stop answering "loading" and hand the sockets on.
    pub fn into_listeners(mut self) -> Vec<Bound> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut self.listeners)
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Sockets never handed on (the model did not load): their files go too.
        listen::remove_files(&listen::socket_files(&self.listeners));
    }
}

/// Bind every address of `host` (a comma-separated list, see [`listen`]) at `port` and
/// answer "Loading model" there until the server starts.
pub fn bind_loading(host: &str, port: u16) -> Result<Loading> {
    let listeners = listen::bind_all(host, port)?;
    let clones = listeners.iter().map(Bound::try_clone).collect::<std::io::Result<Vec<_>>>()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("tandem-loading".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let app = axum::Router::new().fallback(|| async {
                let body = serde_json::json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}});
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
            });
            let stop = tokio::sync::watch::channel(false);
            let serving: Vec<_> = clones
                .into_iter()
                .map(|l| {
                    let mut rx = stop.1.clone();
                    tokio::spawn(l.serve(app.clone(), async move {
                        let _ = rx.wait_for(|s| *s).await;
                    }))
                })
                .collect();
            let _ = stop_rx.await;
            let _ = stop.0.send(true);
            for s in serving {
                let _ = s.await;
            }
        });
    })?;
    Ok(Loading { listeners, stop: Some(stop_tx), thread: Some(thread) })
}

/// Start serving `runner` on `cfg.host` (every address of the list) at `cfg.port`. With
/// `signals`, SIGINT and SIGTERM shut it down gracefully: stop accepting, let running
/// requests finish for up to `cfg.shutdown_grace`, cancel the rest, return.
pub fn start(runner: Runner, tok: Tokenizer, cfg: Config, signals: bool) -> Result<RunningServer> {
    let listeners = listen::bind_all(&cfg.host, cfg.port)?;
    start_on(listeners, runner, tok, cfg, signals)
}

/// [`start`] on sockets already bound (by [`bind_loading`]).
pub fn start_on(listeners: Vec<Bound>, runner: Runner, tok: Tokenizer, cfg: Config, signals: bool) -> Result<RunningServer> {
    let template = match ChatTemplate::for_model(&runner.model.file, &tok, cfg.chat_template.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            listen::remove_files(&listen::socket_files(&listeners));
            return Err(e.into());
        }
    };
    let addr = listeners.iter().find_map(Bound::tcp_addr).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let addrs: Vec<String> = listeners.iter().map(Bound::describe).collect();
    let runner = Arc::new(runner);
    let tok = Arc::new(tok);
    let metrics = Arc::new(metrics::Metrics::default());
    let sched = scheduler::Scheduler::start(runner.clone(), tok.clone(), cfg.sched.clone(), metrics.clone());
    if cfg.announce {
        eprintln!(
            "tandem serve: listening on {} — model '{}', {} slots × {} tokens, queue {}, chat template: {}{}",
            addrs.join(", "),
            cfg.model_name,
            sched.slots(),
            sched.n_ctx(),
            cfg.sched.queue,
            template.origin,
            if cfg.api_keys.is_empty() { "" } else { ", API key required" }
        );
    }
    let state = Arc::new(http::AppState {
        sched,
        runner,
        tok,
        tool_format: tools::detect(&template.source),
        template,
        chat_template_kwargs: cfg.chat_template_kwargs.clone(),
        model: cfg.model_name.clone(),
        model_path: cfg.model_path.clone(),
        grammars: structured::Index::new(),
        defaults: cfg.defaults.clone(),
        slots_endpoint: cfg.slots_endpoint,
        metrics,
        api_keys: cfg.api_keys.clone(),
        created: api::now_secs(),
        pooling: cfg.pooling,
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new().name("tandem-http".into()).spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let result = rt.block_on(serve(state, listeners, cfg, stop_rx, signals));
        rt.shutdown_timeout(Duration::from_secs(1));
        result
    })?;
    Ok(RunningServer { addr, addrs, stop: Some(stop_tx), thread: Some(thread) })
}

async fn serve(
    state: Arc<http::AppState>,
    listeners: Vec<Bound>,
    cfg: Config,
    stop: tokio::sync::oneshot::Receiver<()>,
    signals: bool,
) -> Result<()> {
    let mut origins = cfg.cors_origins.clone();
    if cfg.cors {
        origins.push("*".into());
    }
    let app = http::router(state.clone(), origins, cfg.max_body);
    // One task per socket, all stopped by one flag; the first to end by itself (an accept
    // error) ends them all.
    let (go, stopping) = tokio::sync::watch::channel(false);
    let go = Arc::new(go);
    let sockets = listen::socket_files(&listeners);
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let mut rx = stopping.clone();
        tasks.spawn(l.serve(app.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    let go2 = go.clone();
    let mut server = tokio::spawn(async move {
        let first = tasks.join_next().await;
        let _ = go2.send(true);
        while tasks.join_next().await.is_some() {}
        match first {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(std::io::Error::other(e.to_string())),
            None => Ok(()),
        }
    });
    let trigger = async move {
        tokio::select! {
            _ = stop => {}
            _ = signal(), if signals => {}
        }
    };
    tokio::select! {
        r = &mut server => {
            // The server stopped by itself: an accept error.
            state.sched.shutdown(Duration::ZERO);
            listen::remove_files(&sockets);
            return r.map_err(|e| ServerError::Crashed(format!("task failed: {e}")))?.map_err(ServerError::Io);
        }
        _ = trigger => {}
    }
    if cfg.announce {
        eprintln!("tandem serve: shutting down (running requests get {:?})", cfg.shutdown_grace);
    }
    let _ = go.send(true);
    let st = state.clone();
    let grace = cfg.shutdown_grace;
    let drain = tokio::task::spawn_blocking(move || st.sched.shutdown(grace));
    let bound = grace + Duration::from_secs(2);
    let finished = tokio::time::timeout(bound, async move {
        let _ = drain.await;
        let _ = server.await;
    })
    .await;
    if finished.is_err() && cfg.announce {
        eprintln!("tandem serve: connections still open after {bound:?}; closing them");
    }
    listen::remove_files(&sockets);
    Ok(())
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
