//! Slots and the two engine threads.
//!
//! * The **prefill thread** takes queued requests as slots free up and runs their prompts
//!   in chunks (`forward`); its large-N matmuls are the ones placement may send to a matrix
//!   engine. Between chunks it checks for cancellation.
//! * The **decode thread** owns every prefilled slot and advances all of them with one
//!   `forward_batch` pass per step (N = active slots: the CPU's shape), sampling, matching
//!   stop strings and streaming text to each request's channel.
//!
//! The two run at the same time, so a new prompt never stops the others' decoding.
//! A slot keeps what its cache holds after a request: the prefill thread gives a prompt the
//! slot sharing most of it (or restores a RAM copy, [`crate::prompt_cache`]) and prefills
//! only the rest.
//! Requests beyond the free slots wait in a bounded queue; a dropped [`Ticket`] (the
//! client went away) cancels its request wherever it is and frees its slot.

use crate::api::GenParams;
use crate::metrics::{add_time, Metrics};
use crate::prompt_cache::{pick_slot, RamCache, SlotCache};
use engine::forward::Sequence;
use engine::generate::{chunk_size, prefill_while, Generation, Step, StopReason, TokenConstraint};
use engine::sampler::{token_logprob, Sampler, TokenLogprob};
use engine::Runner;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokenizer::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Sizes.
#[derive(Debug, Clone)]
pub struct SchedConfig {
    /// Slots: requests prefilling or decoding at once.
    pub parallel: usize,
    /// Requests that may wait for a slot beyond those.
    pub queue: usize,
    /// Context (KV cache positions) of each slot.
    pub n_ctx: usize,
    /// Prompt tokens per prefill pass (a prompt is split into equal chunks of at most this).
    pub chunk: usize,
    /// Bytes of slot contents kept in RAM for later prompts (0: only the slots' own caches
    /// are reused).
    pub cache_ram: usize,
    /// Most slots per decode pass (0 = all). The default, [`BATCH_INVARIANT`], keeps every
    /// decode pass on the CPU's per-row dot kernels, so a request's tokens are bit for bit
    /// those it gets alone (`tandem run`), whatever else is running; larger passes go to
    /// the tiled kernels, which re-associate float sums.
    pub decode_batch: usize,
}

/// The largest decode pass whose rows stay on the per-row dot kernels: one less than the
/// CPU matmul's `GEMM_MIN_TOKENS` (8), from which on it takes the tiled kernels. Kept as a
/// number so this crate does not depend on that constant; the 8-client test in
/// tests/concurrency.rs fails if the two drift apart.
pub const BATCH_INVARIANT: usize = 7;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token.
    Stop,
    /// A stop string.
    StopWord,
    /// max_tokens reached or the context is full.
    Length,
    /// The client went away or the server is shutting down.
    Cancelled,
}

impl From<StopReason> for FinishReason {
    fn from(r: StopReason) -> Self {
        match r {
            StopReason::EndOfGeneration => FinishReason::Stop,
            StopReason::StopString => FinishReason::StopWord,
            StopReason::Length | StopReason::ContextFull => FinishReason::Length,
            StopReason::Cancelled => FinishReason::Cancelled,
            // Reported as an error by the slot before it finishes.
            StopReason::ConstraintFailed => FinishReason::Stop,
        }
    }
}

impl FinishReason {
    /// OpenAI's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopWord => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }

    /// llama-server's `stop_type`: eos, word, limit or none.
    pub fn stop_type(self) -> &'static str {
        match self {
            FinishReason::Stop => "eos",
            FinishReason::StopWord => "word",
            FinishReason::Length => "limit",
            FinishReason::Cancelled => "none",
        }
    }
}

/// The end of a generation.
#[derive(Debug, Clone)]
pub struct Finish {
    /// Why.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose positions came from a cache (not prefilled).
    pub cached_tokens: usize,
    /// Time prefilling the rest of the prompt.
    pub prompt_time: Duration,
    /// Time from the first sampled token to the end.
    pub decode_time: Duration,
}

