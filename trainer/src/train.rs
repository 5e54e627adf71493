//! `trainer fit`: the training loop, with checkpoints, resume, metrics and progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::config::{Config, LoaderKind, Tta, WarmUp};
use crate::data::device_loader::{DeviceEpoch, DeviceSet};
use crate::data::loader::{epoch_order, EpochPlan, Prefetcher};
use crate::data::{Dataset, Split};
use crate::eval;
use crate::model::{self, Network};
use crate::optim::Ema;
use crate::run::{Checkpoint, DatasetRef, Progress, RunDir, Summary};
use crate::step::Stepper;

/// Set by the Ctrl-C / SIGTERM handler; the loop saves a checkpoint and stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The data a run trains and validates on, after `data.train_limit`/`val_limit`.
pub struct RunData {
    pub dataset: Dataset,
    pub split: Arc<Split>,
    pub train_idx: Vec<u32>,
    pub val_idx: Vec<u32>,
}

impl RunData {
    pub fn load(cfg: &Config) -> Result<Self> {
        let dataset = Dataset::load(&crate::data::remote::local_dir(&cfg.data.path)?)?;
        let mut train_idx = dataset.train_indices();
        if let Some(step) = train_idx.len().checked_div(cfg.data.train_limit) {
            // A strided subset keeps the classes balanced.
            let step = step.max(1);
            train_idx = train_idx.into_iter().step_by(step).take(cfg.data.train_limit).collect();
        }
        let mut val_idx = dataset.val_indices.clone();
        if let Some(step) = val_idx.len().checked_div(cfg.data.val_limit) {
            let step = step.max(1);
            val_idx = val_idx.into_iter().step_by(step).take(cfg.data.val_limit).collect();
        }
        if train_idx.len() < cfg.train.batch_size {
            bail!("only {} training images, fewer than one batch of {}", train_idx.len(), cfg.train.batch_size);
        }
        let split = Arc::new(dataset.train.clone());
        Ok(Self { dataset, split, train_idx, val_idx })
    }

    pub fn classes(&self) -> usize {
        self.dataset.manifest.classes.len()
    }
}

/// Builds the network; the whitening stem sees only training images.
pub fn build_model(cfg: &Config, data: &RunData, dev: &Device) -> Result<Box<dyn Network>> {
    let classes = if cfg.model.classes > 0 { cfg.model.classes } else { data.classes() };
    let sample: Vec<u32> = data.train_idx.iter().copied().take(5000).collect();
    let subset = Split {
        images: sample.iter().flat_map(|&i| data.split.image(i as usize).iter().copied()).collect(),
        labels: sample.iter().map(|&i| data.split.labels[i as usize]).collect(),
    };
    model::build(&cfg.model, classes, cfg.seed, dev, Some(&subset))
}

struct Trainer<'a> {
    cfg: &'a Config,
    run: &'a RunDir,
    data: &'a RunData,
    dev: Device,
    net: Box<dyn Network>,
    opt: Stepper,
    ema: Ema,
    progress: Progress,
}

