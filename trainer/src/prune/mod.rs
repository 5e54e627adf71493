//! `trainer prune`: structured channel pruning with fine-tuning.
//!
//! A finished run's net loses whole channels ([`groups`] says which channels must go
//! together, [`importance`] which ones matter least), in one or more rounds; after each
//! round the smaller net is fine-tuned with the parent's recipe (`trainer fit`'s loop,
//! data pipeline and optimizer, with the epochs shortened). The result is an ordinary
//! run directory, so `compile`, `eval`, `inspect` and the server take it unchanged:
//!
//! ```text
//! config.toml        the pruned net (model.widths, model.inner_widths), the fine-tuning
//!                    recipe, and [pruned]: the parent run, the schedule, the parent's cost
//! prune.json         the plan: each round's widths, MACs, parameters and results, and
//!                    the wall time spent
//! rounds/<k>/        the runs of the rounds before the last (with --rounds > 1)
//! model.safetensors, summary.json, metrics.jsonl, plots: the last round's fine-tuning
//! ```
//!
//! Kept widths are rounded to a multiple of the SDK kernels' output panel (16 channels):
//! a width between two multiples costs the kernels as much as the next one up.

pub mod curve;
pub mod groups;
pub mod importance;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{Config, PruneRecord};
use crate::model::{self, ModelConfig};
use crate::run::{Checkpoint, RunDir, Summary};
use crate::train::{self, RunData, Start};
use groups::{channel_groups, check_shapes, slice_group, with_widths, ChannelGroup, Role};
use importance::Method;

/// `trainer prune` arguments.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  trainer prune --run runs/cpu --keep 0.7 --finetune-epochs 6 --run-dir runs/cpu-p70
  trainer prune --run runs/cpu --target-macs 10M --rounds 2 --finetune-epochs 6
  trainer prune --resume runs/cpu-p70                    # after Ctrl-C or a crash
  trainer compile --run runs/cpu-p70 --precision int8    # as for any run

The fine-tuning follows the parent's recipe (config.toml) with train.epochs set to
--finetune-epochs / --rounds and the warmup shortened in proportion, and learns from the
parent's predictions as well as the labels (knowledge distillation, train.distill_*; on
the CPU the parent runs compiled to int8). Overrides (key=value, as for `trainer fit`)
change the recipe, e.g. `train.lr=0.4`, or `train.distill_weight=0` to train on the
labels alone.")]
pub struct PruneArgs {
    /// The finished run to prune (it must have model.safetensors).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    run: Option<PathBuf>,
    /// Fraction of each channel group kept, in (0, 1]; widths are then rounded to
    /// --multiple, which can move them a long way in narrow layers (0.7 of 32 is 16):
    /// `--dry-run` shows the widths and MACs.
    #[arg(long, required_unless_present_any = ["target_macs", "resume"], conflicts_with = "target_macs")]
    keep: Option<f64>,
    /// Instead of --keep: the largest uniform keep whose net has at most this many
    /// multiply-accumulates per image (`9.5M`, `9500000`, `9.5e6`).
    #[arg(long, value_parser = parse_count)]
    target_macs: Option<u64>,
    /// Channel importance criterion.
    #[arg(long, value_enum, default_value = "taylor")]
    method: Method,
    /// Epochs of fine-tuning in all, shared evenly by the rounds.
    #[arg(long, default_value_t = 4.0)]
    finetune_epochs: f64,
    /// Prune-and-fine-tune rounds: each round removes part of the channels (keep^(1/K)
    /// of the parent's widths per round, compounded), then fine-tunes.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Round kept widths to a multiple of this (the SDK kernels compute output channels
    /// in panels of 16).
    #[arg(long, default_value_t = cifar_sdk::artifact::layers::PANEL)]
    multiple: usize,
    /// Training images the taylor criterion scores channels on.
    #[arg(long, default_value_t = 2048)]
    score_images: usize,
    /// Where to write the pruned run (default runs/<time>-<parent name>-pruned).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue an interrupted `trainer prune` in this directory (with its saved plan:
    /// the other options cannot change it).
    #[arg(long, conflicts_with_all = ["keep", "target_macs", "method", "finetune_epochs", "rounds", "multiple", "score_images", "run_dir"])]
    resume: Option<PathBuf>,
    /// Print the plan (each round's widths, MACs and parameters) and stop: nothing is
    /// written.
    #[arg(long, conflicts_with = "resume")]
    dry_run: bool,
    /// Overrides of the fine-tuning recipe, e.g. `train.lr=0.4`.
    overrides: Vec<String>,
    /// Mirror each fine-tuning round into this MLflow tracking server (default: the
    /// parent's `[tracking] uri`, else `MLFLOW_TRACKING_URI`).
    #[arg(long, value_name = "URI")]
    tracking_uri: Option<String>,
}

