//! Training recipes: TOML files with defaults for every key, and `key=value` overrides
//! from the command line.
//!
//! An override must name a key that exists (with its dotted path, e.g.
//! `train.epochs=3`), and its value must have the key's type: anything else is refused
//! with a message naming the key, before any work starts. The resolved config (file +
//! overrides + defaults) is saved in the run directory.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::loader::Augment;
use crate::model::ModelConfig;

/// A complete training recipe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name used in run directory names.
    pub name: String,
    /// Seed for initialization, data order and augmentation.
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// CPU threads for the kernels (0 = all cores).
    pub threads: usize,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub augment: Augment,
    pub eval: EvalConfig,
    pub checkpoint: CheckpointConfig,
    /// Where a pruned run's net came from (`trainer prune` fills it in; empty otherwise).
    pub pruned: PruneRecord,
    /// Experiment tracking (MLflow).
    pub tracking: TrackingConfig,
}

/// `[tracking]`: mirror the run into an MLflow tracking server (`crate::track`). The run
/// directory stays the source of truth; a server that is down or slow never stops or
/// slows training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// The tracking server, e.g. `http://127.0.0.1:5000`. Empty: `MLFLOW_TRACKING_URI`
    /// from the environment, or no tracking. Credentials never go here: MLflow's
    /// `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` or `MLFLOW_TRACKING_TOKEN`
    /// are read from the environment.
    pub uri: String,
    /// The MLflow experiment (default: the config's `name`).
    pub experiment: String,
}

/// The provenance of a pruned net, kept in its run's config (and so in the compiled
/// file's provenance): the parent run, the schedule, and the parent's cost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PruneRecord {
    /// The run that was pruned (empty: this net was not pruned).
    pub parent: String,
    /// The parent's `model.widths` and `model.inner_widths`.
    pub parent_widths: Vec<usize>,
    pub parent_inner_widths: Vec<usize>,
    /// Channel importance criterion (`taylor`, `l1`, `bn-scale`).
    pub method: String,
    /// Fraction of each group's channels kept (0 when a MAC target was given).
    pub keep: f64,
    /// The MAC target (0 when a keep fraction was given).
    pub target_macs: u64,
    /// Prune-and-fine-tune rounds, and the fine-tuning epochs they share.
    pub rounds: usize,
    pub finetune_epochs: f64,
    /// Kept widths are multiples of this (the kernels' output panel).
    pub multiple: usize,
    /// The parent's multiply-accumulates and parameters per image (compiled graph).
    pub parent_macs: u64,
    pub parent_parameters: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset directory made by `trainer data import` or `trainer data fetch`.
    pub path: String,
    /// Use only the first N training images (0 = all): for smoke tests.
    pub train_limit: usize,
    /// Evaluate on only the first N validation images (0 = all).
    pub val_limit: usize,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear decay to `end_lr_factor * lr`.
    Linear,
    /// Cosine decay to `end_lr_factor * lr`.
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: f64,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    /// L2 weight decay on conv/linear weights.
    pub weight_decay: f64,
    /// Learning-rate multiplier for biases and batch-norm parameters.
    pub bias_lr_mult: f64,
    /// Weight decay on biases and batch-norm parameters.
    pub bias_weight_decay: f64,
    pub label_smoothing: f64,
    /// Linear warmup from `warmup_start_factor * lr`, over this many epochs.
    pub warmup_epochs: f64,
    pub warmup_start_factor: f64,
    pub schedule: Schedule,
    pub end_lr_factor: f64,
    /// Exponential moving average of the weights (0 = off), used for evaluation.
    pub ema_decay: f64,
    /// Update the EMA every this many steps.
    pub ema_every: usize,
    /// airbench's lookahead: every 5 steps the weights are pulled back to a running
    /// average of themselves whose memory grows with the cube of training progress; the
    /// run ends on the average. It changes training itself (unlike `ema_decay`).
    pub lookahead: bool,
    /// airbench: the whitening stem's bias trains only in the first this many epochs,
    /// then stays fixed (0 = it trains throughout).
    pub whiten_bias_epochs: usize,
    /// Knowledge distillation: a finished run (its directory) whose predictions the net
    /// also learns from, as `(1 - w) * label loss + w * T^2 * KL(teacher || net)` at
    /// temperature T (Hinton et al.). Empty: off. `trainer prune` sets the parent here.
    pub distill_from: String,
    /// `w`: the weight of the distillation term.
    pub distill_weight: f64,
    /// `T`: the softmax temperature of the distillation term.
    pub distill_temperature: f64,
    /// Batches prepared ahead of the step (host loader).
    pub prefetch: usize,
    /// What GPU convolutions compute in: `f32`, or `bf16`/`f16` (mixed precision:
    /// parameters, batch norm, the loss and the optimizer stay f32). Ignored on the CPU.
    pub precision: ComputePrecision,
    /// Where batches are shuffled and augmented: `host` (a worker thread), `device`
    /// (the whole training split resident on the device, augmented there each epoch), or
    /// `auto` (device on a GPU, host on the CPU).
    pub loader: LoaderKind,
    /// One training step and one evaluation batch on a throw-away copy of the net and
    /// made-up images, before the timer starts (airbench's warm-up run plays this role):
    /// on a GPU it loads the kernels and lets cuDNN choose its algorithms, which would
    /// otherwise land in `timed_secs`. `auto`: on a GPU only. It changes no result.
    pub warm_up: WarmUp,
}

