//! The `tandem` binary end to end: real models, real files, real processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure is exactly one line on stderr, starting with "error:", and exit code 1.
fn assert_clean_error(o: &Output, mentions: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected, got: {err}");
    assert!(err.starts_with("error: ") && err.contains(mentions), "'{err}' should mention '{mentions}'");
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn tokenize_ids_match_llama_tokenize_format_and_values() {
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/reference/tokenize.json")).unwrap(),
    )
    .unwrap();
    let recs = fx["cases"].as_array().unwrap();
    let m = model(SMOLLM);
    let mut checked = 0;
    for r in recs.iter().filter(|r| r["model"] == SMOLLM && r["parse_special"] == true).take(5) {
        let text = r["text"].as_str().unwrap();
        if text.is_empty() {
            continue;
        }
        let ids: Vec<String> = r["ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
        let o = tandem(&["tokenize", "-m", p(&m), "-p", text, "--ids"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim_end(), format!("[{}]", ids.join(", ")), "text {text:?}");
        checked += 1;
    }
    assert!(checked >= 3);
}

#[test]
fn tokenize_works_on_a_vocab_only_file() {
    let m = model(SMOLLM);
    let f = gguf::GgufFile::open(&m).unwrap();
    let mut w = gguf::GgufWriter::new();
    for (k, v) in f.metadata() {
        w.set(k, v.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.gguf");
    w.write_file(&vocab).unwrap();
    let text = "Hello world! <|im_start|>user\n  spaces\tand tabs 12345";
    let a = tandem(&["tokenize", "-m", p(&m), "-p", text, "--ids"]);
    let b = tandem(&["tokenize", "-m", p(&vocab), "-p", text, "--ids"]);
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(stdout(&a), stdout(&b));
    // A vocab-only file cannot generate, and says so.
    let o = tandem(&["run", "-m", p(&vocab), "-p", "hi", "-n", "1"]);
    assert_clean_error(&o, "vocab-only");
}

#[test]
fn bad_inputs_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    assert_clean_error(&tandem(&["run", "-m", "/no/such/model.gguf", "-p", "hi"]), "not found");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model at all").unwrap();
    assert_clean_error(&tandem(&["run", "-m", p(&junk), "-p", "hi"]), "not a GGUF file");
    let trunc = dir.path().join("trunc.gguf");
    let bytes = std::fs::read(model(SMOLLM)).unwrap();
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(&tandem(&["info", "-m", p(&trunc)]), "extends past the end");

    let mut w = gguf::GgufWriter::new();
    w.set("general.architecture", gguf::Value::String("mamba".into()));
    let f = gguf::GgufFile::open(model(SMOLLM)).unwrap();
    for (k, v) in f.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
        w.set(k, v.clone());
    }
    w.add_tensor("x", &[32], gguf::GgmlType::F32, vec![0; 128]).unwrap();
    let mamba = dir.path().join("mamba.gguf");
    w.write_file(&mamba).unwrap();
    assert_clean_error(&tandem(&["run", "-m", p(&mamba), "-p", "hi"]), "unsupported architecture 'mamba'");

    let long = "word ".repeat(200);
    assert_clean_error(
        &tandem(&["run", "-m", p(&model(SMOLLM)), "-p", &long, "-c", "64"]),
        "context holds 64",
    );
}

#[test]
fn run_streams_text_and_seeds_reproduce() {
    let m = model(SMOLLM);
    let args = |seed: &str| {
        tandem(&["run", "-m", p(&m), "-p", "Once upon a time", "-n", "16", "--temp", "1.0", "--seed", seed, "-t", "2"])
    };
    let (a, b, c) = (args("42"), args("42"), args("7"));
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b), "same seed, same text");
    assert_ne!(stdout(&a), stdout(&c), "another seed, other text");
    assert!(!stdout(&a).contains("Once upon a time"), "the prompt is not echoed");
    assert!(stderr(&a).contains("tokens/s"));
}

