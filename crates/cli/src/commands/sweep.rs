//! `tandem bench --sweep-batch`: prompt-processing throughput against the batch size N for
//! each engine (every matmul forced onto it), the picture that shows where an accelerator
//! overtakes the CPU; `--plot FILE` draws it as an SVG.

use crate::engines::PlacementArgs;
use crate::load;
use engine::matrix::policy::Backend;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// One measured point.
pub struct Point {
    pub engine: String,
    pub n: usize,
    pub tps: f64,
}

/// Measure every engine the placement flags make available (the CPU always) at each N:
/// the best of `reps` prefills of N tokens.
pub fn run(model: &Path, threads: usize, placement: &PlacementArgs, ns: &[usize], reps: usize) -> Result<Vec<Point>> {
    let (probe, _) = load::model(model, threads, placement)?;
    let mut engines = vec!["cpu".to_string()];
    engines.extend(probe.dispatcher.accelerators().iter().map(|e| e.name().to_string()));
    drop(probe);
    let mut points = Vec::new();
    for engine in engines {
        // Every matmul of every N on this engine alone: min batch 1, no calibration.
        let forced = PlacementArgs { backend: Backend::parse(&engine), offload_min_batch: 1, calibration: None, ..placement.clone() };
        let (runner, _) = load::model(model, threads, &forced)?;
        for &n in ns {
            let mut best = 0f64;
            // One warm-up pass prepares the engine's weights for this N's bucket.
            for rep in 0..=reps.max(1) {
                let tps = super::bench::run_pp(&runner, n, n.max(1))?;
                if rep > 0 {
                    best = best.max(tps);
                }
            }
            eprintln!("sweep: {engine} N={n}: {best:.1} t/s");
            points.push(Point { engine: engine.clone(), n, tps: best });
        }
    }
    Ok(points)
}

/// The sweep as a markdown table, one row per N and one column per engine.
pub fn table(points: &[Point]) -> String {
    let engines = engine_names(points);
    let mut ns: Vec<usize> = points.iter().map(|p| p.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut s = format!("| N | {} |\n| ---: |{}\n", engines.join(" t/s | ") + " t/s", " ---: |".repeat(engines.len()));
    for n in ns {
        let cells: Vec<String> = engines
            .iter()
            .map(|e| points.iter().find(|p| &p.engine == e && p.n == n).map_or("-".into(), |p| format!("{:.1}", p.tps)))
            .collect();
        let _ = writeln!(s, "| {n} | {} |", cells.join(" | "));
    }
    s
}

fn engine_names(points: &[Point]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in points {
        if !names.contains(&p.engine) {
            names.push(p.engine.clone());
        }
    }
    names
}

/// Tokens/s against N (log scale), one line per engine, as a standalone SVG document.
pub fn svg(points: &[Point], title: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 420.0;
    const L: f64 = 70.0;
    const R: f64 = 150.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    let (nmin, nmax) = points.iter().fold((f64::MAX, 1f64), |(a, b), p| (a.min(p.n as f64), b.max(p.n as f64)));
    let (lmin, lmax) = (nmin.max(1.0).log2(), nmax.max(2.0).log2());
    let ymax = points.iter().map(|p| p.tps).fold(1e-9, f64::max) * 1.1;
    let x = |n: usize| L + (((n as f64).max(1.0).log2() - lmin) / (lmax - lmin).max(1e-9)) * (W - L - R);
    let y = |v: f64| T + (1.0 - v / ymax) * (H - T - B);
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{L}\" y=\"22\" font-size=\"15\">{}</text>\n\
         <line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>\n",
        esc(title),
        H - B,
        W - R,
        H - B,
        H - B
    );
    let mut ns: Vec<usize> = points.iter().map(|p| p.n).collect();
    ns.sort_unstable();
    ns.dedup();
    for n in &ns {
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{n}</text>", x(*n), H - B + 18.0);
    }
    for i in 0..=4 {
        let v = ymax / 1.1 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text><line x1=\"{L}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            L - 6.0,
            y(v) + 4.0,
            y(v),
            W - R,
            y(v)
        );
    }
    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">batch size N (tokens per pass)</text>", (L + W - R) / 2.0, H - 12.0);
    let _ = writeln!(s, "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">tokens/s</text>", (T + H - B) / 2.0, (T + H - B) / 2.0);
    for (i, engine) in engine_names(points).iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut line: Vec<&Point> = points.iter().filter(|p| &p.engine == engine).collect();
        line.sort_by_key(|p| p.n);
        let coords: Vec<String> = line.iter().map(|p| format!("{:.1},{:.1}", x(p.n), y(p.tps))).collect();
        let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", coords.join(" "));
        for p in &line {
            let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>", x(p.n), y(p.tps));
        }
        let ly = T + 20.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>",
            W - R + 15.0,
            W - R + 40.0,
            W - R + 46.0,
            ly + 4.0,
            esc(engine)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Write the plot.
pub fn write_plot(path: &Path, points: &[Point], title: &str) -> Result<()> {
    std::fs::write(path, svg(points, title)).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points() -> Vec<Point> {
        let mut v = Vec::new();
        for (n, cpu, acc) in [(1, 10.0, 1.0), (64, 300.0, 250.0), (512, 320.0, 2000.0)] {
            v.push(Point { engine: "cpu".into(), n, tps: cpu });
            v.push(Point { engine: "a<b".into(), n, tps: acc });
        }
        v
    }

    #[test]
    fn table_has_one_row_per_n_and_a_column_per_engine() {
        let t = table(&points());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].contains("cpu t/s") && lines[0].contains("a<b t/s"));
        assert_eq!(lines[4], "| 512 | 320.0 | 2000.0 |");
    }

    #[test]
    fn svg_draws_a_line_per_engine_and_escapes_names() {
        let s = svg(&points(), "SmolLM2 & friends");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert_eq!(s.matches("<circle").count(), 6);
        assert!(s.contains("a&lt;b") && s.contains("SmolLM2 &amp; friends"));
        // The fastest point sits at the top of the plot area, N=1 at its left edge.
        assert!(s.contains("cx=\"70.0\""));
    }
}