/// `9.5M`, `1.2G`, `9500000` or `9.5e6`.
fn parse_count(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a count (examples: 9.5M, 9500000, 9.5e6)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{s:?} must be positive"));
    }
    Ok((v * mult).round() as u64)
}

/// One round of the plan, as `prune.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundPlan {
    /// Fraction of the parent's channels this round keeps (compounded).
    pub keep: f64,
    pub widths: Vec<usize>,
    pub inner_widths: Vec<usize>,
    pub macs: u64,
    pub parameters: u64,
    /// The round's run directory when planned (for reading; a resume finds the rounds
    /// under the directory it is given).
    pub dir: PathBuf,
    /// Its results, once fine-tuned.
    pub val_accuracy: Option<f64>,
    pub val_accuracy_tta: Option<f64>,
    pub train_secs: Option<f64>,
}

/// `prune.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub parent: PathBuf,
    pub method: String,
    pub score_images: usize,
    pub parent_macs: u64,
    pub parent_parameters: u64,
    /// The parent's training time (its summary's train_secs).
    pub parent_train_secs: f64,
    pub rounds: Vec<RoundPlan>,
    /// Wall time of pruning and fine-tuning so far, across resumes (saved at the end of
    /// each round and on Ctrl-C: a session killed with `kill -9` loses its share).
    pub elapsed_secs: f64,
    /// Of which scoring channels and slicing tensors.
    pub scoring_secs: f64,
}

/// The cost of the net `model` describes, from its compiled graph (the SDK's formula).
pub fn model_cost(model: &ModelConfig, classes: usize) -> Result<cifar_sdk::artifact::GraphCost> {
    let net = model::build(model, classes, 0, &Device::Cpu, None)?;
    let float = crate::compile::fold::fold(model, &net.params().snapshot())?;
    Ok(cifar_sdk::artifact::graph_cost(&float.graph)?)
}

/// Each group's width when `keep` of the parent's channels stay, rounded to `multiple`.
fn widths_for(groups: &[ChannelGroup], keep: f64, multiple: usize) -> Result<Vec<usize>> {
    groups
        .iter()
        .map(|g| {
            let n = keep * g.width as f64;
            if n.round() < 1.0 {
                bail!(
                    "keeping {keep} of {} ({} channels) leaves it no channel; the smallest keep for it is {:.3}",
                    g.name,
                    g.width,
                    0.5 / g.width as f64
                );
            }
            let m = multiple.max(1);
            let rounded = ((n / m as f64).round() as usize) * m;
            Ok(rounded.clamp(m.min(g.width), g.width))
        })
        .collect()
}

fn role_width(cfg: &ModelConfig, role: Role) -> Result<usize> {
    let w = match role {
        Role::Stage(s) => cfg.widths.get(s),
        Role::Inner(b) => cfg.inner_widths.get(b),
    };
    w.copied().with_context(|| format!("the plan has no width for {role:?}"))
}

/// Where round `k` (0-based) of `rounds` lives: `rounds/<k+1>/` under the prune's
/// directory, the directory itself for the last.
fn round_dir(dir: &Path, k: usize, rounds: usize) -> PathBuf {
    if k + 1 == rounds {
        dir.to_path_buf()
    } else {
        dir.join("rounds").join((k + 1).to_string())
    }
}

