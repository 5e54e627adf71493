//! ONNX constants: initializers, `Constant` nodes and attributes decoded into f32 or i64
//! values, with every size taken from the file checked before anything is allocated.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_onnx::onnx::tensor_proto::{DataLocation, DataType};
use candle_onnx::onnx::TensorProto;

/// The most elements one constant may have (256 M: a 1 GiB f32 tensor). Files are
/// refused above it before anything is allocated; real 32x32 classifiers are far below.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// A constant's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Floating point (f16, f32 and f64 become f32).
    F32(Vec<f32>),
    /// Integers (i32 and i64 become i64): shapes, axes, indices.
    I64(Vec<i64>),
}

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Const {
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// Its values as f32 (integers converted).
    pub fn f32s(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Its values as integers, or an error naming `what` if they are not integers.
    pub fn ints(&self, what: &str) -> Result<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Ok(v.clone()),
            Data::F32(_) => bail!("{what} must be an integer tensor"),
        }
    }

    /// Its single value, if it has exactly one.
    pub fn scalar(&self) -> Option<f32> {
        (self.len() == 1).then(|| self.f32s().first().copied()).flatten()
    }
}

/// The element count of `dims`, or an error if a dimension is negative or the product
/// exceeds [`MAX_ELEMENTS`].
pub fn element_count(name: &str, dims: &[i64]) -> Result<(Vec<usize>, usize)> {
    let mut n = 1usize;
    let mut out = Vec::with_capacity(dims.len().min(8));
    ensure!(dims.len() <= 8, "tensor `{name}` has {} dimensions (at most 8)", dims.len());
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| anyhow::anyhow!("tensor `{name}` has a negative dimension {d}"))?;
        n = n.checked_mul(d).filter(|&n| n <= MAX_ELEMENTS).ok_or_else(|| {
            anyhow::anyhow!("tensor `{name}` has dimensions {dims:?}: more than {MAX_ELEMENTS} elements")
        })?;
        out.push(d);
    }
    Ok((out, n))
}

/// Decodes an initializer or a `Constant` node's tensor. `dir` is the model's folder:
/// external data is refused (with a clear word where it points outside that folder).
pub fn decode(t: &TensorProto, dir: &Path) -> Result<Const> {
    let name = t.name.as_str();
    let (dims, n) = element_count(name, &t.dims)?;
    let dtype = DataType::try_from(t.data_type).unwrap_or(DataType::Undefined);
    let external;
    let raw = if t.data_location == DataLocation::External as i32 || !t.external_data.is_empty() {
        external = read_external(t, dir, n.saturating_mul(element_width(dtype)))?;
        external.as_slice()
    } else {
        t.raw_data.as_slice()
    };
    let has_raw = !raw.is_empty() || n == 0;
    let sized = |width: usize, typed: usize| -> Result<bool> {
        if has_raw && typed == 0 {
            ensure!(
                raw.len() == n * width,
                "tensor `{name}` ({dtype:?} {dims:?}) holds {} bytes, its shape needs {}",
                raw.len(),
                n * width
            );
            Ok(true)
        } else {
            ensure!(typed == n, "tensor `{name}` ({dtype:?} {dims:?}) holds {typed} values, its shape needs {n}");
            Ok(false)
        }
    };
    let data = match dtype {
        DataType::Float => {
            if sized(4, t.float_data.len())? {
                Data::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            } else {
                Data::F32(t.float_data.clone())
            }
        }
        DataType::Double => {
            if sized(8, t.double_data.len())? {
                Data::F32(
                    raw.chunks_exact(8)
                        .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                        .collect(),
                )
            } else {
                Data::F32(t.double_data.iter().map(|&v| v as f32).collect())
            }
        }
        DataType::Float16 => {
            // Typed f16 values travel in int32_data, one per element.
            if sized(2, t.int32_data.len())? {
                Data::F32(raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
            } else {
                Data::F32(t.int32_data.iter().map(|&v| half::f16::from_bits(v as u16).to_f32()).collect())
            }
        }
        DataType::Int64 => {
            if sized(8, t.int64_data.len())? {
                Data::I64(
                    raw.chunks_exact(8)
                        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                        .collect(),
                )
            } else {
                Data::I64(t.int64_data.clone())
            }
        }
        DataType::Int32 => {
            if sized(4, t.int32_data.len())? {
                Data::I64(raw.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect())
            } else {
                Data::I64(t.int32_data.iter().map(|&v| v as i64).collect())
            }
        }
        other => bail!("tensor `{name}` has element type {other:?}; supported: float, double, float16, int64, int32"),
    };
    if let Data::F32(v) = &data {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("tensor `{name}` holds a non-finite value at element {i}");
        }
    }
    Ok(Const { dims, data })
}

/// Bytes per element of the element types [`decode`] reads (0 for the others).
fn element_width(dtype: DataType) -> usize {
    match dtype {
        DataType::Float | DataType::Int32 => 4,
        DataType::Double | DataType::Int64 => 8,
        DataType::Float16 => 2,
        _ => 0,
    }
}

