//! Time per node of a model (where time goes), from `Session::node_times`.
//!
//! `cargo run --release -p cifar-sdk --example node_times -- MODEL.cifar [BATCH] [THREADS]`

use cifar_cli_io::outln;
use cifar_sdk::{DevicePolicy, Model, ModelOptions};

fn main() -> std::process::ExitCode {
    cifar_cli_io::exit_status(run())
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or_else(|| anyhow::anyhow!("usage: node_times MODEL.cifar [BATCH] [THREADS]"))?;
    let batch: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(64);
    let threads: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(1);
    let model = Model::open(&path, &ModelOptions { device: DevicePolicy::Cpu, threads, max_batch: batch })?;
    let mut s = model.session()?;
    let px: Vec<u8> = (0..batch * 3072).map(|i| (i * 7919 % 251) as u8).collect();
    let nodes = &model.metadata().graph.nodes;
    let rounds = 10;
    let mut total = vec![0f64; nodes.len()];
    s.node_times(&px, batch)?;
    for _ in 0..rounds {
        for (t, v) in total.iter_mut().zip(s.node_times(&px, batch)?) {
            *t += v;
        }
    }
    let sum: f64 = total.iter().sum();
    outln!("{} ({}, kernels {}), batch {batch}, {threads} thread(s)", path, model.precision(), model.kernels())?;
    for (n, t) in nodes.iter().zip(&total) {
        outln!("{:<20} {:<16} {:>9.3} ms {:>5.1}%", n.name, n.op.kind(), t * 1e3 / rounds as f64, 100.0 * t / sum)?;
    }
    outln!("{:<37} {:>9.3} ms", "total", sum * 1e3 / rounds as f64)?;
    Ok(())
}
