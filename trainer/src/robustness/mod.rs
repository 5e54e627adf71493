//! `trainer robustness`: what common corruptions cost a compiled model in accuracy, and
//! whether `cifar-serve`'s drift monitor would notice them.
//!
//! Each corruption of [`corrupt::Corruption`] is applied at five severities to the same
//! labelled images (a dataset's validation or test split, or a labelled ImageFolder);
//! each set goes through the SDK as served traffic would, giving the accuracy and the
//! drift statistics the server would report for a window of that traffic
//! ([`crate::drift_cli::check`], the SDK's window). The report is a table on stdout,
//! `report.json`, and a self-contained `report.html` with the plots ([`report`]). Gates
//! (`--min-accuracy`, `--max-clean-drift`, `--max-undetected-drop`) turn it into a CI check
//! that exits with status 3 when a model fails.

pub mod corrupt;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cifar_sdk::drift::DriftConfig;
use cifar_sdk::Model;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::compile::sdk_options;
use crate::data::{image_folder, Dataset, IMAGE_BYTES};
use crate::drift_cli::{check, classify_and_observe, whole_window};
use crate::eval::argmax;
use corrupt::{Corruption, SEVERITIES};

/// `trainer robustness`.
#[derive(clap::Args)]
#[command(after_help = "\
Corruptions (CIFAR-10-C style, severities 1-5): gaussian_noise, shot_noise, impulse_noise,
gaussian_blur, motion_blur, brightness, contrast, fog, pixelate, jpeg.

Writes <out>/report.html (open it in a browser: tables and plots, self-contained),
<out>/report.json, and the plots as PNG. The drift score of each row is what cifar-serve's
/v1/drift would report for a window of that traffic, with the same thresholds.

Gates (exit status 3 when one fails, 1 when the command cannot run):
  --min-accuracy 60           mean accuracy over every corruption and severity, percent
  --max-clean-drift 0.25      drift score of the uncorrupted images (is the data like the reference?)
  --max-undetected-drop 10    no corruption may cost more than 10 points of accuracy
                              while the drift monitor stays quiet

Examples:
  trainer robustness --model model.cifar --data data/cifar10 -o robustness/
  trainer robustness --model model.cifar --data labelled-photos/ --limit 0 --min-accuracy 55")]
pub struct RobustnessArgs {
    /// The compiled model.
    #[arg(long, value_name = "FILE.cifar")]
    model: PathBuf,
    /// A dataset directory (`trainer data import`; its validation split, or `--test`) or
    /// a labelled ImageFolder (`<class>/*.png`, a directory, .tar or .tar.gz; every image)
    /// whose class names are the model's labels.
    #[arg(long, default_value = "data/cifar10", value_name = "DIR|TAR")]
    data: PathBuf,
    /// Use the dataset's test split instead of its validation split.
    #[arg(long)]
    test: bool,
    /// Images to use, drawn at random (fixed seed) from the split; 0 for all.
    #[arg(long, default_value_t = 2000)]
    limit: usize,
    /// Only these corruptions (comma-separated; default all).
    #[arg(long, value_enum, value_delimiter = ',')]
    corruptions: Vec<Corruption>,
    /// Where to write the report.
    #[arg(long, short, default_value = "robustness")]
    out: PathBuf,
    /// Seed of the image sample and the corruptions' noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The drift score threshold (`cifar-serve --drift-threshold`).
    #[arg(long, default_value_t = DriftConfig::default().threshold)]
    drift_threshold: f64,
    /// The predicted-class divergence threshold (`cifar-serve --drift-class-threshold`).
    #[arg(long, default_value_t = DriftConfig::default().class_threshold)]
    drift_class_threshold: f64,
    /// Gate: the mean accuracy over every corruption and severity (percent) must reach this.
    #[arg(long, value_name = "PERCENT")]
    min_accuracy: Option<f64>,
    /// Gate: the uncorrupted images' drift score must not pass this.
    #[arg(long, value_name = "SCORE")]
    max_clean_drift: Option<f64>,
    /// Gate: no corruption and severity may cost more than this many points of accuracy
    /// while its drift score stays under the threshold.
    #[arg(long, value_name = "POINTS")]
    max_undetected_drop: Option<f64>,
}

/// One set of images (clean, or one corruption at one severity).
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// 0 for the clean images.
    pub severity: usize,
    /// Top-1 accuracy, 0..1.
    pub accuracy: f64,
    /// The server's drift score for this traffic (largest PSI).
    pub drift_score: f64,
    /// Jensen-Shannon divergence of the predicted classes (bits).
    pub class_js: f64,
    /// Whether the server's alarm would be on.
    pub drifting: bool,
    /// PSI per input feature.
    pub feature_psi: BTreeMap<String, f64>,
}

/// One corruption at every severity.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptionResult {
    /// Its name.
    pub name: &'static str,
    /// Severities 1..5.
    pub cells: Vec<Cell>,
}

