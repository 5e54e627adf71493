//! The run directory `runs/<id>/` and its files:
//!
//! ```text
//! config.toml                 the resolved config
//! dataset.json                path and digest of the dataset used
//! metrics.jsonl               one JSON record per step and per epoch
//! checkpoints/last.safetensors  model, optimizer, EMA and progress, written atomically
//! model.safetensors           the final weights (EMA weights when EMA is on)
//! summary.json                final accuracy, time, throughput
//! loss.png, accuracy.png      training curves
//! ```
//!
//! A checkpoint is one file written to a temporary name and renamed, so a `kill -9` at
//! any moment leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

/// The lock file `fit` holds in its run directory ([`RunDir::lock`]).
pub const LOCK_FILE: &str = ".lock";

/// Creates (or opens) `path` and holds an exclusive lock on it while the returned file
/// is open; refused if another process (`who`, for the message) holds it. The lock dies
/// with the process, so a `kill -9` never leaves a stale one.
pub fn lock_file(path: &Path, who: &str) -> Result<std::fs::File> {
    let f = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            let dir = path.parent().unwrap_or(path);
            bail!("another `{who}` is running in {}", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Where a training run is in its schedule.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Progress {
    /// Optimizer steps done.
    pub global_step: usize,
    /// Epoch being trained (0-based) and steps of it done.
    pub epoch: usize,
    pub step_in_epoch: usize,
    /// Training wall time so far, across resumes.
    pub elapsed_secs: f64,
    /// Sum and count of the losses of this epoch's steps so far (so the epoch's mean
    /// loss is right after a resume).
    #[serde(default)]
    pub epoch_loss_sum: f64,
    #[serde(default)]
    pub epoch_loss_steps: usize,
}

/// The dataset a run used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetRef {
    pub path: String,
    pub digest: String,
}

/// Final results, `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Summary {
    pub config_name: String,
    pub dataset_digest: String,
    pub device: String,
    pub epochs: f64,
    pub steps: usize,
    pub train_secs: f64,
    /// Timed as airbench times its runs: model setup (whitening init), training and the
    /// final evaluation with TTA; not process start, data loading or the upload of the
    /// training split to the device. This session only (a resumed run restarts it).
    #[serde(default)]
    pub timed_secs: f64,
    /// The warm-up before the timed window (`train.warm_up`); 0 when there was none.
    #[serde(default)]
    pub warmup_secs: f64,
    pub images_per_sec: f64,
    pub val_accuracy: f64,
    pub val_accuracy_tta: f64,
    pub tta: String,
    pub val_images: usize,
    pub parameters: usize,
    pub used_ema: bool,
    pub resumed: bool,
}

pub struct RunDir {
    pub path: PathBuf,
    /// Where `log` also sends each record while the run is tracked (`crate::track`).
    sink: std::sync::Mutex<Option<crate::track::Sink>>,
}

pub const CHECKPOINT_FORMAT: &str = "cifar-edge-checkpoint/1";

