//! Command-line interface.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Tta};
use crate::data::{self, cifar_bin, image_folder, Dataset, Source};
use crate::run::{Checkpoint, RunDir};
use crate::{device, eval, plot, train};

/// Train CIFAR-10-style image classifiers on the CPU (or a CUDA GPU) with candle.
#[derive(Parser)]
#[command(name = "trainer", version, about, long_about = None, after_help = "\
Typical workflow:
  trainer data import ../shared/data/cifar10-train-jpg.tar.gz   # -> data/cifar10
  trainer fit --config configs/cpu-quick.toml                   # -> runs/<id>/
  trainer eval --run runs/<id>
  trainer compile --run runs/<id> --precision int8 -o model.cifar
  trainer prune --run runs/<id> --keep 0.7 --run-dir runs/<id>-p70     # optional: fewer channels
  trainer classify model.cifar cat.png dog.jpg
  trainer import-onnx resnet.onnx --data data/cifar10 -o resnet.cifar   # a PyTorch model, to int8
  trainer robustness --model model.cifar -o robustness/     # accuracy and drift under corruptions
  trainer drift --model model.cifar --images incoming/      # has this traffic drifted?

Tracking, sweeps and remote storage:
  trainer fit --config configs/cpu-quick.toml --tracking-uri http://127.0.0.1:5000   # into MLflow
  trainer sweep --config configs/sweep-example.toml -j 2        # -> sweeps/<id>/ (trials.md, best.toml)
  trainer data push data/cifar10 s3://bucket/cifar              # -> s3://bucket/cifar@<digest>
  trainer model push model.cifar s3://bucket/cifar              # -> s3://bucket/cifar/models/<sha256>.cifar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Import, download, verify and describe datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train a model from a TOML config.
    Fit(FitArgs),
    /// Evaluate a trained run (its checkpoint) or a compiled `.cifar` file on a dataset's
    /// validation or test split: accuracy, per-class accuracy, confusion matrix.
    Eval(EvalArgs),
    /// Remove whole channels from a trained run (structured pruning) and fine-tune the
    /// smaller net: the result is a run directory like `fit`'s, ready to compile.
    Prune(crate::prune::PruneArgs),
    /// Measure pruned runs against their parent: accuracy (f32, int8), MACs, and the
    /// SDK's int8 time at batch 1 and 64 on 1 and 2 threads; a table and a PNG.
    PruneCurve(crate::prune::curve::CurveArgs),
    /// Time a training step with our CPU kernels against candle's.
    Bench(BenchArgs),
    /// Compile a run into a `.cifar` model file (BN folded, f32 or int8).
    Compile(crate::model_cli::CompileArgs),
    /// Classify image files with a compiled model.
    Classify(crate::model_cli::ClassifyArgs),
    /// Write a compiled model as ONNX (opset 13; int8 as QuantizeLinear/DequantizeLinear)
    /// for other runtimes; f32 exports are checked against the SDK through candle-onnx.
    ExportOnnx(crate::model_cli::ExportOnnxArgs),
    /// Import a CNN exported to ONNX (PyTorch, timm, torchvision ...): lowered to the
    /// SDK's ops with batch norm folded, calibrated to int8 on a dataset, its accuracy
    /// and drift reference recorded; one `.cifar` file, like `compile` makes.
    ImportOnnx(crate::onnx_import::ImportOnnxArgs),
    /// Describe a compiled model: metadata, graph, tensors.
    Inspect(crate::model_cli::InspectArgs),
    /// Measure a compiled model under CIFAR-10-C-style corruptions (noise, blur,
    /// brightness, contrast, fog, pixelate, JPEG; 5 severities): accuracy and the drift
    /// score cifar-serve would report, as a table, JSON and an HTML report; optional gates.
    Robustness(crate::robustness::RobustnessArgs),
    /// Compare a folder or archive of images with a compiled model's drift reference:
    /// cifar-serve's drift statistics offline, a test per feature, and a verdict.
    Drift(crate::drift_cli::DriftArgs),
    /// Check the device's convolutions (cuDNN on CUDA) against the CPU kernels: forward,
    /// input gradient and weight gradient on random data, at the airbench layer shapes.
    /// Fails if any relative error exceeds 1e-3 (f32).
    GpuCheck(crate::device::GpuCheckArgs),
    /// Search hyperparameters: trials chosen by grid or at random from a W&B-style sweep
    /// file, run as `fit` processes N at a time, weak ones stopped early (Hyperband's
    /// successive halving); a table, the best config and a plot in the sweep directory.
    Sweep(crate::sweep::SweepArgs),
    /// Run the first steps of a recipe on the CPU and write the initial weights, the
    /// batches, and each step's loss, gradients and weights (for the PyTorch parity
    /// harness in benches/parity).
    Trace(crate::trace::TraceArgs),
    /// Compiled models in object storage: `model push FILE REMOTE`, `model pull URL -o FILE`.
    #[command(subcommand)]
    Model(crate::model_cli::ModelCommand),
    /// Experiment tracking (MLflow): `track sync RUN` uploads a run the live mirror could
    /// not finish (server down during training), or adds files made later (a compiled
    /// `.cifar`).
    #[command(subcommand)]
    Track(TrackCommand),
}

