//! Opens `.cifar` files: maps them (or copies a caller's buffer into aligned memory),
//! then validates everything before anything runs: the container's header and offsets,
//! the format version, the metadata JSON, the content checksum, the graph, and each
//! tensor's dtype, shape, alignment and values.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::layers::{names, StoredLayer};
use super::schema::{keys, Graph, Precision, FORMAT_NAME, FORMAT_VERSION, OLDEST_FORMAT_VERSION};
use super::validate::{validate_graph, GraphInfo};
use super::{checksum, DType, ModelMetadata};
use crate::{Error, Result};

/// The bytes of a model file: a read-only mapping, or an 8-byte-aligned private copy.
pub(crate) enum Storage {
    Mapped(memmap2::Mmap),
    Owned { words: Vec<u64>, len: usize },
}

impl Storage {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned { words, len } => {
                let all: &[u8] = bytemuck::cast_slice(words);
                all.get(..*len).unwrap_or(all)
            }
        }
    }
}

/// Where a tensor lies in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Byte offset from the start of the file.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// A validated model file.
pub struct Artifact {
    storage: Storage,
    /// The parsed header.
    pub metadata: ModelMetadata,
    /// Value shapes from graph validation.
    pub info: GraphInfo,
    /// Tensors by name.
    pub tensors: HashMap<String, TensorEntry>,
    /// The checksum stored in (and verified against) the file.
    pub checksum: String,
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact")
            .field("mapped", &self.is_mapped())
            .field("bytes", &self.storage.bytes().len())
            .field("tensors", &self.tensors.len())
            .field("checksum", &self.checksum)
            .finish()
    }
}

fn parse_json<T: DeserializeOwned>(meta: &HashMap<String, String>, key: &str) -> Result<T> {
    let text = meta.get(key).ok_or_else(|| Error::metadata(key, "missing"))?;
    serde_json::from_str(text).map_err(|e| Error::metadata(key, format!("invalid: {e}")))
}

