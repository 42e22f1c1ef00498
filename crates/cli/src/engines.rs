//! The matrix-engine registry and the placement flags shared by run, perplexity and bench.
//! Adding an engine is one entry in [`REGISTRY`].

use anyhow::{Context, Result};
use engine::matrix::cache::CacheBudget;
use engine::matrix::disk_cache::DiskCache;
use engine::matrix::dispatch::CPU_HINT;
use engine::matrix::policy::{Backend, Calibration, PlacementPolicy};
use engine::matrix::reference::ReferenceEngine;
use engine::matrix::{Dispatcher, MatrixEngine};
use engine::Model;
use std::path::PathBuf;
use std::sync::Arc;

/// One accelerator: its name, whether `--backend auto` may pick it, and its constructor.
pub struct EngineEntry {
    /// Name used by `--backend`.
    pub name: &'static str,
    /// Chosen by `--backend auto` when available.
    pub in_auto: bool,
    /// Build it for a loaded model (never fails: an engine that cannot run reports itself unavailable).
    pub make: fn(&PlacementArgs, &Model) -> Arc<dyn MatrixEngine>,
}

/// Every accelerator tandem knows.
pub static REGISTRY: &[EngineEntry] = &[
    // A CPU-backed accelerator with compile-per-bucket behaviour, for testing placement.
    EngineEntry {
        name: "ref",
        in_auto: false,
        make: |a, _| match a.disk_cache() {
            Some(d) => Arc::new(ReferenceEngine::with_disk_cache(d)),
            None => Arc::new(ReferenceEngine::new()),
        },
    },
    // NVIDIA tensor cores: weights dequantized on the card once, activations cross in f16.
    EngineEntry {
        name: "cuda",
        in_auto: true,
        make: |a, m| {
            Arc::new(cuda::CudaEngine::new(cuda::CudaOptions {
                gpu_mem: a.gpu_mem.map(|m| m << 20),
                kernel_cache: a.kernel_cache.clone(),
                // --verbose also prints where the card's time goes in each whole-stack call.
                profile_stack: a.verbose,
                graphs: opted_in("TANDEM_CUDA_GRAPHS"),
                untried: cuda::Untried {
                    split_attention: opted_in("TANDEM_CUDA_SPLIT_ATTENTION"),
                    moe: opted_in("TANDEM_CUDA_MOE"),
                    delta_net: opted_in("TANDEM_CUDA_DELTANET"),
                },
                decode: a.decode_on_gpu(m.layers.len()),
                weights: a.gpu_weights,
                model_f16_bytes: m.layers.iter().flat_map(|l| l.weights()).map(|(_, w)| w.rows * w.cols * 2).sum::<usize>() + m.output.rows * m.output.cols * 2,
                ..Default::default()
            }))
        },
    },
    // The Apple Neural Engine, planned for the model's matmul groups (few programs).
    EngineEntry { name: "ane", in_auto: true, make: |a, m| ane_engine(ane::ffi::macos::MacDriver::new(), a, m, true) },
    // Our MIL programs run by the MIL interpreter on the CPU: the ANE path, checkable anywhere.
    EngineEntry { name: "ane-sim", in_auto: false, make: |a, m| ane_engine(ane::sim::SimDriver::new(), a, m, false) },
];

/// `warm`: compile the planned programs now (with a progress bar on a terminal) rather
/// than on the first prefill; only where the driver is available.
fn ane_engine<D: ane::ffi::Driver + 'static>(driver: D, a: &PlacementArgs, model: &Model, warm: bool) -> Arc<dyn MatrixEngine> {
    // --kernel-cache keeps built programs (and the runtime's compiled models) across runs.
    let cfg = ane::AneConfig { cache_dir: a.kernel_cache.clone(), ..Default::default() };
    let engine = ane::AneEngine::new(driver, cfg);
    // Unavailable drivers are reported by availability(); planning never needs the device.
    if let Err(e) = engine.plan_model(model) {
        eprintln!("warning: ane: cannot plan the model's programs: {e}");
    } else if warm && engine.driver().availability().is_ok() {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template("ane: compiling [{bar:30}] {pos}/{len} programs").expect("valid template").progress_chars("=> "),
            );
            b
        });
        let report = engine.warm_up(&[], &mut |done, total| {
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if let Some(why) = report.failed.first() {
            eprintln!("warning: ane: {} of the model's programs failed to compile (their matmuls run on the CPU): {why}", report.failed.len());
        }
        if report.over_budget > 0 {
            eprintln!("warning: ane: {} programs exceed the compile budget (their matmuls run on the CPU)", report.over_budget);
        }
    }
    Arc::new(engine)
}

