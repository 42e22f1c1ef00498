//! `tandem calibrate`: time every available accelerator against the CPU on the model's
//! real matmul shapes for N = 1…4096 and store the per-machine crossovers, which later
//! runs pick up (defaults apply without a calibration file).

use crate::engines::{default_calibration_path, PlacementArgs};
use crate::load;
use anyhow::{anyhow, bail, Result};
use engine::matrix::cache::bucket_for;
use engine::matrix::cpu_engine::CpuEngine;
use engine::matrix::policy::{Calibration, CalibrationEntry};
use engine::matrix::{Availability, MatmulShape, MatrixEngine, WeightKey};
use engine::weights::Weight;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (GGUF) whose matmul shapes are timed.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// CPU threads.
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Largest N to time (powers of two from 1).
    #[arg(long = "max-n", default_value_t = 4096)]
    max_n: usize,
    /// Where to write the calibration (default: ~/.cache/tandem/calibration.json).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    placement: PlacementArgs,
}

pub fn main(a: Args) -> Result<()> {
    let threads = a.threads.unwrap_or_else(load::default_threads);
    let (runner, _) = load::model(&a.model, threads, &a.placement)?;
    let engines: Vec<_> = runner
        .dispatcher
        .accelerators()
        .iter()
        .filter(|e| e.availability() == Availability::Available)
        .cloned()
        .collect();
    if engines.is_empty() {
        bail!("no accelerator is available to calibrate (--backend {}); the CPU needs no calibration", a.placement.backend);
    }
    let m = &runner.model;
    let mut shapes: BTreeMap<(usize, usize, &str), &Weight> = BTreeMap::new();
    for l in &m.layers {
        for (_, w) in l.weights() {
            shapes.entry((w.rows, w.cols, w.ty.name())).or_insert(w);
        }
    }
    shapes.entry((m.output.rows, m.output.cols, m.output.ty.name())).or_insert(&m.output);
    let ns: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2)).take_while(|&n| n <= a.max_n).collect();
    let cpu = CpuEngine;
    let mut cal = Calibration { machine: machine_description(), entries: Vec::new() };
    runner.run_in_pool(|| -> Result<()> {
        for e in &engines {
            for (&(rows, cols, ty), w) in &shapes {
                let mut timings = Vec::new();
                for &n in &ns {
                    let shape = MatmulShape::of(w, n);
                    if e.supports(&shape).is_err() {
                        continue;
                    }
                    let te = time(e.as_ref(), w, n)?;
                    let tc = time(&cpu, w, n)?;
                    eprintln!("{:<6} {rows:>6}x{cols:<6} {ty:<5} N={n:<5} {:>9.3} ms vs CPU {:>9.3} ms", e.name(), te * 1e3, tc * 1e3);
                    timings.push((n, te, tc));
                }
                // The crossover is the first N from which the engine stays faster.
                let crossover = (0..timings.len())
                    .find(|&i| timings[i..].iter().all(|&(_, te, tc)| te < tc))
                    .map(|i| timings[i].0);
                cal.entries.push(CalibrationEntry { engine: e.name().into(), m: rows, k: cols, ty: ty.into(), crossover_n: crossover, timings });
            }
        }
        Ok(())
    })?;
    let path = a.output.or_else(default_calibration_path).ok_or_else(|| anyhow!("no HOME: pass -o FILE"))?;
    cal.save(&path)?;
    for e in &cal.entries {
        println!("{:<6} {:>6}x{:<6} {:<5} crossover N = {}", e.engine, e.m, e.k, e.ty, e.crossover_n.map_or("never".into(), |n| n.to_string()));
    }
    eprintln!("calibration written to {}", path.display());
    Ok(())
}

/// Best of three after one warm-up (which also prepares the weight).
fn time(e: &dyn MatrixEngine, w: &Weight, n: usize) -> Result<f64> {
    let x: Vec<f32> = (0..n * w.cols).map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0).collect();
    let mut out = vec![0f32; n * w.rows];
    let key = WeightKey::of(w);
    let bucket = bucket_for(e.n_buckets(), n);
    e.prepare(&key, w, bucket).map_err(|f| anyhow!("{f}"))?;
    let mut best = f64::MAX;
    for rep in 0..4 {
        let t0 = Instant::now();
        let mut outs = [out.as_mut_slice()];
        e.matmul(&[&key], &[w], bucket, &x, n, &mut outs).map_err(|f| anyhow!("{f}"))?;
        if rep > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    e.evict(&key, bucket);
    Ok(best)
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{cpu}, {} threads", std::thread::available_parallelism().map_or(1, |n| n.get()))
}
