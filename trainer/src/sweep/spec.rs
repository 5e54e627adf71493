//! The sweep file: Weights & Biases' sweep schema, written in TOML.
//!
//! ```toml
//! config = "cpu-quick.toml"      # the base recipe (relative to this file)
//! method = "random"              # grid | random
//! run_cap = 8
//! [metric]
//! name = "val_acc"               # val_acc | val_acc_tta | train_loss
//! goal = "maximize"
//! [parameters."train.lr"]
//! distribution = "log_uniform_values"
//! min = 0.05
//! max = 2.0
//! [parameters."model.widths"]
//! values = [[16, 32, 64], [32, 64, 128]]
//! [early_terminate]
//! type = "hyperband"
//! min_iter = 1
//! eta = 2
//! ```
//!
//! Parameter names are the config's dotted keys (those `trainer fit` takes as
//! overrides). Everything is checked before the first trial starts: unknown keys in the
//! sweep file, unknown config keys, values of the wrong type, distributions without
//! bounds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// A sweep file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The sweep's name (default: the file's stem); names the sweep directory and the
    /// trials.
    #[serde(default)]
    pub name: String,
    /// Free text, kept with the sweep.
    #[serde(default)]
    pub description: String,
    /// The base recipe every trial starts from, relative to the sweep file.
    pub config: String,
    /// How trials are chosen.
    pub method: Method,
    /// What is optimized.
    pub metric: MetricSpec,
    /// The config keys searched over.
    pub parameters: BTreeMap<String, ParamSpec>,
    /// How many trials at most (required for `random`; a cap for `grid`).
    #[serde(default)]
    pub run_cap: Option<usize>,
    /// Stop weak trials early.
    #[serde(default)]
    pub early_terminate: Option<EarlyTerminate>,
    /// Seed of the random search (our addition: W&B's agent has none, so its sweeps
    /// cannot be repeated).
    #[serde(default)]
    pub seed: u64,
}

/// `method`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every combination of the parameters' `values`.
    Grid,
    /// Independent draws from each parameter's distribution.
    Random,
    /// Accepted by the schema, refused with a reason (see [`SweepSpec::check`]).
    Bayes,
}

/// `[metric]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// `val_acc` (validation accuracy, measured after every epoch and at the end),
    /// `val_acc_tta` (the final accuracy with the recipe's test-time augmentation; early
    /// termination compares `val_acc` per epoch), or `train_loss` (per-epoch mean).
    pub name: String,
    /// Default: `maximize` for accuracies, `minimize` for the loss.
    #[serde(default)]
    pub goal: Option<Goal>,
}

/// `metric.goal`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Maximize,
    Minimize,
}

/// One entry of `[parameters]`: a constant (`value`), a list (`values`), or a
/// distribution with bounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(default)]
    pub value: Option<toml::Value>,
    #[serde(default)]
    pub values: Option<Vec<toml::Value>>,
    /// With `values` under `random`: the chance of each (they sum to 1).
    #[serde(default)]
    pub probabilities: Option<Vec<f64>>,
    #[serde(default)]
    pub distribution: Option<Distribution>,
    #[serde(default)]
    pub min: Option<toml::Value>,
    #[serde(default)]
    pub max: Option<toml::Value>,
}

impl ParamSpec {
    /// The distribution, given or (as W&B does) inferred from the bounds' type.
    fn distribution(&self) -> Distribution {
        match (self.distribution, &self.min, &self.max) {
            (Some(d), _, _) => d,
            (None, Some(toml::Value::Integer(_)), Some(toml::Value::Integer(_))) => Distribution::IntUniform,
            _ => Distribution::Uniform,
        }
    }
}

/// `distribution`: W&B's names and meanings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Uniform between `min` and `max`.
    Uniform,
    /// Uniform integers from `min` to `max`, both included.
    IntUniform,
    /// Log-uniform between the values `min` and `max` (both positive).
    LogUniformValues,
    /// Log-uniform between `exp(min)` and `exp(max)` (W&B's older form: the bounds are
    /// natural logarithms).
    LogUniform,
    /// One of `values`, each equally likely (or with `probabilities`).
    Categorical,
}

