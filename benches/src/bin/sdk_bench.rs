//! `sdk-bench`: median latency of one model, batch size and thread count through the SDK,
//! as one JSON line. The comparison script (`benches/compare/compare.py`) runs it next to
//! ONNX Runtime with the same inputs and threads.
//!
//!   sdk-bench --model fixtures/models/cpu-int8.cifar --batch 64 --threads 1

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cifar_sdk::Model;
use clap::Parser;

/// Times `Session::run_nchw` (normalized f32 input, the same input ONNX Runtime gets).
#[derive(Debug, Parser)]
#[command(name = "sdk-bench", version, about)]
struct Args {
    /// The compiled model.
    #[arg(long)]
    model: std::path::PathBuf,
    /// Images per run.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Threads of the session.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds of timed runs (after one second of warm-up); at least 5 runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let opts = cifar_benches::options(args.threads);
    let opts = cifar_sdk::ModelOptions { max_batch: args.batch.max(1), ..opts };
    let model = Model::open(&args.model, &opts).with_context(|| format!("cannot open {}", args.model.display()))?;
    let mut session = model.session()?;
    let x = cifar_benches::nchw_input(args.batch);
    let mut out = vec![0f32; args.batch * model.classes()];
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        session.run_nchw(&x, args.batch, &mut out)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || start.elapsed().as_secs_f64() < args.seconds {
        let t = Instant::now();
        session.run_nchw(&x, args.batch, &mut out)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "runtime": "cifar-sdk", "precision": model.precision().to_string(), "batch": args.batch,
            "threads": args.threads, "median_ms": median * 1e3, "images_per_s": args.batch as f64 / median,
            "runs": times.len(),
        })
    );
    Ok(())
}