/// `tandem gen-model ARGS -o DIR/NAME`, which must succeed; the file's path.
fn gen_model(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let o = tandem(&[&["gen-model"], args, &["-o", p(&out)]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn gen_model_writes_a_model_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = gen_model(dir.path(), "tiny.gguf", &["--preset", "tiny", "--layers", "2", "--type", "q8_0"]);
    let info = tandem(&["info", "-m", p(&out)]);
    let text = stdout(&info);
    assert!(text.contains("blk.1.ffn_down.weight") && text.contains("Q8_0"), "{text}");
    let r = tandem(&["run", "-m", p(&out), "-p", "hello", "-n", "8", "--temp", "0", "--ignore-eos"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("generation: 8 tokens"), "{}", stderr(&r));
    let bad = tandem(&["gen-model", "--dim", "96", "--heads", "4", "--type", "q4_k", "-o", p(&dir.path().join("bad.gguf"))]);
    assert_clean_error(&bad, "block size");
}

#[test]
fn n_cpu_moe_keeps_experts_on_the_cpu_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = gen_model(dir.path(), "moe.gguf", &["--preset", "tiny", "--arch", "gemma4", "--layers", "4", "--experts", "4", "--type", "q8_0"]);
    let run = |flags: &[&str]| tandem(&[&["run", "-m", p(&out), "-p", "hello", "-n", "4", "--temp", "0", "--ignore-eos"], flags].concat());
    let r = run(&["--n-cpu-moe", "3"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("placement: experts of 3 of 4 layers kept on the CPU (--n-cpu-moe)"), "{}", stderr(&r));
    let all = run(&["--cpu-moe"]);
    assert!(stderr(&all).contains("experts of 4 of 4 layers kept on the CPU (--cpu-moe)"), "{}", stderr(&all));
    assert_eq!(stdout(&r), stdout(&run(&[])), "placement flags do not change a CPU run's text");
}

/// llama.cpp's `-ngl N` of more layers: the weights of the other layers (and the output)
/// never reach the accelerator, and the summary says so. Seen through the reference engine,
/// which takes a prompt's matmuls as a GPU would.
#[test]
fn partial_ngl_keeps_the_other_layers_weights_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = gen_model(dir.path(), "four.gguf", &["--preset", "tiny", "--layers", "4", "--type", "q8_0"]);
    let prompt = "hello world ".repeat(40);
    // The reference engine's matmul count, from the placement summary.
    let ref_matmuls = |ngl: &str| -> u64 {
        let r = tandem(&["run", "-m", p(&out), "-p", &prompt, "-n", "2", "--backend", "ref", "-ngl", ngl]);
        assert!(r.status.success(), "{}", stderr(&r));
        let err = stderr(&r);
        let row = err.lines().find(|l| l.starts_with("placement: ref ")).unwrap_or_else(|| panic!("no ref row: {err}"));
        row.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{row}"))
    };
    let (all, half) = (ref_matmuls("0"), ref_matmuls("2"));
    assert!(half > 0 && half * 2 <= all, "-ngl 2 of 4 layers: {half} matmuls on the engine, {all} with every layer's weights movable");
    let r = tandem(&["run", "-m", p(&out), "-p", &prompt, "-n", "2", "--backend", "ref", "-ngl", "2"]);
    assert!(stderr(&r).contains("placement: the weights of 2 of 4 layers kept on the CPU (-ngl)"), "{}", stderr(&r));
}

#[test]
fn gen_model_takes_a_real_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("phi3.gguf");
    let vocab = model("llama-cpp/vocab/ggml-vocab-phi-3.gguf");
    let o = tandem(&["gen-model", "--arch", "phi3", "--layers", "2", "--type", "q8_0", "--vocab-from", p(&vocab), "-o", p(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("vocab 32064"), "{}", stderr(&o));
    let text = "Hello world, <|user|> ünïcödé 1234\n  spaces";
    let ids = |m: &Path| stdout(&tandem(&["tokenize", "-m", p(m), "-p", text, "--ids"]));
    assert_eq!(ids(&out), ids(&vocab), "the generated model tokenizes as the vocabulary file does");
    let r = tandem(&["run", "-m", p(&out), "-p", text, "-n", "4", "--temp", "0", "--ignore-eos"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let bad = tandem(&["gen-model", "--vocab-from", p(&model(SMOLLM)).replace(".gguf", ".missing").as_str(), "-o", p(&dir.path().join("x.gguf"))]);
    assert_clean_error(&bad, "cannot read");
}

#[test]
fn perplexity_prints_llama_cpp_final_line() {
    let o = tandem(&[
        "perplexity", "-m", p(&model(SMOLLM)), "-f", p(&root().join("tests/fixtures/reference/GPL-3.txt")),
        "-c", "64", "--chunks", "2", "-t", "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    assert!(line.starts_with("Final estimate: PPL = ") && line.contains(" +/- "), "{line}");
}

#[test]
fn kl_divergence_base_is_written_and_compared_in_llama_perplexity_format() {
    let dir = std::env::temp_dir().join(format!("tandem-kld-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("smollm.kld");
    let text = root().join("tests/fixtures/reference/GPL-3.txt");
    let o = tandem(&["perplexity", "-m", p(&model(SMOLLM)), "-f", p(&text), "-c", "128", "--chunks", "2", "-t", "2", "--kl-divergence-base", p(&base)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Header (8 + 3×4 bytes), 2×128 tokens, then 2 chunks × 63 rows × (49152 + 4) u16.
    let len = std::fs::metadata(&base).unwrap().len();
    assert_eq!(len, 20 + 2 * 128 * 4 + 2 * 63 * 49156 * 2);
    // The same model on the CPU against its own base: only the stored rounding differs.
    let same = tandem(&["perplexity", "-m", p(&model(SMOLLM)), "--kl-divergence-base", p(&base), "--kl-divergence", "-t", "2"]);
    assert!(same.status.success(), "{}", stderr(&same));
    let out = stdout(&same);
    let stat = |name: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no '{name}' in {out}"));
        line[name.len()..].trim_start_matches([' ', ':']).split_whitespace().next().unwrap().trim_end_matches('%').parse().unwrap()
    };
    assert!(stat("Mean    KLD") < 1e-4, "{out}");
    assert!(stat("Same top p") >= 99.0, "{out}");
    // Another engine (f32 weights, unquantized activations) diverges a little, not a lot.
    let other = tandem(&["perplexity", "-m", p(&model(SMOLLM)), "--kl-divergence-base", p(&base), "--kl-divergence", "-t", "2", "--backend", "ref", "--offload-min-batch", "1"]);
    assert!(other.status.success(), "{}", stderr(&other));
    let out = stdout(&other);
    let kld = out.lines().find(|l| l.starts_with("Mean    KLD")).unwrap().split_whitespace().nth(2).unwrap().parse::<f64>().unwrap();
    assert!(kld > 1e-5 && kld < 0.05, "{out}");
    // A file that is not a base is one clear error.
    let o = tandem(&["perplexity", "-m", p(&model(SMOLLM)), "--kl-divergence-base", p(&text), "--kl-divergence"]);
    assert_clean_error(&o, "_logits_");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_prints_a_llama_bench_table() {
    let o = tandem(&["bench", "-m", p(&model(SMOLLM)), "-p", "32", "-n", "4", "-r", "1", "-t", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("| model") && lines[0].contains("t/s"), "{out}");
    assert!(lines[2].contains("pp32") && lines[3].contains("tg4") && lines[2].contains(" ± "), "{out}");
    // Memory beside every speed: the peak RSS, at least the mapped model's size once it ran.
    assert!(lines[0].contains("peak RSS"), "{out}");
    let rss: f64 = lines[3].rsplit('|').nth(1).unwrap().trim().trim_end_matches(" MiB").parse().expect("a peak RSS in MiB");
    assert!(rss > 40.0, "peak RSS {rss} MiB below the model's size: {out}");
    // Decode against the machine's read bandwidth (SmolLM2's output is its tied embeddings: all 92 MiB a token).
    let err = stderr(&o);
    assert!(err.lines().any(|l| l.starts_with("llama 135M Q4_1 tg4: 2 threads stream the weights (92 MiB a token) at ") && l.contains("GB/s this machine reads")), "{err}");
    let csv = tandem(&["bench", "-m", p(&model(SMOLLM)), "-p", "16", "-n", "0", "-r", "1", "-o", "csv"]);
    assert!(stdout(&csv).starts_with("model,size_mib"), "{}", stdout(&csv));
    // A thread list (llama-bench's -t 1,2): every test at each count, in order.
    let scaling = tandem(&["bench", "-m", p(&model(SMOLLM)), "-p", "16", "-n", "2", "-r", "1", "-t", "1,2", "-o", "csv"]);
    let out = stdout(&scaling);
    let threads: Vec<&str> = out.lines().skip(1).map(|l| l.split(',').nth(4).unwrap()).collect();
    assert_eq!(threads, ["1", "1", "2", "2"], "{out}");
    assert_clean_error(&tandem(&["bench", "-m", p(&model(SMOLLM)), "-t", "0"]), "at least 1");
}

/// llama-bench's -d: every test again at each context depth, named as llama-bench names it.
#[test]
fn bench_runs_the_tests_at_each_depth() {
    let o = tandem(&["bench", "-m", p(&model(SMOLLM)), "-p", "16", "-n", "4", "-d", "0,300", "-r", "1", "-t", "2", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("bench -o json prints JSON");
    let rows = v.as_array().unwrap();
    let tests: Vec<(&str, u64)> = rows.iter().map(|r| (r["test"].as_str().unwrap(), r["n_depth"].as_u64().unwrap())).collect();
    assert_eq!(tests, [("pp16", 0), ("tg4", 0), ("pp16 @ d300", 300), ("tg4 @ d300", 300)]);
    assert!(rows.iter().all(|r| r["avg_ts"].as_f64().unwrap() > 0.0));
}

#[test]
fn bench_json_has_llama_bench_fields() {
    let o = tandem(&["bench", "-m", p(&model(SMOLLM)), "-p", "16", "-n", "2", "-r", "1", "-t", "2", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("bench -o json prints JSON");
    let rows = v.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 2);
    for r in rows {
        for key in ["model_filename", "model_type", "n_prompt", "n_gen", "n_threads", "avg_ts", "stddev_ts", "backends"] {
            assert!(r.get(key).is_some(), "{key} missing from {r}");
        }
        assert!(r["model_filename"].as_str().unwrap().ends_with(SMOLLM) && r["n_threads"] == 2);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 40 << 20, "peak RSS in bytes: {r}");
    }
    assert_eq!((rows[0]["n_prompt"].as_u64(), rows[0]["n_gen"].as_u64()), (Some(16), Some(0)));
    assert_eq!((rows[1]["n_prompt"].as_u64(), rows[1]["n_gen"].as_u64()), (Some(0), Some(2)));
}

#[test]
fn bench_sweeps_batch_sizes_per_engine_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sweep.svg");
    let m = model(SMOLLM);
    let o = tandem(&["bench", "-m", p(&m), "--sweep-batch", "1,8", "-r", "1", "-t", "2", "--backend", "ref", "--plot", p(&svg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("| N | cpu t/s | ref t/s |"), "{out}");
    for n in ["| 1 | ", "| 8 | "] {
        let row = out.lines().find(|l| l.starts_with(n)).unwrap_or_else(|| panic!("no row {n} in {out}"));
        let cells: Vec<f64> = row.split('|').filter_map(|c| c.trim().parse().ok()).skip(1).collect();
        assert!(cells.len() == 2 && cells.iter().all(|&v| v > 0.0), "{row}");
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.matches("<polyline").count() == 2, "{plot}");
    assert_clean_error(&tandem(&["bench", "-m", p(&m), "--sweep-batch", "0,8"]), "at least 1");
}

#[test]
fn placement_is_visible_and_backends_are_checked() {
    let m = model(SMOLLM);
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(10);
    let o = tandem(&["run", "-m", p(&m), "-p", &long, "-n", "2", "--temp", "0", "--backend", "ref", "--verbose"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("-> ref: N=") && err.contains("-> cpu: N=1 < --offload-min-batch 64"), "{err}");
    // The CPU's kernels and whether AMX is used (never on CPUID's word alone).
    assert!(err.lines().any(|l| l.starts_with("cpu: ") && l.contains(" kernels, ") && l.contains("; AMX: ")), "{err}");
    assert!(err.lines().any(|l| l.starts_with("placement: ref") && l.contains("/210/210")), "{err}");
    assert_clean_error(&tandem(&["run", "-m", p(&m), "-p", "hi", "--backend", "tpu"]), "unknown backend 'tpu'");
    // llama.cpp's -ngl, and what the GPU keeps of each weight (no GPU here: accepted, no effect).
    let o = tandem(&["run", "-m", p(&m), "-p", "hi", "-n", "1", "-ngl", "99", "--gpu-weights", "both"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tandem(&["run", "-m", p(&m), "-p", "hi", "-n", "1", "-ngl", "5"]);
    assert!(o.status.success() && stderr(&o).contains("decode runs on the CPU (a decode step split"), "{}", stderr(&o));
    assert!(stderr(&tandem(&["run", "-m", p(&m), "-p", "hi", "-ngl", "some"])).contains("`auto` or `all`"));
    assert!(stderr(&tandem(&["run", "-m", p(&m), "-p", "hi", "--gpu-weights", "q4"])).contains("gguf, f16, both"));
    let cal = tempfile::tempdir().unwrap();
    let f = cal.path().join("cal.json");
    std::fs::write(&f, "{not json").unwrap();
    assert_clean_error(&tandem(&["run", "-m", p(&m), "-p", "hi", "--calibration", p(&f)]), "not a calibration file");
}

/// One raw HTTP request to a running server; (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|b| b.1.to_string()).unwrap_or_default();
    (status, body)
}

/// llama-server's flags as its users' scripts pass them: one-dash `-np` and `-fa`, sampling
/// defaults (`--temp`, `-n`) for requests that leave them out, `--no-slots`.
#[test]
fn serve_takes_llama_server_flags() {
    use std::io::{BufRead, BufReader};
    let m = model(SMOLLM);
    /// The server process, killed however the test ends (it holds the test's stdout).
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Server(
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["serve", "-m", p(&m), "--port", "0", "-np", "2", "-fa", "--temp", "0", "-n", "6", "--no-slots", "--metrics", "--jinja", "-t", "2", "--embeddings", "--pooling", "last"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve exited before listening").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let want = tandem(&["run", "-m", p(&m), "-p", "The capital of France is", "-n", "6", "--temp", "0", "-t", "2"]);
    let (status, body) = http(&addr, "POST", "/v1/completions", r#"{"prompt": "The capital of France is"}"#);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 6, "-n 6 is the default limit: {v}");
    let want = stdout(&want);
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want.strip_suffix('\n').unwrap_or(&want), "--temp 0 is the default: greedy");
    assert_eq!(http(&addr, "GET", "/slots", "").0, 501);
    let (_, props) = http(&addr, "GET", "/props", "");
    assert!(props.contains("\"total_slots\":2"), "{props}");
    let (status, body) = http(&addr, "POST", "/v1/embeddings", r#"{"input": "hello"}"#);
    assert!(status == 200 && body.contains("\"embedding\":["), "--embeddings: {body}");
    drop(child);
    // A bad value is one clear error.
    let o = tandem(&["serve", "-m", p(&m), "--port", "0", "-fa", "sometimes"]);
    assert_clean_error(&o, "--flash-attn");
    let o = tandem(&["serve", "-m", p(&m), "--port", "0", "--embeddings", "--pooling", "rank"]);
    assert_clean_error(&o, "pooling 'rank'");
    let o = tandem(&["serve", "-m", p(&m), "--port", "0", "--api-key-file", "/nonexistent/keys.txt"]);
    assert_clean_error(&o, "--api-key-file /nonexistent/keys.txt");
    let empty = std::env::temp_dir().join(format!("tandem-no-keys-{}", std::process::id()));
    std::fs::write(&empty, "\n  \n").unwrap();
    let o = tandem(&["serve", "-m", p(&m), "--port", "0", "--api-key-file", p(&empty)]);
    assert_clean_error(&o, "holds no key");
    std::fs::remove_file(&empty).ok();
    let o = tandem(&["serve", "-m", p(&m), "--port", "0", "--api-key", " , "]);
    assert_clean_error(&o, "--api-key holds no key");
}
