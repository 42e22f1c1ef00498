//! The MIL reference interpreter as a [`Driver`]: "compile" parses our program text and
//! validates it against the weight blobs ([`exec::compile`]); "evaluate" binds surfaces in
//! alphabetical order of the MIL names and runs the function in fp16 arithmetic. It
//! enforces what §2 says the hardware needs (equal allocation sizes per side, widths a
//! multiple of 32, surfaces large enough) and the load/unload life cycle, so a program
//! or engine bug fails here the way it would on the ANE — as an error, not silently.

pub mod exec;
pub mod parse;

use crate::convert::{as_f16, as_f16_mut};
use crate::ffi::{Driver, DriverError, WeightFile};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A validated program.
pub struct SimProgram {
    /// The functions, validated.
    pub compiled: exec::Compiled,
    loaded: AtomicBool,
}

/// A surface: fp16-aligned memory.
pub struct SimSurface {
    mem: Mutex<Vec<u16>>,
}

/// The interpreter driver. Counts compiles, loads and evaluations for tests.
#[derive(Default)]
pub struct SimDriver {
    /// Programs compiled.
    pub compiles: AtomicUsize,
    /// Programs currently loaded.
    pub loaded: AtomicUsize,
    /// Evaluations run.
    pub evaluations: AtomicUsize,
}

impl SimDriver {
    /// A fresh interpreter.
    pub fn new() -> Self {
        Self::default()
    }
}

fn bytes_of(v: &mut [u16]) -> &mut [u8] {
    // SAFETY: u16 → u8 view of the same memory; alignment only decreases.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 2) }
}

impl Driver for SimDriver {
    type Program = SimProgram;
    type Surface = SimSurface;

    fn name(&self) -> &str {
        "ane-sim"
    }
    fn availability(&self) -> Result<(), String> {
        Ok(())
    }
    fn throughput_hint(&self) -> (f64, f64) {
        // Pretend to be fast, like the reference engine, so placement offloads to it.
        (1e13, 1e11)
    }
    fn compile(&self, mil: &str, weights: &[WeightFile], procedures: usize) -> Result<SimProgram, DriverError> {
        let program = parse::parse(mil)?;
        let files: HashMap<String, Vec<u8>> = weights.iter().map(|w| (w.path.to_string(), w.bytes.to_vec())).collect();
        let compiled = exec::compile(&program, &files)?;
        if compiled.funcs.len() != procedures {
            return Err(DriverError(format!("program declares {} functions, {procedures} expected", compiled.funcs.len())));
        }
        self.compiles.fetch_add(1, Ordering::Relaxed);
        Ok(SimProgram { compiled, loaded: AtomicBool::new(false) })
    }
    fn load(&self, p: &SimProgram) -> Result<(), DriverError> {
        if p.loaded.swap(true, Ordering::AcqRel) {
            return Err(DriverError("program loaded twice".into()));
        }
        self.loaded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn unload(&self, p: &SimProgram) {
        if p.loaded.swap(false, Ordering::AcqRel) {
            self.loaded.fetch_sub(1, Ordering::Relaxed);
        }
    }
    fn surface(&self, bytes: usize) -> Result<SimSurface, DriverError> {
        if bytes == 0 || !bytes.is_multiple_of(2) {
            return Err(DriverError(format!("surface of {bytes} bytes")));
        }
        Ok(SimSurface { mem: Mutex::new(vec![0; bytes / 2]) })
    }
    fn write(&self, s: &mut SimSurface, f: &mut dyn FnMut(&mut [u8])) -> Result<(), DriverError> {
        f(bytes_of(s.mem.get_mut().unwrap_or_else(|e| e.into_inner())));
        Ok(())
    }
    fn read(&self, s: &SimSurface, f: &mut dyn FnMut(&[u8])) -> Result<(), DriverError> {
        f(bytes_of(&mut s.mem.lock().unwrap_or_else(|e| e.into_inner())));
        Ok(())
    }
    fn evaluate(&self, p: &SimProgram, procedure: usize, inputs: &[&SimSurface], outputs: &[&SimSurface]) -> Result<(), DriverError> {
        if !p.loaded.load(Ordering::Acquire) {
            return Err(DriverError("evaluate on a program that is not loaded".into()));
        }
        let f = p.compiled.funcs.get(procedure).ok_or_else(|| DriverError(format!("no procedure {procedure}")))?;
        if f.inputs.len() != inputs.len() || f.outputs.len() != outputs.len() {
            return Err(DriverError(format!(
                "{} takes {} inputs and {} outputs, given {} and {}",
                f.name, f.inputs.len(), f.outputs.len(), inputs.len(), outputs.len()
            )));
        }
        let lens = |v: &[&SimSurface]| v.iter().map(|s| s.mem.lock().unwrap_or_else(|e| e.into_inner()).len()).collect::<Vec<_>>();
        for (side, l) in [("input", lens(inputs)), ("output", lens(outputs))] {
            if l.windows(2).any(|w| w[0] != w[1]) {
                return Err(DriverError(format!("{side} surfaces of unequal sizes {l:?} (§2 needs one allocation size)")));
            }
        }
        let guards: Vec<_> = inputs.iter().map(|s| s.mem.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
        let views: Vec<&[half::f16]> = guards.iter().map(|g| as_f16(unsafe { std::slice::from_raw_parts(g.as_ptr().cast::<u8>(), g.len() * 2) })).collect();
        let results = f.run(&views)?;
        for ((s, r), (name, _)) in outputs.iter().zip(results).zip(&f.outputs) {
            let mut m = s.mem.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() < r.len() {
                return Err(DriverError(format!("{}: output {name} needs {} values, surface holds {}", f.name, r.len(), m.len())));
            }
            as_f16_mut(bytes_of(&mut m))[..r.len()].copy_from_slice(&r);
        }
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
