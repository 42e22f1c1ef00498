//! Driver evaluations on a worker thread, so that the caller can (a) bound how long one
//! may take — an evaluation can hang (§4, OM PR #3002) — and (b) convert the next tile's
//! inputs and the previous tile's outputs while the ANE runs ([`crate::engine`]).
//!
//! A job owns what the evaluation touches (the program through an `Arc`, the surfaces
//! by value), so a job that never returns can be abandoned: its worker stays blocked
//! in the driver, holding only its own job, and the next submission starts a new
//! worker. When a hung evaluation does return, its reply finds no receiver and the
//! job's surfaces are dropped there.

use crate::ffi::{Driver, DriverError};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One evaluation and everything it touches.
struct Job<D: Driver> {
    program: Arc<D::Program>,
    procedure: usize,
    inputs: Vec<D::Surface>,
    outputs: Vec<D::Surface>,
    reply: Sender<Done<D>>,
}

/// A finished evaluation: the surfaces come back with the result.
pub struct Done<D: Driver> {
    /// Input surfaces, as submitted.
    pub inputs: Vec<D::Surface>,
    /// Output surfaces, written by the evaluation when `result` is `Ok`.
    pub outputs: Vec<D::Surface>,
    /// The driver's answer.
    pub result: Result<(), DriverError>,
}

/// An evaluation in flight.
pub struct Pending<D: Driver> {
    reply: Receiver<Done<D>>,
}

/// Why waiting for an evaluation gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// It did not return within the bound; its worker was abandoned.
    TimedOut(Duration),
    /// The worker thread died (a panic in the driver).
    WorkerLost,
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::TimedOut(d) => write!(f, "evaluation did not return within {:.3} s", d.as_secs_f64()),
            WaitError::WorkerLost => f.write_str("the evaluation thread died"),
        }
    }
}

/// A worker's queue and the flag that tells it to drop what is left in it.
type Worker<D> = (Sender<Job<D>>, Arc<AtomicBool>);

/// The worker: one thread serving jobs in order.
pub struct Evaluator<D: Driver> {
    driver: Arc<D>,
    /// The current worker's queue and its "abandoned" flag.
    worker: Mutex<Option<Worker<D>>>,
    /// Workers started (the first, plus one after each abandoned one).
    started: std::sync::atomic::AtomicUsize,
}

impl<D: Driver> Evaluator<D> {
    /// An evaluator for `driver`; the thread starts with the first job.
    pub fn new(driver: Arc<D>) -> Self {
        Evaluator { driver, worker: Mutex::new(None), started: 0.into() }
    }

    /// Worker threads started so far.
    pub fn workers_started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    fn spawn(&self) -> Result<Worker<D>, DriverError> {
        let (tx, rx) = channel::<Job<D>>();
        let driver = self.driver.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = abandoned.clone();
        std::thread::Builder::new()
            .name("ane-eval".into())
            .spawn(move || {
                for job in rx {
                    // Jobs queued behind a hung evaluation are dropped, not run, when it returns.
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    let result = {
                        let ins: Vec<&D::Surface> = job.inputs.iter().collect();
                        let outs: Vec<&D::Surface> = job.outputs.iter().collect();
                        driver.evaluate(&job.program, job.procedure, &ins, &outs)
                    };
                    // A dropped receiver means the caller gave up: the surfaces go with the reply.
                    let _ = job.reply.send(Done { inputs: job.inputs, outputs: job.outputs, result });
                }
            })
            .map_err(|e| DriverError(format!("cannot start the evaluation thread: {e}")))?;
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok((tx, abandoned))
    }

    /// Queue an evaluation. On error the surfaces are returned with it.
    #[allow(clippy::type_complexity)]
    pub fn submit(
        &self,
        program: Arc<D::Program>,
        procedure: usize,
        inputs: Vec<D::Surface>,
        outputs: Vec<D::Surface>,
    ) -> Result<Pending<D>, (DriverError, Vec<D::Surface>, Vec<D::Surface>)> {
        let mut w = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_none() {
            match self.spawn() {
                Ok(tx) => *w = Some(tx),
                Err(e) => return Err((e, inputs, outputs)),
            }
        }
        let (reply, rx) = channel();
        let job = Job { program, procedure, inputs, outputs, reply };
        match w.as_ref().map(|(tx, _)| tx.send(job)) {
            Some(Ok(())) => Ok(Pending { reply: rx }),
            // The worker died (a driver panic): forget it; the next submission starts another.
            Some(Err(std::sync::mpsc::SendError(job))) => {
                *w = None;
                Err((DriverError("the evaluation thread died".into()), job.inputs, job.outputs))
            }
            None => unreachable!("a worker was just started"),
        }
    }

    /// Wait for `p`, at most `bound` (`None`: as long as it takes). On a time-out the
    /// worker is abandoned and the job's surfaces stay with it.
    pub fn wait(&self, p: Pending<D>, bound: Option<Duration>) -> Result<Done<D>, WaitError> {
        let got = match bound {
            Some(b) => p.reply.recv_timeout(b).map_err(|e| match e {
                RecvTimeoutError::Timeout => WaitError::TimedOut(b),
                RecvTimeoutError::Disconnected => WaitError::WorkerLost,
            }),
            None => p.reply.recv().map_err(|_| WaitError::WorkerLost),
        };
        if got.is_err() {
            // Hung or dead: whatever it runs is lost; new jobs go to a new worker.
            if let Some((_, abandoned)) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                abandoned.store(true, Ordering::Release);
            }
        }
        got
    }
}
