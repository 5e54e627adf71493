//! `sdk-bench`: median latency of one model, batch size and thread count through the SDK,
//! as one JSON line. The comparison script (`benches/compare/compare.py`) runs it next to
//! ONNX Runtime with the same inputs and threads.
//!
//!   sdk-bench --model fixtures/models/cpu-int8.cifar --batch 64 --threads 1
//!
//! With the `cuda` feature, `--device gpu` times the GPU engine, and `--agreement DIR`
//! first compares its logits on the images in DIR with the CPU engine's (f32).

#![deny(clippy::print_stdout, clippy::print_stderr)]

use cifar_cli_io::{errln, outln};
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
    /// Seconds of timed runs (after the warm-up); at least 5 runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Seconds of untimed warm-up runs.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Device policy: cpu, gpu, gpu-or-cpu or auto.
    #[arg(long, default_value = "cpu")]
    device: cifar_sdk::DevicePolicy,
    /// A folder of images: before timing, report the largest relative difference between
    /// this device's logits and the CPU engine's on them (in the JSON line).
    #[arg(long)]
    agreement: Option<std::path::PathBuf>,
}

/// This model's logits on every image in `dir` against the CPU engine's:
/// `(images, max relative error, top-1 agreement)`.
fn agreement(
    model: &std::sync::Arc<Model>,
    path: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(usize, f32, f64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut px = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        px.extend(cifar_sdk::image::decode_rgb8(&bytes, 32, 32).with_context(|| format!("{}", f.display()))?);
    }
    let n = files.len();
    anyhow::ensure!(n > 0, "no images in {}", dir.display());
    let cpu_opts = cifar_sdk::ModelOptions { device: cifar_sdk::DevicePolicy::Cpu, threads: 1, max_batch: 256 };
    let cpu = Model::open(path, &cpu_opts)?;
    let want = cpu.session()?.logits_rgb8(&px, n)?;
    let got = model.session()?.logits_rgb8(&px, n)?;
    let c = model.classes().max(1);
    Ok((n, cifar_sdk::max_relative_error(&want, &got, c) as f32, cifar_sdk::top1_agreement(&got, &want, c)))
}

fn main() -> std::process::ExitCode {
    cifar_cli_io::exit_status(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let opts = cifar_benches::options(args.threads);
    let opts = cifar_sdk::ModelOptions { max_batch: args.batch.max(1), device: args.device, ..opts };
    let model = Model::open(&args.model, &opts).with_context(|| format!("cannot open {}", args.model.display()))?;
    errln!("sdk-bench: {} on {} ({})", args.model.display(), model.device(), model.device_reason());
    let agree = args.agreement.as_deref().map(|dir| agreement(&model, &args.model, dir)).transpose()?;
    let mut session = model.session()?;
    let x = cifar_benches::nchw_input(args.batch);
    let mut out = vec![0f32; args.batch * model.classes()];
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64(args.warmup) {
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
    outln!(
        "{}",
        serde_json::json!({
            "runtime": "cifar-sdk", "precision": model.precision().to_string(), "batch": args.batch,
            "kernels": model.kernels(),
            "threads": args.threads, "median_ms": median * 1e3, "images_per_s": args.batch as f64 / median,
            "runs": times.len(), "device": model.device().to_string(),
            "agreement_images": agree.map(|a| a.0), "max_rel_err_vs_cpu": agree.map(|a| a.1),
            "top1_agreement_vs_cpu": agree.map(|a| a.2),
        })
    )?;
    Ok(())
}
