//! Batch-1 and batch-64 latency of a model file, f32 and int8 side by side when given
//! both (the Criterion suite lives in `benches/`).
//!
//! ```text
//! cargo run --release -p cifar-sdk --example latency -- fixtures/models/tiny-f32.cifar fixtures/models/tiny-int8.cifar
//! ```
//! Options (environment): `THREADS` (default 0 = all cores), `ITERS` (default 200).

use std::time::Instant;

use cifar_cli_io::outln;
use cifar_sdk::{DevicePolicy, Model, ModelOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> std::process::ExitCode {
    cifar_cli_io::exit_status(run())
}

fn run() -> anyhow::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        anyhow::bail!("usage: latency MODEL.cifar [MODEL.cifar ...]");
    }
    let threads: usize = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let iters: usize = std::env::var("ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    outln!(
        "{:<40} {:>9} {:>7} {:>6} {:>12} {:>12}",
        "model",
        "precision",
        "threads",
        "batch",
        "median ms",
        "images/s"
    )?;
    for path in &paths {
        let opts = ModelOptions { device: DevicePolicy::Cpu, threads, max_batch: 64 };
        let model = Model::open(path, &opts)?;
        let mut session = model.session()?;
        for batch in [1usize, 64] {
            let pixels: Vec<u8> = (0..batch * 32 * 32 * 3).map(|i| (i * 31 % 251) as u8).collect();
            let mut out = vec![0f32; batch * model.classes()];
            let n = (iters / batch.min(8)).max(5);
            for _ in 0..n.min(10) {
                session.run_rgb8(&pixels, batch, &mut out)?;
            }
            let times: Vec<f64> = (0..n)
                .map(|_| {
                    let t = Instant::now();
                    let r = session.run_rgb8(&pixels, batch, &mut out);
                    let dt = t.elapsed().as_secs_f64();
                    r.map(|_| dt)
                })
                .collect::<Result<_, _>>()?;
            let m = median(times);
            outln!(
                "{:<40} {:>9} {:>7} {:>6} {:>12.3} {:>12.0}",
                path,
                model.precision().to_string(),
                session.threads(),
                batch,
                m * 1e3,
                batch as f64 / m
            )?;
        }
    }
    Ok(())
}
