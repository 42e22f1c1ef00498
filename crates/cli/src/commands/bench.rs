//! `tandem bench`: llama-bench's tests (ppN: prompt processing of N tokens in one pass;
//! tgN: N tokens generated one at a time) and its table, mean ± sd over repetitions.

use crate::engines::PlacementArgs;
use crate::load;
use anyhow::{bail, Result};
use engine::matrix::policy::Backend;
use engine::Runner;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Model file(s) (GGUF).
    #[arg(short = 'm', long, required = true, num_args = 1..)]
    model: Vec<PathBuf>,
    /// Prompt lengths to test (comma separated, 0 = none).
    #[arg(short = 'p', long = "n-prompt", default_value = "512", value_delimiter = ',')]
    n_prompt: Vec<usize>,
    /// Generation lengths to test (comma separated, 0 = none).
    #[arg(short = 'n', long = "n-gen", default_value = "128", value_delimiter = ',')]
    n_gen: Vec<usize>,
    /// Context depths to test at (comma separated, llama-bench's -d): each test runs after
    /// this many tokens are already in the cache (processed before the timing starts).
    #[arg(short = 'd', long = "n-depth", default_value = "0", value_delimiter = ',')]
    n_depth: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    repetitions: usize,
    /// CPU threads; a comma-separated list runs every test at each (as llama-bench's -t).
    #[arg(short = 't', long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Prompt tokens per forward step.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: usize,
    /// Output format: md, csv or json.
    #[arg(short = 'o', long, default_value = "md")]
    output: String,
    /// Instead of the tests: prompt-processing throughput at each of these batch sizes,
    /// for each engine (e.g. 1,8,16,32,64,128,256,512,1024).
    #[arg(long = "sweep-batch", value_delimiter = ',')]
    sweep_batch: Vec<usize>,
    /// With --sweep-batch: also draw the sweep as an SVG plot in this file.
    #[arg(long, requires = "sweep_batch")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    placement: PlacementArgs,
}

struct Row {
    file: String,
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    model: String,
    size_mib: f64,
    params_m: f64,
    backend: String,
    threads: usize,
    test: String,
    mean: f64,
    sd: f64,
    /// The process's peak resident memory after the test, MiB (None where the OS does not say).
    peak_rss_mib: Option<f64>,
    /// Device memory the accelerators hold after the test, MiB (None without one that says).
    device_mib: Option<f64>,
    /// Bytes of weights a decode step reads (dense models).
    decode_bytes: Option<u64>,
}

/// Device memory every accelerator of `r` holds now, MiB, if any says.
fn device_mib(r: &Runner) -> Option<f64> {
    let held: Vec<usize> = r.dispatcher.accelerators().iter().filter_map(|e| e.device_memory()).collect();
    (!held.is_empty()).then(|| held.iter().sum::<usize>() as f64 / (1 << 20) as f64)
}

/// Peak resident set size of this process so far (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn main(a: Args) -> Result<()> {
    if !["md", "csv", "json"].contains(&a.output.as_str()) {
        bail!("unknown output format '{}' (md, csv, json)", a.output);
    }
    let thread_counts = if a.threads.is_empty() {
        vec![load::default_threads()]
    } else {
        a.threads.clone()
    };
    if thread_counts.contains(&0) {
        bail!("-t takes thread counts of at least 1");
    }
    if !a.sweep_batch.is_empty() {
        if thread_counts.len() > 1 {
            bail!("--sweep-batch runs at one thread count: give -t once");
        }
        return sweep_main(&a, thread_counts[0]);
    }
    let mut rows = Vec::new();
    for path in &a.model {
        for &threads in &thread_counts {
            bench_model(&a, path, threads, &mut rows)?;
        }
    }
    print!("{}", render(&rows, &a.output));
    report_bandwidth(&rows);
    Ok(())
}

