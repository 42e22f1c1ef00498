//! Shared helpers: the test models' paths, deterministic random data, weights of any shape and type in an
//! in-memory GGUF file, the f64 reference matmul, and the interpreter driver with a hook
//! in front of every evaluation.
#![allow(dead_code)]

use ane::ffi::{Driver, DriverError, WeightFile};
use ane::sim::{SimDriver, SimProgram, SimSurface};
use engine::weights::{TensorSource, Weight};
use gguf::{GgmlType, GgufFile, GgufWriter};
use std::path::PathBuf;
use std::sync::Arc;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A test model by file name: fails (never skips) when it is absent.
pub fn model_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

/// xorshift64*: reproducible without a rand dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

/// Weights `(name, rows, cols, type)` with uniform values of std ≈ `scale`/√3, in one file.
pub fn weights(specs: &[(&str, usize, usize, GgmlType)], seed: u64, scale: f32) -> Vec<Weight> {
    let mut rng = Rng(seed.max(1));
    let mut w = GgufWriter::new();
    w.set("general.architecture", gguf::Value::String("test".into()));
    for &(name, rows, cols, ty) in specs {
        let data = rng.vec(rows * cols, scale);
        let bytes = match ty {
            GgmlType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => {
                let rb = ty.bytes_for(cols as u64).unwrap() as usize;
                let mut out = vec![0u8; rb * rows];
                for (src, dst) in data.chunks(cols).zip(out.chunks_mut(rb)) {
                    quant::quantize_row(ty, src, dst).unwrap();
                }
                out
            }
        };
        w.add_tensor(name, &[cols as u64, rows as u64], ty, bytes).unwrap();
    }
    let file = Arc::new(GgufFile::from_bytes(w.to_bytes()).unwrap());
    let src = TensorSource::new(file);
    specs.iter().map(|&(name, rows, cols, _)| src.matrix(name, cols, rows).unwrap()).collect()
}

/// `[n, rows]` = x · Wᵀ in f64 over the dequantized weight.
pub fn reference(w: &Weight, x: &[f32], n: usize) -> Vec<f32> {
    let mut row = vec![0f32; w.cols];
    let mut out = vec![0f32; n * w.rows];
    for r in 0..w.rows {
        w.dequantize_row(r, &mut row);
        for t in 0..n {
            let xr = &x[t * w.cols..(t + 1) * w.cols];
            out[t * w.rows + r] = xr.iter().zip(&row).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
        }
    }
    out
}

/// Largest |a − b| relative to the largest |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

/// What runs before each evaluation of a [`HookedSim`]: `Some(result)` replaces the
/// evaluation (an injected fault, a stand-in latency), `None` lets the interpreter run it
/// (after the hook has, say, waited).
pub trait EvalHook: Send + Sync + 'static {
    fn before(&self, procedure: usize) -> Option<Result<(), DriverError>>;
}

/// The MIL interpreter with a hook in front of every evaluation; the hook's own state is
/// reached through `Deref` (`engine.driver().calls`).
pub struct HookedSim<H> {
    sim: SimDriver,
    name: &'static str,
    hook: H,
}

impl<H> HookedSim<H> {
    /// An interpreter reporting itself as `name` (failures carry it as the engine name).
    pub fn new(name: &'static str, hook: H) -> Self {
        HookedSim { sim: SimDriver::new(), name, hook }
    }
}

impl<H> std::ops::Deref for HookedSim<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hook
    }
}

impl<H: EvalHook> Driver for HookedSim<H> {
    type Program = SimProgram;
    type Surface = SimSurface;
    fn name(&self) -> &str {
        self.name
    }
    fn availability(&self) -> Result<(), String> {
        Ok(())
    }
    fn throughput_hint(&self) -> (f64, f64) {
        self.sim.throughput_hint()
    }
    fn compile(&self, mil: &str, w: &[WeightFile], procedures: usize) -> Result<SimProgram, DriverError> {
        self.sim.compile(mil, w, procedures)
    }
    fn load(&self, p: &SimProgram) -> Result<(), DriverError> {
        self.sim.load(p)
    }
    fn unload(&self, p: &SimProgram) {
        self.sim.unload(p)
    }
    fn surface(&self, bytes: usize) -> Result<SimSurface, DriverError> {
        self.sim.surface(bytes)
    }
    fn write(&self, s: &mut SimSurface, f: &mut dyn FnMut(&mut [u8])) -> Result<(), DriverError> {
        self.sim.write(s, f)
    }
    fn read(&self, s: &SimSurface, f: &mut dyn FnMut(&[u8])) -> Result<(), DriverError> {
        self.sim.read(s, f)
    }
    fn evaluate(&self, p: &SimProgram, procedure: usize, i: &[&SimSurface], o: &[&SimSurface]) -> Result<(), DriverError> {
        match self.hook.before(procedure) {
            Some(result) => result,
            None => self.sim.evaluate(p, procedure, i, o),
        }
    }
}
