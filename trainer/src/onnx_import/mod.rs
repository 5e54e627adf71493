//! `trainer import-onnx`: a CNN exported to ONNX (PyTorch, timm, torchvision, Keras via
//! tf2onnx ...) becomes a `.cifar` file like the ones `trainer compile` makes: the
//! graph lowered to the SDK's ops with batch norm and constant arithmetic folded
//! ([`lower`]), int8 calibrated on a dataset's training images, accuracy measured and
//! the drift reference recorded on its validation split.
//!
//! - [`tensor`]: constants decoded with every size checked before allocation.
//! - [`lower`]: ONNX nodes to SDK nodes, then fusion of affine maps and activations.

pub mod lower;
pub mod tensor;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use cifar_sdk::artifact::{ModelMetadata, Precision, Preprocessing, Provenance, Quality};
use cifar_sdk::{Model, Normalization};
use prost::Message;
use serde::Serialize;

use crate::compile::{self, quant};
use crate::config::Tta;
use crate::data::Dataset;
use crate::eval;
use crate::model_cli::PrecisionArg;

/// The largest ONNX file read (protobuf itself stops at 2 GiB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// `trainer import-onnx`.
#[derive(clap::Args)]
#[command(after_help = "\
What is supported:
  input     one float tensor [N, 3, 32, 32] (other sizes are refused: export at 32x32)
  output    one tensor [N, classes] (logits)
  ops       Conv (any groups, depthwise included), BatchNormalization, Relu, Clip(0, 6),
            HardSwish, Sigmoid, Gelu (tanh form), MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool,
            ReduceMean over H and W, Add, Add/Sub/Mul/Div by per-channel constants,
            Flatten, Reshape/Squeeze to [N, features], Gemm, MatMul, Identity, Dropout,
            and the constant shape arithmetic exporters emit (Shape, Gather, Concat ...)
  weights   inside the file, or in data files beside it (external data: only inside the
            model's folder, links resolved)
Anything else is an error naming the node and its operator; nothing is written then.

Examples:
  trainer import-onnx resnet20.onnx --data data/cifar10 -o resnet20.cifar
  trainer import-onnx net.onnx --data data/cifar10 --precision f32 -o net-f32.cifar
  trainer import-onnx net.onnx --data data/cifar10 --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 -o net.cifar")]
pub struct ImportOnnxArgs {
    /// The ONNX model.
    model: PathBuf,
    /// A dataset directory (`trainer data import`): int8 calibration on its training
    /// images, accuracy and the drift reference on its validation split.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Where to write the `.cifar` file.
    #[arg(long, short)]
    out: PathBuf,
    /// Precision of the compiled file.
    #[arg(long, value_enum, default_value = "int8")]
    precision: PrecisionArg,
    /// Class labels in output order, comma separated (default: the dataset's classes).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// The model's input size; only 32 is supported (said here so a mismatch is caught).
    #[arg(long, default_value_t = 32)]
    input_size: usize,
    /// Per-channel mean the model was trained with, after scaling pixels to [0, 1]
    /// (default: CIFAR-10's 0.4914,0.4822,0.4465).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation (default: CIFAR-10's 0.2470,0.2435,0.2616).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    std: Option<Vec<f32>>,
    /// Training images used for int8 calibration.
    #[arg(long, default_value_t = 1000)]
    calibration: usize,
}

/// What `import-onnx` prints and returns.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub output: String,
    pub precision: String,
    pub bytes: usize,
    pub producer: String,
    pub onnx_nodes: usize,
    pub sdk_nodes: usize,
    pub validation_images: usize,
    pub f32_accuracy: f64,
    pub compiled_accuracy: f64,
    pub calibration: String,
    pub macs: u64,
    pub parameters: u64,
}

/// Reads and decodes an ONNX file, refusing oversized ones before reading them.
pub fn read_model(path: &Path) -> Result<candle_onnx::onnx::ModelProto> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    ensure!(
        len <= MAX_FILE_BYTES,
        "{} is {len} bytes; ONNX files over {MAX_FILE_BYTES} bytes are refused",
        path.display()
    );
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    candle_onnx::onnx::ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a valid ONNX file (truncated or not protobuf)", path.display()))
}

