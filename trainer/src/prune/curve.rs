//! `trainer prune-curve`: the trade-off of pruned runs, measured: validation accuracy
//! (f32 and int8, from their compile reports) against MACs and the SDK's int8 time at
//! batch 1 and 64 on 1 and 2 threads. Models alternate in every round and each cell is
//! the median over rounds of per-round medians, so a noisy machine moves all models
//! alike; speedups are ratios within the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cifar_sdk::{DevicePolicy, Model, ModelOptions};
use plotters::style::RGBColor;
use serde::Serialize;

use crate::compile::CompileReport;

/// `trainer prune-curve` arguments.
#[derive(clap::Args)]
#[command(after_help = "\
Example (each run compiled with `trainer compile --run DIR --precision f32` and `int8`):
  trainer prune-curve 1.0=runs/cpu 0.7=runs/cpu-p70 0.5=runs/cpu-p50 --png curve.png")]
pub struct CurveArgs {
    /// Points `NAME=RUN_DIR`: runs compiled to f32 and int8 (their model-int8.cifar is
    /// timed; compile-f32.json and compile-int8.json give the accuracies). The first is
    /// the reference the speedups are computed against.
    #[arg(required = true)]
    points: Vec<String>,
    /// Rounds; in each, every model is timed in every cell.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of timed runs per model, cell and round.
    #[arg(long, default_value_t = 0.3)]
    seconds: f64,
    /// Also draw accuracy against int8 time (batch 64, 1 thread) into this PNG.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Also write the measurements as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The timed cells: (threads, batch).
const CELLS: [(usize, usize); 4] = [(1, 1), (1, 64), (2, 1), (2, 64)];

#[derive(Debug, Serialize)]
struct Point {
    name: String,
    run: String,
    macs: u64,
    parameters: u64,
    f32_accuracy: f64,
    int8_accuracy: f64,
    /// Median milliseconds per batch in each of [`CELLS`].
    int8_ms: Vec<f64>,
}

fn read_report(dir: &std::path::Path, precision: &str) -> Result<CompileReport> {
    let p = dir.join(format!("compile-{precision}.json"));
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "cannot read {} (compile the run: trainer compile --run {} --precision {precision})",
            p.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid compile report", p.display()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median seconds of one run of `session` on `x` over `seconds` (at least 5 runs).
fn time_runs(session: &mut cifar_sdk::Session, x: &[f32], batch: usize, out: &mut [f32], seconds: f64) -> Result<f64> {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64(seconds / 4.0) {
        session.run_nchw(x, batch, out)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        session.run_nchw(x, batch, out)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(&mut times))
}

/// Runs `trainer prune-curve`.
pub fn curve_command(args: CurveArgs) -> Result<()> {
    if args.rounds == 0 || args.seconds.is_nan() || args.seconds <= 0.0 {
        bail!("--rounds and --seconds must be positive");
    }
    let mut points = Vec::new();
    let mut models: Vec<[Arc<Model>; 2]> = Vec::new();
    for spec in &args.points {
        let (name, dir) = spec.split_once('=').with_context(|| format!("{spec:?} must look like NAME=RUN_DIR"))?;
        let dir = PathBuf::from(dir);
        let (f, q) = (read_report(&dir, "f32")?, read_report(&dir, "int8")?);
        let file =
            Some(dir.join("model-int8.cifar")).filter(|f| f.exists()).unwrap_or_else(|| PathBuf::from(&q.output));
        let open = |threads| {
            Model::open(&file, &ModelOptions { device: DevicePolicy::Cpu, threads, max_batch: 64 })
                .with_context(|| format!("cannot open {} (from {}/compile-int8.json)", file.display(), dir.display()))
        };
        let m1 = open(1)?;
        let cost = cifar_sdk::artifact::graph_cost(&m1.metadata().graph)?;
        points.push(Point {
            name: name.into(),
            run: dir.display().to_string(),
            macs: cost.macs,
            parameters: cost.parameters,
            f32_accuracy: f.f32_accuracy,
            int8_accuracy: q.compiled_accuracy,
            int8_ms: Vec::new(),
        });
        models.push([m1, open(2)?]);
    }
    let x: Vec<f32> = (0..64 * 3 * 32 * 32).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 4.0).collect();
    let mut samples = vec![vec![Vec::new(); CELLS.len()]; points.len()];
    for round in 0..args.rounds {
        errln!("round {}/{}", round + 1, args.rounds);
        for (c, &(threads, batch)) in CELLS.iter().enumerate() {
            for (p, m) in models.iter().enumerate() {
                let model = &m[threads - 1];
                let mut session = model.session()?;
                let mut out = vec![0f32; batch * model.classes()];
                let secs = time_runs(&mut session, &x[..batch * 3 * 32 * 32], batch, &mut out, args.seconds)?;
                samples[p][c].push(secs * 1e3);
            }
        }
    }
    for (p, s) in points.iter_mut().zip(&mut samples) {
        p.int8_ms = s.iter_mut().map(|v| median(v)).collect();
    }
    print_table(&points)?;
    if let Some(path) = &args.json {
        cifar_sdk::write_atomic(path, &serde_json::to_vec_pretty(&points)?)?;
    }
    if let Some(path) = &args.png {
        let at = |p: &Point| p.int8_ms[1];
        let mut sorted: Vec<&Point> = points.iter().collect();
        sorted.sort_by(|a, b| at(a).total_cmp(&at(b)));
        let int8: Vec<(f64, f64)> = sorted.iter().map(|p| (at(p), 100.0 * p.int8_accuracy)).collect();
        let f32s: Vec<(f64, f64)> = sorted.iter().map(|p| (at(p), 100.0 * p.f32_accuracy)).collect();
        let marks: Vec<(f64, f64, String)> = sorted
            .iter()
            .map(|p| (at(p), 100.0 * p.int8_accuracy, format!("{} ({:.1} M MACs)", p.name, p.macs as f64 / 1e6)))
            .collect();
        crate::plot::line_chart(
            path,
            "pruning: validation accuracy against SDK int8 time",
            "ms per batch of 64, int8, 1 thread",
            "validation accuracy (%)",
            &[("int8", int8, RGBColor(200, 60, 40)), ("f32", f32s, RGBColor(60, 90, 200))],
            &marks,
        )?;
        outln!("wrote {}", path.display())?;
    }
    Ok(())
}

fn print_table(points: &[Point]) -> std::io::Result<()> {
    let Some(base) = points.first() else { return Ok(()) };
    outln!(
        "| point | M MACs | parameters | f32 acc | int8 acc | b1 1t ms | b64 1t ms | b1 2t ms | b64 2t ms | MACs ÷ | b64 speedup 1t, 2t |"
    )?;
    outln!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for p in points {
        let ms = |c: usize| p.int8_ms.get(c).copied().unwrap_or(f64::NAN);
        let speed = |c: usize| base.int8_ms.get(c).copied().unwrap_or(f64::NAN) / ms(c);
        outln!(
            "| {} | {:.2} | {} | {:.2}% | {:.2}% | {:.3} | {:.2} | {:.3} | {:.2} | {:.2}x | {:.2}x, {:.2}x |",
            p.name,
            p.macs as f64 / 1e6,
            p.parameters,
            100.0 * p.f32_accuracy,
            100.0 * p.int8_accuracy,
            ms(0),
            ms(1),
            ms(2),
            ms(3),
            base.macs as f64 / p.macs.max(1) as f64,
            speed(1),
            speed(3)
        )?;
    }
    Ok(())
}
