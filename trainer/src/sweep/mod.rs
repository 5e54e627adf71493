//! `trainer sweep`: hyperparameter search with early termination.
//!
//! A sweep runs its trials as ordinary `trainer fit` processes, `-j N` at a time, each
//! with its share of the CPU threads, so a trial that fails (bad values, a diverging
//! loss, a crash) is recorded and the sweep goes on. The sweep directory:
//!
//! ```text
//! sweep.toml        the sweep file as resolved (its `config` points at base.toml)
//! base.toml         the base recipe with the sweep's overrides, evaluated every epoch
//! state.json        every trial: parameters, status, metric per epoch, error
//! trials/t000/      each trial's run directory (compile or evaluate it as any run)
//! logs/t000.log     each trial's output
//! trials.md         the table of trials, the best one, parameter correlations
//! best.toml         the best trial's complete config (`trainer fit --config best.toml`)
//! sweep.png         metric per epoch for every trial, and parallel coordinates
//! ```
//!
//! `state.json` is rewritten atomically after every change and the trial processes stop
//! themselves when the sweep process dies (they save a checkpoint), so after a crash or a
//! `kill -9`, `trainer sweep --resume DIR` goes on where the sweep stopped: finished,
//! stopped and failed trials are kept, interrupted ones continue from their checkpoints.

mod hyperband;
mod process;
mod report;
pub mod spec;
mod tracking;

pub use process::{exit_with_parent, RUN_LOCKED};
use process::{lock, terminate, wait_for_run_lock};

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::run::{RunDir, Summary};
use crate::train::INTERRUPTED;
use hyperband::Halving;
use spec::{override_of, Params, SweepSpec};

/// The environment variable that tells a `fit` process to stop (saving a checkpoint) when
/// the process that started it goes away.
pub const EXIT_WITH_PARENT_ENV: &str = "CIFAR_EXIT_WITH_PARENT";
/// The environment variable that names the MLflow run a trial's run is nested under.
pub const PARENT_RUN_ENV: &str = "CIFAR_TRACKING_PARENT_RUN_ID";

/// `trainer sweep` arguments.
#[derive(clap::Args)]
#[command(after_help = "\
The sweep file is W&B's sweep schema in TOML; configs/sweep-example.toml shows every key.
Parameters are the config's dotted keys, with `value`, `values`, or a `distribution`
(uniform, int_uniform, log_uniform_values, log_uniform, categorical) and `min`/`max`.
With [early_terminate] type = \"hyperband\", at epochs min_iter, min_iter*eta, ... (before
its last) a trial goes on only if it is among the best ceil(n/eta) of the n trials that
reached that epoch so far (the first to get there always goes on); else it stops there.

Examples:
  trainer sweep --config configs/sweep-example.toml -j 2             # -> sweeps/<time>-<name>/
  trainer sweep --config configs/sweep-example.toml data.train_limit=10000
  trainer sweep --resume sweeps/<id>                                 # after Ctrl-C or a crash
  trainer fit --config sweeps/<id>/best.toml                         # the winner, again")]
pub struct SweepArgs {
    /// The sweep file (TOML).
    #[arg(long, short, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Overrides of the base recipe's keys for every trial, e.g. `train.epochs=4`.
    overrides: Vec<String>,
    /// Continue an interrupted sweep: finished trials are kept, interrupted ones resume
    /// from their checkpoints.
    #[arg(long, conflicts_with = "config", value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Where to write the sweep (default sweeps/<time>-<name>).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    sweep_dir: Option<PathBuf>,
    /// Trials run at the same time; each gets 1/N of the CPU threads.
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Track the sweep and its trials (nested runs) in this MLflow server (default: the
    /// base recipe's `[tracking] uri`, else `MLFLOW_TRACKING_URI`).
    #[arg(long, value_name = "URI")]
    tracking_uri: Option<String>,
}

/// Where a trial is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Finished,
    /// Stopped early by the halving rule.
    Stopped,
    Failed,
}