/// A gate and how the model did.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    /// The flag.
    pub name: &'static str,
    /// Its limit.
    pub limit: f64,
    /// The measured value.
    pub value: f64,
    /// Whether the model passed.
    pub passed: bool,
    /// What the value is.
    pub detail: String,
}

/// `report.json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The model file, its precision and classes.
    pub model: String,
    pub precision: String,
    pub labels: Vec<String>,
    /// The images' source and how many.
    pub data: String,
    pub split: String,
    pub images: usize,
    pub seed: u64,
    /// The drift thresholds used.
    pub drift_threshold: f64,
    pub drift_class_threshold: f64,
    /// Uncorrupted images.
    pub clean: Cell,
    /// Per corruption.
    pub corruptions: Vec<CorruptionResult>,
    /// Mean accuracy over every corruption and severity.
    pub mean_corruption_accuracy: f64,
    /// The gates asked for.
    pub gates: Vec<Gate>,
}

/// Labelled 32x32 images and where they came from.
struct Labelled {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    split: String,
}

fn load_images(args: &RobustnessArgs, model: &Model) -> Result<Labelled> {
    let is_dataset = args.data.join("manifest.json").is_file();
    let (pixels, labels, classes, split) = if is_dataset {
        let ds = Dataset::load(&args.data)?;
        let (split, indices, name) = if args.test {
            let t = ds.test.as_ref().with_context(|| format!("dataset {} has no test split", args.data.display()))?;
            (t, (0..t.len() as u32).collect::<Vec<_>>(), "test")
        } else {
            (&ds.train, ds.val_indices.clone(), "validation")
        };
        let mut pixels = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        for &i in &indices {
            pixels.extend_from_slice(split.image(i as usize));
        }
        let labels = indices.iter().map(|&i| split.labels[i as usize]).collect();
        (pixels, labels, ds.manifest.classes.clone(), name.to_string())
    } else {
        if args.test {
            bail!("--test needs a dataset directory; {} is not one (no manifest.json)", args.data.display());
        }
        let imported = image_folder::import(&args.data, true)?;
        let mut split = imported.train;
        if let Some(t) = imported.test {
            split.images.extend(t.images);
            split.labels.extend(t.labels);
        }
        (split.images, split.labels, imported.classes, "every image".to_string())
    };
    // Dataset class indices to the model's.
    let mut map = Vec::with_capacity(classes.len());
    for c in &classes {
        match model.labels().iter().position(|l| l == c) {
            Some(i) => map.push(i as u8),
            None => bail!(
                "{} has the class {c:?}, which {} does not know (its labels: {})",
                args.data.display(),
                args.model.display(),
                model.labels().join(", ")
            ),
        }
    }
    let labels: Vec<u8> = labels.iter().map(|&l| map[l as usize]).collect();
    if labels.is_empty() {
        bail!(
            "{}: the {split} split is empty{}",
            args.data.display(),
            if split == "validation" { " (use --test for the test split)" } else { "" }
        );
    }
    // A fixed-seed sample, so that a limit takes every class (splits are often sorted).
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(args.seed));
    if args.limit > 0 {
        order.truncate(args.limit);
    }
    let mut sample = Labelled { pixels: Vec::with_capacity(order.len() * IMAGE_BYTES), labels: Vec::new(), split };
    for i in order {
        sample.pixels.extend_from_slice(&pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]);
        sample.labels.push(labels[i]);
    }
    Ok(sample)
}

fn measure(
    model: &std::sync::Arc<Model>,
    pixels: &[u8],
    labels: &[u8],
    config: DriftConfig,
    severity: usize,
) -> Result<Cell> {
    let (logits, observations) = classify_and_observe(model, pixels, labels.len())?;
    let classes = model.classes().max(1);
    let correct = logits.chunks_exact(classes).zip(labels).filter(|(row, &l)| argmax(row) == l as usize).count();
    let (_, stats) = check(model, &observations, config);
    Ok(Cell {
        severity,
        accuracy: correct as f64 / labels.len().max(1) as f64,
        drift_score: stats.score,
        class_js: stats.class_js,
        drifting: stats.drifting,
        feature_psi: stats.features.iter().map(|f| (f.name.clone(), f.psi)).collect(),
    })
}

/// A per-image seed for a corruption at a severity.
fn seed(base: u64, corruption: usize, severity: usize, image: usize) -> u64 {
    base.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((corruption as u64) << 48) ^ ((severity as u64) << 40) ^ image as u64
}

/// Corrupts every image of `pixels`.
pub fn corrupt_all(pixels: &[u8], c: Corruption, severity: usize, base_seed: u64) -> Vec<u8> {
    let index = Corruption::ALL.iter().position(|&x| x == c).unwrap_or(0);
    pixels
        .par_chunks_exact(IMAGE_BYTES)
        .enumerate()
        .flat_map_iter(|(i, img)| c.apply(severity, img, seed(base_seed, index, severity, i)))
        .collect()
}