impl Finish {
    /// A request that ended before generating.
    fn early(reason: FinishReason, prompt_tokens: usize) -> Self {
        Finish { reason, prompt_tokens, completion_tokens: 0, cached_tokens: 0, prompt_time: Duration::ZERO, decode_time: Duration::ZERO }
    }
}

/// What a request hears from the engine threads.
#[derive(Debug)]
pub enum Event {
    /// More text, and the log-probabilities of the tokens sampled since the last event
    /// (when the request asked for them; a token whose text is held back, e.g. as a
    /// possible stop string, is reported with the text that follows it).
    Text {
        /// The text, possibly empty when only log-probabilities are new.
        text: String,
        /// One per sampled token.
        logprobs: Vec<TokenLogprob>,
    },
    /// Finished (always the last event unless an error came).
    Done(Finish),
    /// The engine failed.
    Error(String),
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Every slot is busy and the queue is full.
    QueueFull,
    /// The server is shutting down.
    ShuttingDown,
}

/// A queued or running request's events; dropping it cancels the request.
pub struct Ticket {
    /// The events, ending with `Done` or `Error`.
    pub events: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.cancel.store(true, Relaxed);
    }
}

struct Job {
    prompt: Vec<u32>,
    params: GenParams,
    constraint: Option<Box<dyn TokenConstraint>>,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
}

impl Job {
    fn gone(&self) -> bool {
        self.cancel.load(Relaxed) || self.tx.is_closed()
    }
}

struct State {
    waiting: VecDeque<Job>,
    free: Vec<SlotCache>,
    accepting: bool,
    draining: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    abort: AtomicBool,
    metrics: Arc<Metrics>,
    cfg: SchedConfig,
    /// Stamps for least-recently-used choices.
    clock: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, st: &State) {
        self.metrics.queue_depth.store(st.waiting.len(), Relaxed);
        self.metrics.slots_busy.store(self.cfg.parallel - st.free.len(), Relaxed);
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Relaxed) + 1
    }

    fn give_back(&self, mut slot: SlotCache) {
        slot.last_used = self.tick();
        let mut st = self.lock();
        st.free.push(slot);
        self.publish(&st);
        drop(st);
        self.cv.notify_all();
    }
}

/// A prefilled request on its way to the decode thread.
struct Ready {
    job: Job,
    slot: SlotCache,
    logits: Vec<f32>,
    cached: usize,
    prompt_time: Duration,
}