impl Trainer<'_> {
    fn checkpoint_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut t = HashMap::new();
        for (k, v) in self.net.params().snapshot() {
            t.insert(format!("model.{k}"), v);
        }
        for (k, v) in &self.opt.sgd.buffers {
            t.insert(format!("opt.{k}"), v.clone());
        }
        if let Some(la) = &self.opt.lookahead {
            for (k, v) in &la.values {
                t.insert(format!("lookahead.{k}"), v.clone());
            }
        }
        for (k, v) in &self.ema.values {
            t.insert(format!("ema.{k}"), v.clone());
        }
        Ok(t)
    }

    fn save_checkpoint(&self) -> Result<()> {
        Checkpoint::save(
            &self.run.checkpoint_path(),
            self.checkpoint_tensors()?,
            &self.progress,
            &self.data.dataset.manifest.digest,
        )
    }

    fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        self.net.params().load(&ck.with_prefix("model."), "")?;
        self.opt.sgd.buffers = ck.with_prefix("opt.");
        if let Some(la) = &mut self.opt.lookahead {
            la.values = ck.with_prefix("lookahead.");
            if la.values.is_empty() && ck.progress.global_step > 0 {
                errln!("warning: the checkpoint holds no lookahead average (an older run?): it restarts here");
            }
        }
        self.ema.values = ck.with_prefix("ema.");
        self.progress = ck.progress;
        Ok(())
    }

    /// Evaluates with the EMA weights when there are any, then restores the live ones.
    fn evaluate(&self, tta: Tta) -> Result<eval::Report> {
        let use_ema = self.ema.enabled() && !self.ema.values.is_empty();
        let live = if use_ema { Some(self.net.params().snapshot()) } else { None };
        if use_ema {
            self.net.params().load(&self.ema.values, "")?;
        }
        let r = eval::evaluate(
            self.net.as_ref(),
            &self.data.split,
            &self.data.val_idx,
            tta,
            self.cfg.eval.batch_size,
            &self.dev,
        );
        if let Some(live) = live {
            self.net.params().load(&live, "")?;
        }
        r
    }
}

/// Where a training run starts.
pub enum Start {
    /// From the config's initialization.
    Fresh,
    /// From a checkpoint of this run.
    Resume(Checkpoint),
    /// From these weights (a pruned net's fine-tuning), with a fresh optimizer.
    Weights(HashMap<String, Tensor>),
}

/// Trains according to `cfg` in `run`. An interrupted run fails with a message that
/// names `resume_command`, which continues it. With a tracking server configured, the
/// run is mirrored there as it goes (`crate::track`).
pub fn fit(cfg: &Config, run: &RunDir, start: Start, quiet: bool, resume_command: &str) -> Result<Summary> {
    let mirror = crate::track::Mirror::start(cfg, run)?;
    let outcome = fit_run(cfg, run, start, quiet, resume_command);
    if let Some(m) = mirror {
        m.finish(run, &outcome);
    }
    outcome
}