/// The `bytes` bytes of a tensor kept in a separate file (`location`, `offset`, `length`
/// entries, as `torch.onnx.export(..., external_data=True)` writes them). The file must
/// lie inside the model's folder `dir`, symbolic links resolved: a model cannot make the
/// importer read other files.
fn read_external(t: &TensorProto, dir: &Path, bytes: usize) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let name = t.name.as_str();
    let entry = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
    let location = entry("location").unwrap_or("");
    ensure!(!location.is_empty(), "tensor `{name}` keeps its data outside the file but names no location");
    let outside = || {
        format!("tensor `{name}` keeps its data in {location:?}, outside the model's folder {}: refused", dir.display())
    };
    let p = Path::new(location);
    ensure!(
        !p.is_absolute()
            && p.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)),
        "{}",
        outside()
    );
    let folder = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let folder =
        folder.canonicalize().with_context(|| format!("cannot resolve the model's folder {}", folder.display()))?;
    let path = folder.join(p);
    let real = path
        .canonicalize()
        .with_context(|| format!("tensor `{name}`: cannot open its data file {}", path.display()))?;
    ensure!(real.starts_with(&folder), "{} (it links to {})", outside(), real.display());
    let number = |key: &str| -> Result<Option<u64>> {
        entry(key)
            .map(|v| v.parse::<u64>().with_context(|| format!("tensor `{name}`: {key} {v:?} is not a number")))
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    if let Some(length) = number("length")? {
        ensure!(
            length == bytes as u64,
            "tensor `{name}`: its data file entry holds {length} bytes, its shape needs {bytes}"
        );
    }
    let mut file = std::fs::File::open(&real).with_context(|| format!("cannot open {}", real.display()))?;
    let size = file.metadata()?.len();
    ensure!(
        offset.checked_add(bytes as u64).is_some_and(|end| end <= size),
        "tensor `{name}`: {} is {size} bytes, too short for {bytes} bytes at offset {offset}",
        real.display()
    );
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; bytes];
    file.read_exact(&mut buf).with_context(|| format!("cannot read {}", real.display()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dims: &[i64], dtype: DataType, raw: Vec<u8>) -> TensorProto {
        TensorProto {
            name: "t".into(),
            dims: dims.to_vec(),
            data_type: dtype as i32,
            raw_data: raw,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_raw_and_typed_values() {
        let raw: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let c = decode(&tensor(&[2], DataType::Float, raw), Path::new(".")).unwrap();
        assert_eq!(c.data, Data::F32(vec![1.5, -2.0]));
        let t = TensorProto { int64_data: vec![3, -1], ..tensor(&[2], DataType::Int64, vec![]) };
        assert_eq!(decode(&t, Path::new(".")).unwrap().data, Data::I64(vec![3, -1]));
        let h: Vec<u8> = [half::f16::from_f32(0.5)].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode(&tensor(&[1], DataType::Float16, h), Path::new(".")).unwrap().data, Data::F32(vec![0.5]));
    }

    #[test]
    fn refuses_bad_sizes_and_external_data() {
        let err = |t: TensorProto| decode(&t, Path::new("/models")).unwrap_err().to_string();
        assert!(err(tensor(&[3], DataType::Float, vec![0; 8])).contains("holds 8 bytes, its shape needs 12"));
        assert!(err(tensor(&[1 << 20, 1 << 20], DataType::Float, vec![0; 4])).contains("more than"));
        assert!(err(tensor(&[-1], DataType::Float, vec![])).contains("negative dimension"));
        assert!(err(tensor(&[1], DataType::String, vec![0])).contains("element type"));
        let nan = tensor(&[1], DataType::Float, f32::NAN.to_le_bytes().to_vec());
        assert!(err(nan).contains("non-finite"));
        let external = |location: &str| TensorProto {
            data_location: DataLocation::External as i32,
            external_data: vec![candle_onnx::onnx::StringStringEntryProto {
                key: "location".into(),
                value: location.into(),
            }],
            ..tensor(&[1], DataType::Float, vec![])
        };
        assert!(err(external("../../etc/passwd")).contains("outside the model's folder"));
        assert!(err(external("/etc/passwd")).contains("outside the model's folder"));
        // Inside the folder: read at its offset; a link out of the folder is refused.
        let dir = tempfile::tempdir().unwrap();
        let e = decode(&external("weights.bin"), dir.path()).unwrap_err().to_string();
        assert!(e.contains("cannot open its data file"), "{e}");
        let data: Vec<u8> = [0f32, 0.0, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join("w.data"), &data).unwrap();
        let mut t = external("w.data");
        t.external_data.push(candle_onnx::onnx::StringStringEntryProto { key: "offset".into(), value: "8".into() });
        assert_eq!(decode(&t, dir.path()).unwrap().data, Data::F32(vec![2.5]));
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("w.data"), &data).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("w.data"), dir.path().join("link.data")).unwrap();
        let e = decode(&external("link.data"), dir.path()).unwrap_err().to_string();
        assert!(e.contains("outside the model's folder"), "{e}");
    }
}
