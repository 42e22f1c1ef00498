//! The driver boundary: everything the engine asks of the ANE runtime. Two drivers:
//! [`macos::MacDriver`] (the private framework, loaded at run time; compiles everywhere,
//! available only on a Mac) and [`crate::sim::SimDriver`] (interprets our MIL; CI).

pub mod macos;

/// A driver call failed; the text says which step and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError(pub String);

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DriverError {}

impl From<String> for DriverError {
    fn from(s: String) -> Self {
        DriverError(s)
    }
}

/// One weight file of a program: its MIL path (`@model_path/weights/…`) and bytes.
pub struct WeightFile<'a> {
    /// Path as MIL's BLOBFILE names it.
    pub path: &'a str,
    /// File contents.
    pub bytes: &'a [u8],
}

/// The ANE runtime as the engine uses it (§1 steps): compile, load, surfaces, evaluate, unload.
pub trait Driver: Send + Sync + 'static {
    /// A compiled program.
    type Program: Send + Sync;
    /// Shared memory the ANE reads inputs from and writes outputs to.
    type Surface: Send;

    /// Engine name (`ane`, `ane-sim`).
    fn name(&self) -> &str;
    /// `Err(why)` when it cannot run here.
    fn availability(&self) -> Result<(), String>;
    /// Sustained FLOP/s and host↔engine bytes/s, for the cost model.
    fn throughput_hint(&self) -> (f64, f64);
    /// Compile MIL text with its weight files; `procedures` functions it declares.
    fn compile(&self, mil: &str, weights: &[WeightFile], procedures: usize) -> Result<Self::Program, DriverError>;
    /// Compile as [`Self::compile`] does, keeping what the runtime compiled in `dir` (one
    /// directory per program, created by the driver) so that a later process can skip the
    /// runtime's compiler. The default caches nothing and compiles.
    fn compile_cached(&self, mil: &str, weights: &[WeightFile], procedures: usize, dir: &std::path::Path) -> Result<Self::Program, DriverError> {
        let _ = dir;
        self.compile(mil, weights, procedures)
    }
    /// Make a compiled program ready to evaluate.
    fn load(&self, program: &Self::Program) -> Result<(), DriverError>;
    /// Release it (and its temporary files).
    fn unload(&self, program: &Self::Program);
    /// A surface of `bytes` bytes.
    fn surface(&self, bytes: usize) -> Result<Self::Surface, DriverError>;
    /// Lock a surface for writing and hand its memory to `f`.
    fn write(&self, s: &mut Self::Surface, f: &mut dyn FnMut(&mut [u8])) -> Result<(), DriverError>;
    /// Lock a surface for reading and hand its memory to `f`.
    fn read(&self, s: &Self::Surface, f: &mut dyn FnMut(&[u8])) -> Result<(), DriverError>;
    /// Run function `procedure` synchronously. Surfaces bind to the function's inputs and
    /// outputs in alphabetical order of their MIL names (§2); all inputs have one
    /// allocation size, likewise all outputs.
    fn evaluate(&self, program: &Self::Program, procedure: usize, inputs: &[&Self::Surface], outputs: &[&Self::Surface]) -> Result<(), DriverError>;
}
