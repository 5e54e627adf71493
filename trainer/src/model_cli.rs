//! `trainer compile`, `trainer classify` and `trainer inspect`: the commands around
//! compiled `.cifar` files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cifar_sdk::{DevicePolicy, Model, ModelOptions, Precision};
use clap::ValueEnum;

use crate::compile::{compile, sdk_options, CompileOptions};
use crate::config::Tta;
use crate::data::Dataset;
use crate::eval;

/// `--precision`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    F32,
    Int8,
}

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The run directory to compile.
    #[arg(long)]
    run: PathBuf,
    /// Weight and activation precision.
    #[arg(long, value_enum, default_value = "int8")]
    precision: PrecisionArg,
    /// Training images used to calibrate int8 activations.
    #[arg(long, default_value_t = 1000)]
    calibration: usize,
    /// Validation images on which the f32 graph is compared with the trainer's forward.
    #[arg(long, default_value_t = 1000)]
    check_images: usize,
    /// Output file (default <run>/model-<precision>.cifar).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ClassifyArgs {
    /// The compiled model.
    model: PathBuf,
    /// Image files (PNG, JPEG, PPM; any size, resized to the model input).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Classes to show per image.
    #[arg(long, short, default_value_t = 3)]
    top_k: usize,
    /// Device policy: auto, cpu, gpu, gpu-or-cpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// With --json: include every logit (golden outputs for tests).
    #[arg(long, requires = "json")]
    logits: bool,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The compiled model.
    model: PathBuf,
    /// Only the summary (file, precision, input, labels, provenance, quality), not the
    /// graph and tensor table.
    #[arg(long)]
    brief: bool,
}

/// `trainer export-onnx`.
#[derive(Debug, clap::Args)]
pub struct ExportOnnxArgs {
    /// The compiled model (`.cifar`, f32 or int8).
    model: PathBuf,
    /// Where to write the ONNX model.
    #[arg(long, short)]
    out: PathBuf,
    /// Skip running an f32 export through candle-onnx and comparing it with the SDK.
    #[arg(long)]
    no_check: bool,
}

pub fn export_onnx_command(args: ExportOnnxArgs) -> Result<()> {
    let summary = crate::onnx_export::export(&args.model, &args.out)?;
    outln!(
        "wrote {} ({} ONNX opset {}, {} nodes, {} initializers, {} bytes)",
        args.out.display(),
        summary.precision,
        crate::onnx_export::OPSET,
        summary.nodes,
        summary.initializers,
        summary.bytes
    )?;
    if summary.precision == Precision::Int8 {
        outln!("int8 is exported as a QDQ model: ONNX Runtime runs it; candle-onnx has no QuantizeLinear")?;
        return Ok(());
    }
    if args.no_check {
        return Ok(());
    }
    // The export must compute what the SDK computes: 8 varied inputs through both.
    let model = Model::open(&args.model, &ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 8 })?;
    let [c, h, w] = model.input_shape();
    let n = 8;
    let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 4.0).collect();
    let sdk = model.session()?.logits_nchw(&x, n)?;
    let onnx = crate::onnx_export::candle_onnx_logits(&args.out, &x, n, [c, h, w])?;
    let err = cifar_sdk::max_relative_error(&sdk, &onnx, model.classes());
    outln!("checked with candle-onnx on {n} inputs: max relative logit error {err:.2e} against the SDK")?;
    if err > 1e-4 {
        anyhow::bail!("the ONNX export disagrees with the SDK (max relative logit error {err:.2e} > 1e-4)");
    }
    Ok(())
}

pub fn compile_command(args: CompileArgs) -> Result<()> {
    let precision = match args.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::Int8 => Precision::Int8,
    };
    let opts = CompileOptions {
        run: args.run,
        precision,
        calibration: args.calibration,
        check_images: args.check_images,
        output: args.output,
    };
    compile(&opts)?;
    Ok(())
}

