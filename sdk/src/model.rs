//! [`Model`]: an opened, validated, immutable model file, shared by any number of
//! [`Session`]s across threads.

use std::path::Path;
use std::sync::Arc;

use crate::artifact::{Artifact, ModelMetadata, Precision};
use crate::device::{resolve, Device, DevicePolicy};
use crate::engine::program::{build, Step};
use crate::session::Session;
use crate::{Error, Result};

/// How to open a model and run its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// Which device runs the model.
    pub device: DevicePolicy,
    /// Threads per session (0: one per available core). Sessions with one thread start
    /// no threads at all; an idle session's threads sleep. The default is 1: on the
    /// 2-core machines we measure on, a second thread does not yet speed up these layer
    /// sizes (BENCHMARKS.md); run one session per thread for throughput instead.
    pub threads: usize,
    /// Images per internal batch; larger batches are run in chunks of this size. Sets
    /// the session's memory: about `max_batch x` the model's largest activations.
    pub max_batch: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self { device: DevicePolicy::Auto, threads: 1, max_batch: 64 }
    }
}

/// A compiled model. `Send + Sync`: share it through the `Arc` that `open` returns.
pub struct Model {
    pub(crate) artifact: Artifact,
    pub(crate) steps: Vec<Step>,
    pub(crate) options: ModelOptions,
    device: Device,
    device_reason: String,
    /// The graph on the GPU, when the policy chose one.
    #[cfg(feature = "cuda")]
    pub(crate) gpu: Option<crate::gpu::DeviceGraph>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("precision", &self.precision())
            .field("classes", &self.classes())
            .field("device", &self.device)
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
        let steps = build(&artifact)?;
        #[cfg(feature = "cuda")]
        let gpu = match &resolved.gpu {
            Some(dev) => Some(crate::gpu::DeviceGraph::new(&artifact, dev)?),
            None => None,
        };
        Ok(Arc::new(Self {
            artifact,
            steps,
            options: options.clone(),
            device: resolved.device,
            device_reason: resolved.reason,
            #[cfg(feature = "cuda")]
            gpu,
        }))
    }

    /// A new session (scratch memory for one thread at a time).
    pub fn session(self: &Arc<Self>) -> Result<Session> {
        Session::new(Arc::clone(self))
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

    /// The validated file (tensors, checksum, raw bytes).
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The options the model was opened with.
    pub fn options(&self) -> &ModelOptions {
        &self.options
    }
}