fn fit_run(cfg: &Config, run: &RunDir, start: Start, quiet: bool, resume_command: &str) -> Result<Summary> {
    let (resume, init) = match start {
        Start::Fresh => (None, None),
        Start::Resume(ck) => (Some(ck), None),
        Start::Weights(w) => (None, Some(w)),
    };
    let (dev, why) = crate::device::select(&cfg.device)?;
    errln!("device: {why}; {} CPU threads", rayon::current_num_threads());
    let data = RunData::load(cfg)?;
    let digest = data.dataset.manifest.digest.clone();
    if let Some(ck) = &resume {
        if ck.dataset_digest != digest {
            bail!(
                "the checkpoint was trained on dataset {} but {} now holds {}",
                ck.dataset_digest,
                cfg.data.path,
                digest
            );
        }
    }
    run.write_json("dataset.json", &DatasetRef { path: cfg.data.path.clone(), digest: digest.clone() })?;
    if dev.is_cuda() {
        crate::ops::set_compute_dtype(cfg.train.precision.dtype());
        errln!("GPU convolutions compute in {:?} (cuDNN)", cfg.train.precision);
    }
    let warm = match cfg.train.warm_up {
        WarmUp::On => true,
        WarmUp::Off => false,
        WarmUp::Auto => dev.is_cuda(),
    };
    let warmup_secs = if warm { warm_up(cfg, &data, &dev)? } else { 0.0 };
    if warm {
        errln!("warm-up: one step and one evaluation batch in {warmup_secs:.2}s (not timed)");
    }
    let setup_start = Instant::now();
    let net = build_model(cfg, &data, &dev)?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let mut opt = Stepper::for_run(&cfg.train, data.train_idx.len());
    if !cfg.train.distill_from.is_empty() && cfg.train.distill_weight > 0.0 {
        opt.teacher = Some(load_teacher(cfg, &data, &dev)?);
    }
    errln!(
        "data: {} ({}), {} training / {} validation images; model: {:?} {:?}{}, {} parameters, {:.1} MFLOP/image",
        cfg.data.path,
        data.dataset.short_digest(),
        data.train_idx.len(),
        data.val_idx.len(),
        cfg.model.kind,
        cfg.model.widths,
        if cfg.model.inner_widths.is_empty() {
            String::new()
        } else {
            format!(" (inner {:?})", cfg.model.inner_widths)
        },
        net.params().count_trainable(),
        net.flops_per_image() as f64 / 1e6
    );
    let mut t = Trainer {
        cfg,
        run,
        data: &data,
        dev: dev.clone(),
        net,
        opt,
        ema: Ema::new(cfg.train.ema_decay, cfg.train.ema_every),
        progress: Progress::default(),
    };
    if let Some(w) = &init {
        t.net.params().load(w, "")?;
    }
    let resumed = resume.is_some();
    if let Some(ck) = resume {
        t.restore(&ck)?;
        run.truncate_records(t.progress.global_step)?;
        errln!(
            "resuming at step {} (epoch {}, step {} of it)",
            t.progress.global_step,
            t.progress.epoch + 1,
            t.progress.step_in_epoch
        );
    }
    let (train_secs, session_train_secs) = train_loop(&mut t, quiet)?;
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: checkpoint saved at step {}; continue with `{resume_command}`", t.progress.global_step);
    }

    // Final evaluation and the weights to keep.
    let eval_start = Instant::now();
    let with_tta = t.evaluate(cfg.eval.tta)?;
    let eval_secs = eval_start.elapsed().as_secs_f64();
    let plain = if cfg.eval.tta == Tta::None { with_tta.clone() } else { t.evaluate(Tta::None)? };
    let final_weights =
        if t.ema.enabled() && !t.ema.values.is_empty() { t.ema.values.clone() } else { t.net.params().snapshot() };
    crate::run::save_tensors(
        &run.file("model.safetensors"),
        &final_weights,
        HashMap::from([("dataset_digest".into(), digest.clone())]),
    )?;
    let images = t.progress.global_step * cfg.train.batch_size;
    let summary = Summary {
        config_name: cfg.name.clone(),
        dataset_digest: digest,
        device: why,
        epochs: cfg.train.epochs,
        steps: t.progress.global_step,
        train_secs,
        timed_secs: setup_secs + session_train_secs + eval_secs,
        warmup_secs,
        images_per_sec: images as f64 / train_secs.max(1e-9),
        val_accuracy: plain.accuracy,
        val_accuracy_tta: with_tta.accuracy,
        tta: format!("{:?}", cfg.eval.tta),
        val_images: data.val_idx.len(),
        parameters: t.net.params().count_trainable(),
        used_ema: t.ema.enabled(),
        resumed,
    };
    run.write_json("summary.json", &summary)?;
    run.log(&json!({"kind": "final", "step": t.progress.global_step, "val_acc": plain.accuracy, "val_acc_tta": with_tta.accuracy, "train_secs": train_secs}))?;
    if let Err(e) = crate::plot::training_curves(run) {
        errln!("warning: could not draw the training curves: {e:#}");
    }
    Ok(summary)
}

