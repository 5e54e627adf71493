//! `trainer trace`: the first steps of a training run, written out so that another
//! implementation of the same recipe can be checked step by step against ours (the
//! PyTorch harness in `benches/parity` does this for airbench94).
//!
//! The steps are the real ones: the same batches (`data::loader`, epoch by epoch), the
//! same [`Stepper`] as `trainer fit`. Files written to the output directory:
//!
//! | file | what |
//! |---|---|
//! | `trace.json` | the resolved config, step counts, per-step loss and learning rate, every parameter's name, group and shape |
//! | `init.safetensors` | every parameter (running statistics included) before the first step |
//! | `batches.safetensors` | `x.{i}` `[B,3,32,32]` normalized images, `y.{i}` `[B]` labels (as f32) |
//! | `steps.safetensors` | `grad.{i}.{name}` (gradient of the mean loss at step i), `after.{i}.{name}` (every parameter after step i), `momentum.{i}.{name}` (SGD's momentum buffers after step i), `lookahead.{i}.{name}` (the lookahead average after step i, when on) |

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::json;

use crate::config::Config;
use crate::data::loader::{epoch_order, EpochPlan, Prefetcher};
use crate::model::Group;
use crate::ops::{set_backend, Backend};
use crate::run::save_tensors;
use crate::step::Stepper;
use crate::train::{build_model, RunData};

/// Which kernels the traced steps use.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum TraceBackend {
    /// The CPU training kernels `trainer fit` uses on the CPU.
    Fast,
    /// candle's own ops for everything: the math a GPU run executes (apart from
    /// cuDNN's convolutions), so GPU-path bugs show up on the CPU.
    Candle,
}

#[derive(clap::Args)]
#[command(after_help = "\
Example (the parity harness runs this for you):
  trainer trace --config configs/gpu-speedrun.toml --steps 20 --out runs/trace
  benches/parity/run.sh")]
pub struct TraceArgs {
    /// The training recipe (TOML); traced on the CPU whatever its `device` says.
    #[arg(long, short)]
    config: PathBuf,
    /// Overrides of config keys, e.g. `model.widths=[32,64,128]`.
    overrides: Vec<String>,
    /// How many steps to run and record.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Directory for the trace files (created; existing trace files are replaced).
    #[arg(long, short)]
    out: PathBuf,
    /// Kernels to run the steps with.
    #[arg(long, value_enum, default_value = "fast")]
    backend: TraceBackend,
}

fn group_name(g: Group) -> &'static str {
    match g {
        Group::Weight => "weight",
        Group::Bias => "bias",
        Group::Fixed => "fixed",
    }
}

/// Runs `trainer trace`.
pub fn trace_command(args: TraceArgs, quiet: bool) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let cfg = Config::resolve(Some(&args.config), &args.overrides)?;
    crate::device::set_threads(cfg.threads);
    set_backend(match args.backend {
        TraceBackend::Fast => Backend::Fast,
        TraceBackend::Candle => Backend::Candle,
    });
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let dev = Device::Cpu;
    let data = RunData::load(&cfg)?;
    let net = build_model(&cfg, &data, &dev)?;
    let mut opt = Stepper::for_run(&cfg.train, data.train_idx.len());
    let init = net.params().snapshot();
    save_tensors(&args.out.join("init.safetensors"), &init, HashMap::new())?;

    let norm = cifar_sdk::Normalization::CIFAR10.affine();
    let mut batches = HashMap::new();
    let mut records = HashMap::new();
    let (mut losses, mut lrs) = (Vec::new(), Vec::new());
    let mut step = 0;
    'epochs: for epoch in 0.. {
        let plan = EpochPlan {
            order: epoch_order(&data.train_idx, cfg.seed, epoch),
            batch_size: cfg.train.batch_size,
            first_step: 0,
            steps: opt.steps_per_epoch,
            seed: cfg.seed,
            epoch,
            augment: cfg.augment,
            norm,
        };
        let mut loader = Prefetcher::start(data.split.clone(), plan, 2);
        let mut batches_seen = 0;
        while let Some(b) = loader.next_batch() {
            batches_seen += 1;
            let bsz = b.y.len();
            let x = Tensor::from_vec(b.x, (bsz, 3, 32, 32), &dev)?;
            let y = Tensor::from_vec(b.y, bsz, &dev)?;
            let out = opt.step(net.as_ref(), &x, &y, step)?;
            batches.insert(format!("x.{step}"), x);
            batches.insert(format!("y.{step}"), y.to_dtype(candle_core::DType::F32)?);
            // A frozen parameter (the stem bias after `whiten_bias_epochs`) has no gradient
            // in the training sense: nothing was applied.
            for p in net.params().trainable().filter(|p| !opt.sgd.frozen.contains(&p.name)) {
                if let Some(g) = out.grads.get(p.var.as_tensor()) {
                    records.insert(format!("grad.{step}.{}", p.name), g.detach());
                }
            }
            for (name, v) in net.params().snapshot() {
                records.insert(format!("after.{step}.{name}"), v);
            }
            for (name, v) in &opt.sgd.buffers {
                records.insert(format!("momentum.{step}.{name}"), v.clone());
            }
            for (name, v) in opt.lookahead.iter().flat_map(|la| &la.values) {
                records.insert(format!("lookahead.{step}.{name}"), v.clone());
            }
            if !quiet {
                errln!("step {:>3}: loss {:.6}  lr {:.5}", step, out.loss, out.lr);
            }
            losses.push(out.loss);
            lrs.push(out.lr);
            step += 1;
            if step == args.steps || step == opt.total_steps {
                break 'epochs;
            }
        }
        if batches_seen == 0 {
            bail!("the batch loader stopped in epoch {epoch} before giving a batch");
        }
    }
    save_tensors(&args.out.join("batches.safetensors"), &batches, HashMap::new())?;
    save_tensors(&args.out.join("steps.safetensors"), &records, HashMap::new())?;
    let params: Vec<_> = net
        .params()
        .list
        .iter()
        .map(|p| json!({"name": p.name, "group": group_name(p.group), "shape": p.var.dims()}))
        .collect();
    let meta = json!({
        "config": cfg,
        "steps": step,
        "steps_per_epoch": opt.steps_per_epoch,
        "total_steps": opt.total_steps,
        "backend": match args.backend { TraceBackend::Fast => "fast", TraceBackend::Candle => "candle" },
        "loss": losses,
        "lr": lrs,
        "params": params,
    });
    let text = serde_json::to_string_pretty(&meta)?;
    cifar_sdk::write_atomic(&args.out.join("trace.json"), text.as_bytes())?;
    outln!("traced {step} steps into {}", args.out.display())?;
    Ok(())
}