/// Placement flags.
#[derive(clap::Args, Clone)]
pub struct PlacementArgs {
    /// Where matmuls may run: cpu, auto (every available accelerator), or an engine name.
    #[arg(long, default_value = "auto")]
    pub backend: Backend,
    /// Smallest token batch an accelerator takes (without calibration).
    #[arg(long = "offload-min-batch", default_value_t = 64)]
    pub offload_min_batch: usize,
    /// Calibration file from `tandem calibrate` (default: ~/.cache/tandem/calibration.json if present).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Memory budget for prepared weights per engine, in MiB.
    #[arg(long = "gpu-mem")]
    pub gpu_mem: Option<usize>,
    /// Directory for prepared weights of engines whose preparation is expensive.
    #[arg(long = "kernel-cache")]
    pub kernel_cache: Option<PathBuf>,
    /// Log every placement decision and its reason.
    #[arg(long)]
    pub verbose: bool,
    /// Keep every mixture-of-experts layer's experts on the CPU (llama.cpp's --cpu-moe).
    #[arg(long = "cpu-moe", alias = "cmoe")]
    pub cpu_moe: bool,
    /// Keep the experts of the first N layers on the CPU (llama.cpp's --n-cpu-moe).
    #[arg(long = "n-cpu-moe", alias = "ncmoe", value_name = "N")]
    pub n_cpu_moe: Option<usize>,
    /// Layers whose weights live on the GPU (llama.cpp's -ngl): a number, `auto` or `all`.
    /// Every layer (`-ngl 99`) runs decode steps on the card too when the weights fit; without
    /// it (or 0) decode stays on the CPU and large prefill batches go to the card.
    #[arg(long = "n-gpu-layers", alias = "gpu-layers", value_name = "N", value_parser = parse_gpu_layers)]
    pub n_gpu_layers: Option<usize>,
    /// What the GPU keeps of each weight: `gguf` (its blocks as in the file: the least
    /// memory, decode reads them directly), `f16` (an f16 expansion: prefill GEMMs read it
    /// directly), `both`, or `auto` (f16 when the model's f16 expansion fits the card's
    /// budget, else gguf; --verbose says which).
    #[arg(long = "gpu-weights", default_value = "auto", value_name = "FORMAT")]
    pub gpu_weights: cuda::WeightFormat,
}

/// `-ngl`'s value: a layer count, or `auto`/`all` (every layer).
fn parse_gpu_layers(s: &str) -> std::result::Result<usize, String> {
    match s {
        "auto" | "all" => Ok(usize::MAX),
        n => n.parse().map_err(|_| format!("expected a number of layers, `auto` or `all`, got `{n}`")),
    }
}

/// The default calibration path.
pub fn default_calibration_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tandem").join("calibration.json"))
}

impl PlacementArgs {
    /// Whether decode steps may run on the GPU for a model of `layers` layers (`-ngl`). Not
    /// by default until the card's decode path has passed the GPU check on hardware.
    pub fn decode_on_gpu(&self, layers: usize) -> bool {
        match self.n_gpu_layers {
            None => false,
            Some(n) if n >= layers => true,
            Some(0) => false,
            Some(n) => {
                eprintln!(
                    "warning: -ngl {n} of {layers} layers: the weights of layers {n}.. and the output stay on the CPU; decode runs on the CPU (a decode step split between the GPU and the CPU is not built yet)"
                );
                false
            }
        }
    }

    /// The on-disk cache, if asked for and usable (a bad directory is reported, not fatal).
    pub fn disk_cache(&self) -> Option<DiskCache> {
        let dir = self.kernel_cache.as_ref()?;
        DiskCache::new(dir)
            .map_err(|e| eprintln!("warning: --kernel-cache {}: {e}; not caching on disk", dir.display()))
            .ok()
    }

    /// The accelerators this backend choice may use, built for `model`.
    pub fn accelerators(&self, model: &Model) -> Vec<Arc<dyn MatrixEngine>> {
        REGISTRY
            .iter()
            .filter(|e| match &self.backend {
                Backend::Cpu => false,
                Backend::Auto => e.in_auto,
                Backend::Named(n) => n == e.name,
            })
            .map(|e| (e.make)(self, model))
            .collect()
    }

    /// Build the dispatcher for `model`: policy, calibration, budgets.
    pub fn dispatcher(&self, model: &Model) -> Result<Dispatcher> {
        let calibration = match &self.calibration {
            Some(p) => Some(Calibration::load(p)?),
            None => default_calibration_path().filter(|p| p.exists()).and_then(|p| Calibration::load(&p).ok()),
        };
        let policy = PlacementPolicy::new(
            self.backend.clone(),
            self.offload_min_batch,
            calibration.as_ref(),
            CPU_HINT,
        );
        let accelerators = self.accelerators(model);
        // Without --gpu-mem, the smallest budget an engine reports (e.g. free VRAM less a reserve).
        let engine_budget = accelerators.iter().filter_map(|e| e.memory_budget()).min();
        let budget = CacheBudget {
            memory_bytes: self.gpu_mem.map(|m| m << 20).or(engine_budget).unwrap_or(usize::MAX),
            ..CacheBudget::default()
        };
        let mut dispatcher = Dispatcher::new(accelerators, policy, budget, self.verbose).context("cannot set up the matrix engines")?;
        // -ngl N of more layers: the rest (and the output, as llama.cpp counts it) never go up.
        if let Some(n) = self.n_gpu_layers.filter(|&n| n > 0 && n < model.layers.len()) {
            let rest = model.layers[n..].iter().flat_map(|l| l.weights().map(|(_, w)| w));
            dispatcher.keep_on_cpu(rest.chain(std::iter::once(&model.output)), "-ngl");
        }
        if let Some((layers, flag)) = self.experts_on_cpu(model.layers.len()) {
            let experts = model.layers[..layers].iter().flat_map(|l| l.experts()).flat_map(|e| [&e.gate, &e.up, &e.down]);
            dispatcher.keep_on_cpu(experts, flag);
        }
        Ok(dispatcher)
    }

    /// How many leading layers keep their experts on the CPU, and the flag that asked.
    pub fn experts_on_cpu(&self, n_layer: usize) -> Option<(usize, &'static str)> {
        match (self.cpu_moe, self.n_cpu_moe) {
            (true, _) => Some((n_layer, "--cpu-moe")),
            (false, Some(n)) if n > 0 => Some((n.min(n_layer), "--n-cpu-moe")),
            _ => None,
        }
    }
}

/// Whether a GPU path built without a GPU at hand is switched on (`NAME=1`).
fn opted_in(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}
