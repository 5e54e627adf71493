//! The `.cifar` artifact: a safetensors container whose `__metadata__` holds the
//! execution graph and the model's description ([`schema`]), written by [`writer`] and
//! read, validated and memory-mapped by [`reader`]; [`layers`] owns the weighted layers'
//! tensors (names, packed layout, int8 quantization). The one definition of the format:
//! the trainer writes through this module, so every file it writes is one the SDK reads.

pub mod cost;
pub mod layers;
pub mod reader;
pub mod schema;
pub mod validate;
pub mod writer;

use sha2::{Digest, Sha256};

pub use cost::{graph_cost, GraphCost};
pub use reader::{Artifact, TensorEntry};
pub use schema::*;
pub use writer::{ArtifactWriter, TensorData};

use crate::drift::DriftReference;

/// Everything in the header besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// The execution graph.
    pub graph: Graph,
    /// Class names in class-index order.
    pub labels: Vec<String>,
    /// How images become inputs.
    pub preprocessing: Preprocessing,
    /// Where the model came from.
    pub provenance: Provenance,
    /// Accuracy measured at compile time.
    pub quality: Quality,
    /// The drift reference profile, when measured.
    pub drift: Option<DriftReference>,
}

/// Element types stored in model files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 32-bit signed integer.
    I32,
    /// 8-bit signed integer.
    I8,
}

impl DType {
    /// Bytes per element (also the alignment the kernels need).
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I8 => 1,
        }
    }

    /// The safetensors name.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::I32 => "I32",
            DType::I8 => "I8",
        }
    }

    fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F32 => safetensors::Dtype::F32,
            DType::I32 => safetensors::Dtype::I32,
            DType::I8 => safetensors::Dtype::I8,
        }
    }

    /// The type of a safetensors dtype, if the format allows it.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<Self> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::I32 => Some(DType::I32),
            safetensors::Dtype::I8 => Some(DType::I8),
            _ => None,
        }
    }
}

/// The content checksum: SHA-256 over every metadata entry but the checksum itself (in
/// key order) and every tensor's name, dtype, shape and bytes (in name order). It does
/// not depend on where the tensors lie in the file. Public (hidden) for the fuzz targets,
/// which build files around fuzzed headers and must get past it.
#[doc(hidden)]
pub fn checksum<'a>(
    metadata: impl Iterator<Item = (&'a str, &'a str)>,
    tensors: impl Iterator<Item = (&'a str, DType, &'a [usize], &'a [u8])>,
) -> String {
    let mut h = Sha256::new();
    let mut meta: Vec<_> = metadata.filter(|(k, _)| *k != schema::keys::CHECKSUM).collect();
    meta.sort_unstable();
    for (k, v) in meta {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    let mut ts: Vec<_> = tensors.collect();
    ts.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, bytes) in ts {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(dtype.name().as_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