fn gates(args: &RobustnessArgs, clean: &Cell, results: &[CorruptionResult], mean: f64) -> Vec<Gate> {
    let mut gates = Vec::new();
    if let Some(limit) = args.min_accuracy {
        gates.push(Gate {
            name: "min-accuracy",
            limit,
            value: 100.0 * mean,
            passed: 100.0 * mean >= limit,
            detail: "mean accuracy over every corruption and severity, percent".into(),
        });
    }
    if let Some(limit) = args.max_clean_drift {
        gates.push(Gate {
            name: "max-clean-drift",
            limit,
            value: clean.drift_score,
            passed: clean.drift_score <= limit,
            detail: "drift score of the uncorrupted images".into(),
        });
    }
    if let Some(limit) = args.max_undetected_drop {
        let mut worst = (0.0f64, String::from("none"));
        for r in results {
            for c in r.cells.iter().filter(|c| !c.drifting) {
                let drop = 100.0 * (clean.accuracy - c.accuracy);
                if drop > worst.0 {
                    worst = (drop, format!("{} severity {}", r.name, c.severity));
                }
            }
        }
        gates.push(Gate {
            name: "max-undetected-drop",
            limit,
            value: worst.0,
            passed: worst.0 <= limit,
            detail: format!("largest accuracy drop (points) the drift monitor misses: {}", worst.1),
        });
    }
    gates
}

/// Runs `trainer robustness`.
pub fn robustness_command(args: RobustnessArgs, quiet: bool) -> Result<()> {
    let model =
        Model::open(&args.model, &sdk_options()).with_context(|| format!("cannot open {}", args.model.display()))?;
    let data = load_images(&args, &model)?;
    let n = data.labels.len();
    let corruptions = if args.corruptions.is_empty() { Corruption::ALL.to_vec() } else { args.corruptions.clone() };
    let min_images = DriftConfig::default().min_images;
    let config = whole_window(n, args.drift_threshold, args.drift_class_threshold, min_images);
    if n < min_images {
        errln!(
            "warning: {n} images: drift is judged from {min_images} (as cifar-serve does), so no set will be flagged"
        );
    }
    if model.metadata().drift.is_none() {
        errln!(
            "warning: {} has no drift reference: drift scores are 0 (recompile it with `trainer compile`)",
            args.model.display()
        );
    }
    errln!(
        "{} ({}) on {n} {} images of {}: {} corruptions x {SEVERITIES} severities",
        args.model.display(),
        model.precision(),
        data.split,
        args.data.display(),
        corruptions.len()
    );
    let progress =
        if quiet { ProgressBar::hidden() } else { ProgressBar::new((1 + corruptions.len() * SEVERITIES) as u64) };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} sets {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message("clean");
    let clean = measure(&model, &data.pixels, &data.labels, config, 0)?;
    progress.inc(1);
    let mut results = Vec::new();
    for &c in &corruptions {
        let mut cells = Vec::new();
        for severity in 1..=SEVERITIES {
            progress.set_message(format!("{} {severity}", c.name()));
            let corrupted = corrupt_all(&data.pixels, c, severity, args.seed);
            cells.push(measure(&model, &corrupted, &data.labels, config, severity)?);
            progress.inc(1);
        }
        results.push(CorruptionResult { name: c.name(), cells });
    }
    progress.finish_and_clear();
    let all: Vec<f64> = results.iter().flat_map(|r| r.cells.iter().map(|c| c.accuracy)).collect();
    let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
    let gates = gates(&args, &clean, &results, mean);
    let report = Report {
        model: args.model.display().to_string(),
        precision: model.precision().to_string(),
        labels: model.labels().to_vec(),
        data: args.data.display().to_string(),
        split: data.split.clone(),
        images: n,
        seed: args.seed,
        drift_threshold: args.drift_threshold,
        drift_class_threshold: args.drift_class_threshold,
        clean,
        corruptions: results,
        mean_corruption_accuracy: mean,
        gates,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let json = serde_json::to_vec_pretty(&report)?;
    cifar_sdk::write_atomic(&args.out.join("report.json"), &json)?;
    let examples = report::examples(&data.pixels, &corruptions, args.seed);
    report::write_html(&args.out, &report, &examples)?;
    out!("{}", report::table(&report))?;
    outln!("\nreport: {}", args.out.join("report.html").display())?;
    let failed: Vec<String> = report
        .gates
        .iter()
        .filter(|g| !g.passed)
        .map(|g| format!("--{} {}: {:.3} ({})", g.name, g.limit, g.value, g.detail))
        .collect();
    if !failed.is_empty() {
        return Err(cifar_cli_io::CheckFailed(failed.join("; ")).into());
    }
    Ok(())
}
