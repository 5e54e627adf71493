//! The served model and its atomic replacement. Requests take a snapshot (`Arc`) of the
//! current model when they arrive and finish on it, so a reload never fails or mixes a
//! request: new requests see the new model as soon as it is validated and swapped in,
//! and the old one is freed when its last request is done.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use cifar_sdk::{Model, ModelOptions};

/// One loaded generation of the model.
#[derive(Debug)]
pub struct ServedModel {
    /// Name it is served under.
    pub name: String,
    /// Generation: 1 for the model loaded at start-up, +1 per successful reload.
    pub version: u64,
    /// The opened model.
    pub model: Arc<Model>,
    /// The file's content checksum (SHA-256).
    pub digest: String,
    /// When it was loaded (seconds since the Unix epoch).
    pub loaded_unix: u64,
    /// Its inference statistics (Triton's `ModelStatistics`).
    pub stats: crate::stats::ModelStats,
}

impl ServedModel {
    /// The version as the protocol spells it.
    pub fn version_string(&self) -> String {
        self.version.to_string()
    }

    /// Input `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.model.input_shape()
    }
}

/// Holds the current model and reloads it from its file.
#[derive(Debug)]
pub struct Repository {
    path: PathBuf,
    name: String,
    options: ModelOptions,
    current: ArcSwap<ServedModel>,
    generation: AtomicU64,
    /// Serializes reloads (a SIGHUP and an HTTP load at the same time load once each, in
    /// turn, instead of racing on the version number).
    reload_lock: tokio::sync::Mutex<()>,
}

impl Repository {
    /// Opens the model file; failure here stops the server before it listens.
    pub fn open(path: PathBuf, name: String, options: ModelOptions) -> cifar_sdk::Result<Self> {
        let first = load(&path, &name, &options, 1)?;
        Ok(Self {
            path,
            name,
            options,
            current: ArcSwap::from_pointee(first),
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The model serving new requests.
    pub fn current(&self) -> Arc<ServedModel> {
        self.current.load_full()
    }

    /// The served name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Loads and validates the file again (on a blocking thread), then swaps it in. On
    /// error the current model stays and the error says why the file was rejected.
    pub async fn reload(&self) -> Result<Arc<ServedModel>, String> {
        let _guard = self.reload_lock.lock().await;
        let version = self.generation.load(Ordering::SeqCst) + 1;
        let (path, name, options) = (self.path.clone(), self.name.clone(), self.options.clone());
        let loaded = tokio::task::spawn_blocking(move || load(&path, &name, &options, version))
            .await
            .map_err(|e| format!("the loading task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let loaded = Arc::new(loaded);
        self.generation.store(version, Ordering::SeqCst);
        self.current.store(loaded.clone());
        Ok(loaded)
    }
}

fn load(path: &std::path::Path, name: &str, options: &ModelOptions, version: u64) -> cifar_sdk::Result<ServedModel> {
    let model = Model::open(path, options)?;
    // A session is built once here so that a file whose plan cannot be made (e.g. too
    // large for memory) is rejected before it replaces a working model.
    model.session()?;
    let digest = model.artifact().checksum.clone();
    let loaded_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(ServedModel { name: name.to_string(), version, model, digest, loaded_unix, stats: Default::default() })
}