/// `train.warm_up`: one training step on made-up images and one evaluation batch, on a
/// throw-away net built as the run's will be, so that kernel loading and cuDNN's
/// algorithm choice happen before the timed window. Returns its seconds. The run's own
/// net, optimizer and data order are untouched (the images come from a fixed host
/// generator, not the device's random state).
fn warm_up(cfg: &Config, data: &RunData, dev: &Device) -> Result<f64> {
    let start = Instant::now();
    let net = build_model(cfg, data, dev)?;
    let mut opt = Stepper::for_run(&cfg.train, data.train_idx.len());
    let b = cfg.train.batch_size;
    let mut state = 0x9e37_79b9u32;
    let x: Vec<f32> = (0..b * 3 * 32 * 32)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    let classes = data.classes().max(1);
    let y: Vec<u32> = (0..b).map(|i| (i % classes) as u32).collect();
    let x = Tensor::from_vec(x, (b, 3, 32, 32), dev)?;
    let y = Tensor::from_vec(y, b, dev)?;
    let out = opt.step(net.as_ref(), &x, &y, 0).context("the warm-up step")?;
    if !out.loss.is_finite() {
        bail!("the warm-up step's loss is {} on made-up images", out.loss);
    }
    let n = data.val_idx.len().min(cfg.eval.batch_size);
    if let Some(idx) = data.val_idx.get(..n).filter(|i| !i.is_empty()) {
        eval::evaluate(net.as_ref(), &data.split, idx, cfg.eval.tta, cfg.eval.batch_size, dev)
            .context("the warm-up evaluation")?;
    }
    dev.synchronize()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Where one epoch's batches come from.
enum BatchSource {
    Host(Prefetcher),
    Device { epoch: DeviceEpoch, next: usize, steps: usize },
}

impl BatchSource {
    /// The next batch `(x, y, step, host prep seconds)`, or `None` at the epoch's end.
    fn next(&mut self, dev: &Device) -> Result<Option<(Tensor, Tensor, usize, f64)>> {
        match self {
            BatchSource::Host(loader) => {
                let Some(b) = loader.next_batch() else { return Ok(None) };
                let bsz = b.y.len();
                let x = Tensor::from_vec(b.x, (bsz, 3, 32, 32), dev)?;
                let y = Tensor::from_vec(b.y, bsz, dev)?;
                Ok(Some((x, y, b.step, b.prep_secs)))
            }
            BatchSource::Device { epoch, next, steps } => {
                if *next >= *steps {
                    return Ok(None);
                }
                let (x, y) = epoch.batch(*next)?;
                *next += 1;
                Ok(Some((x, y, *next - 1, 0.0)))
            }
        }
    }
}

/// Runs the remaining steps; returns the total training seconds (across resumes) and
/// this session's (without the upload of the training split to the device).
fn train_loop(t: &mut Trainer, quiet: bool) -> Result<(f64, f64)> {
    let cfg = t.cfg;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(t.opt.total_steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(t.progress.global_step as u64);
    let norm = cifar_sdk::Normalization::CIFAR10.affine();
    let on_device = match cfg.train.loader {
        LoaderKind::Device => true,
        LoaderKind::Host => false,
        LoaderKind::Auto => t.dev.is_cuda(),
    };
    let device_set = if on_device {
        let up = Instant::now();
        let set = DeviceSet::upload(&t.data.split, &t.data.train_idx, cfg.augment.crop_padding, &norm, &t.dev)?;
        errln!(
            "loader: {} training images resident on the device ({:.2}s to upload)",
            set.len(),
            up.elapsed().as_secs_f64()
        );
        Some(set)
    } else {
        None
    };
    let session_start = Instant::now();
    let base_elapsed = t.progress.elapsed_secs;
    let mut last_checkpoint = Instant::now();
    let epochs = t.opt.total_steps.div_ceil(t.opt.steps_per_epoch);
    while t.progress.global_step < t.opt.total_steps {
        let epoch = t.progress.epoch;
        let steps = t.opt.steps_per_epoch.min(t.opt.total_steps - epoch * t.opt.steps_per_epoch);
        let plan = EpochPlan {
            order: epoch_order(&t.data.train_idx, cfg.seed, epoch),
            batch_size: cfg.train.batch_size,
            first_step: t.progress.step_in_epoch,
            steps,
            seed: cfg.seed,
            epoch,
            augment: cfg.augment,
            norm,
        };
        let epoch_start = Instant::now();
        let mut loader = match &device_set {
            Some(set) => BatchSource::Device {
                epoch: set.epoch(cfg.seed, epoch, cfg.train.batch_size, steps, &cfg.augment)?,
                next: plan.first_step,
                steps,
            },
            None => BatchSource::Host(Prefetcher::start(t.data.split.clone(), plan, cfg.train.prefetch)),
        };
        let mut wait_secs = 0f64;
        loop {
            let wait = Instant::now();
            let Some((x, y, batch_step, prep_secs)) = loader.next(&t.dev)? else { break };
            let waited = wait.elapsed().as_secs_f64();
            wait_secs += waited;
            let step_start = Instant::now();
            let bsz = y.dim(0)?;
            let out = t.opt.step(t.net.as_ref(), &x, &y, t.progress.global_step)?;
            let (loss_v, lr) = (out.loss, out.lr);
            if !loss_v.is_finite() {
                bail!(
                    "the loss became {loss_v} at step {}: lower train.lr (now {})",
                    t.progress.global_step,
                    cfg.train.lr
                );
            }
            t.progress.global_step += 1;
            t.progress.step_in_epoch = batch_step + 1;
            t.ema.update(t.net.params(), t.progress.global_step)?;
            let step_secs = step_start.elapsed().as_secs_f64();
            t.progress.epoch_loss_sum += loss_v;
            t.progress.epoch_loss_steps += 1;
            t.progress.elapsed_secs = base_elapsed + session_start.elapsed().as_secs_f64();
            t.run.log(&json!({
                "kind": "step", "step": t.progress.global_step, "epoch": epoch + 1, "loss": loss_v, "lr": lr,
                "images_per_sec": bsz as f64 / (step_secs + waited), "step_ms": step_secs * 1e3,
                "data_wait_ms": waited * 1e3, "data_prep_ms": prep_secs * 1e3,
            }))?;
            bar.set_position(t.progress.global_step as u64);
            bar.set_message(format!(
                "epoch {}/{epochs}  loss {:.3}  lr {lr:.4}  {:.0} img/s",
                epoch + 1,
                t.progress.epoch_loss_sum / t.progress.epoch_loss_steps as f64,
                bsz as f64 / (step_secs + waited)
            ));
            let due_secs =
                cfg.checkpoint.every_secs > 0.0 && last_checkpoint.elapsed().as_secs_f64() >= cfg.checkpoint.every_secs;
            let due_steps =
                cfg.checkpoint.every_steps > 0 && t.progress.global_step.is_multiple_of(cfg.checkpoint.every_steps);
            if due_secs || due_steps || INTERRUPTED.load(Ordering::SeqCst) {
                t.save_checkpoint()?;
                last_checkpoint = Instant::now();
                if INTERRUPTED.load(Ordering::SeqCst) {
                    bar.abandon();
                    return Ok((t.progress.elapsed_secs, session_start.elapsed().as_secs_f64()));
                }
            }
        }
        drop(loader);
        // Epoch done.
        t.progress.epoch += 1;
        t.progress.step_in_epoch = 0;
        let ep = t.progress.epoch;
        let last = t.progress.global_step >= t.opt.total_steps;
        let val = if !last && cfg.eval.every_epochs > 0 && ep.is_multiple_of(cfg.eval.every_epochs) {
            Some(t.evaluate(Tta::None)?.accuracy)
        } else {
            None
        };
        t.progress.elapsed_secs = base_elapsed + session_start.elapsed().as_secs_f64();
        let train_loss = t.progress.epoch_loss_sum / t.progress.epoch_loss_steps.max(1) as f64;
        t.progress.epoch_loss_sum = 0.0;
        t.progress.epoch_loss_steps = 0;
        t.run.log(&json!({
            "kind": "epoch", "step": t.progress.global_step, "epoch": ep, "train_loss": train_loss, "val_acc": val,
            "epoch_secs": epoch_start.elapsed().as_secs_f64(), "data_wait_secs": wait_secs, "elapsed_secs": t.progress.elapsed_secs,
        }))?;
        let line = format!(
            "epoch {ep}/{epochs}: train loss {train_loss:.4}{} ({:.0}s, loader wait {:.2}s)",
            val.map(|a| format!(", val acc {:.2}%", 100.0 * a)).unwrap_or_default(),
            epoch_start.elapsed().as_secs_f64(),
            wait_secs
        );
        if bar.is_hidden() {
            errln!("{line}");
        } else {
            bar.println(line);
        }
        t.save_checkpoint()?;
        last_checkpoint = Instant::now();
    }
    bar.finish_and_clear();
    Ok((t.progress.elapsed_secs, session_start.elapsed().as_secs_f64()))
}

/// Installs the Ctrl-C / SIGTERM handler: the first signal asks the loop to save and
/// stop, a second one exits at once.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        errln!("\ninterrupt: saving a checkpoint after this step (press Ctrl-C again to quit at once)");
    });
}