impl RunDir {
    /// Creates a new run directory (refusing to reuse one that has a checkpoint).
    pub fn create(path: PathBuf) -> Result<Self> {
        if path.join("checkpoints/last.safetensors").exists() {
            bail!("{} already holds a run; continue it with --resume {0} or choose another --run-dir", path.display());
        }
        std::fs::create_dir_all(path.join("checkpoints"))
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self::at(path))
    }

    /// The directory at `path`, without checks.
    pub fn at(path: PathBuf) -> Self {
        Self { path, sink: std::sync::Mutex::new(None) }
    }

    /// Sends every record `log` writes to `sink` too (or stops, with `None`).
    pub fn set_sink(&self, sink: Option<crate::track::Sink>) {
        if let Ok(mut s) = self.sink.lock() {
            *s = sink;
        }
    }

    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.toml").exists() {
            bail!("{} is not a run directory (no config.toml)", path.display());
        }
        Ok(Self::at(path.to_path_buf()))
    }

    /// Holds the run directory for one `fit` process while the returned file is open: a
    /// second `fit --resume` on the same run is refused, and `trainer sweep --resume`
    /// waits for an old trial process to let go. The lock dies with the process.
    pub fn lock(&self) -> Result<std::fs::File> {
        let f = lock_file(&self.file(LOCK_FILE), "trainer fit")?;
        crate::sweep::RUN_LOCKED.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(f)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.path.join("checkpoints/last.safetensors")
    }

    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> Result<()> {
        cifar_sdk::write_atomic(&self.file(name), &serde_json::to_vec_pretty(v)?)?;
        Ok(())
    }

    pub fn read_json<T: for<'a> Deserialize<'a>>(&self, name: &str) -> Result<T> {
        let p = self.file(name);
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))
    }

    /// Checks that this run was trained on the dataset whose digest is `digest` (loaded
    /// from `path`): its weights are only meaningful there, and its validation split must
    /// be the one it held out.
    pub fn check_dataset(&self, path: &str, digest: &str) -> Result<()> {
        let recorded: DatasetRef = self.read_json("dataset.json")?;
        if recorded.digest != digest {
            bail!("{} was trained on dataset {} but {path} holds {digest}", self.path.display(), recorded.digest);
        }
        Ok(())
    }

    /// Appends one record to `metrics.jsonl`.
    pub fn log(&self, record: &serde_json::Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.file("metrics.jsonl"))?;
        writeln!(f, "{record}")?;
        if let Ok(sink) = self.sink.lock() {
            if let Some(s) = sink.as_ref() {
                // The tracker may have stopped; the file above is the record that counts.
                let _ = s.send(crate::track::Message::Record(record.clone()));
            }
        }
        Ok(())
    }

    /// All records of `metrics.jsonl` (a torn last line from a crash is skipped).
    pub fn records(&self) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(self.file("metrics.jsonl")).unwrap_or_default();
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// Drops the records written after `global_step` (they will be written again by the
    /// resumed run), atomically.
    pub fn truncate_records(&self, global_step: usize) -> Result<()> {
        let kept: Vec<String> = self
            .records()?
            .into_iter()
            .filter(|r| r.get("step").and_then(|s| s.as_u64()).is_some_and(|s| s as usize <= global_step))
            .map(|r| r.to_string() + "\n")
            .collect();
        cifar_sdk::write_atomic(&self.file("metrics.jsonl"), kept.concat().as_bytes())?;
        Ok(())
    }
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Writes named tensors and string metadata to a safetensors file, atomically.
pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>, meta: HashMap<String, String>) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        owned.push((name.clone(), t.dims().to_vec(), f32_bytes(t)?));
    }
    let views = owned
        .iter()
        .map(|(n, shape, bytes)| Ok((n.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(meta))?;
    cifar_sdk::write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads every f32 tensor and the metadata of a safetensors file.
pub fn load_tensors(path: &Path, dev: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("{}: tensor {name} is {:?}, expected F32", path.display(), view.dtype());
        }
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, Tensor::from_vec(data, view.shape(), dev)?);
    }
    Ok((out, meta))
}

/// Everything needed to continue a run.
pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
    pub progress: Progress,
    pub dataset_digest: String,
}

impl Checkpoint {
    pub fn save(
        path: &Path,
        tensors: HashMap<String, Tensor>,
        progress: &Progress,
        dataset_digest: &str,
    ) -> Result<()> {
        let meta = HashMap::from([
            ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("progress".to_string(), serde_json::to_string(progress)?),
            ("dataset_digest".to_string(), dataset_digest.to_string()),
        ]);
        save_tensors(path, &tensors, meta)
    }

    pub fn load(path: &Path, dev: &Device) -> Result<Self> {
        let (tensors, meta) = load_tensors(path, dev)?;
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            bail!("{}: not a cifar-edge checkpoint", path.display());
        }
        let progress = serde_json::from_str(meta.get("progress").map(String::as_str).unwrap_or(""))
            .with_context(|| format!("{}: invalid progress record", path.display()))?;
        let dataset_digest = meta.get("dataset_digest").cloned().unwrap_or_default();
        Ok(Self { tensors, progress, dataset_digest })
    }

    /// Tensors whose names start with `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
    }
}
