//! `trainer compile`: a training run becomes one `.cifar` file. BN is folded
//! ([`fold`]), the f32 graph is checked against the trainer's own forward pass, int8
//! activations are calibrated two ways and the better one on validation is kept
//! ([`quant`]), and the file records provenance, quality and a drift reference.

pub mod fold;
pub mod quant;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use cifar_sdk::artifact::{ModelMetadata, Precision, Preprocessing, Provenance, Quality};
use cifar_sdk::drift::{feature_histogram, image_features, DriftReference, Histogram, FEATURE_NAMES};
use cifar_sdk::{Model, ModelOptions};
use serde::Serialize;

use crate::config::{Config, Tta};
use crate::data::Split;
use crate::run::RunDir;
use crate::{eval, train};

/// What to compile.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub run: PathBuf,
    pub precision: Precision,
    /// Training images used for int8 calibration.
    pub calibration: usize,
    /// Validation images on which the f32 file is compared with the trainer's forward.
    pub check_images: usize,
    pub output: Option<PathBuf>,
}

/// The numbers `trainer compile` prints and stores next to the run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CompileReport {
    pub output: String,
    pub precision: String,
    pub bytes: usize,
    pub validation_images: usize,
    pub checkpoint_accuracy: f64,
    pub f32_accuracy: f64,
    pub int8_minmax_accuracy: Option<f64>,
    pub int8_percentile_accuracy: Option<f64>,
    pub int8_mse_accuracy: Option<f64>,
    pub compiled_accuracy: f64,
    pub calibration: String,
    /// Max over the checked images of max |sdk - trainer| / max |trainer logit|.
    pub f32_max_relative_error: f64,
    pub checked_images: usize,
    pub checksum: String,
    /// Multiply-accumulates and parameters per image of the compiled graph (0 in
    /// reports from before these fields).
    #[serde(default)]
    pub macs: u64,
    #[serde(default)]
    pub parameters: u64,
}

/// How the trainer opens compiled files to score them: on the CPU, one thread per core
/// (the SDK's results do not depend on the thread count).
pub(crate) fn sdk_options() -> ModelOptions {
    ModelOptions { device: cifar_sdk::DevicePolicy::Cpu, threads: 0, max_batch: 64 }
}

pub(crate) fn accuracy(logits: &[f32], classes: usize, split: &Split, indices: &[u32]) -> f64 {
    let correct = logits
        .chunks_exact(classes)
        .zip(indices)
        .filter(|(row, &i)| eval::argmax(row) == split.labels[i as usize] as usize)
        .count();
    correct as f64 / indices.len().max(1) as f64
}

/// The drift reference: input features of `indices` and the output distribution of the
/// compiled model, whose logits on those images (`classes` per image) are given.
pub fn drift_reference(
    split: &Split,
    indices: &[u32],
    logits: &[f32],
    classes: usize,
    source: String,
) -> DriftReference {
    let mut features: std::collections::BTreeMap<String, Histogram> =
        FEATURE_NAMES.iter().map(|n| (n.to_string(), feature_histogram(n))).collect();
    let mut predicted = vec![0u64; classes];
    let mut confidence = Histogram::uniform(0.0, 1.0, 20);
    for (&i, row) in indices.iter().zip(logits.chunks_exact(classes)) {
        let f = image_features(&split.images[i as usize * 3072..(i as usize + 1) * 3072], 32, 32);
        for (name, v) in FEATURE_NAMES.iter().zip(f.values()) {
            if let Some(h) = features.get_mut(*name) {
                h.add(v);
            }
        }
        let p = cifar_sdk::softmax(row);
        let top = eval::argmax(&p);
        predicted[top] += 1;
        confidence.add(p[top]);
    }
    DriftReference { images: indices.len() as u64, source, features, predicted_classes: predicted, confidence }
}