/// `[early_terminate]`: asynchronous successive halving (Hyperband's inner loop, as W&B
/// runs it): at epochs `min_iter`, `min_iter*eta`, `min_iter*eta^2`, ... a trial goes on
/// only if its metric is among the best `ceil(n/eta)` of the `n` trials that reached that
/// epoch so far (see `hyperband.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyTerminate {
    /// Only `hyperband`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The first epoch at which trials are compared.
    pub min_iter: usize,
    /// The factor between comparison epochs, and the inverse of the share that goes on.
    #[serde(default = "default_eta")]
    pub eta: usize,
}

fn default_eta() -> usize {
    3
}

/// The metrics a sweep can optimize, with their natural goal.
pub const METRICS: [(&str, Goal); 3] =
    [("val_acc", Goal::Maximize), ("val_acc_tta", Goal::Maximize), ("train_loss", Goal::Minimize)];

/// Config keys a trial's parameters may not set: the sweep sets them itself.
const RESERVED: [&str; 4] = ["threads", "eval.every_epochs", "name", "tracking."];

/// One trial's parameter values, by config key.
pub type Params = BTreeMap<String, toml::Value>;

impl SweepSpec {
    /// Reads and checks a sweep file against its base recipe (with `overrides` applied to
    /// the recipe). Returns the spec and the base config.
    pub fn load(path: &Path, overrides: &[String]) -> Result<(SweepSpec, Config)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read sweep file {}", path.display()))?;
        let mut spec: SweepSpec =
            toml::from_str(&text).with_context(|| format!("{}: not a valid sweep file", path.display()))?;
        if spec.name.is_empty() {
            spec.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into());
        }
        let base_path = spec.base_path(path);
        let base = Config::resolve(Some(&base_path), overrides)
            .with_context(|| format!("{}: the base recipe `config = {:?}`", path.display(), spec.config))?;
        spec.check(&base).with_context(|| format!("in sweep file {}", path.display()))?;
        Ok((spec, base))
    }

    /// The base recipe's path: `config`, relative to the sweep file's folder.
    fn base_path(&self, sweep_file: &Path) -> PathBuf {
        let p = Path::new(&self.config);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        sweep_file.parent().unwrap_or(Path::new(".")).join(p)
    }

    /// The goal, explicit or the metric's natural one.
    pub fn goal(&self) -> Goal {
        self.metric
            .goal
            .unwrap_or_else(|| METRICS.iter().find(|(n, _)| *n == self.metric.name).map_or(Goal::Maximize, |(_, g)| *g))
    }

    /// Everything the types cannot say, checked against the base recipe.
    pub fn check(&self, base: &Config) -> Result<()> {
        if self.method == Method::Bayes {
            bail!(
                "method \"bayes\" is not supported: with the handful of trials a CPU affords, a Gaussian-process \
                 search does no better than random search; use \"random\" (with early_terminate) or \"grid\""
            );
        }
        if !METRICS.iter().any(|(n, _)| *n == self.metric.name) {
            let names: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
            bail!(
                "metric.name {:?} is not a metric a trial records; use one of {}",
                self.metric.name,
                names.join(", ")
            );
        }
        if self.parameters.is_empty() {
            bail!("[parameters] is empty: name at least one config key to search over");
        }
        if self.run_cap == Some(0) {
            bail!("run_cap must be at least 1");
        }
        if self.method == Method::Random && self.run_cap.is_none() {
            bail!("method \"random\" needs run_cap (how many trials to run)");
        }
        if let Some(et) = &self.early_terminate {
            if et.kind != "hyperband" {
                bail!("early_terminate.type {:?} is not supported; use \"hyperband\"", et.kind);
            }
            if et.min_iter == 0 {
                bail!("early_terminate.min_iter must be at least 1 (epochs)");
            }
            if et.eta < 2 {
                bail!("early_terminate.eta must be at least 2");
            }
        }
        for (key, p) in &self.parameters {
            check_param(self.method, key, p, base).with_context(|| format!("parameters.\"{key}\""))?;
        }
        if self.method == Method::Grid && self.grid_size() == 0 {
            bail!("the grid is empty");
        }
        Ok(())
    }

    /// The number of grid points (the product of the `values` counts).
    fn grid_size(&self) -> usize {
        self.parameters.values().map(|p| p.values.as_ref().map_or(1, Vec::len)).product()
    }

    /// Every trial's parameters, decided up front so that a resumed sweep runs exactly
    /// the trials it would have run.
    pub fn trials(&self) -> Result<Vec<Params>> {
        match self.method {
            Method::Grid => {
                let mut out = vec![Params::new()];
                for (key, p) in &self.parameters {
                    let choices = match (&p.value, &p.values) {
                        (Some(v), _) => vec![v.clone()],
                        (None, Some(vs)) => vs.clone(),
                        (None, None) => bail!("parameters.\"{key}\": a grid needs `values` or `value`"),
                    };
                    out = out
                        .into_iter()
                        .flat_map(|t| {
                            choices.iter().map(move |c| {
                                let mut t = t.clone();
                                t.insert(key.clone(), c.clone());
                                t
                            })
                        })
                        .collect();
                }
                out.truncate(self.run_cap.unwrap_or(usize::MAX));
                Ok(out)
            }
            Method::Random => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
                let n = self.run_cap.unwrap_or(0);
                (0..n)
                    .map(|_| {
                        self.parameters
                            .iter()
                            .map(|(k, p)| Ok((k.clone(), sample(p, &mut rng)?)))
                            .collect::<Result<_>>()
                    })
                    .collect()
            }
            Method::Bayes => bail!("method \"bayes\" is not supported"),
        }
    }
}