/// Every test of `a` on one model at one thread count, appended to `rows`.
fn bench_model(a: &Args, path: &std::path::Path, threads: usize, rows: &mut Vec<Row>) -> Result<()> {
    let (runner, _) = load::model(path, threads, &a.placement)?;
    let file = &runner.model.file;
    let c = &runner.model.config;
    let size: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    let params: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    let ftype = file
        .get("general.file_type")
        .and_then(|v| v.as_u32())
        .and_then(ftype_name)
        .map(str::to_string)
        .or_else(|| {
            file.tensors()
                .iter()
                .find(|t| t.name.ends_with("ffn_down.weight"))
                .map(|t| t.ty.name().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let name = format!("{} {:.0}M {}", c.arch, params as f64 / 1e6, ftype);
    let tests: Vec<(usize, bool)> =
        a.n_prompt.iter().filter(|&&n| n > 0).map(|&n| (n, true)).chain(a.n_gen.iter().filter(|&&n| n > 0).map(|&n| (n, false))).collect();
    for &depth in &a.n_depth {
        let base = Depth::prefill(&runner, depth, a.batch_size)?;
        for &(n, prompt) in &tests {
            let kind = if prompt { "pp" } else { "tg" };
            // llama-bench's names, "@ dN" for a test at a depth.
            let test = if depth == 0 { format!("{kind}{n}") } else { format!("{kind}{n} @ d{depth}") };
            // One warm-up run (page in the mmap, prepare weights), then the measured ones.
            let mut speeds = Vec::new();
            for rep in 0..=a.repetitions {
                let tps = if prompt { run_pp_at(&runner, &base, n, a.batch_size)? } else { run_tg_at(&runner, &base, n)? };
                if rep > 0 {
                    speeds.push(tps);
                }
            }
            let mean = speeds.iter().sum::<f64>() / speeds.len() as f64;
            let sd = if speeds.len() > 1 {
                (speeds.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (speeds.len() - 1) as f64).sqrt()
            } else {
                0.0
            };
            rows.push(Row {
                file: path.display().to_string(),
                n_prompt: if prompt { n } else { 0 },
                n_gen: if prompt { 0 } else { n },
                n_depth: depth,
                model: name.clone(),
                size_mib: size as f64 / (1 << 20) as f64,
                params_m: params as f64 / 1e6,
                backend: backend_label(&runner, &a.placement.backend),
                threads,
                test,
                mean,
                sd,
                peak_rss_mib: peak_rss_mib(),
                device_mib: device_mib(&runner),
                decode_bytes: runner.model.config.moe.is_none().then(|| decode_bytes(file)),
            });
        }
    }
    eprint!("{}", runner.dispatcher.summary(&runner.model.layers));
    Ok(())
}

/// Decode is a stream of the weights: each generation test's rate against the machine's read
/// bandwidth at its thread count. Measured after the table (its buffer would count in the
/// peak RSS of the tests after it).
fn report_bandwidth(rows: &[Row]) {
    let mut measured: Vec<(usize, f64)> = Vec::new();
    // At a depth each token also reads the cache: the weights alone would undercount.
    for r in rows.iter().filter(|r| r.n_gen > 0 && r.n_depth == 0) {
        let Some(per_token) = r.decode_bytes else { continue };
        let bw = match measured.iter().find(|(t, _)| *t == r.threads) {
            Some(&(_, bw)) => bw,
            None => {
                let bw = engine::cpu::bandwidth::read_bandwidth(r.threads, 512, 3);
                measured.push((r.threads, bw));
                bw
            }
        };
        let streamed = per_token as f64 * r.mean;
        eprintln!(
            "{} {}: {} threads stream the weights ({:.0} MiB a token) at {:.1} GB/s, {:.0}% of the {:.1} GB/s this machine reads with {} threads",
            r.model,
            r.test,
            r.threads,
            per_token as f64 / (1 << 20) as f64,
            streamed / 1e9,
            100.0 * streamed / bw,
            bw / 1e9,
            r.threads
        );
    }
}

/// Bytes of weights a decode step reads: every tensor but the token embeddings (one row a
/// token), which count only when they are also the output projection (tied).
fn decode_bytes(file: &gguf::GgufFile) -> u64 {
    let tensors = file.tensors();
    let tied = !tensors.iter().any(|t| t.name == "output.weight");
    tensors.iter().filter(|t| tied || t.name != "token_embd.weight").map(|t| t.n_bytes).sum()
}

fn sweep_main(a: &Args, threads: usize) -> Result<()> {
    if a.sweep_batch.contains(&0) {
        bail!("--sweep-batch sizes must be at least 1");
    }
    let mut all = Vec::new();
    for path in &a.model {
        let mut points = super::sweep::run(path, threads, &a.placement, &a.sweep_batch, a.repetitions)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        println!("{name}, {threads} threads: prompt processing t/s against N\n");
        print!("{}", super::sweep::table(&points));
        if a.model.len() > 1 {
            points.iter_mut().for_each(|p| p.engine = format!("{name} {}", p.engine));
        }
        all.extend(points);
    }
    if let Some(plot) = &a.plot {
        let title = format!("prompt processing against batch size, {threads} threads");
        super::sweep::write_plot(plot, &all, &title)?;
        eprintln!("wrote {}", plot.display());
    }
    Ok(())
}

fn backend_label(r: &Runner, backend: &Backend) -> String {
    let accel: Vec<&str> = r.dispatcher.accelerators().iter().map(|e| e.name()).collect();
    if *backend == Backend::Cpu || accel.is_empty() {
        "CPU".into()
    } else {
        format!("CPU+{}", accel.join("+"))
    }
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| token_at(i, vocab)).collect()
}

/// Token `i` of the benchmark's prompt: deterministic ids spread over the vocabulary, as
/// llama-bench uses random ones.
fn token_at(i: usize, vocab: usize) -> u32 {
    ((i * 7919 + 17) % vocab) as u32
}

pub(crate) fn run_pp(r: &Runner, n: usize, batch: usize) -> Result<f64> {
    run_pp_at(r, &Depth::none(), n, batch)
}

/// The context a test starts from: `depth` tokens already processed. All but the last are
/// prefilled once and kept as a snapshot; each run restores it and processes the last one
/// untimed, so an engine's own copy of the rows (the GPU's) is current before the clock starts.
struct Depth {
    depth: usize,
    base: Option<engine::kv_cache::KvSnapshot>,
}

impl Depth {
    fn none() -> Self {
        Depth { depth: 0, base: None }
    }

    fn prefill(r: &Runner, depth: usize, batch: usize) -> Result<Self> {
        if depth == 0 {
            return Ok(Self::none());
        }
        let mut cache = r.new_cache(depth);
        engine::generate::prefill(r, &mut cache, &tokens(depth - 1, r.model.config.n_vocab), batch)?;
        Ok(Depth { depth, base: Some(cache.snapshot()) })
    }

    /// A cache at this depth with room for `extra` more tokens.
    fn cache(&self, r: &Runner, extra: usize) -> Result<engine::kv_cache::KvCache> {
        let mut cache = r.new_cache(self.depth + extra);
        if let Some(base) = &self.base {
            if !cache.restore(base) {
                bail!("the depth's cache does not fit a {}-token context", self.depth + extra);
            }
            r.forward(&mut cache, &[token_at(self.depth - 1, r.model.config.n_vocab)], 0..0)?;
        }
        Ok(cache)
    }
}

fn run_pp_at(r: &Runner, depth: &Depth, n: usize, batch: usize) -> Result<f64> {
    let toks = tokens(n, r.model.config.n_vocab);
    let mut cache = depth.cache(r, n)?;
    let t0 = Instant::now();
    engine::generate::prefill(r, &mut cache, &toks, batch)?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn run_tg_at(r: &Runner, depth: &Depth, n: usize) -> Result<f64> {
    let mut cache = depth.cache(r, n + 1)?;
    let mut t = 1u32;
    let t0 = Instant::now();
    for _ in 0..n {
        let logits = r.forward(&mut cache, &[t], 0..1)?;
        t = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |x| x.0 as u32);
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn render(rows: &[Row], format: &str) -> String {
    let mut s = String::new();
    match format {
        "csv" => {
            s.push_str("model,size_mib,params_m,backend,threads,test,avg_ts,stddev_ts,peak_rss_mib,device_mib\n");
            for r in rows {
                let rss = r.peak_rss_mib.map_or(String::new(), |m| format!("{m:.1}"));
                let dev = r.device_mib.map_or(String::new(), |m| format!("{m:.1}"));
                s.push_str(&format!(
                    "\"{}\",{:.2},{:.2},{},{},{},{:.2},{:.2},{rss},{dev}\n",
                    r.model, r.size_mib, r.params_m, r.backend, r.threads, r.test, r.mean, r.sd
                ));
            }
        }
        "json" => {
            // llama-bench's field names, so tools that read its JSON read ours.
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "model_filename": r.file,
                        "model_type": r.model,
                        "model_size": (r.size_mib * (1 << 20) as f64) as u64,
                        "model_n_params": (r.params_m * 1e6) as u64,
                        "backends": r.backend,
                        "backend": r.backend,
                        "n_threads": r.threads,
                        "n_prompt": r.n_prompt,
                        "n_gen": r.n_gen,
                        "n_depth": r.n_depth,
                        "test": r.test,
                        "avg_ts": r.mean,
                        "stddev_ts": r.sd,
                        "peak_rss_bytes": r.peak_rss_mib.map(|m| (m * (1 << 20) as f64) as u64),
                        "device_memory_bytes": r.device_mib.map(|m| (m * (1 << 20) as f64) as u64),
                    })
                })
                .collect();
            s.push_str(&serde_json::to_string_pretty(&items).expect("serializable"));
            s.push('\n');
        }
        _ => {
            // llama-bench's columns, then the process's peak resident memory after each test,
            // and the accelerators' device memory when one says.
            let dev = rows.iter().any(|r| r.device_mib.is_some());
            s.push_str(
                "| model                          |       size |     params | backend    | threads |            test |                  t/s |    peak RSS |",
            );
            s.push_str(if dev { "  device mem |\n" } else { "\n" });
            s.push_str(
                "| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: | ----------: |",
            );
            s.push_str(if dev { " ----------: |\n" } else { "\n" });
            for r in rows {
                let rss = r.peak_rss_mib.map_or("-".to_string(), |m| format!("{m:.0} MiB"));
                s.push_str(&format!(
                    "| {:<30} | {:>6.2} MiB | {:>8.2} M | {:<10} | {:>7} | {:>15} | {:>20} | {:>11} |",
                    r.model,
                    r.size_mib,
                    r.params_m,
                    r.backend,
                    r.threads,
                    r.test,
                    format!("{:.2} ± {:.2}", r.mean, r.sd),
                    rss
                ));
                if dev {
                    s.push_str(&format!(" {:>11} |", r.device_mib.map_or("-".to_string(), |m| format!("{m:.0} MiB"))));
                }
                s.push('\n');
            }
        }
    }
    s
}

/// llama.cpp's names for `general.file_type` (the mostly-used quantization of a file).
fn ftype_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}