/// One trial, as `state.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trial {
    /// `t000`, `t001`, ...: the names of its run directory and log.
    pub id: String,
    pub params: Params,
    pub status: Status,
    /// The sweep metric per epoch, as the trial reported it.
    pub history: Vec<(usize, f64)>,
    /// The final metric (finished), or the value it was stopped with.
    pub metric: Option<f64>,
    /// Epochs trained.
    pub epochs: usize,
    /// The rung epoch a stopped trial was judged at.
    pub stopped_at: Option<usize>,
    /// Rungs up to this epoch have been judged (they are not judged again on resume).
    pub judged_through: usize,
    /// A failed trial's error.
    pub error: String,
    /// Wall seconds spent on this trial, across resumes.
    pub secs: f64,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub trials: Vec<Trial>,
    /// The sweep's parent run in MLflow (empty: none).
    #[serde(default)]
    pub tracking_run_id: String,
    #[serde(default)]
    pub tracking_artifact_uri: String,
}

/// A trial process the sweep is watching.
struct Running {
    index: usize,
    child: Child,
    started: Instant,
    /// The trial's seconds before this process (earlier sessions).
    secs_before: f64,
    /// Asked to stop (early termination or an interrupt).
    stopping: Option<Instant>,
    /// The trial's epochs, rounded up: its last epoch is never a rung.
    epochs: usize,
    /// The size of its `metrics.jsonl` when last read.
    records_len: u64,
}

/// An open sweep directory.
struct Sweep {
    dir: PathBuf,
    spec: SweepSpec,
    base: Config,
    state: State,
    halving: Option<Halving>,
    threads: usize,
    tracking_uri: Option<String>,
    _lock: File,
}

/// `trainer sweep`.
pub fn sweep_command(args: SweepArgs) -> Result<()> {
    let mut sweep = match &args.resume {
        Some(dir) => {
            if !args.overrides.is_empty() {
                bail!("--resume continues a sweep with its saved base recipe; overrides such as {:?} would change it midway", args.overrides[0]);
            }
            Sweep::open(dir, args.jobs.into(), args.tracking_uri.clone())?
        }
        None => {
            let Some(path) = &args.config else { bail!("pass --config SWEEP.toml or --resume DIR") };
            Sweep::create(path, &args.overrides, args.sweep_dir.clone(), args.jobs.into(), args.tracking_uri.clone())?
        }
    };
    crate::train::install_interrupt_handler();
    sweep.run(args.jobs.into())
}

