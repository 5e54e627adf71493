//! `trainer bench`: the speed of one training step with our CPU kernels against
//! candle's built-in ones, measured in the same process, plus the batch loader's
//! throughput. Prints a Markdown table (the one in BENCHMARKS.md).

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::config::Config;
use crate::data::loader::{fill, random_view, Augment};
use crate::data::Split;
use crate::model;
use crate::ops::{set_backend, Backend};
use crate::optim::Sgd;
use crate::step::smoothed_cross_entropy;

/// Random but fixed images and labels for timing.
fn synthetic(n: usize, seed: u64) -> Split {
    let mut s = seed;
    let images = (0..n * 3072)
        .map(|_| {
            s = crate::data::loader::mix(s);
            (s >> 56) as u8
        })
        .collect();
    Split { images, labels: (0..n).map(|i| (i % 10) as u8).collect() }
}

struct Row {
    name: &'static str,
    ms: f64,
    images_per_sec: f64,
    gflops: f64,
}

fn time_steps(cfg: &Config, backend: Backend, batch: usize, steps: usize, data: &Split) -> Result<Row> {
    set_backend(backend);
    let dev = Device::Cpu;
    let net = model::build(&cfg.model, 10, cfg.seed, &dev, Some(data))?;
    let mut sgd = Sgd::new(&cfg.train);
    let idx: Vec<u32> = (0..batch as u32).collect();
    let norm = cifar_sdk::Normalization::CIFAR10.affine();
    let (x, y) = fill(data, &idx, |i| random_view(&Augment::default(), 0, 0, i, i as u32), &norm);
    let x = Tensor::from_vec(x, (batch, 3, 32, 32), &dev)?;
    let y = Tensor::from_vec(y, batch, &dev)?;
    use crate::ops::timing::timed;
    let mut step = || -> Result<()> {
        let loss = timed("step: forward + loss", || {
            smoothed_cross_entropy(&net.forward(&x, true)?, &y, cfg.train.label_smoothing).map_err(anyhow::Error::from)
        })?;
        let grads = timed("step: backward", || loss.backward())?;
        timed("step: sgd", || sgd.step(net.params(), &grads, 0.01))?;
        Ok(())
    };
    step()?; // warm-up: allocator, thread pool, page faults
    let _ = crate::ops::timing::take();
    let t = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let secs = t.elapsed().as_secs_f64() / steps as f64;
    let times = crate::ops::timing::take();
    if !times.is_empty() {
        errln!("per-step time by part ({backend:?}):");
        for (name, total, calls) in times {
            errln!("  {name:<24} {:>8.1} ms/step  ({} calls/step)", 1e3 * total / steps as f64, calls / steps);
        }
    }
    set_backend(Backend::Fast);
    let name = match backend {
        Backend::Fast => "cifar-edge kernels (conv, BN, pool)",
        Backend::CandleConv => "candle conv2d, our BN and pool",
        Backend::Candle => "candle built-in ops only",
    };
    Ok(Row {
        name,
        ms: secs * 1e3,
        images_per_sec: batch as f64 / secs,
        gflops: 3.0 * net.flops_per_image() as f64 * batch as f64 / secs / 1e9,
    })
}

/// Runs the comparison and prints the table.
pub fn run(cfg: &Config, batch: usize, steps: usize, with_candle: bool) -> Result<()> {
    let data = synthetic(batch.max(512), cfg.seed);
    let threads = rayon::current_num_threads();
    errln!(
        "benchmark: {:?} {:?}, batch {batch}, {steps} timed steps after one warm-up, {threads} threads",
        cfg.model.kind,
        cfg.model.widths
    );
    let mut rows = vec![time_steps(cfg, Backend::Fast, batch, steps, &data)?];
    if with_candle {
        rows.push(time_steps(cfg, Backend::CandleConv, batch, steps.min(3), &data)?);
        rows.push(time_steps(cfg, Backend::Candle, batch, steps.min(3), &data)?);
    }
    let base = rows[0].ms;
    outln!("| training step (fwd + bwd + SGD), batch {batch} | ms/step | images/s | GFLOP/s | time vs ours |")?;
    outln!("|---|---:|---:|---:|---:|")?;
    for r in &rows {
        outln!("| {} | {:.0} | {:.0} | {:.1} | {:.2}x |", r.name, r.ms, r.images_per_sec, r.gflops, r.ms / base)?;
    }
    // The loader: one worker thread preparing augmented, normalized batches.
    let idx: Vec<u32> = (0..batch as u32).map(|i| i % data.len() as u32).collect();
    let norm = cifar_sdk::Normalization::CIFAR10.affine();
    let t = Instant::now();
    let reps = 20;
    for r in 0..reps {
        let _ = fill(&data, &idx, |i| random_view(&Augment::default(), 1, r, i, i as u32), &norm);
    }
    let per_batch = t.elapsed().as_secs_f64() / reps as f64;
    outln!(
        "\nloader: {:.2} ms per batch of {batch} on one thread ({:.0} images/s), {:.1}% of a training step",
        per_batch * 1e3,
        batch as f64 / per_batch,
        100.0 * per_batch * 1e3 / base
    )?;
    Ok(())
}