#[derive(Subcommand)]
enum TrackCommand {
    /// Upload a run directory to the tracking server: params, the metrics not yet sent,
    /// the artifacts (config, summary, plots, compiled models) and, for a finished run,
    /// its FINISHED status. Safe to repeat.
    #[command(after_help = "\
Examples:
  trainer track sync runs/<id>                                   # the run's [tracking] uri or MLFLOW_TRACKING_URI
  trainer track sync runs/<id> --tracking-uri http://127.0.0.1:5000")]
    Sync {
        /// The run directory.
        run: PathBuf,
        /// The MLflow server (default: the run's `[tracking] uri`, else `MLFLOW_TRACKING_URI`).
        #[arg(long, value_name = "URI")]
        tracking_uri: Option<String>,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Import an ImageFolder tree (<class>/*.jpg or <split>/<class>/*.jpg) from a
    /// directory, .tar or .tar.gz.
    Import {
        /// The directory or archive to import.
        source: PathBuf,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Import the official CIFAR-10 binary archive (cifar-10-binary.tar.gz), from a local
    /// file or a URL. The official file's published md5 is checked.
    Fetch {
        /// A local copy of the archive.
        #[arg(long, conflicts_with = "url")]
        file: Option<PathBuf>,
        /// Where to download it from.
        #[arg(long, default_value = cifar_bin::OFFICIAL_URL)]
        url: String,
        /// Expected md5 of a non-official archive.
        #[arg(long)]
        md5: Option<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Re-hash a dataset and check it against its manifest.
    Verify {
        /// The dataset directory.
        #[arg(default_value = "data/cifar10")]
        dir: PathBuf,
    },
    /// Write validation images as PNG files named `<index>-<class>.png` (samples for
    /// `trainer classify`, fixtures, demos).
    Export {
        /// The dataset directory.
        #[arg(default_value = "data/cifar10")]
        dir: PathBuf,
        /// Where to write the images, one PNG file each.
        #[arg(long, short, required_unless_present = "sheet")]
        out: Option<PathBuf>,
        /// Also write all the images into this one PNG, a grid 20 images wide in
        /// validation order (a compact fixture: `cifar-serve`'s drift test reads it).
        #[arg(long, value_name = "FILE")]
        sheet: Option<PathBuf>,
        /// Images per class (the first ones of the validation split).
        #[arg(long, default_value_t = 1)]
        per_class: usize,
    },
    /// Upload a dataset to object storage (s3://, gs://, az://, file://), content-addressed:
    /// each file once under objects/<sha256>, the dataset as datasets/<digest>.json.
    /// Prints the URL a config's `data.path` can name.
    #[command(after_help = "\
Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ENDPOINT_URL for an S3-compatible server; GOOGLE_SERVICE_ACCOUNT;
AZURE_STORAGE_ACCOUNT_NAME/KEY) and are never printed.

Examples:
  trainer data push data/cifar10 s3://my-bucket/cifar      # -> s3://my-bucket/cifar@<digest>
  trainer data push data/cifar10 file:///mnt/shared/cifar")]
    Push {
        /// The dataset directory.
        dir: PathBuf,
        /// Where to: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///path.
        remote: String,
        /// Upload every file even if an object of its name and size is there (repairs a
        /// corrupted object).
        #[arg(long)]
        force: bool,
    },
    /// Download a dataset from object storage into a directory, checking every file's hash
    /// and the dataset's digest; nothing is left behind on failure.
    #[command(after_help = "\
Examples:
  trainer data pull s3://my-bucket/cifar@<digest> data/cifar10
  trainer data pull s3://my-bucket/cifar data/cifar10        # when the prefix holds one dataset

A config can name the remote dataset instead: data.path = \"s3://my-bucket/cifar@<digest>\"
is fetched into the cache ($CIFAR_CACHE_DIR, else ~/.cache/cifar-edge) before training.")]
    Pull {
        /// The remote, with `@<digest>` unless it holds a single dataset.
        remote: String,
        /// The dataset directory to create.
        #[arg(default_value = "data/cifar10")]
        dir: PathBuf,
        /// Replace an existing directory.
        #[arg(long)]
        force: bool,
    },
    /// Per-class counts and per-channel mean/std.
    Stats {
        /// The dataset directory.
        #[arg(default_value = "data/cifar10")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct OutArgs {
    /// The dataset directory to create.
    #[arg(long, short, default_value = "data/cifar10")]
    out: PathBuf,
    /// Training images held out for validation (class-balanced).
    #[arg(long, default_value_t = 5000)]
    val_size: usize,
    /// Seed of the validation split.
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Replace an existing dataset directory.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct FitArgs {
    /// The training recipe (TOML).
    #[arg(long, short, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Overrides of config keys, e.g. `train.epochs=3 model.widths=[16,32,64]`.
    overrides: Vec<String>,
    /// Continue an interrupted run from its last checkpoint.
    #[arg(long, conflicts_with = "config")]
    resume: Option<PathBuf>,
    /// Where to write the run (default runs/<time>-<config name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Mirror the run into this MLflow tracking server (default: the config's
    /// `[tracking] uri`, else `MLFLOW_TRACKING_URI`). A server that is down never stops
    /// training; `trainer track sync` completes the record later.
    #[arg(long, value_name = "URI")]
    tracking_uri: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TtaArg {
    None,
    Flip,
    FlipTranslate,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["run", "model"]), after_help = "\
Examples:
  trainer eval --run runs/<id> --tta                 # the run's checkpoint, with TTA
  trainer eval --model model.cifar                   # the file you ship, on data/cifar10's validation split
  trainer eval --model model.cifar --data D --test   # on the test split of dataset D")]
struct EvalArgs {
    /// A run directory: evaluates its trained weights (writes the report into the run).
    #[arg(long)]
    run: Option<PathBuf>,
    /// A compiled model file: evaluates it through the SDK, as a user of the file would
    /// run it (int8 files in int8).
    #[arg(long, value_name = "FILE.cifar")]
    model: Option<PathBuf>,
    /// With --model: the dataset directory (made by `trainer data import` or `fetch`).
    #[arg(long, requires = "model", default_value = "data/cifar10")]
    data: PathBuf,
    /// With --model: also write the report as `<split>-<tta>.json` and the confusion
    /// matrix as PNG into this directory.
    #[arg(long, requires = "model", value_name = "DIR")]
    out: Option<PathBuf>,
    /// Evaluate with test-time augmentation (flip + translate); or pick a level.
    #[arg(long, num_args = 0..=1, default_missing_value = "flip-translate")]
    tta: Option<TtaArg>,
    /// Evaluate on the dataset's test split instead of the validation split (the
    /// official binary archive has one; an ImageFolder import has one when its archive
    /// holds a `test/` folder).
    #[arg(long)]
    test: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The recipe whose model is timed.
    #[arg(long, short, default_value = "configs/cpu.toml")]
    config: PathBuf,
    /// Config overrides.
    overrides: Vec<String>,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Only time our kernels (skip the slow candle baselines).
    #[arg(long)]
    fast_only: bool,
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Data(cmd) => {
            device::set_threads(0);
            data_command(cmd, cli.quiet)
        }
        Command::Fit(args) => fit(args, cli.quiet),
        Command::Eval(args) => eval_command(args),
        Command::Bench(args) => {
            let cfg = Config::resolve(Some(&args.config), &args.overrides)?;
            device::set_threads(cfg.threads);
            crate::bench::run(&cfg, args.batch, args.steps.max(1), !args.fast_only)
        }
        Command::Compile(args) => {
            device::set_threads(0);
            crate::model_cli::compile_command(args)
        }
        Command::Classify(args) => crate::model_cli::classify_command(args),
        Command::Inspect(args) => crate::model_cli::inspect_command(args),
        Command::Robustness(args) => {
            device::set_threads(0);
            crate::robustness::robustness_command(args, cli.quiet)
        }
        Command::Drift(args) => {
            device::set_threads(0);
            crate::drift_cli::drift_command(args, cli.quiet)
        }
        Command::ExportOnnx(args) => crate::model_cli::export_onnx_command(args),
        Command::ImportOnnx(args) => {
            device::set_threads(0);
            crate::onnx_import::import_command(args).map(|_| ())
        }
        Command::GpuCheck(args) => {
            device::set_threads(0);
            crate::device::gpu_check(args)
        }
        Command::Model(cmd) => crate::model_cli::model_command(cmd),
        Command::Sweep(args) => crate::sweep::sweep_command(args),
        Command::Trace(args) => crate::trace::trace_command(args, cli.quiet),
        Command::Track(TrackCommand::Sync { run, tracking_uri }) => crate::track::sync(&run, tracking_uri.as_deref()),
        Command::Prune(args) => crate::prune::prune_command(args, cli.quiet),
        Command::PruneCurve(args) => crate::prune::curve::curve_command(args),
    }
}

fn print_dataset(ds: &Dataset, dir: &Path) -> std::io::Result<()> {
    let m = &ds.manifest;
    outln!("dataset {} ({})", dir.display(), m.source.location)?;
    outln!("  digest      {}", m.digest)?;
    outln!("  classes     {}", m.classes.join(", "))?;
    for name in ["train", "test"] {
        if let Some(s) = m.splits.get(name) {
            outln!("  {name:<11} {} images", s.count)?;
        }
    }
    outln!("  validation  {} images held out of train (seed {})", m.validation.size, m.validation.seed)
}

/// Images per row of `data export --sheet`.
const SHEET_COLUMNS: u32 = 20;

fn png_bytes(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

fn export_images(dir: &Path, out: Option<&Path>, sheet: Option<&Path>, per_class: usize) -> Result<()> {
    let ds = Dataset::load(dir)?;
    if let Some(out) = out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }
    let mut taken = vec![0usize; ds.manifest.classes.len()];
    let mut chosen = Vec::new();
    for &i in &ds.val_indices {
        let label = ds.train.labels[i as usize] as usize;
        if taken[label] >= per_class {
            continue;
        }
        taken[label] += 1;
        let px = ds.train.images[i as usize * 3072..(i as usize + 1) * 3072].to_vec();
        let img = image::RgbImage::from_raw(32, 32, px).context("bad image buffer")?;
        if let Some(out) = out {
            let path = out.join(format!("{i:05}-{}.png", ds.manifest.classes[label]));
            cifar_sdk::write_atomic(&path, &png_bytes(&img)?)?;
        }
        chosen.push(img);
    }
    if let Some(out) = out {
        outln!("wrote {} images to {}", chosen.len(), out.display())?;
    }
    if let Some(sheet_path) = sheet {
        let rows = (chosen.len() as u32).div_ceil(SHEET_COLUMNS);
        let mut sheet = image::RgbImage::new(SHEET_COLUMNS * 32, rows * 32);
        for (k, img) in chosen.iter().enumerate() {
            let (x, y) = ((k as u32 % SHEET_COLUMNS) * 32, (k as u32 / SHEET_COLUMNS) * 32);
            image::imageops::replace(&mut sheet, img, i64::from(x), i64::from(y));
        }
        cifar_sdk::write_atomic(sheet_path, &png_bytes(&sheet)?)?;
        outln!("wrote a sheet of {} images ({SHEET_COLUMNS} per row) to {}", chosen.len(), sheet_path.display())?;
    }
    Ok(())
}

fn data_command(cmd: DataCommand, quiet: bool) -> Result<()> {
    match cmd {
        DataCommand::Export { dir, out, sheet, per_class } => {
            export_images(&dir, out.as_deref(), sheet.as_deref(), per_class)
        }
        DataCommand::Import { source, out } => {
            if out.out.exists() && !out.force {
                bail!("{} already exists (pass --force to replace it)", out.out.display());
            }
            let imported = image_folder::import(&source, quiet)?;
            let sha = if source.is_file() { Some(cifar_remote::sha256_file(&source)?) } else { None };
            let src = Source { kind: "image-folder".into(), location: source.display().to_string(), sha256: sha };
            let ds = Dataset::new(imported.classes, imported.train, imported.test, out.val_size, out.split_seed, src)?;
            ds.save(&out.out, out.force)?;
            print_dataset(&ds, &out.out)?;
            if imported.resized > 0 {
                outln!("  note        {} images were not 32x32 and were resized", imported.resized)?;
            }
            if imported.ignored_files > 0 {
                outln!("  note        {} files that are not images were ignored", imported.ignored_files)?;
            }
            Ok(())
        }
        DataCommand::Fetch { file, url, md5, out } => {
            if out.out.exists() && !out.force {
                bail!("{} already exists (pass --force to replace it)", out.out.display());
            }
            let (path, location, _download_dir) = match file {
                Some(f) => (f.clone(), f.display().to_string(), None),
                None => {
                    let parent = out.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    std::fs::create_dir_all(parent)?;
                    let tmp = data::tempdir_in(parent, ".download")?;
                    let guard = data::RemoveOnDrop(Some(tmp.clone()));
                    errln!("downloading {url}");
                    (cifar_bin::download(&url, &tmp, quiet)?, url.clone(), Some(guard))
                }
            };
            let checked = cifar_bin::verify_checksum(&path, md5.as_deref())?;
            let parsed = cifar_bin::read_archive(&path)?;
            let src =
                Source { kind: "cifar10-binary".into(), location, sha256: Some(cifar_remote::sha256_file(&path)?) };
            let ds = Dataset::new(parsed.classes, parsed.train, parsed.test, out.val_size, out.split_seed, src)?;
            ds.save(&out.out, out.force)?;
            print_dataset(&ds, &out.out)?;
            outln!(
                "  checksum    {}",
                if checked { "md5 verified" } else { "not checked (not the official file name; pass --md5 to check)" }
            )?;
            Ok(())
        }
        DataCommand::Push { dir, remote, force } => {
            let at = data::remote::push(&dir, &remote, force)?;
            outln!("pushed: {at}")?;
            Ok(())
        }
        DataCommand::Pull { remote, dir, force } => {
            let ds = data::remote::pull(&remote, &dir, force)?;
            print_dataset(&ds, &dir)?;
            outln!("OK: every file's sha256 and the content digest verified")?;
            Ok(())
        }
        DataCommand::Verify { dir } => {
            let ds = Dataset::load(&dir)?;
            ds.verify().with_context(|| format!("{} failed verification", dir.display()))?;
            print_dataset(&ds, &dir)?;
            outln!("OK: content digest and validation split verified")?;
            Ok(())
        }
        DataCommand::Stats { dir } => {
            let ds = Dataset::load(&dir)?;
            print_dataset(&ds, &dir)?;
            let classes = &ds.manifest.classes;
            for (name, split) in [("train", Some(&ds.train)), ("test", ds.test.as_ref())] {
                let Some(split) = split else { continue };
                let (mean, std) = data::channel_stats(split);
                outln!("\n{name}: {} images", split.len())?;
                outln!("  channel mean (R, G, B)  {:.4} {:.4} {:.4}", mean[0], mean[1], mean[2])?;
                outln!("  channel std  (R, G, B)  {:.4} {:.4} {:.4}", std[0], std[1], std[2])?;
                outln!("  {:<12} {:>7}", "class", "images")?;
                for (c, n) in classes.iter().zip(split.per_class_counts(classes.len())) {
                    outln!("  {c:<12} {n:>7}")?;
                }
            }
            Ok(())
        }
    }
}

fn fit(args: FitArgs, quiet: bool) -> Result<()> {
    crate::sweep::exit_with_parent();
    let (cfg, run, start) = match &args.resume {
        Some(dir) => {
            if !args.overrides.is_empty() {
                bail!(
                    "--resume continues a run with its saved config ({}); overrides such as {:?} would make the \
                     rest of the run differ from what the run directory records",
                    dir.join("config.toml").display(),
                    args.overrides[0]
                );
            }
            let run = RunDir::open(dir)?;
            let mut cfg = Config::resolve(Some(&run.file("config.toml")), &[])?;
            if let Some(uri) = &args.tracking_uri {
                // Where the run is mirrored, not how it trains: allowed with --resume.
                cfg.tracking.uri = uri.clone();
            }
            crate::track::check(&cfg)?;
            device::set_threads(cfg.threads);
            let (dev, _) = device::select(&cfg.device)?;
            let ck = Checkpoint::load(&run.checkpoint_path(), &dev)
                .with_context(|| format!("{} has no checkpoint to resume from", dir.display()))?;
            (cfg, run, train::Start::Resume(ck))
        }
        None => {
            let mut cfg = Config::resolve(args.config.as_deref(), &args.overrides)?;
            // A pruned run's config trains its net from scratch here: not pruned.
            cfg.pruned = Default::default();
            if let Some(uri) = &args.tracking_uri {
                cfg.tracking.uri = uri.clone();
            }
            crate::track::check(&cfg)?;
            device::set_threads(cfg.threads);
            let dir = match &args.run_dir {
                Some(d) => d.clone(),
                None => PathBuf::from("runs").join(format!("{}-{}", timestamp(), cfg.name)),
            };
            // Check the device and the dataset before creating anything.
            device::select(&cfg.device)?;
            data::Dataset::load(&data::remote::local_dir(&cfg.data.path)?)?;
            train::check_teacher(&cfg)?;
            let run = RunDir::create(dir)?;
            cifar_sdk::write_atomic(&run.file("config.toml"), cfg.to_toml()?.as_bytes())?;
            (cfg, run, train::Start::Fresh)
        }
    };
    let _lock = run.lock()?;
    train::install_interrupt_handler();
    errln!("run: {}", run.path.display());
    let resume_command = format!("trainer fit --resume {}", run.path.display());
    let s = train::fit(&cfg, &run, start, quiet, &resume_command)?;
    outln!(
        "done: {} steps in {:.0}s ({:.0} images/s); validation accuracy {:.2}%, with TTA ({}) {:.2}%",
        s.steps,
        s.train_secs,
        s.images_per_sec,
        100.0 * s.val_accuracy,
        s.tta,
        100.0 * s.val_accuracy_tta
    )?;
    outln!("run directory: {}", run.path.display())?;
    Ok(())
}

impl TtaArg {
    fn tta(self) -> Tta {
        match self {
            TtaArg::None => Tta::None,
            TtaArg::Flip => Tta::Flip,
            TtaArg::FlipTranslate => Tta::FlipTranslate,
        }
    }
}

fn eval_command(args: EvalArgs) -> Result<()> {
    let tta = args.tta.map_or(Tta::None, TtaArg::tta);
    let run = match (&args.run, &args.model) {
        (_, Some(model)) => {
            device::set_threads(0);
            return crate::model_cli::eval_model(model, &args.data, args.test, tta, args.out.as_deref());
        }
        (Some(run), None) => run,
        (None, None) => bail!("pass --run DIR or --model FILE.cifar"),
    };
    let run = RunDir::open(run)?;
    let cfg = Config::resolve(Some(&run.file("config.toml")), &[])?;
    device::set_threads(cfg.threads);
    let (dev, why) = device::select(&cfg.device)?;
    let data = train::RunData::load(&cfg)?;
    run.check_dataset(&cfg.data.path, &data.dataset.manifest.digest)?;
    let net = train::build_model(&cfg, &data, &dev)?;
    let (weights, which) = train::load_run_weights(&run, &dev)?;
    net.params().load(&weights, "")?;
    let (split, indices, split_name) = if args.test {
        let test = data.dataset.test.as_ref().context("this dataset has no test split")?;
        (test.clone(), (0..test.len() as u32).collect::<Vec<_>>(), "test")
    } else {
        (data.split.as_ref().clone(), data.val_idx.clone(), "validation")
    };
    errln!("evaluating {which} on {} {split_name} images, TTA {tta:?}, device {why}", indices.len());
    let report = eval::evaluate(net.as_ref(), &split, &indices, tta, cfg.eval.batch_size, &dev)?;
    out!("{}", eval::format_report(&report, &data.dataset.manifest.classes))?;
    let stem = format!("eval-{split_name}-{}", format!("{tta:?}").to_lowercase());
    run.write_json(&format!("{stem}.json"), &report)?;
    plot::confusion_matrix(
        &run.file(&format!("{stem}-confusion.png")),
        &data.dataset.manifest.classes,
        &report.confusion,
    )?;
    outln!("\nwrote {0}/{stem}.json and {0}/{stem}-confusion.png", run.path.display())?;
    Ok(())
}

/// UTC `YYYYmmdd-HHMMSS` for run names.
pub(crate) fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}