impl Sweep {
    fn create(
        path: &Path,
        overrides: &[String],
        dir: Option<PathBuf>,
        jobs: usize,
        tracking_uri: Option<String>,
    ) -> Result<Sweep> {
        let (mut spec, base) = SweepSpec::load(path, overrides)?;
        let mut base = base.with_overrides(&["eval.every_epochs=1".into()])?;
        if let Some(uri) = &tracking_uri {
            base.tracking.uri = uri.clone();
        }
        if base.tracking.experiment.is_empty() {
            base.tracking.experiment = spec.name.clone();
        }
        crate::track::check(&base)?;
        crate::device::select(&base.device)?;
        crate::data::Dataset::load(&crate::data::remote::local_dir(&base.data.path)?)?;
        let trials = spec.trials()?;
        let dir =
            dir.unwrap_or_else(|| PathBuf::from("sweeps").join(format!("{}-{}", crate::cli::timestamp(), spec.name)));
        if dir.join("state.json").exists() {
            bail!("{} already holds a sweep; continue it with `trainer sweep --resume {0}`", dir.display(),);
        }
        if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!("{} exists and is not empty; choose another --sweep-dir", dir.display());
        }
        std::fs::create_dir_all(dir.join("trials")).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let lock = lock(&dir)?;
        spec.config = "base.toml".into();
        cifar_sdk::write_atomic(&dir.join("base.toml"), base.to_toml()?.as_bytes())?;
        cifar_sdk::write_atomic(&dir.join("sweep.toml"), toml::to_string_pretty(&spec)?.as_bytes())?;
        let state = State {
            name: spec.name.clone(),
            trials: trials
                .into_iter()
                .enumerate()
                .map(|(i, params)| Trial {
                    id: format!("t{i:03}"),
                    params,
                    status: Status::Pending,
                    history: Vec::new(),
                    epochs: 0,
                    metric: None,
                    stopped_at: None,
                    judged_through: 0,
                    error: String::new(),
                    secs: 0.0,
                })
                .collect(),
            tracking_run_id: String::new(),
            tracking_artifact_uri: String::new(),
        };
        let sweep = Sweep::assemble(dir, spec, base, state, jobs, lock)?;
        sweep.save()?;
        errln!(
            "sweep {:?}: {} trials ({}), metric {} ({}), {} at a time; directory {}",
            sweep.spec.name,
            sweep.state.trials.len(),
            format!("{:?}", sweep.spec.method).to_lowercase(),
            sweep.spec.metric.name,
            format!("{:?}", sweep.spec.goal()).to_lowercase(),
            jobs,
            sweep.dir.display()
        );
        Ok(sweep)
    }

    fn open(dir: &Path, jobs: usize, tracking_uri: Option<String>) -> Result<Sweep> {
        let state_path = dir.join("state.json");
        let bytes = std::fs::read(&state_path)
            .with_context(|| format!("{} is not a sweep directory (no state.json)", dir.display()))?;
        let state: State = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: unreadable sweep state", state_path.display()))?;
        let lock = lock(dir)?;
        let (spec, mut base) = SweepSpec::load(&dir.join("sweep.toml"), &[])?;
        if let Some(uri) = tracking_uri {
            base.tracking.uri = uri;
        }
        crate::track::check(&base)?;
        let mut sweep = Sweep::assemble(dir.to_path_buf(), spec, base, state, jobs, lock)?;
        sweep.settle_interrupted()?;
        sweep.save()?;
        let done = sweep.state.trials.iter().filter(|t| t.status != Status::Pending).count();
        errln!("sweep {:?}: resuming, {done} of {} trials done", sweep.spec.name, sweep.state.trials.len());
        Ok(sweep)
    }

    fn assemble(dir: PathBuf, spec: SweepSpec, base: Config, state: State, jobs: usize, lock: File) -> Result<Sweep> {
        let halving =
            spec.early_terminate.as_ref().map(|e| Halving { min_iter: e.min_iter, eta: e.eta, goal: spec.goal() });
        let cores = if base.threads > 0 {
            base.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        };
        let tracking_uri = crate::track::tracking_uri(&base);
        Ok(Sweep { threads: (cores / jobs.max(1)).max(1), halving, dir, spec, base, state, tracking_uri, _lock: lock })
    }

    fn run_dir(&self, i: usize) -> PathBuf {
        self.dir.join("trials").join(&self.state.trials[i].id)
    }

    fn save(&self) -> Result<()> {
        cifar_sdk::write_atomic(&self.dir.join("state.json"), &serde_json::to_vec_pretty(&self.state)?)?;
        Ok(())
    }

    /// After a crash: trials left `running` either finished meanwhile, continue from
    /// their checkpoint, or start again.
    fn settle_interrupted(&mut self) -> Result<()> {
        if self.state.trials.iter().any(|t| t.status != Status::Finished) {
            // A trial process of the dead sweep notices within 100 ms (`exit_with_parent`);
            // give it time to stop or to take its run lock before its directory is judged.
            std::thread::sleep(Duration::from_millis(500));
        }
        for i in 0..self.state.trials.len() {
            if self.state.trials[i].status != Status::Running {
                continue;
            }
            let dir = self.run_dir(i);
            // The old trial process stops itself when the sweep dies; wait until it has.
            wait_for_run_lock(&dir)?;
            let id = self.state.trials[i].id.clone();
            if dir.join("summary.json").exists() {
                self.finish_trial(i, true)?;
                errln!("{id}: finished while the sweep was down");
            } else if dir.join("checkpoints/last.safetensors").exists() {
                self.state.trials[i].status = Status::Pending;
                errln!("{id}: continues from its checkpoint");
            } else {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
                }
                self.state.trials[i].status = Status::Pending;
                self.state.trials[i].history.clear();
                self.state.trials[i].epochs = 0;
                errln!("{id}: had no checkpoint yet; starts again");
            }
        }
        Ok(())
    }

    fn run(&mut self, jobs: usize) -> Result<()> {
        self.start_tracking();
        let mut running: Vec<Running> = Vec::new();
        let mut interrupted = false;
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) && !interrupted {
                interrupted = true;
                errln!("sweep: interrupted; the running trials save a checkpoint and stop");
                for r in running.iter_mut() {
                    terminate(r);
                }
            }
            if !interrupted {
                while running.len() < jobs {
                    let Some(i) = self.state.trials.iter().position(|t| t.status == Status::Pending) else { break };
                    match self.launch(i) {
                        Ok(r) => running.push(r),
                        Err(e) => {
                            self.fail(i, &format!("{e:#}"));
                        }
                    }
                    self.save()?;
                }
            }
            if running.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut k = 0;
            while k < running.len() {
                let exited = running[k].child.try_wait().context("waiting for a trial")?;
                match exited {
                    Some(status) => {
                        let r = running.swap_remove(k);
                        self.state.trials[r.index].secs = r.secs_before + r.started.elapsed().as_secs_f64();
                        // A trial may have exited on the signal before this loop saw it.
                        let interrupted = interrupted || INTERRUPTED.load(Ordering::SeqCst);
                        self.on_exit(r.index, status.success(), interrupted)?;
                    }
                    None => {
                        let r = &running[k];
                        self.state.trials[r.index].secs = r.secs_before + r.started.elapsed().as_secs_f64();
                        if !interrupted {
                            self.watch(&mut running[k])?;
                        }
                        if running[k].stopping.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
                            let _ = running[k].child.kill();
                        }
                        k += 1;
                    }
                }
            }
            self.save()?;
        }
        report::write(&self.dir, &self.spec, &self.state, &self.base)?;
        self.finish_tracking(interrupted);
        if interrupted {
            bail!("interrupted; continue with `trainer sweep --resume {}`", self.dir.display());
        }
        outln!("{}", report::summary_text(&self.spec, &self.state))?;
        outln!("sweep directory: {} (trials.md, best.toml, sweep.png)", self.dir.display())?;
        Ok(())
    }

    /// Starts trial `i` (or continues it from its checkpoint).
    fn launch(&mut self, i: usize) -> Result<Running> {
        let dir = self.run_dir(i);
        let trial = &self.state.trials[i];
        let log_path = self.dir.join("logs").join(format!("{}.log", trial.id));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        // Checked here as `fit` will check it: a value the recipe refuses fails the trial
        // now, with the reason. Its epochs are its own (a sweep may search `train.epochs`).
        let overrides = self.overrides(i);
        let epochs = self.base.with_overrides(&overrides)?.train.epochs.ceil() as usize;
        let mut cmd = Command::new(std::env::current_exe().context("cannot find the trainer executable")?);
        cmd.arg("--quiet").arg("fit");
        let resume = dir.join("checkpoints/last.safetensors").exists();
        if resume {
            cmd.arg("--resume").arg(&dir);
        } else {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            cmd.arg("--config").arg(self.dir.join("base.toml")).args(&overrides).arg("--run-dir").arg(&dir);
        }
        if let Some(uri) = &self.tracking_uri {
            cmd.arg("--tracking-uri").arg(uri);
        }
        if !self.state.tracking_run_id.is_empty() {
            cmd.env(PARENT_RUN_ENV, &self.state.tracking_run_id);
        }
        // Its own process group: a Ctrl-C reaches only the sweep, which then asks each trial
        // once (a second signal would make `fit` quit without its checkpoint).
        cmd.env(EXIT_WITH_PARENT_ENV, std::process::id().to_string())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("cannot start a trial process")?;
        let t = &mut self.state.trials[i];
        t.status = Status::Running;
        errln!(
            "{}: {} {}",
            t.id,
            if resume { "continues" } else { "starts" },
            t.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        );
        let secs_before = t.secs;
        Ok(Running { index: i, child, started: Instant::now(), secs_before, stopping: None, epochs, records_len: 0 })
    }

    /// Trial `i`'s `fit` overrides.
    fn overrides(&self, i: usize) -> Vec<String> {
        let t = &self.state.trials[i];
        let mut o: Vec<String> = t.params.iter().map(|(k, v)| override_of(k, v)).collect();
        o.push(override_of("name", &toml::Value::String(format!("{}-{}", self.spec.name, t.id))));
        o.push(format!("threads={}", self.threads));
        o
    }

    /// Reads a running trial's new epochs and applies the halving rule.
    fn watch(&mut self, r: &mut Running) -> Result<()> {
        if r.stopping.is_some() {
            return Ok(());
        }
        // Epoch records are rare among step records: parse the file only when it grew.
        let len = std::fs::metadata(self.run_dir(r.index).join("metrics.jsonl")).map_or(0, |m| m.len());
        if len == r.records_len {
            return Ok(());
        }
        r.records_len = len;
        let (history, epochs) = self.history(r.index);
        let trial = &mut self.state.trials[r.index];
        (trial.history, trial.epochs) = (history, epochs);
        let Some(h) = self.halving else { return Ok(()) };
        let trial = &self.state.trials[r.index];
        let judged = trial.judged_through;
        let fresh: Vec<(usize, f64)> =
            trial.history.iter().copied().filter(|(e, _)| *e > judged && *e < r.epochs).collect();
        for (epoch, value) in fresh {
            self.state.trials[r.index].judged_through = epoch;
            if !h.is_rung(epoch) {
                continue;
            }
            let others: Vec<f64> = self
                .state
                .trials
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != r.index)
                .filter_map(|(_, t)| t.history.iter().find(|(e, _)| *e == epoch).map(|(_, v)| *v))
                .collect();
            if !h.keeps(value, &others) {
                let t = &mut self.state.trials[r.index];
                t.status = Status::Stopped;
                t.stopped_at = Some(epoch);
                t.metric = Some(value);
                errln!(
                    "{}: stopped at epoch {epoch}: {} {value:.4} is not among the best ceil(n/{}) of n = {} trials there",
                    t.id,
                    self.spec.metric.name,
                    h.eta,
                    others.len() + 1
                );
                terminate(r);
                return Ok(());
            }
        }
        Ok(())
    }

    /// The sweep metric per epoch from trial `i`'s `metrics.jsonl`, and the epochs done.
    fn history(&self, i: usize) -> (Vec<(usize, f64)>, usize) {
        let field = if self.spec.metric.name == "train_loss" { "train_loss" } else { "val_acc" };
        let records = RunDir::at(self.run_dir(i)).records().unwrap_or_default();
        let epochs = records.iter().filter(|r| r["kind"] == "epoch").filter_map(|r| r["epoch"].as_u64()).max();
        let history = records
            .iter()
            .filter(|r| r["kind"] == "epoch")
            .filter_map(|r| Some((r["epoch"].as_u64()? as usize, r[field].as_f64()?)))
            .collect();
        (history, epochs.unwrap_or(0) as usize)
    }

    fn on_exit(&mut self, i: usize, success: bool, interrupted: bool) -> Result<()> {
        let status = self.state.trials[i].status;
        if status == Status::Stopped {
            let t = &self.state.trials[i];
            errln!("{}: stopped ({:.0}s)", t.id, t.secs);
            return Ok(());
        }
        if success {
            return self.finish_trial(i, false);
        }
        if interrupted {
            // Left `running`: `--resume` continues it from its checkpoint.
            return Ok(());
        }
        let log = self.dir.join("logs").join(format!("{}.log", self.state.trials[i].id));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let reason = text
            .lines()
            .rev()
            .find(|l| l.starts_with("error") || l.starts_with("Error"))
            .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("the trial process ended without a message")
            .to_string();
        self.fail(i, &format!("{reason} (log: {})", log.display()));
        Ok(())
    }

    fn fail(&mut self, i: usize, reason: &str) {
        let t = &mut self.state.trials[i];
        t.status = Status::Failed;
        t.error = reason.to_string();
        errln!("{}: failed: {reason}", t.id);
    }

    /// Records a finished trial's final metric.
    fn finish_trial(&mut self, i: usize, quiet: bool) -> Result<()> {
        let (history, epochs) = self.history(i);
        let summary: Summary = RunDir::at(self.run_dir(i)).read_json("summary.json")?;
        let t = &mut self.state.trials[i];
        (t.history, t.epochs) = (history, epochs);
        t.metric = match self.spec.metric.name.as_str() {
            "val_acc" => Some(summary.val_accuracy),
            "val_acc_tta" => Some(summary.val_accuracy_tta),
            _ => t.history.last().map(|(_, v)| *v),
        };
        t.status = Status::Finished;
        if !quiet {
            errln!(
                "{}: finished: {} {:.4} ({:.0}s)",
                t.id,
                self.spec.metric.name,
                t.metric.unwrap_or(f64::NAN),
                t.secs
            );
        }
        report::write(&self.dir, &self.spec, &self.state, &self.base)
    }
}
