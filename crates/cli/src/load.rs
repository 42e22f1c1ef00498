//! Opening models for the commands: a progress bar on a terminal, clear errors.

use anyhow::{Context, Result};
use engine::{Model, Runner};
use tokenizer::Tokenizer;
use gguf::GgufFile;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use crate::engines::PlacementArgs;
use std::sync::Arc;

/// Open a GGUF file, naming the path in any error.
pub fn open_gguf(path: &Path) -> Result<Arc<GgufFile>> {
    if !path.exists() {
        anyhow::bail!("model file not found: {}", path.display());
    }
    let file = GgufFile::open(path).with_context(|| format!("cannot load {}", path.display()))?;
    Ok(Arc::new(file))
}

/// Load a model's tokenizer only (works on vocab-only files).
pub fn tokenizer(file: &GgufFile, path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_gguf(file).with_context(|| format!("cannot load the tokenizer of {}", path.display()))
}

/// Load model and tokenizer, with a progress bar when stderr is a terminal.
pub fn model(path: &Path, threads: usize, placement: &PlacementArgs) -> Result<(Runner, Tokenizer)> {
    let file = open_gguf(path)?;
    let tok = tokenizer(&file, path)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        b
    });
    let model = Model::from_file(file, &mut |done, total| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    })
    .with_context(|| format!("cannot load {}", path.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let dispatcher = placement.dispatcher(&model)?;
    if placement.verbose {
        eprintln!("{}", cpu_summary(threads));
    }
    Ok((Runner::with_dispatcher(model, threads, dispatcher)?, tok))
}

/// What the CPU path runs on: its kernels' instruction set, the prefill GEMMs' one, the
/// threads, and whether AMX tiles are usable here (and why not).
pub fn cpu_summary(threads: usize) -> String {
    let level = quant::simd_level();
    let gemm = quant::gemm_isa().map_or("none (dot kernels)", |isa| isa.name());
    let amx = match quant::amx_support() {
        quant::AmxSupport::Usable if quant::gemm_isa() == Some(quant::GemmIsa::Amx) => "used for prefill".to_string(),
        quant::AmxSupport::Usable => "usable, turned off by TANDEM_AMX=0".to_string(),
        quant::AmxSupport::Unavailable(why) => format!("not used ({why})"),
    };
    format!("cpu: {level} kernels, prefill GEMMs on {gemm}, {threads} threads; AMX: {amx}")
}

/// llama.cpp's default thread count: the available cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4)
}