/// The dtype GPU convolutions compute in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ComputePrecision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl ComputePrecision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
            Self::F16 => candle_core::DType::F16,
        }
    }
}

/// Where training batches are made.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoaderKind {
    #[default]
    Auto,
    Host,
    Device,
}

/// Whether `fit` runs a warm-up step before its timed window.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WarmUp {
    #[default]
    Auto,
    On,
    Off,
}

/// Test-time augmentation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    None,
    /// Average with the mirrored image.
    Flip,
    /// Mirror and one-pixel translations (6 views).
    FlipTranslate,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// TTA used for the final reported accuracy.
    pub tta: Tta,
    /// Evaluate on the validation split every N epochs (0 = only at the end).
    pub every_epochs: usize,
    pub batch_size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save a checkpoint at least this often (seconds, 0 = off).
    pub every_secs: f64,
    /// Save a checkpoint every N steps (0 = off).
    pub every_steps: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "custom".into(),
            seed: 0,
            device: "auto".into(),
            threads: 0,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            augment: Augment::default(),
            eval: EvalConfig::default(),
            checkpoint: CheckpointConfig::default(),
            pruned: PruneRecord::default(),
            tracking: TrackingConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { path: "data/cifar10".into(), train_limit: 0, val_limit: 0 }
    }
}

impl Default for TrainConfig {
    /// airbench's recipe, converted to a mean (not summed) loss at batch 512.
    fn default() -> Self {
        Self {
            epochs: 10.0,
            batch_size: 512,
            lr: 0.75,
            momentum: 0.85,
            nesterov: true,
            weight_decay: 1.33e-3,
            bias_lr_mult: 64.0,
            bias_weight_decay: 2e-5,
            label_smoothing: 0.2,
            warmup_epochs: 2.3,
            warmup_start_factor: 0.2,
            schedule: Schedule::Linear,
            end_lr_factor: 0.07,
            ema_decay: 0.0,
            ema_every: 5,
            lookahead: false,
            whiten_bias_epochs: 0,
            distill_from: String::new(),
            distill_weight: 0.5,
            distill_temperature: 4.0,
            prefetch: 4,
            precision: ComputePrecision::F32,
            loader: LoaderKind::Auto,
            warm_up: WarmUp::Auto,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { tta: Tta::FlipTranslate, every_epochs: 1, batch_size: 500 }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every_secs: 60.0, every_steps: 0 }
    }
}

/// Parses an override value: a TOML value if it is one (`3`, `0.5`, `true`, `[1, 2]`,
/// `"x"`), else a bare string (`device=cpu`).
fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