/// The slots, the queue and the engine threads.
pub struct Scheduler {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    /// Allocate the slots' caches and start the prefill and decode threads.
    pub fn start(runner: Arc<Runner>, tok: Arc<Tokenizer>, cfg: SchedConfig, metrics: Arc<Metrics>) -> Self {
        let free = (0..cfg.parallel.max(1)).map(|id| SlotCache::new(id, runner.new_cache(cfg.n_ctx))).collect();
        let cfg = SchedConfig { parallel: cfg.parallel.max(1), chunk: cfg.chunk.max(1), ..cfg };
        let shared = Arc::new(Shared {
            state: Mutex::new(State { waiting: VecDeque::new(), free, accepting: true, draining: false }),
            cv: Condvar::new(),
            abort: AtomicBool::new(false),
            metrics,
            cfg,
            clock: AtomicU64::new(0),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let (s1, r1) = (shared.clone(), runner.clone());
        let prefill = std::thread::Builder::new()
            .name("tandem-prefill".into())
            .spawn(move || prefill_loop(&s1, &r1, ready_tx))
            .expect("spawn the prefill thread");
        let s2 = shared.clone();
        let decode = std::thread::Builder::new()
            .name("tandem-decode".into())
            .spawn(move || decode_loop(&s2, &runner, &tok, ready_rx))
            .expect("spawn the decode thread");
        Scheduler { shared, threads: Mutex::new(vec![prefill, decode]) }
    }

    /// Context positions of each slot.
    pub fn n_ctx(&self) -> usize {
        self.shared.cfg.n_ctx
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.shared.cfg.parallel
    }

    /// Each slot: its id, whether it serves a request now, and the positions its cache
    /// holds for later prompts (None while it serves).
    pub fn slot_states(&self) -> Vec<(usize, bool, Option<usize>)> {
        let st = self.shared.lock();
        (0..self.shared.cfg.parallel)
            .map(|id| match st.free.iter().find(|s| s.id == id) {
                Some(s) => (id, false, Some(s.tokens.len())),
                None => (id, true, None),
            })
            .collect()
    }

    /// Queue a request (prompt tokens already checked to fit the context).
    pub fn submit(&self, prompt: Vec<u32>, params: GenParams, constraint: Option<Box<dyn TokenConstraint>>) -> Result<Ticket, SubmitError> {
        let mut st = self.shared.lock();
        if !st.accepting {
            return Err(SubmitError::ShuttingDown);
        }
        st.waiting.retain(|j| !j.gone());
        if st.waiting.len() >= st.free.len() + self.shared.cfg.queue {
            self.shared.metrics.rejected_queue_full.fetch_add(1, Relaxed);
            return Err(SubmitError::QueueFull);
        }
        let (tx, events) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        st.waiting.push_back(Job { prompt, params, constraint, tx, cancel: cancel.clone() });
        self.shared.publish(&st);
        drop(st);
        self.shared.cv.notify_all();
        Ok(Ticket { events, cancel })
    }

    /// Stop taking requests, answer the queued ones with an error, let running ones finish
    /// for up to `grace`, then cancel what is left and join the engine threads.
    pub fn shutdown(&self, grace: Duration) {
        {
            let mut st = self.shared.lock();
            st.accepting = false;
            st.draining = true;
        }
        self.shared.cv.notify_all();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.shared.metrics.slots_busy.load(Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.abort.store(true, Relaxed);
        self.shared.cv.notify_all();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn prefill_loop(shared: &Shared, runner: &Runner, ready: mpsc::Sender<Ready>) {
    let mut ram = RamCache::new(shared.cfg.cache_ram);
    loop {
        let (job, mut slot) = {
            let mut st = shared.lock();
            loop {
                if st.draining {
                    for j in st.waiting.drain(..) {
                        let _ = j.tx.send(Event::Done(Finish::early(FinishReason::Cancelled, j.prompt.len())));
                    }
                    shared.publish(&st);
                    return;
                }
                let before = st.waiting.len();
                st.waiting.retain(|j| !j.gone());
                let dropped = before - st.waiting.len();
                shared.metrics.cancelled.fetch_add(dropped as u64, Relaxed);
                if !st.waiting.is_empty() && !st.free.is_empty() {
                    break;
                }
                shared.publish(&st);
                st = shared.cv.wait_timeout(st, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
            }
            let job = st.waiting.pop_front().expect("a waiting job");
            let i = if job.params.cache_prompt { pick_slot(&st.free, &job.prompt) } else { 0 };
            let slot = st.free.swap_remove(i);
            shared.publish(&st);
            (job, slot)
        };
        let cached = reuse_prefix(&mut slot, &job, &mut ram, shared.tick());
        shared.metrics.ram_cache_bytes.store(ram.bytes(), Relaxed);
        shared.metrics.ram_cache_entries.store(ram.len(), Relaxed);
        if cached > 0 {
            shared.metrics.prompt_cache_hits.fetch_add(1, Relaxed);
            shared.metrics.prompt_cached_tokens.fetch_add(cached as u64, Relaxed);
        }
        let t0 = Instant::now();
        // The same chunks as `tandem run`'s, so the same kernels and the same tokens.
        let outcome = prefill_while(runner, &mut slot.cache, &job.prompt[cached..], shared.cfg.chunk, &mut || {
            !job.gone() && !shared.abort.load(Relaxed)
        });
        let prompt_time = t0.elapsed();
        add_time(&shared.metrics.prefill_ns, prompt_time);
        shared.metrics.prompt_tokens.fetch_add((slot.cache.len() - cached) as u64, Relaxed);
        slot.tokens.extend_from_slice(&job.prompt[cached..slot.cache.len().max(cached)]);
        match outcome {
            Ok(Some(logits)) => {
                if let Err(mpsc::SendError(r)) = ready.send(Ready { job, slot, logits, cached, prompt_time }) {
                    let _ = r.job.tx.send(Event::Done(Finish::early(FinishReason::Cancelled, r.job.prompt.len())));
                    shared.give_back(r.slot);
                }
            }
            Ok(None) => {
                shared.metrics.cancelled.fetch_add(1, Relaxed);
                let _ = job.tx.send(Event::Done(Finish::early(FinishReason::Cancelled, job.prompt.len())));
                shared.give_back(slot);
            }
            Err(e) => {
                let _ = job.tx.send(Event::Error(format!("prefill failed: {e}")));
                slot.truncate(0);
                shared.give_back(slot);
            }
        }
    }
}

/// Make `slot` hold the longest prefix of the job's prompt that a cache offers, keeping in
/// RAM whatever the slot held that is about to be lost; returns the positions reused.
fn reuse_prefix(slot: &mut SlotCache, job: &Job, ram: &mut RamCache, now: u64) -> usize {
    if !job.params.cache_prompt {
        ram.save(slot, now);
        slot.truncate(0);
        return 0;
    }
    let recurrent = slot.cache.is_recurrent();
    let mut keep = crate::prompt_cache::reusable(&slot.tokens, recurrent, &job.prompt);
    if keep < slot.tokens.len() {
        ram.save(slot, now);
    }
    if let Some((i, n)) = ram.best(recurrent, &job.prompt) {
        if n > keep && ram.restore(i, slot, now) {
            keep = n;
        }
    }
    slot.truncate(keep)
}

/// A slot in the decode phase.
struct Slot<'t> {
    job: Job,
    kv: SlotCache,
    cached: usize,
    prompt_time: Duration,
    started: Instant,
    gen: Generation<'t>,
    logits: Vec<f32>,
    next: u32,
    done: bool,
    /// Log-probabilities not yet sent.
    logprobs: Vec<TokenLogprob>,
}

impl<'t> Slot<'t> {
    fn new(mut r: Ready, tok: &'t Tokenizer) -> Self {
        let sampler = Sampler::new(r.job.params.sampler.clone());
        let mut gen = Generation::new(tok, sampler, r.job.params.rules.clone());
        if let Some(c) = r.job.constraint.take() {
            gen = gen.with_constraint(c);
        }
        if r.job.params.render_special {
            gen = gen.render_special();
        }
        gen.accept_prompt(&r.job.prompt);
        Slot {
            job: r.job,
            kv: r.slot,
            cached: r.cached,
            prompt_time: r.prompt_time,
            started: Instant::now(),
            gen,
            logits: r.logits,
            next: 0,
            done: false,
            logprobs: Vec::new(),
        }
    }

    /// Sample from the pending logits and act on the token.
    fn step(&mut self, m: &Metrics, abort: bool) {
        if abort || self.job.gone() {
            return self.finish(FinishReason::Cancelled, m);
        }
        let before = self.gen.tokens().len();
        let step = self.gen.step(&self.logits, &self.kv.cache);
        let sampled = self.gen.tokens().len() > before;
        m.generated_tokens.fetch_add(sampled as u64, Relaxed);
        if let (Some(top), true) = (self.job.params.logprobs, sampled) {
            let token = self.gen.tokens()[before];
            self.logprobs.push(token_logprob(&self.logits, token, top));
        }
        let (text, end) = match step {
            Step::Continue { token, text } => {
                self.next = token;
                (text, None)
            }
            Step::Done { reason, text } => (text, Some(reason)),
        };
        if !text.is_empty() || (end.is_some() && !self.logprobs.is_empty()) {
            let logprobs = std::mem::take(&mut self.logprobs);
            let _ = self.job.tx.send(Event::Text { text, logprobs });
        }
        if end == Some(StopReason::ConstraintFailed) {
            let why = self.gen.constraint_error().unwrap_or("unknown").to_string();
            let _ = self.job.tx.send(Event::Error(format!("the output constraint failed: {why}")));
            self.note_fed();
            self.done = true;
            return;
        }
        if let Some(reason) = end {
            self.finish(reason.into(), m);
        }
    }

    /// Record in the slot the generated tokens its cache holds past the prompt.
    fn note_fed(&mut self) {
        let fed = self.kv.cache.len().saturating_sub(self.kv.tokens.len());
        self.kv.tokens.extend_from_slice(&self.gen.tokens()[..fed.min(self.gen.tokens().len())]);
    }

    fn finish(&mut self, reason: FinishReason, m: &Metrics) {
        let counter = match reason {
            FinishReason::Stop | FinishReason::StopWord => &m.finished_stop,
            FinishReason::Length => &m.finished_length,
            FinishReason::Cancelled => &m.cancelled,
        };
        counter.fetch_add(1, Relaxed);
        let finish = Finish {
            reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.gen.tokens().len(),
            cached_tokens: self.cached,
            prompt_time: self.prompt_time,
            decode_time: self.started.elapsed(),
        };
        self.note_fed();
        let _ = self.job.tx.send(Event::Done(finish));
        self.done = true;
    }
}

fn decode_loop(shared: &Shared, runner: &Runner, tok: &Tokenizer, ready: mpsc::Receiver<Ready>) {
    let mut active: Vec<Slot> = Vec::new();
    let mut prefill_gone = false;
    loop {
        if active.is_empty() {
            if prefill_gone {
                return;
            }
            match ready.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => active.push(Slot::new(r, tok)),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    prefill_gone = true;
                    continue;
                }
            }
        }
        loop {
            match ready.try_recv() {
                Ok(r) => active.push(Slot::new(r, tok)),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    prefill_gone = true;
                    break;
                }
            }
        }
        let abort = shared.abort.load(Relaxed);
        for s in active.iter_mut() {
            s.step(&shared.metrics, abort);
        }
        let mut i = 0;
        while i < active.len() {
            if active[i].done {
                shared.give_back(active.swap_remove(i).kv);
            } else {
                i += 1;
            }
        }
        if active.is_empty() {
            continue;
        }
        let t0 = Instant::now();
        let per_pass = match shared.cfg.decode_batch {
            0 => active.len(),
            n => chunk_size(active.len(), n),
        };
        let mut failed = None;
        for group in active.chunks_mut(per_pass) {
            let steps: Vec<[u32; 1]> = group.iter().map(|s| [s.next]).collect();
            let mut seqs: Vec<Sequence> = group
                .iter_mut()
                .zip(&steps)
                .map(|(s, t)| Sequence { cache: &mut s.kv.cache, tokens: t, logit_rows: 0..1 })
                .collect();
            let result = runner.forward_batch(&mut seqs);
            drop(seqs);
            shared.metrics.decode_passes.fetch_add(1, Relaxed);
            match result {
                Ok(logits) => {
                    for (s, l) in group.iter_mut().zip(logits) {
                        s.logits = l;
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        add_time(&shared.metrics.decode_ns, t0.elapsed());
        if let Some(e) = failed {
            for mut s in active.drain(..) {
                let _ = s.job.tx.send(Event::Error(format!("decode failed: {e}")));
                s.kv.truncate(0);
                shared.give_back(s.kv);
            }
        }
    }
}