/// The largest keep in (0, 1] whose net costs at most `target` MACs.
fn keep_for_target(
    parent: &ModelConfig,
    groups: &[ChannelGroup],
    classes: usize,
    target: u64,
    m: usize,
) -> Result<f64> {
    let cost = |keep: f64| -> Result<u64> {
        Ok(model_cost(&with_widths(parent, groups, &widths_for(groups, keep, m)?), classes)?.macs)
    };
    let full = cost(1.0)?;
    if full <= target {
        bail!(
            "the parent already costs {:.2} M MACs, within --target-macs {:.2} M",
            full as f64 / 1e6,
            target as f64 / 1e6
        );
    }
    let lowest = groups.iter().map(|g| 0.5 / g.width as f64).fold(0.0, f64::max) + 1e-9;
    let smallest = cost(lowest)?;
    if smallest > target {
        bail!(
            "--target-macs {:.2} M is out of reach: with every group at its smallest width (multiples of {m}) the net \
             costs {:.2} M",
            target as f64 / 1e6,
            smallest as f64 / 1e6
        );
    }
    let (mut lo, mut hi) = (lowest, 1.0);
    for _ in 0..30 {
        let mid = 0.5 * (lo + hi);
        if cost(mid)? <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The finished parent: its config, weights (checked against the config) and data.
struct Parent {
    dir: PathBuf,
    cfg: Config,
    data: RunData,
    weights: HashMap<String, Tensor>,
    train_secs: f64,
}

fn open_parent(dir: &Path) -> Result<Parent> {
    let run = RunDir::open(dir)?;
    if !run.file("model.safetensors").exists() {
        bail!(
            "{} is not a finished run (no model.safetensors): finish it with `trainer fit --resume {0}`, then prune it",
            dir.display()
        );
    }
    let cfg = Config::resolve(Some(&run.file("config.toml")), &[])?;
    let data = RunData::load(&cfg)?;
    run.check_dataset(&cfg.data.path, &data.dataset.manifest.digest)?;
    let (weights, _) = crate::run::load_tensors(&run.file("model.safetensors"), &Device::Cpu)?;
    // The weights must be the net the config describes, tensor for tensor.
    let classes = if cfg.model.classes > 0 { cfg.model.classes } else { data.classes() };
    let net = model::build(&cfg.model, classes, 0, &Device::Cpu, None)?;
    net.params()
        .load(&weights, "")
        .with_context(|| format!("{}: the weights do not match the run's config", dir.display()))?;
    check_shapes(&channel_groups(&cfg.model), &weights)?;
    let summary: Summary = run.read_json("summary.json").unwrap_or_default();
    Ok(Parent { dir: dir.to_path_buf(), cfg, data, weights, train_secs: summary.train_secs })
}

/// Plans a new prune: checks everything, writes nothing.
fn plan(args: &PruneArgs, parent: &Parent, dir: &Path) -> Result<(Plan, Config)> {
    if let Some(k) = args.keep {
        if k.is_nan() || k <= 0.0 || k > 1.0 {
            bail!("--keep must be in (0, 1], got {k}");
        }
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if !(args.finetune_epochs.is_finite() && args.finetune_epochs > 0.0) {
        bail!("--finetune-epochs must be positive, got {}", args.finetune_epochs);
    }
    if args.multiple == 0 {
        bail!("--multiple must be at least 1");
    }
    if args.method == Method::BnScale && !parent.cfg.model.bn_scale {
        bail!(
            "--method bn-scale ranks channels by their batch-norm scale, but {} was trained with model.bn_scale = \
             false (every scale is 1): use --method taylor or l1",
            parent.dir.display()
        );
    }
    let pm = &parent.cfg.model;
    let groups = channel_groups(pm);
    let classes = if pm.classes > 0 { pm.classes } else { parent.data.classes() };
    let keep = match (args.keep, args.target_macs) {
        (Some(k), _) => k,
        (None, Some(t)) => keep_for_target(pm, &groups, classes, t, args.multiple)?,
        (None, None) => bail!("pass --keep F or --target-macs M"),
    };
    let parent_cost = model_cost(pm, classes)?;
    let mut rounds = Vec::new();
    for k in 1..=args.rounds {
        let kk = keep.powf(k as f64 / args.rounds as f64);
        let m = with_widths(pm, &groups, &widths_for(&groups, kk, args.multiple)?);
        let cost = model_cost(&m, classes)?;
        let rdir = round_dir(dir, k - 1, args.rounds);
        rounds.push(RoundPlan {
            keep: kk,
            widths: m.widths.clone(),
            inner_widths: m.inner_widths.clone(),
            macs: cost.macs,
            parameters: cost.parameters,
            dir: rdir,
            val_accuracy: None,
            val_accuracy_tta: None,
            train_secs: None,
        });
    }
    // The fine-tuning recipe: the parent's, shortened, then the user's overrides.
    let mut cfg = parent.cfg.clone();
    let epochs = args.finetune_epochs / args.rounds as f64;
    cfg.name = format!("{}-pruned", parent.cfg.name);
    cfg.train.warmup_epochs = parent.cfg.train.warmup_epochs * epochs / parent.cfg.train.epochs.max(1e-9);
    cfg.train.epochs = epochs;
    // The parent teaches the pruned net (train.distill_weight=0 turns it off).
    cfg.train.distill_from = parent.dir.display().to_string();
    if let Some(last) = rounds.last() {
        cfg.model.widths = last.widths.clone();
        cfg.model.inner_widths = last.inner_widths.clone();
    }
    cfg.pruned = PruneRecord {
        parent: parent.dir.display().to_string(),
        parent_widths: pm.widths.clone(),
        parent_inner_widths: pm.inner_widths.clone(),
        method: args.method.name().into(),
        keep: args.keep.unwrap_or(0.0),
        target_macs: args.target_macs.unwrap_or(0),
        rounds: args.rounds,
        finetune_epochs: args.finetune_epochs,
        multiple: args.multiple,
        parent_macs: parent_cost.macs,
        parent_parameters: parent_cost.parameters,
    };
    if let Some(o) =
        args.overrides.iter().find(|o| o.trim_start().starts_with("model.") || o.trim_start().starts_with("data."))
    {
        bail!(
            "{o:?}: the fine-tuning recipe cannot change the net or the data (they are the parent's); use --keep, \
             --target-macs or --multiple for the widths"
        );
    }
    let cfg = cfg.with_overrides(&args.overrides)?;
    train::check_teacher(&cfg)?;
    let plan = Plan {
        parent: parent.dir.clone(),
        method: args.method.name().into(),
        score_images: args.score_images,
        parent_macs: parent_cost.macs,
        parent_parameters: parent_cost.parameters,
        parent_train_secs: parent.train_secs,
        rounds,
        elapsed_secs: 0.0,
        scoring_secs: 0.0,
    };
    Ok((plan, cfg))
}

fn round_config(cfg: &Config, r: &RoundPlan) -> Config {
    let mut c = cfg.clone();
    c.model.widths = r.widths.clone();
    c.model.inner_widths = r.inner_widths.clone();
    c
}

/// Scores the source net's channels and slices its weights to the round's widths.
fn prune_weights(
    method: Method,
    src_cfg: &Config,
    src_weights: &HashMap<String, Tensor>,
    target: &ModelConfig,
    data: &RunData,
    score_images: usize,
    dev: &Device,
) -> Result<HashMap<String, Tensor>> {
    let groups = channel_groups(&src_cfg.model);
    let mut weights = src_weights.clone();
    check_shapes(&groups, &weights)?;
    let net = train::build_model(src_cfg, data, dev)?;
    let on_dev: HashMap<String, Tensor> =
        weights.iter().map(|(k, v)| Ok((k.clone(), v.to_device(dev)?))).collect::<Result<_>>()?;
    net.params().load(&on_dev, "")?;
    let scores = importance::scores(method, src_cfg, &groups, &weights, Some((net.as_ref(), data, score_images, dev)))?;
    for (g, s) in groups.iter().zip(&scores) {
        let keep = importance::top_channels(s, role_width(target, g.role)?);
        slice_group(&mut weights, g, &keep)?;
    }
    Ok(weights)
}

fn save_plan(dir: &Path, plan: &Plan) -> Result<()> {
    cifar_sdk::write_atomic(&dir.join("prune.json"), &serde_json::to_vec_pretty(plan)?)?;
    Ok(())
}

/// Runs `trainer prune`.
pub fn prune_command(args: PruneArgs, quiet: bool) -> Result<()> {
    let (dir, mut plan, cfg, parent) = match &args.resume {
        Some(dir) => {
            if !args.overrides.is_empty() {
                bail!(
                    "--resume continues a prune with its saved plan; overrides such as {:?} cannot apply",
                    args.overrides[0]
                );
            }
            let text = std::fs::read(dir.join("prune.json"))
                .with_context(|| format!("{} holds no prune to resume (no prune.json)", dir.display()))?;
            let plan: Plan =
                serde_json::from_slice(&text).with_context(|| format!("{}/prune.json is invalid", dir.display()))?;
            let cfg = Config::resolve(Some(&dir.join("config.toml")), &[])?;
            crate::device::set_threads(cfg.threads);
            let parent = open_parent(&plan.parent)?;
            (dir.clone(), plan, cfg, parent)
        }
        None => {
            let run = args.run.as_ref().context("pass --run DIR (or --resume DIR)")?;
            // The thread count is set once, before any work: the parent's, or an override's.
            let recipe = Config::resolve(Some(&RunDir::open(run)?.file("config.toml")), &[])?;
            crate::device::set_threads(recipe.with_overrides(&args.overrides).map_or(recipe.threads, |c| c.threads));
            let parent = open_parent(run)?;
            let dir = match &args.run_dir {
                Some(d) => d.clone(),
                None => PathBuf::from("runs").join(format!("{}-{}-pruned", crate::cli::timestamp(), parent.cfg.name)),
            };
            if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
                bail!("{} already exists and is not empty: choose another --run-dir, or --resume it", dir.display());
            }
            let (plan, cfg) = plan(&args, &parent, &dir)?;
            if args.dry_run {
                return report(&plan);
            }
            crate::device::select(&cfg.device)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            cifar_sdk::write_atomic(&dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
            save_plan(&dir, &plan)?;
            (dir, plan, cfg, parent)
        }
    };
    let mut cfg = cfg;
    if let Some(uri) = &args.tracking_uri {
        // Where the rounds are mirrored, not how they train: allowed with --resume.
        cfg.tracking.uri = uri.clone();
    }
    crate::track::check(&cfg)?;
    let method = Method::from_name(&plan.method)?;
    let (dev, _) = crate::device::select(&cfg.device)?;
    train::install_interrupt_handler();
    let session = Instant::now();
    let base = plan.elapsed_secs;
    errln!(
        "pruning {} ({:.2} M MACs, {} parameters) by {} in {} round(s) into {}",
        plan.parent.display(),
        plan.parent_macs as f64 / 1e6,
        plan.parent_parameters,
        plan.method,
        plan.rounds.len(),
        dir.display()
    );
    let resume_command = format!("trainer prune --resume {}", dir.display());
    let rounds = plan.rounds.len();
    let mut worked = false;
    for k in 0..rounds {
        let r = plan.rounds[k].clone();
        let rcfg = round_config(&cfg, &r);
        let run = RunDir::at(round_dir(&dir, k, rounds));
        if run.file("model.safetensors").exists() && run.file("summary.json").exists() {
            // Done, perhaps by a session that died before it updated the plan.
            if plan.rounds[k].val_accuracy.is_none() {
                let s: Summary = run.read_json("summary.json")?;
                let done = &mut plan.rounds[k];
                (done.val_accuracy, done.val_accuracy_tta, done.train_secs) =
                    (Some(s.val_accuracy), Some(s.val_accuracy_tta), Some(s.train_secs));
                save_plan(&dir, &plan)?;
            }
            continue;
        }
        if train::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted before round {}; continue with `{resume_command}`", k + 1);
        }
        errln!(
            "round {}/{}: widths {:?}, inner {:?}: {:.2} M MACs ({:.2}x fewer), {} parameters",
            k + 1,
            plan.rounds.len(),
            r.widths,
            r.inner_widths,
            r.macs as f64 / 1e6,
            plan.parent_macs as f64 / r.macs.max(1) as f64,
            r.parameters
        );
        let start = if run.checkpoint_path().exists() && run.file("config.toml").exists() {
            Start::Resume(Checkpoint::load(&run.checkpoint_path(), &dev)?)
        } else {
            let t0 = Instant::now();
            let (src_cfg, src_weights) = if k == 0 {
                (parent.cfg.clone(), parent.weights.clone())
            } else {
                let prev = &plan.rounds[k - 1];
                let prev_dir = round_dir(&dir, k - 1, rounds);
                let (w, _) = crate::run::load_tensors(&prev_dir.join("model.safetensors"), &Device::Cpu)?;
                (round_config(&cfg, prev), w)
            };
            let weights =
                prune_weights(method, &src_cfg, &src_weights, &rcfg.model, &parent.data, plan.score_images, &dev)?;
            plan.scoring_secs += t0.elapsed().as_secs_f64();
            if train::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                plan.elapsed_secs = base + session.elapsed().as_secs_f64();
                save_plan(&dir, &plan)?;
                bail!("interrupted while scoring channels; continue with `{resume_command}`");
            }
            std::fs::create_dir_all(run.path.join("checkpoints"))?;
            cifar_sdk::write_atomic(&run.file("config.toml"), rcfg.to_toml()?.as_bytes())?;
            let _ = std::fs::remove_file(run.file("metrics.jsonl"));
            Start::Weights(weights)
        };
        worked = true;
        let result = train::fit(&rcfg, &run, start, quiet, &resume_command);
        plan.elapsed_secs = base + session.elapsed().as_secs_f64();
        if let Ok(s) = &result {
            let done = &mut plan.rounds[k];
            done.val_accuracy = Some(s.val_accuracy);
            done.val_accuracy_tta = Some(s.val_accuracy_tta);
            done.train_secs = Some(s.train_secs);
        }
        save_plan(&dir, &plan)?;
        result?;
    }
    if worked {
        plan.elapsed_secs = base + session.elapsed().as_secs_f64();
        save_plan(&dir, &plan)?;
    }
    report(&plan)?;
    outln!("run directory: {} (compile it with `trainer compile --run {0}`)", dir.display())?;
    Ok(())
}

fn report(plan: &Plan) -> Result<()> {
    let pct = |v: Option<f64>| v.map(|a| format!("{:.2}%", 100.0 * a)).unwrap_or_else(|| "-".into());
    outln!(
        "{:<6} {:<16} {:<16} {:>10} {:>10} {:>9} {:>9}",
        "round",
        "widths",
        "inner",
        "M MACs",
        "params",
        "val",
        "val TTA"
    )?;
    outln!(
        "{:<6} {:<16} {:<16} {:>10.2} {:>10} {:>9} {:>9}",
        "parent",
        "",
        "",
        plan.parent_macs as f64 / 1e6,
        plan.parent_parameters,
        "",
        ""
    )?;
    for (k, r) in plan.rounds.iter().enumerate() {
        outln!(
            "{:<6} {:<16} {:<16} {:>10.2} {:>10} {:>9} {:>9}",
            k + 1,
            format!("{:?}", r.widths),
            format!("{:?}", r.inner_widths),
            r.macs as f64 / 1e6,
            r.parameters,
            pct(r.val_accuracy),
            pct(r.val_accuracy_tta)
        )?;
    }
    if plan.rounds.iter().all(|r| r.val_accuracy.is_some()) {
        outln!(
            "pruning and fine-tuning took {:.0}s (scoring channels {:.1}s); the parent trained in {:.0}s",
            plan.elapsed_secs,
            plan.scoring_secs,
            plan.parent_train_secs
        )?;
    }
    Ok(())
}