/// Applies one `key=value` override to a TOML tree that holds every known key.
fn apply_override(tree: &mut toml::Value, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("override {spec:?} must look like key=value (for example train.epochs=3)"))?;
    let key = key.trim();
    let mut node = &mut *tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node.as_table_mut().ok_or_else(|| anyhow!("unknown config key {key:?}"))?;
        let known: Vec<String> = table.keys().cloned().collect();
        node = table.get_mut(*part).ok_or_else(|| {
            let prefix = parts[..i].join(".");
            let options = known
                .iter()
                .map(|k| if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") })
                .collect::<Vec<_>>()
                .join(", ");
            anyhow!("unknown config key {key:?}; known keys here: {options}")
        })?;
    }
    if node.is_table() {
        bail!("config key {key:?} is a section; override one of its keys instead");
    }
    let mut value = parse_value(raw.trim());
    // An integer where a float is expected is fine (`train.epochs=3`).
    if let (toml::Value::Float(_), toml::Value::Integer(i)) = (&*node, &value) {
        value = toml::Value::Float(*i as f64);
    }
    let same_kind = std::mem::discriminant(&*node) == std::mem::discriminant(&value);
    if !same_kind {
        bail!("config key {key:?} expects a {}, got {:?} (a {})", type_name(node), raw.trim(), type_name(&value));
    }
    *node = value;
    Ok(())
}

