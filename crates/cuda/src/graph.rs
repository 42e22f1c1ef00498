//! Decode steps replayed as CUDA graphs. A step's launches (kernels and cuBLAS calls) are
//! first written down as words on a [`Tape`] without being issued; when they equal the words
//! of the last captured step, that graph replays (one launch instead of hundreds, no gaps
//! between kernels), otherwise the step runs again under stream capture and its graph is kept.
//! Equal words mean the very same launches, so a replay computes exactly what issuing them
//! would. What changes between decode steps of a sequence (its positions, RoPE angles and
//! hidden state) is read on the card from buffers uploaded before the graph runs.

use crate::gpu::{err, Gpu, Res};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

/// Where launches are written down while a step is taped (one thread's launches only). Every
/// launch asks it, so when no step is taped the answer is one atomic load, no lock.
#[derive(Default)]
pub(crate) struct Tape {
    on: AtomicBool,
    taping: Mutex<Option<Taping>>,
}

struct Taping {
    thread: ThreadId,
    /// A dry run: launches are written down, not issued.
    dry: bool,
    words: Vec<u64>,
}

impl Tape {
    fn start(&self, dry: bool) {
        *self.taping.lock().unwrap_or_else(|e| e.into_inner()) = Some(Taping { thread: std::thread::current().id(), dry, words: Vec::new() });
        self.on.store(true, Ordering::Release);
    }

    fn stop(&self) -> Vec<u64> {
        self.on.store(false, Ordering::Release);
        self.taping.lock().unwrap_or_else(|e| e.into_inner()).take().map(|t| t.words).unwrap_or_default()
    }

    /// Writes down launch `op` with its `words` (every argument and the launch's shape) when
    /// this thread is taping; true when the launch must not be issued (a dry run).
    pub(crate) fn note(&self, op: &str, words: impl IntoIterator<Item = u64>) -> bool {
        if !self.on.load(Ordering::Acquire) {
            return false;
        }
        let mut t = self.taping.lock().unwrap_or_else(|e| e.into_inner());
        match t.as_mut() {
            Some(t) if t.thread == std::thread::current().id() => {
                t.words.push(name_hash(op));
                let at = t.words.len();
                t.words.push(0);
                t.words.extend(words);
                // The count keeps two launches' words from running into each other.
                t.words[at] = (t.words.len() - at - 1) as u64;
                t.dry
            }
            _ => false,
        }
    }
}

/// FNV-1a of a launch's name (equal names, equal kernels).
fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A captured step: its launches' words and its graph.
struct Captured(Vec<u64>, CudaGraph);
// SAFETY: a graph may move between threads when its uses are serialized: `StepGraphs` lives
// in the stack's buffers, used only under their mutex.
unsafe impl Send for Captured {}

/// The last captured step of a stack's buffers, and how steps went.
#[derive(Default)]
pub(crate) struct StepGraphs {
    last: Option<Captured>,
    pub(crate) captures: usize,
    pub(crate) replays: usize,
    /// Why graphs are off for these buffers (a capture failed once; steps run as launches).
    pub(crate) off: Option<String>,
}

impl StepGraphs {
    /// No graphs for these buffers (`why`); steps run as plain launches.
    pub(crate) fn off(why: &str) -> Self {
        StepGraphs { off: Some(why.to_string()), ..Default::default() }
    }
}

/// Captures after which graphs are given up unless replays outnumber them.
const CAPTURES_BEFORE_GIVING_UP: usize = 16;

/// A tape running on this thread until `words` takes what it wrote, or until dropped (a step
/// that panicked must not leave the tape on: every later launch would be skipped).
struct Recording<'a>(&'a Tape, bool);

impl<'a> Recording<'a> {
    fn start(tape: &'a Tape, dry: bool) -> Self {
        tape.start(dry);
        Recording(tape, true)
    }

    fn words(mut self) -> Vec<u64> {
        self.1 = false;
        self.0.stop()
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.stop();
        }
    }
}

/// A stream capture that ends however the step ends (a panic included).
struct Capturing<'a>(&'a Gpu, bool);

impl Drop for Capturing<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = self.0.s_comp.end_capture(CUgraphInstantiate_flags(0));
        }
    }
}

/// Runs `step` (which issues a decode step's launches on the compute stream) as a graph:
/// the last one replayed when the step's launches equal its, else captured anew. A capture
/// that fails turns graphs off for these buffers and the step runs as plain launches.
pub(crate) fn run_step(gpu: &Gpu, graphs: &mut StepGraphs, mut step: impl FnMut() -> Res<()>) -> Res<()> {
    if graphs.off.is_some() {
        return step();
    }
    let dry = Recording::start(&gpu.tape, true);
    let ran = step();
    let words = dry.words();
    ran?;
    if let Some(Captured(w, g)) = &graphs.last {
        if *w == words {
            graphs.replays += 1;
            return g.launch().map_err(err("launch the step's graph"));
        }
    }
    graphs.last = None;
    // Steps that keep launching differently (a batch whose sequences change every step)
    // would pay a capture each time and replay none: plain launches then.
    if graphs.captures >= CAPTURES_BEFORE_GIVING_UP && graphs.replays < graphs.captures {
        graphs.off = Some(format!("{} captures, {} replays: steps keep changing", graphs.captures, graphs.replays));
        return step();
    }
    match capture(gpu, &mut step) {
        Ok((words, g)) => {
            graphs.captures += 1;
            g.launch().map_err(err("launch the step's graph"))?;
            graphs.last = Some(Captured(words, g));
            Ok(())
        }
        Err(e) => {
            graphs.off = Some(e);
            step()
        }
    }
}

/// `step`'s launches captured on the compute stream and instantiated, with their words as
/// the capture wrote them (a buffer grown during the dry run holds its new address here).
fn capture(gpu: &Gpu, step: &mut impl FnMut() -> Res<()>) -> Res<(Vec<u64>, CudaGraph)> {
    gpu.s_comp.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(err("begin capture"))?;
    let mut open = Capturing(gpu, true);
    let live = Recording::start(&gpu.tape, false);
    let issued = step();
    let words = live.words();
    open.1 = false;
    let graph = gpu.s_comp.end_capture(CUgraphInstantiate_flags(0));
    issued.map_err(|e| format!("capturing a decode step: {e}"))?;
    let graph = graph.map_err(err("instantiate the step's graph"))?.ok_or_else(|| "the captured step is empty".to_string())?;
    Ok((words, graph))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tape_writes_only_its_own_threads_launches_and_separates_them() {
        let tape = Tape::default();
        assert!(!tape.note("k", [1]), "no tape: issued, nothing written");
        tape.start(true);
        assert!(tape.note("a", [1, 2]), "a dry run issues nothing");
        std::thread::scope(|s| {
            s.spawn(|| assert!(!tape.note("other", [9]), "another thread's launch is issued, not written"));
        });
        assert!(tape.note("b", [3]));
        let words = tape.stop();
        assert_eq!(words, vec![name_hash("a"), 2, 1, 2, name_hash("b"), 1, 3]);
        // Two launches are never the words of one: the counts keep them apart.
        tape.start(false);
        assert!(!tape.note("a", [1, 2, name_hash("b"), 1, 3]), "a live tape issues");
        assert_ne!(tape.stop(), words);
        assert!(tape.stop().is_empty());
        assert_ne!(name_hash("mv_q4_k_q8"), name_hash("mv_q4_k_q8_s2"));
    }
}
