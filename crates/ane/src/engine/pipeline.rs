//! Running a matmul as a sequence of evaluations ("jobs"), overlapped with conversion.
//!
//! A call's jobs are every (token tile of at most `bucket` tokens) × (function serving
//! the group at that bucket): several when N spans several tiles, when the group is split
//! across programs (a large vocabulary), or when weights planned alone are dispatched
//! together. Evaluations run on the [`Evaluator`]'s worker thread, one at a time, while
//! this thread converts: job i+1's inputs are written while job i evaluates, and job i's
//! outputs are read while job i+1 evaluates. Each job is converted exactly as a call of
//! its own would be (the input scale comes from its own tokens), so the result is the
//! same, bit for bit, as one call per tile, and as with [`AneConfig::overlap`] off (one
//! evaluation at a time).
//!
//! Every wait is bounded ([`AneConfig::eval_timeout`]): an evaluation that does not
//! return is an [`EngineFailure`] and its program is quarantined.

use super::*;
use crate::evaluator::{Pending, WaitError};

/// One evaluation: function `f` of program `p` over tokens `tok`, its segments landing
/// at feature `row0` of outputs `out0 + segment.output`.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub p: usize,
    pub f: usize,
    pub row0: usize,
    pub out0: usize,
    pub tok: Range<usize>,
}

/// A job's surfaces, inputs written.
struct Staged<D: Driver> {
    ins: Vec<D::Surface>,
    outs: Vec<D::Surface>,
    /// The input scale (a power of two, the guard's dynamic half).
    sx: f32,
    in_bytes: usize,
    out_bytes: usize,
}

fn alloc(shapes: &mut dyn Iterator<Item = [usize; 4]>) -> usize {
    let b = shapes.map(|s| s.iter().product::<usize>() * 2).max().unwrap_or(2);
    b.div_ceil(SURFACE_ALIGN) * SURFACE_ALIGN
}

fn surface_shape(s: [usize; 4]) -> SurfaceShape {
    SurfaceShape::packed(s[1], s[3])
}