pub fn classify_command(args: ClassifyArgs) -> Result<()> {
    let device: DevicePolicy = args.device.parse()?;
    let model = Model::open(&args.model, &ModelOptions { device, ..Default::default() })
        .with_context(|| format!("cannot open {}", args.model.display()))?;
    errln!(
        "{} model, {} classes, device {} ({})",
        model.precision(),
        model.classes(),
        model.device(),
        model.device_reason()
    );
    let mut session = model.session()?;
    let mut failed = 0;
    for path in &args.images {
        let answer = std::fs::read(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .and_then(|bytes| Ok(session.classify_image(&bytes, args.top_k)?));
        match answer {
            Ok(c) if args.json => {
                let top: Vec<_> = c
                    .top
                    .iter()
                    .map(|p| serde_json::json!({"label": p.label, "class": p.class, "probability": p.probability}))
                    .collect();
                let mut line = serde_json::json!({"image": path.display().to_string(), "top": top});
                if args.logits {
                    line["logits"] = serde_json::json!(c.logits);
                }
                outln!("{line}")?;
            }
            Ok(c) => {
                let top: Vec<String> = c.top.iter().map(|p| format!("{} {:.3}", p.label, p.probability)).collect();
                outln!("{}: {}", path.display(), top.join(", "))?;
            }
            Err(e) => {
                failed += 1;
                errln!("{}: error: {e:#}", path.display());
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} image(s) could not be classified", args.images.len());
    }
    Ok(())
}

/// `trainer eval --model`: the accuracy of a compiled file on a dataset's validation
/// split (or test split), computed through the SDK exactly as the file runs for its
/// users, so it can be compared with the file's own compile-time report.
pub fn eval_model(path: &Path, data: &Path, test: bool, tta: Tta, out: Option<&Path>) -> Result<()> {
    let model = Model::open(path, &sdk_options()).with_context(|| format!("cannot open {}", path.display()))?;
    let ds = Dataset::load(data)?;
    let classes = &ds.manifest.classes;
    if model.labels() != classes.as_slice() {
        bail!(
            "{} classifies into [{}], but dataset {} has the classes [{}]",
            path.display(),
            model.labels().join(", "),
            data.display(),
            classes.join(", ")
        );
    }
    let trained_on = &model.metadata().provenance.dataset_digest;
    let (split, indices, split_name) = if test {
        let t = ds.test.as_ref().with_context(|| {
            format!(
                "dataset {} has no test split (the official binary archive has one; see `trainer data fetch`)",
                data.display()
            )
        })?;
        (t, (0..t.len() as u32).collect::<Vec<_>>(), "test")
    } else {
        if *trained_on != ds.manifest.digest {
            errln!(
                "warning: {} was trained on dataset {trained_on}, not {} ({}): its validation split may \
                 hold images the model was trained on",
                path.display(),
                data.display(),
                ds.manifest.digest
            );
        }
        (&ds.train, ds.val_indices.clone(), "validation")
    };
    errln!(
        "evaluating {} ({}) on {} {split_name} images of {}, TTA {tta:?}",
        path.display(),
        model.precision(),
        indices.len(),
        data.display()
    );
    let logits = eval::sdk_logits(&model, split, &indices, tta)?;
    let labels: Vec<u8> = indices.iter().map(|&i| split.labels[i as usize]).collect();
    let report = eval::report(&logits, model.classes(), &labels);
    out!("{}", eval::format_report(&report, classes))?;
    let q = &model.metadata().quality;
    if !test && tta == Tta::None && *trained_on == ds.manifest.digest && q.validation_images == indices.len() {
        outln!(
            "\ncompile report of this file: {:.2}% on the same {} validation images",
            100.0 * q.compiled_accuracy,
            q.validation_images
        )?;
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let stem = format!("eval-{split_name}-{}", format!("{tta:?}").to_lowercase());
        let json = serde_json::to_vec_pretty(&report)?;
        cifar_sdk::write_atomic(&dir.join(format!("{stem}.json")), &json)?;
        crate::plot::confusion_matrix(&dir.join(format!("{stem}-confusion.png")), classes, &report.confusion)?;
        outln!("\nwrote {0}/{stem}.json and {0}/{stem}-confusion.png", dir.display())?;
    }
    Ok(())
}

pub fn inspect_command(args: InspectArgs) -> Result<()> {
    let model = Model::open(&args.model, &ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 1 })
        .with_context(|| format!("cannot open {}", args.model.display()))?;
    let m = model.metadata();
    let a = model.artifact();
    outln!("file        {} ({} bytes, {})", args.model.display(), a.bytes().len(), a.checksum)?;
    outln!("precision   {}", model.precision())?;
    outln!(
        "input       {:?} (RGB, normalization mean {:?} std {:?})",
        model.input_shape(),
        m.preprocessing.normalization.mean,
        m.preprocessing.normalization.std
    )?;
    outln!("labels      {}", m.labels.join(", "))?;
    let p = &m.provenance;
    outln!("dataset     {}", p.dataset_digest)?;
    outln!(
        "trainer     {} (revision {}), run {}",
        p.trainer_version,
        if p.source_revision.is_empty() { "unknown" } else { &p.source_revision },
        p.run
    )?;
    let q = &m.quality;
    outln!(
        "quality     checkpoint {:.2}%, compiled {:.2}% on {} validation images{}",
        100.0 * q.checkpoint_accuracy,
        100.0 * q.compiled_accuracy,
        q.validation_images,
        if q.calibration.is_empty() {
            String::new()
        } else {
            format!(" ({} calibration, {} images)", q.calibration, q.calibration_images)
        }
    )?;
    if q.macs > 0 {
        let was = match (q.unpruned_macs, q.unpruned_parameters) {
            (Some(m0), Some(p0)) => format!(
                "; pruned from {:.2} M MACs, {p0} parameters ({:.2}x fewer MACs)",
                m0 as f64 / 1e6,
                m0 as f64 / q.macs as f64
            ),
            _ => String::new(),
        };
        outln!("cost        {:.2} M MACs, {} parameters per image{was}", q.macs as f64 / 1e6, q.parameters)?;
    }
    if let Some(d) = &m.drift {
        outln!("drift ref   {} images, {} features ({})", d.images, d.features.len(), d.source)?;
    }
    if args.brief {
        return Ok(());
    }
    outln!("\n{:<20} {:<16} {:<14} {:<10} tensors", "node", "op", "output", "act/quant")?;
    for (node, info) in m.graph.nodes.iter().zip(&a.info.nodes) {
        let tensors: Vec<String> = a
            .tensors
            .iter()
            .filter(|(n, _)| n.rsplit_once('.').is_some_and(|(pre, _)| pre == node.name))
            .map(|(n, t)| format!("{}{:?}:{}", n.rsplit_once('.').map(|x| x.1).unwrap_or(""), t.shape, t.dtype.name()))
            .collect();
        let quant = node.quant.map(|q| format!("q{:.3e}/{}", q.scale, q.zero_point)).unwrap_or_default();
        outln!(
            "{:<20} {:<16} {:<14} {:<10} {}",
            node.name,
            node.op.kind(),
            format!("{:?}", info.shape),
            quant,
            tensors.join(" ")
        )?;
    }
    Ok(())
}

/// `trainer model push|pull`.
#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Upload a compiled model to object storage as <remote>/models/<sha256>.cifar and print
    /// its URL (which `cifar-serve --model` and `trainer model pull` take).
    #[command(after_help = "\
Example:
  trainer model push model.cifar s3://my-bucket/cifar   # -> s3://my-bucket/cifar/models/<sha256>.cifar")]
    Push {
        /// The `.cifar` file.
        file: PathBuf,
        /// Where to: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///path.
        remote: String,
        /// Upload even if an object of that name and size is there (repairs a corrupted one).
        #[arg(long)]
        force: bool,
    },
    /// Download a model by its URL (<remote>/models/<sha256>.cifar), checking its hash.
    Pull {
        /// The model's URL.
        url: String,
        /// Where to write it.
        #[arg(long, short, value_name = "FILE.cifar")]
        out: PathBuf,
    },
}

/// `trainer model push|pull`.
pub fn model_command(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Push { file, remote, force } => {
            // Only a file the SDK opens is worth storing.
            cifar_sdk::Model::open(&file, &cifar_sdk::ModelOptions::default())
                .with_context(|| format!("{} is not a valid model file", file.display()))?;
            let url = cifar_remote::push_model(&cifar_remote::Remote::open(&remote)?, &file, force)?;
            outln!("pushed: {url}")?;
        }
        ModelCommand::Pull { url, out } => {
            let cached = cifar_remote::fetch_model(&url)?;
            let bytes = std::fs::read(&cached).with_context(|| format!("cannot read {}", cached.display()))?;
            cifar_sdk::write_atomic(&out, &bytes)?;
            outln!("wrote {} (sha256 verified)", out.display())?;
        }
    }
    Ok(())
}
