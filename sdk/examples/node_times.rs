//! Time per node of an f32 model at batch 64 (where time goes), from the observer
//! callbacks of `Session::run_observed`.
//!
//! `cargo run --release -p cifar-sdk --example node_times -- MODEL.cifar`

use std::time::Instant;

use cifar_cli_io::outln;
use cifar_sdk::{DevicePolicy, Model, ModelOptions};

fn main() -> std::process::ExitCode {
    cifar_cli_io::exit_status(run())
}

fn run() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: node_times MODEL.cifar (f32)"))?;
    let model = Model::open(&path, &ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 64 })?;
    let mut s = model.session()?;
    let x: Vec<f32> = (0..64 * 3 * 32 * 32).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
    let nodes = &model.metadata().graph.nodes;
    let mut total = vec![0f64; nodes.len()];
    for _ in 0..10 {
        let mut last = Instant::now();
        s.run_observed(&x, 64, &mut |i, _| {
            let now = Instant::now();
            if let Some(t) = total.get_mut(i) {
                *t += (now - last).as_secs_f64();
            }
            last = now;
        })?;
    }
    for (n, t) in nodes.iter().zip(&total) {
        outln!("{:<20} {:<16} {:>8.2} ms", n.name, n.op.kind(), t * 100.0)?;
    }
    Ok(())
}