/// Lowers an ONNX file to the SDK's f32 graph (no data needed).
pub fn lower_file(path: &Path) -> Result<lower::Lowered> {
    let model = read_model(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    lower::lower(&model, dir).with_context(|| format!("cannot import {}", path.display()))
}

fn normalization(args: &ImportOnnxArgs) -> Result<Normalization> {
    let mut n = Normalization::CIFAR10;
    if let Some(m) = &args.mean {
        n.mean = m.as_slice().try_into().context("--mean takes three values")?;
    }
    if let Some(s) = &args.std {
        n.std = s.as_slice().try_into().context("--std takes three values")?;
        ensure!(n.std.iter().all(|&v| v > 0.0 && v.is_finite()), "--std values must be positive");
    }
    ensure!(n.mean.iter().all(|v| v.is_finite()), "--mean values must be finite");
    Ok(n)
}

/// Runs `trainer import-onnx`.
pub fn import_command(args: ImportOnnxArgs) -> Result<ImportReport> {
    if args.input_size != lower::INPUT_HW {
        bail!(
            "--input-size {}: only 32x32 inputs are supported (the SDK's preprocessing, drift features and \
             kernels are built for CIFAR-size images); export the model at 32x32",
            args.input_size
        );
    }
    let norm = normalization(&args)?;
    let lowered = lower_file(&args.model)?;
    let float = lowered.model;
    let ds = Dataset::load(&args.data)?;
    let labels = args.labels.clone().unwrap_or_else(|| ds.manifest.classes.clone());
    ensure!(
        labels.len() == lowered.classes,
        "the model has {} outputs but {} {}: pass {} names to --labels, in output order",
        lowered.classes,
        labels.len(),
        if args.labels.is_some() { "labels were given" } else { "the dataset has that many classes" },
        lowered.classes
    );
    let split = &ds.train;
    let val = &ds.val_indices;
    ensure!(!val.is_empty(), "{} has no validation split to measure the model on", args.data.display());
    let held: std::collections::HashSet<u32> = val.iter().copied().collect();
    let train: Vec<u32> = (0..split.len() as u32).filter(|i| !held.contains(i)).collect();
    errln!(
        "imported {} ({}): {} ONNX nodes -> {} SDK nodes",
        args.model.display(),
        lowered.producer,
        lowered.onnx_nodes,
        float.graph.nodes.len()
    );
    let sha = cifar_remote::sha256_file(&args.model).unwrap_or_default();
    let created_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut meta = ModelMetadata {
        graph: float.graph.clone(),
        labels,
        preprocessing: Preprocessing { normalization: norm, ..Preprocessing::default() },
        provenance: Provenance {
            dataset_digest: ds.manifest.digest.clone(),
            training_config: format!(
                "imported from ONNX: {} (sha256 {sha}), {}",
                args.model.display(),
                lowered.producer
            ),
            trainer_version: env!("CARGO_PKG_VERSION").into(),
            source_revision: env!("CIFAR_SOURCE_REVISION").into(),
            created_unix,
            run: args.model.display().to_string(),
        },
        quality: Quality::default(),
        drift: None,
    };
    let f32_model = Model::from_bytes(&quant::f32_writer(&float, meta.clone())?.to_bytes()?, &compile::sdk_options())?;
    let f32_logits = eval::sdk_logits(&f32_model, split, val, Tta::None)?;
    let classes = lowered.classes;
    let f32_accuracy = compile::accuracy(&f32_logits, classes, split, val);
    errln!("f32: validation accuracy {:.2}% on {} images", 100.0 * f32_accuracy, val.len());
    let (mut writer, logits, accuracy, calibration) = match args.precision {
        PrecisionArg::F32 => (quant::f32_writer(&float, meta.clone())?, f32_logits, f32_accuracy, String::new()),
        PrecisionArg::Int8 => {
            let calib = compile::spread(&train, args.calibration);
            ensure!(
                !calib.is_empty(),
                "{} has no training images outside its validation split to calibrate on",
                args.data.display()
            );
            errln!("calibrating on {} training images", calib.len());
            let best = compile::best_int8(&float, &meta, &f32_model, &f32_logits, split, &calib, val)?;
            meta.quality.calibration_images = calib.len();
            (best.writer, best.logits, best.accuracy, best.method.name().to_string())
        }
    };
    let cost = cifar_sdk::artifact::graph_cost(&float.graph)?;
    writer.metadata.quality = Quality {
        validation_images: val.len(),
        checkpoint_accuracy: f32_accuracy,
        compiled_accuracy: accuracy,
        calibration: calibration.clone(),
        calibration_images: meta.quality.calibration_images,
        macs: cost.macs,
        parameters: cost.parameters,
        unpruned_macs: None,
        unpruned_parameters: None,
    };
    let source = format!("validation split of dataset {}", ds.manifest.digest);
    writer.metadata.drift = Some(compile::drift_reference(split, val, &logits, classes, source));
    let bytes = writer.to_bytes()?;
    cifar_sdk::write_atomic(&args.out, &bytes).with_context(|| format!("cannot write {}", args.out.display()))?;
    let written = Model::open(&args.out, &compile::sdk_options())?;
    let precision = written.metadata().graph.precision;
    let report = ImportReport {
        output: args.out.display().to_string(),
        precision: precision.to_string(),
        bytes: bytes.len(),
        producer: lowered.producer,
        onnx_nodes: lowered.onnx_nodes,
        sdk_nodes: float.graph.nodes.len(),
        validation_images: val.len(),
        f32_accuracy,
        compiled_accuracy: accuracy,
        calibration,
        macs: cost.macs,
        parameters: cost.parameters,
    };
    print_report(&report, precision)?;
    Ok(report)
}

fn print_report(r: &ImportReport, precision: Precision) -> std::io::Result<()> {
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    outln!("{:<34} {}", "output", r.output)?;
    outln!("{:<34} {} ({} bytes)", "precision", precision, r.bytes)?;
    outln!("{:<34} {}", "source", r.producer)?;
    outln!("{:<34} {} ONNX -> {} SDK", "nodes", r.onnx_nodes, r.sdk_nodes)?;
    outln!("{:<34} {} ({} images)", "f32 validation accuracy", pct(r.f32_accuracy), r.validation_images)?;
    outln!("{:<34} {} {}", "compiled file accuracy", pct(r.compiled_accuracy), r.calibration)?;
    outln!("{:<34} {:.2} M MACs, {} parameters", "cost per image", r.macs as f64 / 1e6, r.parameters)
}