impl Artifact {
    /// Maps the file at `path` and validates it.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(Error::Container(format!(
                "{} is {len} bytes long, too short for a model file",
                path.display()
            )));
        }
        // SAFETY: the mapping is read-only and private to this process. Model files are
        // written by a rename into place (a new inode), so replacing a model while it is
        // open never changes the mapped bytes. Truncating the file in place while mapped
        // is outside the contract (documented on `Model::open`).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Storage::Mapped(map)).map_err(|e| match e {
            Error::Container(m) => Error::Container(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Validates a model held in memory. The bytes are copied once into 8-byte aligned
    /// memory (a caller's buffer carries no alignment guarantee).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        if let Some(d) = dst.get_mut(..bytes.len()) {
            d.copy_from_slice(bytes);
        }
        Self::parse(Storage::Owned { words, len: bytes.len() })
    }

    /// Whether the bytes are a file mapping (zero copy) rather than a private copy.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(_))
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    fn parse(storage: Storage) -> Result<Self> {
        let bytes = storage.bytes();
        let (header_len, st) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::Container(format!("invalid safetensors header: {e}")))?;
        let data_start = header_len
            .checked_add(8)
            .ok_or_else(|| Error::Container(format!("header length {header_len} overflows")))?;
        let meta = st
            .metadata()
            .as_ref()
            .ok_or_else(|| Error::metadata("__metadata__", "missing (not a cifar-edge model)"))?;
        match meta.get(keys::FORMAT) {
            Some(f) if f == FORMAT_NAME => {}
            Some(f) => return Err(Error::metadata(keys::FORMAT, format!("is {f:?}, expected {FORMAT_NAME:?}"))),
            None => return Err(Error::metadata(keys::FORMAT, "missing (not a cifar-edge model)")),
        }
        let version = meta.get(keys::VERSION).ok_or_else(|| Error::metadata(keys::VERSION, "missing"))?;
        if !version.parse::<u32>().is_ok_and(|v| (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&v)) {
            return Err(Error::UnsupportedVersion { found: version.clone(), supported: FORMAT_VERSION });
        }

        let mut tensors = HashMap::new();
        for (name, info) in st.tensors() {
            let dtype = DType::from_safetensors(info.dtype)
                .ok_or_else(|| Error::tensor(&name, format!("dtype {:?} is not used by model files", info.dtype)))?;
            let (begin, end) = info.data_offsets;
            let (offset, stop) = match (data_start.checked_add(begin), data_start.checked_add(end)) {
                (Some(o), Some(s)) if o <= s && s <= bytes.len() => (o, s),
                _ => return Err(Error::tensor(&name, format!("data offsets {begin}..{end} lie outside the file"))),
            };
            if offset % dtype.size() != 0 {
                return Err(Error::tensor(&name, format!("starts at byte {offset}, not aligned for {}", dtype.name())));
            }
            tensors.insert(name, TensorEntry { dtype, shape: info.shape.clone(), offset, len: stop - offset });
        }

        let expected = meta.get(keys::CHECKSUM).ok_or_else(|| Error::metadata(keys::CHECKSUM, "missing"))?;
        let actual = checksum(
            meta.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            tensors.iter().map(|(n, t)| {
                (n.as_str(), t.dtype, t.shape.as_slice(), bytes.get(t.offset..t.offset + t.len).unwrap_or(&[]))
            }),
        );
        if *expected != actual {
            return Err(Error::Checksum { expected: expected.clone(), actual });
        }

        let graph: Graph = parse_json(meta, keys::GRAPH)?;
        let metadata = ModelMetadata {
            labels: parse_json(meta, keys::LABELS)?,
            preprocessing: parse_json(meta, keys::PREPROCESSING)?,
            provenance: parse_json(meta, keys::PROVENANCE)?,
            quality: parse_json(meta, keys::QUALITY)?,
            drift: match meta.get(keys::DRIFT) {
                Some(_) => Some(parse_json(meta, keys::DRIFT)?),
                None => None,
            },
            graph,
        };
        let info = validate_graph(&metadata.graph)?;
        let checksum = expected.clone();
        let artifact = Self { storage, metadata, info, tensors, checksum };
        artifact.check_tensors()?;
        artifact.check_description()?;
        Ok(artifact)
    }

    /// The graph's labels and preprocessing agree with its shapes.
    fn check_description(&self) -> Result<()> {
        let m = &self.metadata;
        let out = self.info.nodes.get(self.info.output).map(|n| n.shape).unwrap_or([0; 3]);
        if out[1] != 1 || out[2] != 1 {
            return Err(Error::graph(&m.graph.output, format!("the output must be [classes, 1, 1], got {out:?}")));
        }
        if m.labels.len() != out[0] {
            return Err(Error::metadata(
                keys::LABELS,
                format!("{} labels for an output of {} classes", m.labels.len(), out[0]),
            ));
        }
        let [c, h, w] = m.graph.input;
        if c != 3 || [h, w] != m.preprocessing.input_size {
            return Err(Error::metadata(
                keys::PREPROCESSING,
                format!(
                    "input size {:?} (RGB) disagrees with the graph input {:?}",
                    m.preprocessing.input_size,
                    [c, h, w]
                ),
            ));
        }
        let n = &m.preprocessing.normalization;
        if n.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || n.mean.iter().any(|v| !v.is_finite()) {
            return Err(Error::metadata(keys::PREPROCESSING, "normalization mean/std must be finite, std positive"));
        }
        Ok(())
    }

    /// Every tensor the graph needs is present with the right dtype and shape, holds
    /// sane values, and no tensor is left over.
    fn check_tensors(&self) -> Result<()> {
        let g = &self.metadata.graph;
        let int8 = g.precision == Precision::Int8;
        let mut used = 0usize;
        for (node, info) in g.nodes.iter().zip(&self.info.nodes) {
            let Some(shape) = node.op.layer(&info.input_shapes) else { continue };
            let n = &node.name;
            let (wdtype, wshape) =
                if int8 { (DType::I8, shape.packed_i8_shape()) } else { (DType::F32, shape.packed_f32_shape()) };
            let weight = self.expect(&names::weight(n), wdtype, &wshape)?;
            let bias = self.expect(&names::bias(n), DType::F32, &[shape.out])?;
            used += 2;
            if self.f32s(&bias)?.iter().any(|v| !v.is_finite()) {
                return Err(Error::tensor(&bias, "holds a non-finite value"));
            }
            if int8 {
                let scale = self.expect(&names::scale(n), DType::F32, &[shape.out])?;
                self.expect(&names::sum(n), DType::I32, &[shape.out])?;
                used += 2;
                if self.f32s(&scale)?.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err(Error::tensor(&scale, "holds a scale that is not finite and positive"));
                }
                let max = shape.weight_max();
                if self.i8s(&weight)?.iter().any(|&v| !(-max..=max).contains(&v)) {
                    return Err(Error::tensor(&weight, format!("holds a code outside -{max}..={max}")));
                }
            } else if self.f32s(&weight)?.iter().any(|v| !v.is_finite()) {
                return Err(Error::tensor(&weight, "holds a non-finite value"));
            }
            let layer = StoredLayer::read(self, n, shape)?;
            if !layer.padding_is_zero() {
                return Err(Error::tensor(&weight, "holds non-zero values in its packing's padding"));
            }
            if let (Some(codes), Some((_, sums))) = (layer.codes(), layer.quant) {
                for (row, &s) in codes.chunks(shape.k().max(1)).zip(sums) {
                    if row.iter().map(|&v| i32::from(v)).sum::<i32>() != s {
                        return Err(Error::tensor(&names::sum(n), "does not hold the row sums of the weight"));
                    }
                }
            }
        }
        if used != self.tensors.len() {
            let mut extra: Vec<&str> = self
                .tensors
                .keys()
                .filter(|t| {
                    !g.nodes.iter().any(|n| {
                        n.op.has_weights()
                            && t.strip_prefix(n.name.as_str())
                                .is_some_and(|s| names::SUFFIXES.iter().take(if int8 { 4 } else { 2 }).any(|x| *x == s))
                    })
                })
                .map(String::as_str)
                .collect();
            extra.sort_unstable();
            let first = extra.first().copied().unwrap_or("?");
            return Err(Error::tensor(first, "is not used by the graph"));
        }
        Ok(())
    }

    fn expect(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<String> {
        let t = self.tensors.get(name).ok_or_else(|| Error::tensor(name, "missing (the graph needs it)"))?;
        if t.dtype != dtype {
            return Err(Error::tensor(name, format!("has dtype {}, the graph needs {}", t.dtype.name(), dtype.name())));
        }
        if t.shape != shape {
            return Err(Error::tensor(name, format!("has shape {:?}, the graph needs {shape:?}", t.shape)));
        }
        Ok(name.to_string())
    }

    fn raw(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensors.get(name).ok_or_else(|| Error::tensor(name, "missing"))?;
        self.storage
            .bytes()
            .get(t.offset..t.offset.saturating_add(t.len))
            .ok_or_else(|| Error::tensor(name, "lies outside the file"))
    }

    /// An f32 tensor, read in place from the file's bytes.
    pub fn f32s(&self, name: &str) -> Result<&[f32]> {
        bytemuck::try_cast_slice(self.raw(name)?)
            .map_err(|e| Error::tensor(name, format!("cannot be read as f32: {e}")))
    }

    /// An i32 tensor, read in place.
    pub fn i32s(&self, name: &str) -> Result<&[i32]> {
        bytemuck::try_cast_slice(self.raw(name)?)
            .map_err(|e| Error::tensor(name, format!("cannot be read as i32: {e}")))
    }

    /// An i8 tensor, read in place.
    pub fn i8s(&self, name: &str) -> Result<&[i8]> {
        bytemuck::try_cast_slice(self.raw(name)?).map_err(|e| Error::tensor(name, format!("cannot be read as i8: {e}")))
    }
}