/// Checks that `train.distill_from`, if set, names a finished run (before any work).
pub fn check_teacher(cfg: &Config) -> Result<()> {
    if cfg.train.distill_from.is_empty() {
        return Ok(());
    }
    let dir = std::path::Path::new(&cfg.train.distill_from);
    RunDir::open(dir).context("train.distill_from")?;
    if !dir.join("model.safetensors").exists() {
        bail!("train.distill_from: {} is not a finished run (no model.safetensors)", dir.display());
    }
    Ok(())
}

/// The net of the run `train.distill_from`, with its final weights, for distillation.
fn load_teacher(cfg: &Config, data: &RunData, dev: &Device) -> Result<crate::step::Teacher> {
    check_teacher(cfg)?;
    let run = RunDir::open(std::path::Path::new(&cfg.train.distill_from))?;
    let tcfg = Config::resolve(Some(&run.file("config.toml")), &[])?;
    run.check_dataset(&cfg.data.path, &data.dataset.manifest.digest).context("train.distill_from")?;
    let net = build_model(&tcfg, data, dev)?;
    let (weights, _) = crate::run::load_tensors(&run.file("model.safetensors"), dev)?;
    net.params().load(&weights, "").with_context(|| format!("train.distill_from: {}", run.path.display()))?;
    // On the CPU the teacher runs compiled; a net the compiler cannot take (say, a
    // negative batch-norm scale before a max pool) runs in the trainer instead.
    let compiled = if dev.is_cpu() {
        match crate::compile::int8_in_memory(&tcfg, &net.params().snapshot(), data).and_then(|m| Ok(m.session()?)) {
            Ok(session) => Some(session),
            Err(e) => {
                errln!("note: the teacher cannot be compiled ({e:#}); it runs in the trainer");
                None
            }
        }
    } else {
        None
    };
    let (net, how) = match compiled {
        Some(session) => (crate::step::TeacherNet::Sdk(session), "compiled to int8, on the SDK"),
        None => (crate::step::TeacherNet::Trainer(net), "the trainer's forward pass"),
    };
    errln!(
        "distilling from {} ({how}; weight {}, temperature {})",
        run.path.display(),
        cfg.train.distill_weight,
        cfg.train.distill_temperature
    );
    Ok(crate::step::Teacher { net, weight: cfg.train.distill_weight, temperature: cfg.train.distill_temperature })
}

/// Loads the trained weights of a run: `model.safetensors`, or the checkpoint's (EMA
/// weights preferred) for a run that did not finish.
pub fn load_run_weights(run: &RunDir, dev: &Device) -> Result<(HashMap<String, Tensor>, String)> {
    let final_path = run.file("model.safetensors");
    if final_path.exists() {
        let (t, _) = crate::run::load_tensors(&final_path, dev)?;
        return Ok((t, "model.safetensors".into()));
    }
    let ck = Checkpoint::load(&run.checkpoint_path(), dev)
        .with_context(|| format!("{} has neither model.safetensors nor a checkpoint", run.path.display()))?;
    let ema = ck.with_prefix("ema.");
    if !ema.is_empty() {
        return Ok((ema, format!("checkpoint at step {} (EMA)", ck.progress.global_step)));
    }
    Ok((ck.with_prefix("model."), format!("checkpoint at step {}", ck.progress.global_step)))
}