impl<D: Driver> AneEngine<D> {
    /// The jobs that compute `part` of group `g` for `n` tokens at `bucket`, outputs from `out0`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn jobs_for(&self, st: &State<D>, g: usize, part: Part, bucket: usize, n: usize, out0: usize, jobs: &mut Vec<Job>) -> Result<(), EngineFailure> {
        let mut fns = Vec::new();
        for p in Self::programs_of(st, g, bucket) {
            let Status::Ready(l) = &st.programs[p].status else {
                return Err(self.fail(format!("{} is not prepared for bucket {bucket} (program {p} is not loaded)", st.groups[g].keys[0].tensor)));
            };
            let units = &st.programs[p].units;
            fns.extend(l.functions.iter().enumerate().filter(|(_, f)| f.bucket == bucket && f.part == part && units[f.group].0 == g).map(|(f, io)| (p, f, units[io.group].1)));
        }
        if fns.is_empty() {
            return Err(self.fail(format!("no program serves {} ({part:?}) at bucket {bucket}", st.groups[g].keys[0].tensor)));
        }
        for t0 in (0..n.max(1)).step_by(bucket) {
            let tok = t0..(t0 + bucket).min(n);
            jobs.extend(fns.iter().map(|&(p, f, row0)| Job { p, f, row0, out0, tok: tok.clone() }));
        }
        Ok(())
    }

    fn take_surface(&self, st: &mut State<D>, bytes: usize) -> Result<D::Surface, EngineFailure> {
        match st.pool.get_mut(&bytes).and_then(Vec::pop) {
            Some(s) => Ok(s),
            None => self.driver.surface(bytes).map_err(|e| self.fail(e.to_string())),
        }
    }

    fn give_back(st: &mut State<D>, bytes: usize, surfaces: Vec<D::Surface>) {
        st.pool.entry(bytes).or_default().extend(surfaces);
    }

    /// Take surfaces for `job` and write its inputs (x's rows `job.tok`, `k` features).
    fn stage(&self, st: &mut State<D>, job: &Job, x: &[f32], k: usize) -> Result<Staged<D>, EngineFailure> {
        let Status::Ready(l) = &st.programs[job.p].status else { return Err(self.fail(format!("program {} is not loaded", job.p))) };
        let fio = &l.functions[job.f];
        let (in_bytes, out_bytes) = (alloc(&mut fio.inputs.iter().map(|i| i.shape)), alloc(&mut fio.outputs.iter().map(|o| o.shape)));
        let (n_in, n_out) = (fio.inputs.len(), fio.outputs.len());
        let ntok = job.tok.len();
        let xt = &x[job.tok.start * k..job.tok.end * k];
        // Guard, dynamic half: |y| ≤ ‖w‖·‖x‖ for every output and partial sum.
        let sx = fio.weight_norm.map_or(1.0, |wn| guard_scale(wn * convert::max_row_norm(xt, k, ntok, 0..k)));
        let inputs: Vec<(Range<usize>, SurfaceShape)> = fio.inputs.iter().map(|i| (i.cols.clone(), surface_shape(i.shape))).collect();
        let mut staged = Staged { ins: Vec::with_capacity(n_in), outs: Vec::with_capacity(n_out), sx, in_bytes, out_bytes };
        let layout = self.cfg.build.layout;
        let result = (|| {
            for (cols, sh) in inputs {
                let mut s = self.take_surface(st, in_bytes)?;
                let inv = 1.0 / sx;
                let w = self.driver.write(&mut s, &mut |b| {
                    let d = as_f16_mut(b);
                    match layout {
                        Layout::ChannelMajor => convert::write_channel_major(xt, k, ntok, cols.clone(), inv, d, sh),
                        Layout::TokenMajor => convert::write_token_major(xt, k, ntok, cols.clone(), inv, d, sh),
                    }
                });
                staged.ins.push(s);
                w.map_err(|e| self.fail(e.to_string()))?;
            }
            for _ in 0..n_out {
                staged.outs.push(self.take_surface(st, out_bytes)?);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(staged),
            Err(e) => {
                Self::give_back(st, in_bytes, staged.ins);
                Self::give_back(st, out_bytes, staged.outs);
                Err(e)
            }
        }
    }

    /// Read `job`'s outputs into `outs` (each `[n, M]`), applying the weight and input scales.
    fn finish(&self, st: &State<D>, job: &Job, sx: f32, surfaces: &[D::Surface], n: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        let Status::Ready(l) = &st.programs[job.p].status else { return Err(self.fail(format!("program {} is not loaded", job.p))) };
        let fio = &l.functions[job.f];
        let layout = self.cfg.build.layout;
        let ntok = job.tok.len();
        for (io, s) in fio.outputs.iter().zip(surfaces) {
            let sh = surface_shape(io.shape);
            self.driver
                .read(s, &mut |b| {
                    let src = as_f16(b);
                    for seg in &io.segments {
                        let out = &mut *outs[job.out0 + seg.output];
                        let m = out.len() / n.max(1);
                        let rows = &mut out[job.tok.start * m..job.tok.end * m];
                        let ch = seg.ch0..seg.ch0 + seg.len;
                        let col0 = job.row0 + seg.col0;
                        match layout {
                            Layout::ChannelMajor => convert::read_channel_major(src, sh, ntok, ch, io.scale * sx, rows, m, col0),
                            Layout::TokenMajor => convert::read_token_major(src, sh, ntok, ch, io.scale * sx, rows, m, col0),
                        }
                    }
                })
                .map_err(|e| self.fail(e.to_string()))?;
        }
        Ok(())
    }

    /// The bound on one evaluation of `job`, from its work.
    fn bound(&self, st: &State<D>, job: &Job) -> Option<Duration> {
        let t = self.cfg.eval_timeout?;
        let Status::Ready(l) = &st.programs[job.p].status else { return Some(t.base) };
        let flops = 2.0 * l.functions[job.f].macs as f64 * l.functions[job.f].bucket as f64;
        Some(t.base + Duration::from_secs_f64((flops / t.min_flops_per_s).min(1e6)))
    }

    /// Start `job`'s evaluation; on failure its surfaces go back to the pool.
    fn submit(&self, st: &mut State<D>, job: &Job, s: Staged<D>) -> Result<(Pending<D>, f32, usize, usize), EngineFailure> {
        let Status::Ready(l) = &st.programs[job.p].status else { return Err(self.fail(format!("program {} is not loaded", job.p))) };
        let procedure = l.functions[job.f].procedure;
        match self.evaluator.submit(l.program.clone(), procedure, s.ins, s.outs) {
            Ok(p) => Ok((p, s.sx, s.in_bytes, s.out_bytes)),
            Err((e, ins, outs)) => {
                Self::give_back(st, s.in_bytes, ins);
                Self::give_back(st, s.out_bytes, outs);
                Err(self.fail(e.to_string()))
            }
        }
    }

    /// Wait for `job`; a time-out quarantines its program (never unloaded: the evaluation
    /// may still be running) and abandons whatever was queued behind it.
    fn complete(&self, st: &mut State<D>, job: &Job, pending: Pending<D>, in_bytes: usize, out_bytes: usize) -> Result<Vec<D::Surface>, EngineFailure> {
        let bound = self.bound(st, job);
        match self.evaluator.wait(pending, bound) {
            Ok(done) => {
                Self::give_back(st, in_bytes, done.inputs);
                match done.result {
                    Ok(()) => Ok(done.outputs),
                    Err(e) => {
                        Self::give_back(st, out_bytes, done.outputs);
                        Err(self.fail(e.to_string()))
                    }
                }
            }
            Err(e) => {
                let why = format!("program {}: {e}; quarantined", job.p);
                if let WaitError::TimedOut(_) = e {
                    st.stats.timeouts += 1;
                }
                // Dropping the Loaded keeps the program alive in the abandoned job, not here.
                st.programs[job.p].status = Status::Failed(why.clone());
                Err(self.fail(why))
            }
        }
    }

    /// Run `jobs` in order, overlapping conversion with evaluation (see the module docs).
    pub(super) fn run_jobs(&self, st: &mut State<D>, jobs: &[Job], x: &[f32], k: usize, n: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        // (job index, evaluation, input scale, input and output allocation sizes)
        let mut in_flight: Option<(usize, Pending<D>, f32, usize, usize)> = None;
        let mut result = Ok(());
        for i in 0..=jobs.len() {
            // Write job i's inputs while job i-1 evaluates, then queue it behind i-1.
            let next = match jobs.get(i) {
                None => None,
                Some(job) => match self.stage(st, job, x, k).and_then(|s| self.submit(st, job, s)) {
                    Ok((p, sx, ib, ob)) => Some((i, p, sx, ib, ob)),
                    Err(e) => {
                        result = Err(e);
                        None
                    }
                },
            };
            // Collect job i-1 and read its outputs while job i evaluates.
            if let Some((j, pending, sx, ib, ob)) = in_flight.take() {
                match self.complete(st, &jobs[j], pending, ib, ob) {
                    Ok(surfaces) => {
                        let read = self.finish(st, &jobs[j], sx, &surfaces, n, outs);
                        Self::give_back(st, ob, surfaces);
                        if let Err(e) = read {
                            result = result.and(Err(e));
                        }
                    }
                    Err(e) => {
                        // A hung worker takes job i with it; a failed evaluation leaves it to finish below.
                        result = Err(e);
                        if matches!(st.programs[jobs[j].p].status, Status::Failed(_)) {
                            return result;
                        }
                    }
                }
            }
            in_flight = next;
            if result.is_err() {
                break;
            }
            if !self.cfg.overlap {
                // One at a time: collect job i now, before job i+1 is written.
                if let Some((j, pending, sx, ib, ob)) = in_flight.take() {
                    let surfaces = self.complete(st, &jobs[j], pending, ib, ob)?;
                    let read = self.finish(st, &jobs[j], sx, &surfaces, n, outs);
                    Self::give_back(st, ob, surfaces);
                    read?;
                }
            }
        }
        // After an error, wait for what is still queued so its surfaces come back.
        if let Some((j, pending, _, ib, ob)) = in_flight {
            if let Ok(surfaces) = self.complete(st, &jobs[j], pending, ib, ob) {
                Self::give_back(st, ob, surfaces);
            }
        }
        result
    }
}
