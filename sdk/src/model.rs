//! [`Model`]: an opened, validated, immutable model file, shared by any number of
//! [`Session`]s across threads.

use std::path::Path;
use std::sync::Arc;

use crate::artifact::{Artifact, ModelMetadata, Precision};
use crate::backend::cpu::runner::CpuBackend;
use crate::backend::cpu::Program;
use crate::backend::Backend;
use crate::device::{resolve, Device, DevicePolicy};
use crate::session::Session;
use crate::{Error, Result};

/// How to open a model and run its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Which device runs the model.
    pub device: DevicePolicy,
    /// Threads per session (0: one per available core, the default). Each session owns
    /// its threads; between runs they park (an idle session burns no CPU). Results are
    /// the same for any thread count.
    pub threads: usize,
    /// The largest batch a session runs at once; larger batches run in parts. The CPU
    /// backend runs a batch in chunks of images sized for the CPU caches (at most this
    /// many), which sets the session's memory.
    pub max_batch: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self { device: DevicePolicy::Auto, threads: 0, max_batch: 64 }
    }
}

/// A compiled model. `Send + Sync`: share it through the `Arc` that `open` returns.
pub struct Model {
    artifact: Artifact,
    options: ModelOptions,
    device: Device,
    device_reason: String,
    backend: Box<dyn Backend>,
    kernels: &'static str,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("precision", &self.precision())
            .field("classes", &self.classes())
            .field("device", &self.device)
            .field("kernels", &self.kernels)
            .field("artifact", &self.artifact)
            .finish()
    }
}

impl Model {
    /// Opens and validates the model file at `path` through a read-only memory map:
    /// weights are used in place, never copied. The file must not be truncated or
    /// rewritten in place while open (replacing it by rename, as the trainer does, is
    /// safe).
    pub fn open(path: impl AsRef<Path>, options: &ModelOptions) -> Result<Arc<Self>> {
        Self::new(Artifact::open(path.as_ref())?, options)
    }

    /// Validates a model held in memory (copied once into aligned memory).
    pub fn from_bytes(bytes: &[u8], options: &ModelOptions) -> Result<Arc<Self>> {
        Self::new(Artifact::from_bytes(bytes)?, options)
    }

    fn new(artifact: Artifact, options: &ModelOptions) -> Result<Arc<Self>> {
        if options.max_batch == 0 || options.max_batch > 1 << 16 {
            return Err(Error::Options(format!("max_batch must be in 1..=65536, got {}", options.max_batch)));
        }
        if options.threads > 1024 {
            return Err(Error::Options(format!("threads must be at most 1024, got {}", options.threads)));
        }
        let resolved = resolve(options.device)?;
        let kernels = crate::kernels::best();
        #[cfg(feature = "cuda")]
        let backend: Box<dyn Backend> = match &resolved.gpu {
            Some(dev) => Box::new(crate::backend::device::DeviceBackend::new(
                crate::backend::device::DeviceGraph::new(&artifact, dev)?,
            )),
            None => Box::new(CpuBackend::new(Program::build(&artifact, kernels)?)),
        };
        #[cfg(not(feature = "cuda"))]
        let backend: Box<dyn Backend> = Box::new(CpuBackend::new(Program::build(&artifact, kernels)?));
        Ok(Arc::new(Self {
            artifact,
            options: options.clone(),
            device: resolved.device,
            device_reason: resolved.reason,
            backend,
            kernels: kernels.name,
        }))
    }

    /// A new session (scratch memory and threads for one caller at a time).
    pub fn session(self: &Arc<Self>) -> Result<Session> {
        Session::new(Arc::clone(self), self.backend.runner(self)?)
    }

    /// Everything in the file's header.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.artifact.metadata
    }

    /// Class names in class-index order.
    pub fn labels(&self) -> &[String] {
        &self.artifact.metadata.labels
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.artifact.metadata.labels.len()
    }

    /// Input shape `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.artifact.metadata.graph.input
    }

    /// Weight precision.
    pub fn precision(&self) -> Precision {
        self.artifact.metadata.graph.precision
    }

    /// The device that runs this model.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Why that device was chosen (states any fallback).
    pub fn device_reason(&self) -> &str {
        &self.device_reason
    }

    /// The CPU kernel implementation in use (`avx512vnni`, `avx2` or `portable`),
    /// chosen once from the CPU's features.
    pub fn kernels(&self) -> &'static str {
        self.kernels
    }

    /// The validated file (tensors, checksum, raw bytes).
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The options the model was opened with.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }
}
