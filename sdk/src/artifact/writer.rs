//! Writes `.cifar` files. The writer checks its own output by reading it back through
//! [`super::Artifact`] before anything reaches the disk, and writes atomically.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{checksum, schema::keys, Artifact, DType, ModelMetadata, FORMAT_NAME, FORMAT_VERSION};
use crate::{Error, Result};

/// A tensor to be written: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes (`shape.product() * dtype.size()` of them).
    pub bytes: Vec<u8>,
}

impl TensorData {
    /// An f32 tensor.
    pub fn f32(values: &[f32], shape: &[usize]) -> Self {
        Self { dtype: DType::F32, shape: shape.to_vec(), bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// An i32 tensor.
    pub fn i32(values: &[i32], shape: &[usize]) -> Self {
        Self { dtype: DType::I32, shape: shape.to_vec(), bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// An i8 tensor.
    pub fn i8(values: &[i8], shape: &[usize]) -> Self {
        Self { dtype: DType::I8, shape: shape.to_vec(), bytes: values.iter().map(|&v| v as u8).collect() }
    }
}

impl safetensors::View for &TensorData {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Builds a model file from its metadata and tensors.
#[derive(Debug, Clone)]
pub struct ArtifactWriter {
    /// The header content.
    pub metadata: ModelMetadata,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorData>,
}

fn json<T: serde::Serialize>(key: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::metadata(key, format!("cannot serialize: {e}")))
}

impl ArtifactWriter {
    /// A writer with no tensors yet.
    pub fn new(metadata: ModelMetadata) -> Self {
        Self { metadata, tensors: BTreeMap::new() }
    }

    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: TensorData) {
        self.tensors.insert(name.into(), t);
    }

    /// The `__metadata__` map, without the checksum.
    fn metadata_map(&self) -> Result<HashMap<String, String>> {
        let m = &self.metadata;
        let mut map = HashMap::from([
            (keys::FORMAT.to_string(), FORMAT_NAME.to_string()),
            (keys::VERSION.to_string(), FORMAT_VERSION.to_string()),
            (keys::GRAPH.to_string(), json(keys::GRAPH, &m.graph)?),
            (keys::LABELS.to_string(), json(keys::LABELS, &m.labels)?),
            (keys::PREPROCESSING.to_string(), json(keys::PREPROCESSING, &m.preprocessing)?),
            (keys::PROVENANCE.to_string(), json(keys::PROVENANCE, &m.provenance)?),
            (keys::QUALITY.to_string(), json(keys::QUALITY, &m.quality)?),
        ]);
        if let Some(d) = &m.drift {
            map.insert(keys::DRIFT.to_string(), json(keys::DRIFT, d)?);
        }
        Ok(map)
    }

    /// The file's bytes. They are parsed and validated before being returned, so an
    /// inconsistent model (a tensor that does not match the graph, a bad graph) is an
    /// error here, at compile time, not when a user opens the file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bytes = self.to_bytes_unchecked()?;
        Artifact::from_bytes(&bytes)?;
        Ok(bytes)
    }

    /// The file's bytes without the read-back validation: for building deliberately
    /// malformed files in tests and fuzzing. Real writers use [`Self::to_bytes`].
    #[doc(hidden)]
    pub fn to_bytes_unchecked(&self) -> Result<Vec<u8>> {
        let mut map = self.metadata_map()?;
        let sum = checksum(
            map.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            self.tensors.iter().map(|(n, t)| (n.as_str(), t.dtype, t.shape.as_slice(), t.bytes.as_slice())),
        );
        map.insert(keys::CHECKSUM.to_string(), sum);
        // safetensors orders tensors by decreasing alignment and pads the header to 8
        // bytes, so every tensor starts aligned for its element type.
        let bytes = safetensors::serialize(self.tensors.iter().map(|(n, t)| (n.clone(), t)), Some(map))
            .map_err(|e| Error::Container(format!("cannot serialize: {e}")))?;
        Ok(bytes)
    }

    /// Writes the file atomically (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::write_atomic(path, &bytes)
    }
}
