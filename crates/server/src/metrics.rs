//! Counters for `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Server-wide counters, updated by the HTTP handlers and the engine threads.
#[derive(Default)]
pub struct Metrics {
    /// Requests by (route, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Prompt tokens prefilled.
    pub prompt_tokens: AtomicU64,
    /// Nanoseconds spent prefilling.
    pub prefill_ns: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Nanoseconds spent in decode passes.
    pub decode_ns: AtomicU64,
    /// Decode passes (each batches every active slot).
    pub decode_passes: AtomicU64,
    /// Generations finished, by reason.
    pub finished_stop: AtomicU64,
    /// Generations that hit max_tokens or the context.
    pub finished_length: AtomicU64,
    /// Generations cancelled (client gone, shutdown).
    pub cancelled: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected_queue_full: AtomicU64,
    /// Requests waiting for a slot.
    pub queue_depth: AtomicUsize,
    /// Slots prefilling or decoding.
    pub slots_busy: AtomicUsize,
    /// Requests that reused a cached prompt prefix.
    pub prompt_cache_hits: AtomicU64,
    /// Prompt tokens taken from a cache instead of prefilled.
    pub prompt_cached_tokens: AtomicU64,
    /// Bytes of slot contents held in RAM for later prompts.
    pub ram_cache_bytes: AtomicUsize,
    /// Copies held in RAM.
    pub ram_cache_entries: AtomicUsize,
}

/// Add a duration to a nanosecond counter.
pub fn add_time(c: &AtomicU64, d: Duration) {
    c.fetch_add(d.as_nanos() as u64, Relaxed);
}

impl Metrics {
    /// Count one answered request.
    pub fn request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status)).or_default() += 1;
    }

    /// The Prometheus exposition text; `engines` is the dispatcher's per-engine counters.
    pub fn render(&self, slots_total: usize, engines: &BTreeMap<String, engine::matrix::stats::EngineStats>) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(s, "# HELP tandem_{name} {help}\n# TYPE tandem_{name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(s, "tandem_{name}{labels} {v}");
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        let req = self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let rows = req.iter().map(|((r, st), n)| (format!("{{route=\"{r}\",status=\"{st}\"}}"), *n as f64)).collect();
        metric("requests_total", "counter", "HTTP requests answered, by route and status.", rows);
        let g = |c: &AtomicU64| c.load(Relaxed) as f64;
        let secs = |c: &AtomicU64| c.load(Relaxed) as f64 / 1e9;
        metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", one(g(&self.prompt_tokens)));
        metric("prefill_seconds_total", "counter", "Time spent prefilling prompts.", one(secs(&self.prefill_ns)));
        metric("generated_tokens_total", "counter", "Tokens generated.", one(g(&self.generated_tokens)));
        metric("decode_seconds_total", "counter", "Time spent in batched decode passes.", one(secs(&self.decode_ns)));
        metric("decode_passes_total", "counter", "Batched decode passes.", one(g(&self.decode_passes)));
        let tps = |n: f64, t: f64| if t > 0.0 { n / t } else { 0.0 };
        metric(
            "prefill_tokens_per_second",
            "gauge",
            "Prompt tokens per second of prefill time.",
            one(tps(g(&self.prompt_tokens), secs(&self.prefill_ns))),
        );
        metric(
            "decode_tokens_per_second",
            "gauge",
            "Generated tokens per second of decode time (all slots together).",
            one(tps(g(&self.generated_tokens), secs(&self.decode_ns))),
        );
        let fin = vec![
            ("{reason=\"stop\"}".to_string(), g(&self.finished_stop)),
            ("{reason=\"length\"}".to_string(), g(&self.finished_length)),
            ("{reason=\"cancelled\"}".to_string(), g(&self.cancelled)),
        ];
        metric("generations_total", "counter", "Generations finished, by reason.", fin);
        metric(
            "rejected_total",
            "counter",
            "Requests refused with 503 because the queue was full.",
            one(g(&self.rejected_queue_full)),
        );
        metric("prompt_cache_hits_total", "counter", "Requests that reused a cached prompt prefix.", one(g(&self.prompt_cache_hits)));
        metric(
            "prompt_cached_tokens_total",
            "counter",
            "Prompt tokens taken from a cache instead of prefilled.",
            one(g(&self.prompt_cached_tokens)),
        );
        metric("ram_cache_bytes", "gauge", "Bytes of slot contents kept in RAM (--cache-ram).", one(self.ram_cache_bytes.load(Relaxed) as f64));
        metric("ram_cache_entries", "gauge", "Slot contents kept in RAM.", one(self.ram_cache_entries.load(Relaxed) as f64));
        metric("queue_depth", "gauge", "Requests waiting for a slot.", one(self.queue_depth.load(Relaxed) as f64));
        metric("slots_busy", "gauge", "Slots prefilling or decoding.", one(self.slots_busy.load(Relaxed) as f64));
        metric("slots_total", "gauge", "Slots (--parallel).", one(slots_total as f64));
        let per = |f: &dyn Fn(&engine::matrix::stats::EngineStats) -> f64| {
            engines.iter().map(|(n, e)| (format!("{{engine=\"{n}\"}}"), f(e))).collect::<Vec<_>>()
        };
        metric("engine_matmuls_total", "counter", "Weight matmuls run, by engine.", per(&|e| e.matmuls as f64));
        metric("engine_seconds_total", "counter", "Time inside each engine's matmuls.", per(&|e| e.time.as_secs_f64()));
        metric("engine_flops_total", "counter", "Floating-point operations, by engine.", per(&|e| e.flops));
        metric("engine_failures_total", "counter", "Matmuls an engine failed (redone on the CPU).", per(&|e| e.failures as f64));
        s
    }
}
