//! Card time per phase of a whole-stack call: events recorded on the compute stream at the
//! end of each phase, summed per phase name once the call has synchronized.

use crate::gpu::{err, Gpu, Res};
use cudarc::driver::CudaEvent;

/// Where the card's time goes (`CudaOptions::profile_stack`, printed to stderr per call):
/// events on the compute stream at phase ends, summed per phase.
pub(crate) struct Phases {
    marks: Vec<(&'static str, CudaEvent)>,
}

impl Phases {
    pub(crate) fn start(gpu: &Gpu, on: bool) -> Res<Option<Phases>> {
        if !on {
            return Ok(None);
        }
        let e = gpu.event(true)?;
        e.record(&gpu.s_comp).map_err(err("record"))?;
        Ok(Some(Phases { marks: vec![("start", e)] }))
    }

    pub(crate) fn mark(p: &mut Option<Phases>, gpu: &Gpu, name: &'static str) -> Res<()> {
        if let Some(p) = p {
            let e = gpu.event(true)?;
            e.record(&gpu.s_comp).map_err(err("record"))?;
            p.marks.push((name, e));
        }
        Ok(())
    }

    /// Milliseconds per phase, in order of first appearance (also printed).
    pub(crate) fn report(self, n: usize) -> Res<Vec<(&'static str, f64)>> {
        // Per phase: total and longest single occurrence (an outlier points at a stall).
        let mut sums: Vec<(&'static str, f64, f64)> = Vec::new();
        for w in self.marks.windows(2) {
            let ms = w[0].1.elapsed_ms(&w[1].1).map_err(err("timing"))? as f64;
            match sums.iter_mut().find(|s| s.0 == w[1].0) {
                Some(s) => {
                    s.1 += ms;
                    s.2 = s.2.max(ms);
                }
                None => sums.push((w[1].0, ms, ms)),
            }
        }
        let total: f64 = sums.iter().map(|s| s.1).sum();
        let parts: Vec<String> = sums.iter().map(|(k, v, m)| format!("{k} {v:.2} (max {m:.2})")).collect();
        eprintln!("cuda stack N={n}: {total:.2} ms on the card: {}", parts.join(", "));
        Ok(sums.into_iter().map(|(k, v, _)| (k, v)).collect())
    }
}