/// Merges a user's TOML over the defaults, refusing keys the defaults do not have.
fn merge(base: &mut toml::Value, user: toml::Value, path: &str) -> Result<()> {
    match (base, user) {
        (toml::Value::Table(b), toml::Value::Table(u)) => {
            for (k, v) in u {
                let full = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let known: Vec<String> = b.keys().cloned().collect();
                let slot = b
                    .get_mut(&k)
                    .ok_or_else(|| anyhow!("unknown config key {full:?}; known keys here: {}", known.join(", ")))?;
                merge(slot, v, &full)?;
            }
            Ok(())
        }
        (slot, v) => {
            let v = match (&*slot, v) {
                (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
                (_, v) => v,
            };
            if std::mem::discriminant(&*slot) != std::mem::discriminant(&v) {
                bail!("config key {path:?} expects a {}, got a {}", type_name(slot), type_name(&v));
            }
            *slot = v;
            Ok(())
        }
    }
}

/// Merges a config file's TOML over `tree`; a config without `name` (or with the
/// default's) is named `stem`.
fn merge_file(tree: &mut toml::Value, text: &str, stem: &str) -> Result<()> {
    let user: toml::Value = toml::from_str(text).context("invalid TOML")?;
    merge(tree, user, "")?;
    if let Some(t) = tree.as_table_mut() {
        if t.get("name").is_none_or(|n| n.as_str() == Some("custom")) {
            t.insert("name".into(), toml::Value::String(stem.to_string()));
        }
    }
    Ok(())
}

impl Config {
    /// Loads `path` (if given), applies overrides and checks the result.
    pub fn resolve(path: Option<&Path>, overrides: &[String]) -> Result<Config> {
        let mut tree = Config::default_tree()?;
        if let Some(p) = path {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            merge_file(&mut tree, &text, &stem).with_context(|| format!("in config {}", p.display()))?;
        }
        Config::finish(tree, overrides)
    }

    /// [`Config::resolve`] without the file system: `file` is a config's TOML text and the
    /// name that a config without `name` gets (its file's stem).
    pub fn parse(file: Option<(&str, &str)>, overrides: &[String]) -> Result<Config> {
        let mut tree = Config::default_tree()?;
        if let Some((text, stem)) = file {
            merge_file(&mut tree, text, stem)?;
        }
        Config::finish(tree, overrides)
    }

    fn default_tree() -> Result<toml::Value> {
        toml::Value::try_from(Config::default()).context("cannot serialize the default config")
    }

    /// Applies the overrides and checks the result.
    fn finish(mut tree: toml::Value, overrides: &[String]) -> Result<Config> {
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        let cfg: Config = tree.try_into().context("invalid config")?;
        cfg.check()?;
        Ok(cfg)
    }

    /// This config with `overrides` applied (checked as [`Config::resolve`] checks them).
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Config> {
        let tree = toml::Value::try_from(self).context("cannot serialize the config")?;
        Config::finish(tree, overrides)
    }

    /// Range checks that the types alone cannot express.
    pub fn check(&self) -> Result<()> {
        let t = &self.train;
        if t.epochs.is_nan() || t.epochs <= 0.0 {
            bail!("train.epochs must be positive, got {}", t.epochs);
        }
        if t.batch_size == 0 {
            bail!("train.batch_size must be at least 1");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr must be a positive number, got {}", t.lr);
        }
        if !(0.0..1.0).contains(&t.momentum) {
            bail!("train.momentum must be in [0, 1), got {}", t.momentum);
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            bail!("train.label_smoothing must be in [0, 1), got {}", t.label_smoothing);
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            bail!("train.ema_decay must be in [0, 1), got {}", t.ema_decay);
        }
        if !(0.0..=1.0).contains(&t.distill_weight) {
            bail!("train.distill_weight must be in [0, 1], got {}", t.distill_weight);
        }
        if !(t.distill_temperature > 0.0 && t.distill_temperature.is_finite()) {
            bail!("train.distill_temperature must be positive, got {}", t.distill_temperature);
        }
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size must be at least 1");
        }
        self.model.check()?;
        Ok(())
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_values_of_the_right_type() {
        let c =
            Config::resolve(None, &["train.epochs=3".into(), "device=cpu".into(), "model.widths=[8, 16, 32]".into()])
                .unwrap();
        assert_eq!(c.train.epochs, 3.0);
        assert_eq!(c.device, "cpu");
        assert_eq!(c.model.widths, vec![8, 16, 32]);
    }

    /// Runs saved before per-block widths and the `[pruned]` record load unchanged.
    #[test]
    fn configs_from_before_pruning_load() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/runs");
        for family in ["cpu", "resnet"] {
            let text = std::fs::read_to_string(root.join(family).join("config.toml")).unwrap();
            assert!(!text.contains("inner_widths") && !text.contains("[pruned]"), "{family}: an old config");
            let c = Config::resolve(Some(&root.join(family).join("config.toml")), &[]).unwrap();
            assert!(c.model.inner_widths.is_empty() && c.pruned.parent.is_empty());
            assert_eq!(c.model.inner_width(2, c.model.blocks_total() - 1), c.model.widths[2]);
        }
        let bad = Config::resolve(None, &["model.inner_widths=[8, 8]".into()]).unwrap_err().to_string();
        assert!(bad.contains("model.inner_widths") && bad.contains("3 positive"), "{bad}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_by_name() {
        let e = Config::resolve(None, &["train.epoch=3".into()]).unwrap_err().to_string();
        assert!(e.contains("unknown config key \"train.epoch\"") && e.contains("train.epochs"), "{e}");
        let e = Config::resolve(None, &["train.epochs=many".into()]).unwrap_err().to_string();
        assert!(e.contains("train.epochs") && e.contains("float"), "{e}");
        let e = Config::resolve(None, &["train.batch_size=1.5".into()]).unwrap_err().to_string();
        assert!(e.contains("train.batch_size") && e.contains("integer"), "{e}");
        let e = Config::resolve(None, &["train".into()]).unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
        let e = Config::resolve(None, &["train=3".into()]).unwrap_err().to_string();
        assert!(e.contains("section"), "{e}");
    }

    #[test]
    fn files_with_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("cfg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, "[train]\nepochz = 3\n").unwrap();
        let e = format!("{:#}", Config::resolve(Some(&p), &[]).unwrap_err());
        assert!(e.contains("train.epochz"), "{e}");
        std::fs::write(&p, "[train]\nepochs = \"3\"\n").unwrap();
        let e = format!("{:#}", Config::resolve(Some(&p), &[]).unwrap_err());
        assert!(e.contains("train.epochs"), "{e}");
        std::fs::write(&p, "[train]\nepochs = 2\n").unwrap();
        let c = Config::resolve(Some(&p), &[]).unwrap();
        assert_eq!((c.train.epochs, c.name.as_str()), (2.0, "bad"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shipped_configs_parse() {
        for name in ["cpu-quick", "cpu"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../configs/{name}.toml"));
            let c = Config::resolve(Some(&p), &[]).unwrap();
            assert_eq!(c.name, name);
        }
    }
}