/// A parameter's value as a `fit` override (`key=value`).
pub fn override_of(key: &str, value: &toml::Value) -> String {
    format!("{key}={value}")
}

fn number(v: &Option<toml::Value>, what: &str) -> Result<f64> {
    match v {
        Some(toml::Value::Float(f)) if f.is_finite() => Ok(*f),
        Some(toml::Value::Integer(i)) => Ok(*i as f64),
        Some(other) => bail!("`{what}` must be a number, got {other}"),
        None => bail!("needs `{what}`"),
    }
}

fn check_param(method: Method, key: &str, p: &ParamSpec, base: &Config) -> Result<()> {
    if let Some(r) = RESERVED.iter().find(|r| key == **r || (r.ends_with('.') && key.starts_with(**r))) {
        bail!("{r:?} is set by the sweep itself and cannot be searched over");
    }
    let forms = [p.value.is_some(), p.values.is_some(), p.distribution.is_some() || p.min.is_some() || p.max.is_some()];
    match forms.iter().filter(|f| **f).count() {
        0 => bail!("give `value`, `values`, or a `distribution` with `min` and `max`"),
        1 => {}
        _ if p.distribution == Some(Distribution::Categorical) && p.values.is_some() && p.value.is_none() => {}
        _ => bail!("give only one of `value`, `values`, or a `distribution` with `min` and `max`"),
    }
    // Each candidate must be a value the config key takes.
    let fits = |v: &toml::Value| -> Result<()> { base.with_overrides(&[override_of(key, v)]).map(|_| ()) };
    if let Some(v) = &p.value {
        return fits(v);
    }
    if let Some(values) = &p.values {
        if values.is_empty() {
            bail!("`values` is empty");
        }
        if let Some(d) = p.distribution.filter(|d| *d != Distribution::Categorical) {
            bail!("`values` goes with distribution \"categorical\", not {d:?}");
        }
        if let Some(probs) = &p.probabilities {
            if probs.len() != values.len() {
                bail!("`probabilities` has {} entries for {} values", probs.len(), values.len());
            }
            if probs.iter().any(|q| !(q.is_finite() && *q >= 0.0)) || (probs.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
                bail!("`probabilities` must be non-negative and sum to 1");
            }
        }
        return values.iter().try_for_each(fits);
    }
    if method == Method::Grid {
        bail!("a grid search needs `values` (a list), not a distribution");
    }
    let dist = p.distribution();
    if dist == Distribution::Categorical {
        bail!("distribution \"categorical\" needs `values`");
    }
    let (lo, hi) = (
        number(&p.min, "min").with_context(|| format!("distribution {}", dist_name(dist)))?,
        number(&p.max, "max").with_context(|| format!("distribution {}", dist_name(dist)))?,
    );
    if lo > hi {
        bail!("min ({lo}) is greater than max ({hi})");
    }
    match dist {
        Distribution::IntUniform
            if !matches!((&p.min, &p.max), (Some(toml::Value::Integer(_)), Some(toml::Value::Integer(_)))) =>
        {
            bail!("distribution int_uniform needs integer bounds")
        }
        Distribution::LogUniformValues if lo <= 0.0 => {
            bail!(
                "distribution log_uniform_values needs positive bounds (they are values, not logarithms), got min {lo}"
            )
        }
        Distribution::LogUniform if hi > 700.0 => {
            bail!("distribution log_uniform takes natural logarithms as bounds; max {hi} is too large")
        }
        _ => {}
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for _ in 0..3 {
        fits(&sample(p, &mut rng)?)?;
    }
    Ok(())
}

fn dist_name(d: Distribution) -> String {
    serde_json::to_value(d).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// One draw from a (checked) parameter.
fn sample(p: &ParamSpec, rng: &mut impl Rng) -> Result<toml::Value> {
    if let Some(v) = &p.value {
        return Ok(v.clone());
    }
    if let Some(values) = &p.values {
        let i = match &p.probabilities {
            Some(probs) => {
                let mut u: f64 = rng.gen();
                probs
                    .iter()
                    .position(|q| {
                        u -= q;
                        u < 0.0
                    })
                    .unwrap_or(values.len() - 1)
            }
            None => rng.gen_range(0..values.len()),
        };
        return values.get(i).cloned().ok_or_else(|| anyhow!("no values"));
    }
    let dist = p.distribution();
    let (lo, hi) = (number(&p.min, "min")?, number(&p.max, "max")?);
    let u: f64 = rng.gen();
    // Four significant digits: configs and tables people read; no search needs more.
    let float = |x: f64| toml::Value::Float(round_significant(x, 4).clamp(lo, hi));
    Ok(match dist {
        Distribution::IntUniform => toml::Value::Integer(rng.gen_range(lo as i64..=hi as i64)),
        Distribution::Uniform => float(lo + u * (hi - lo)),
        Distribution::LogUniformValues => float((lo.ln() + u * (hi.ln() - lo.ln())).exp()),
        Distribution::LogUniform => toml::Value::Float(round_significant((lo + u * (hi - lo)).exp(), 4)),
        Distribution::Categorical => bail!("distribution \"categorical\" needs `values`"),
    })
}

/// `x` rounded to `digits` significant decimal digits.
fn round_significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    // Through decimal text, so the result is the double nearest to the short decimal
    // (0.1234, not 0.12340000000000001).
    let digits = usize::try_from(digits.max(1) - 1).unwrap_or(0);
    format!("{x:.digits$e}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<SweepSpec> {
        let spec: SweepSpec = toml::from_str(text)?;
        spec.check(&Config::default())?;
        Ok(spec)
    }

    const HEAD: &str = "config = \"x.toml\"\nmethod = \"random\"\nrun_cap = 6\n[metric]\nname = \"val_acc\"\n";

    #[test]
    fn random_draws_stay_in_bounds_and_repeat_with_the_seed() {
        let s = spec(&format!(
            "{HEAD}[parameters.\"train.lr\"]\ndistribution = \"log_uniform_values\"\nmin = 0.01\nmax = 1.0\n\
             [parameters.\"train.batch_size\"]\nmin = 64\nmax = 256\n\
             [parameters.\"model.widths\"]\nvalues = [[8, 16, 32], [16, 32, 64]]\n"
        ))
        .unwrap();
        let a = s.trials().unwrap();
        assert_eq!(a.len(), 6);
        assert_eq!(a, s.trials().unwrap(), "the same seed gives the same trials");
        for t in &a {
            let lr = t["train.lr"].as_float().unwrap();
            assert!((0.01..=1.0).contains(&lr), "{lr}");
            let b = t["train.batch_size"].as_integer().unwrap();
            assert!((64..=256).contains(&b), "{b}");
            assert!(t["model.widths"].is_array());
        }
        assert_eq!(s.goal(), Goal::Maximize);
        assert_eq!(round_significant(0.123456, 4).to_string(), "0.1235");
        assert_eq!(round_significant(0.00013192962, 4).to_string(), "0.0001319");
        assert_eq!(round_significant(2303.03113, 4).to_string(), "2303");
    }

    #[test]
    fn grid_is_the_product_capped() {
        let s = spec(
            "config = \"x.toml\"\nmethod = \"grid\"\n[metric]\nname = \"train_loss\"\n\
             [parameters.\"train.lr\"]\nvalues = [0.1, 0.2, 0.4]\n[parameters.\"train.momentum\"]\nvalues = [0.8, 0.9]\n",
        )
        .unwrap();
        assert_eq!(s.trials().unwrap().len(), 6);
        assert_eq!(s.goal(), Goal::Minimize);
    }

    #[test]
    fn bad_sweeps_are_refused_by_name() {
        let cases = [
            ("config = \"x\"\nmethod = \"random\"\nrun_cap = 2\nmetod = 1\n[metric]\nname = \"val_acc\"\n[parameters.\"train.lr\"]\nvalue = 0.1\n", "metod"),
            (&format!("{HEAD}[parameters.\"train.lrr\"]\nvalues = [0.1]\n"), "train.lrr"),
            (&format!("{HEAD}[parameters.\"train.lr\"]\ndistribution = \"uniform\"\nmin = 0.1\n"), "needs `max`"),
            (&format!("{HEAD}[parameters.\"train.lr\"]\ndistribution = \"log_uniform_values\"\nmin = 0.0\nmax = 1.0\n"), "positive bounds"),
            (&format!("{HEAD}[parameters.\"train.batch_size\"]\ndistribution = \"uniform\"\nmin = 1.0\nmax = 9.0\n"), "integer"),
            (&format!("{HEAD}[parameters.\"train.lr\"]\nvalues = [\"fast\"]\n"), "train.lr"),
            (&format!("{HEAD}[parameters.threads]\nvalues = [1]\n"), "set by the sweep"),
            (&format!("{HEAD}[parameters.\"train.lr\"]\ndistribution = \"normal\"\nmin = 0.1\nmax = 1.0\n"), "normal"),
            ("config = \"x\"\nmethod = \"random\"\n[metric]\nname = \"val_acc\"\n[parameters.\"train.lr\"]\nvalue = 0.1\n", "run_cap"),
            ("config = \"x\"\nmethod = \"bayes\"\nrun_cap = 3\n[metric]\nname = \"val_acc\"\n[parameters.\"train.lr\"]\nvalue = 0.1\n", "bayes"),
            ("config = \"x\"\nmethod = \"random\"\nrun_cap = 3\n[metric]\nname = \"accuracy\"\n[parameters.\"train.lr\"]\nvalue = 0.1\n", "val_acc"),
            (&format!("{HEAD}[parameters.\"train.lr\"]\nvalue = 0.1\n[early_terminate]\ntype = \"hyperband\"\nmin_iter = 1\neta = 1\n"), "eta"),
        ];
        for (text, needle) in cases {
            let e = format!("{:#}", spec(text).unwrap_err());
            assert!(e.contains(needle), "{needle:?} not in: {e}");
        }
    }
}