/// The metadata of a file holding `float`'s graph for `data`'s classes (provenance,
/// quality and drift left empty).
fn metadata(float: &fold::FloatModel, data: &train::RunData) -> ModelMetadata {
    ModelMetadata {
        graph: float.graph.clone(),
        labels: data.dataset.manifest.classes.clone(),
        preprocessing: Preprocessing::default(),
        provenance: Provenance::default(),
        quality: Quality::default(),
        drift: None,
    }
}

/// `n` training images spread over the training split, for int8 calibration.
fn calibration_images(data: &train::RunData, n: usize) -> Vec<u32> {
    spread(&data.train_idx, n)
}

/// `n` of `train` (indices), evenly spread.
pub(crate) fn spread(train: &[u32], n: usize) -> Vec<u32> {
    let n = n.clamp(1, train.len().max(1));
    let step = (train.len() / n).max(1);
    train.iter().step_by(step).take(n).copied().collect()
}

/// `weights` of the net `cfg` describes, compiled in memory to int8 (min/max ranges over
/// 1,000 training images) and opened on the CPU: what distillation's teacher runs, three
/// to eight times faster than the trainer's own forward pass.
pub fn int8_in_memory(
    cfg: &Config,
    weights: &std::collections::HashMap<String, candle_core::Tensor>,
    data: &train::RunData,
) -> Result<std::sync::Arc<Model>> {
    let float = fold::fold(&cfg.model, weights)?;
    let meta = metadata(&float, data);
    let f32_model = Model::from_bytes(&quant::f32_writer(&float, meta.clone())?.to_bytes()?, &sdk_options())?;
    let cal = quant::calibrate(&f32_model, &float, data.split.as_ref(), &calibration_images(data, 1000))?;
    let iq = quant::input_quant(&meta.preprocessing.normalization);
    let quant = quant::activation_quant(&cal, quant::Method::MinMax);
    let w = quant::int8_writer(&float, iq, &quant, &cal.channel_means, meta)?;
    Ok(Model::from_bytes(&w.to_bytes()?, &sdk_options())?)
}

/// The int8 calibration of a float graph that [`best_int8`] kept.
pub struct Int8Choice {
    pub writer: cifar_sdk::artifact::ArtifactWriter,
    /// The int8 file's logits on the validation images.
    pub logits: Vec<f32>,
    pub accuracy: f64,
    /// How often its top-1 is the f32 file's.
    pub agreement: f64,
    pub method: quant::Method,
    pub minmax_accuracy: f64,
    pub percentile_accuracy: f64,
    pub mse_accuracy: f64,
}

/// Calibrates `float` on `calib` images of `split` through its f32 file `f32_model`,
/// quantizes it with min/max, percentile and least-squared-error ranges, and keeps the
/// one whose top-1 agrees with the f32 file's (`f32_logits` on `val`) most often, then
/// the more accurate (`trainer compile` and `trainer import-onnx`): the int8 file should
/// be the f32 model, not a lucky variation of it.
pub fn best_int8(
    float: &fold::FloatModel,
    meta: &ModelMetadata,
    f32_model: &std::sync::Arc<Model>,
    f32_logits: &[f32],
    split: &crate::data::Split,
    calib: &[u32],
    val: &[u32],
) -> Result<Int8Choice> {
    let cal = quant::calibrate(f32_model, float, split, calib)?;
    let iq = quant::input_quant(&meta.preprocessing.normalization);
    let classes = f32_model.classes();
    let mut best: Option<Int8Choice> = None;
    let mut accuracies = [0.0; 3];
    for (k, method) in [quant::Method::MinMax, quant::Method::Percentile, quant::Method::Mse].into_iter().enumerate() {
        let quant = quant::activation_quant(&cal, method);
        let w = quant::int8_writer(float, iq, &quant, &cal.channel_means, meta.clone())?;
        let m = Model::from_bytes(&w.to_bytes()?, &sdk_options())?;
        let logits = eval::sdk_logits(&m, split, val, Tta::None)?;
        let acc = accuracy(&logits, classes, split, val);
        let agree = cifar_sdk::top1_agreement(f32_logits, &logits, classes);
        let snr = cifar_sdk::signal_to_noise_db(f32_logits, &logits);
        errln!(
            "int8 ({}): validation accuracy {:.2}%, top-1 as f32 on {:.2}%, logits {snr:.1} dB from f32",
            method.name(),
            100.0 * acc,
            100.0 * agree
        );
        accuracies[k] = acc;
        if best.as_ref().is_none_or(|b| (agree, acc) > (b.agreement, b.accuracy)) {
            best = Some(Int8Choice {
                writer: w,
                logits,
                accuracy: acc,
                agreement: agree,
                method,
                minmax_accuracy: 0.0,
                percentile_accuracy: 0.0,
                mse_accuracy: 0.0,
            });
        }
    }
    let mut best = best.context("no calibration method ran")?;
    [best.minmax_accuracy, best.percentile_accuracy, best.mse_accuracy] = accuracies;
    Ok(best)
}

/// Compiles a run; returns the report (also printed and saved in the run directory).
pub fn compile(opts: &CompileOptions) -> Result<CompileReport> {
    let run = RunDir::open(&opts.run)?;
    let cfg = Config::resolve(Some(&run.file("config.toml")), &[])?;
    let data = train::RunData::load(&cfg)?;
    let digest = data.dataset.manifest.digest.clone();
    run.check_dataset(&cfg.data.path, &digest)?;
    let dev = Device::Cpu;
    let net = train::build_model(&cfg, &data, &dev)?;
    let (weights, which) = train::load_run_weights(&run, &dev)?;
    net.params().load(&weights, "")?;
    let float = fold::fold(&cfg.model, &net.params().snapshot())?;
    let split = data.split.as_ref();
    let val = &data.val_idx;
    if val.is_empty() {
        bail!("the run's dataset has no validation split to check the compiled model on");
    }
    errln!("compiling {which} of {} ({} precision)", run.path.display(), opts.precision);

    let mut meta = metadata(&float, &data);
    let created_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    meta.provenance = Provenance {
        dataset_digest: digest.clone(),
        training_config: std::fs::read_to_string(run.file("config.toml")).unwrap_or_default(),
        trainer_version: env!("CARGO_PKG_VERSION").into(),
        source_revision: env!("CIFAR_SOURCE_REVISION").into(),
        created_unix,
        run: run.path.display().to_string(),
    };

    // The f32 file must reproduce the trainer's forward pass.
    let f32_model = Model::from_bytes(&quant::f32_writer(&float, meta.clone())?.to_bytes()?, &sdk_options())?;
    let (reference, classes) = eval::predict(net.as_ref(), split, val, Tta::None, cfg.eval.batch_size, &dev)?;
    let f32_logits = eval::sdk_logits(&f32_model, split, val, Tta::None)?;
    let checked = opts.check_images.min(val.len());
    let max_rel = cifar_sdk::max_relative_error(
        &reference[..(checked * classes).min(reference.len())],
        &f32_logits[..(checked * classes).min(f32_logits.len())],
        classes,
    );
    let checkpoint_accuracy = accuracy(&reference, classes, split, val);
    let f32_accuracy = accuracy(&f32_logits, classes, split, val);
    errln!("f32: max relative logit error vs the trainer {max_rel:.2e} on {checked} images");
    if max_rel > 1e-3 {
        bail!("the compiled f32 graph disagrees with the trainer (max relative error {max_rel:.2e}): a compiler bug");
    }

    let mut report = CompileReport {
        output: String::new(),
        precision: opts.precision.to_string(),
        bytes: 0,
        validation_images: val.len(),
        checkpoint_accuracy,
        f32_accuracy,
        int8_minmax_accuracy: None,
        int8_percentile_accuracy: None,
        int8_mse_accuracy: None,
        compiled_accuracy: f32_accuracy,
        calibration: String::new(),
        f32_max_relative_error: max_rel,
        checked_images: checked,
        checksum: String::new(),
        macs: 0,
        parameters: 0,
    };
    // The compiled file's validation logits: accuracy and the drift reference use them.
    let (mut writer, compiled_logits) = match opts.precision {
        Precision::F32 => (quant::f32_writer(&float, meta.clone())?, f32_logits),
        Precision::Int8 => {
            let calib = calibration_images(&data, opts.calibration);
            errln!("calibrating on {} training images", calib.len());
            let best = best_int8(&float, &meta, &f32_model, &f32_logits, split, &calib, val)?;
            report.int8_minmax_accuracy = Some(best.minmax_accuracy);
            report.int8_percentile_accuracy = Some(best.percentile_accuracy);
            report.int8_mse_accuracy = Some(best.mse_accuracy);
            report.compiled_accuracy = best.accuracy;
            report.calibration = best.method.name().into();
            meta.quality.calibration = best.method.name().into();
            meta.quality.calibration_images = calib.len();
            (best.writer, best.logits)
        }
    };
    let cost = cifar_sdk::artifact::graph_cost(&float.graph)?;
    let pruned = !cfg.pruned.parent.is_empty();
    writer.metadata.quality = Quality {
        validation_images: val.len(),
        checkpoint_accuracy,
        compiled_accuracy: report.compiled_accuracy,
        calibration: meta.quality.calibration.clone(),
        calibration_images: meta.quality.calibration_images,
        macs: cost.macs,
        parameters: cost.parameters,
        unpruned_macs: pruned.then_some(cfg.pruned.parent_macs),
        unpruned_parameters: pruned.then_some(cfg.pruned.parent_parameters),
    };
    report.macs = cost.macs;
    report.parameters = cost.parameters;
    let source = format!("validation split of dataset {digest}");
    writer.metadata.drift = Some(drift_reference(split, val, &compiled_logits, classes, source));
    let out = opts.output.clone().unwrap_or_else(|| run.file(&format!("model-{}.cifar", opts.precision)));
    let bytes = writer.to_bytes()?;
    cifar_sdk::write_atomic(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    let written = Model::open(&out, &sdk_options())?;
    report.output = out.display().to_string();
    report.bytes = bytes.len();
    report.checksum = written.artifact().checksum.clone();
    run.write_json(&format!("compile-{}.json", opts.precision), &report)?;
    print_report(&report)?;
    Ok(report)
}

fn print_report(r: &CompileReport) -> std::io::Result<()> {
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    outln!("{:<38} {}", "output", r.output)?;
    outln!("{:<38} {} ({} bytes)", "precision", r.precision, r.bytes)?;
    outln!("{:<38} {}", "validation images", r.validation_images)?;
    outln!("{:<38} {}", "checkpoint accuracy (trainer)", pct(r.checkpoint_accuracy))?;
    outln!("{:<38} {}", "f32 compiled accuracy (SDK)", pct(r.f32_accuracy))?;
    outln!("{:<38} {:.2e} ({} images)", "f32 max relative logit error", r.f32_max_relative_error, r.checked_images)?;
    if let Some(a) = r.int8_minmax_accuracy {
        outln!("{:<38} {}", "int8 accuracy, min/max calibration", pct(a))?;
    }
    if let Some(a) = r.int8_percentile_accuracy {
        outln!("{:<38} {}", "int8 accuracy, percentile calibration", pct(a))?;
    }
    if let Some(a) = r.int8_mse_accuracy {
        outln!("{:<38} {}", "int8 accuracy, least-squares calibration", pct(a))?;
    }
    outln!("{:<38} {} {}", "compiled file accuracy", pct(r.compiled_accuracy), r.calibration)?;
    outln!("{:<38} {:.2} M MACs, {} parameters", "cost per image", r.macs as f64 / 1e6, r.parameters)?;
    outln!("{:<38} {}", "checksum", r.checksum)
}
