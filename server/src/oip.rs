//! The Open Inference Protocol v2 wire format: inference requests (JSON tensors, the
//! binary tensor data extension), responses (with the classification extension) and
//! model metadata. Pure functions of bytes and the model, so they are tested without a
//! server.
//!
//! Inputs: one tensor, either `UINT8 [N, H, W, 3]` (RGB images, as decoded) or
//! `FP32 [N, 3, H, W]` (normalized, the model's own input). Outputs: `logits` and
//! `probabilities`, `FP32 [N, classes]`; `"classification": k` on an output turns it into
//! `BYTES [N, k]` strings `"score:index:label"` (Triton's format).

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use crate::batcher::Pixels;
use crate::error::{ApiError, ApiResult};
use crate::repository::ServedModel;

/// Name of the UINT8 input in the model metadata.
pub const INPUT_UINT8: &str = "images";
/// Name of the FP32 input in the model metadata.
pub const INPUT_FP32: &str = "input";
/// The outputs every model has.
pub const OUTPUTS: [&str; 2] = ["logits", "probabilities"];
/// The server's name in the server metadata.
pub const SERVER_NAME: &str = "cifar-serve";
/// The protocol extensions the server speaks (server metadata).
pub const EXTENSIONS: [&str; 4] = ["binary_tensor_data", "classification", "model_repository", "statistics"];

#[derive(Debug, Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Debug, Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<FlatData>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Numbers of a JSON tensor, flattened from any nesting (the protocol allows both).
#[derive(Debug)]
struct FlatData(Vec<f64>);

struct Flatten<'a>(&'a mut Vec<f64>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number or a (nested) array of numbers")
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f64);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f64);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(self.0))?.is_some() {}
        Ok(())
    }
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut values = Vec::new();
        Flatten(&mut values).deserialize(d)?;
        Ok(FlatData(values))
    }
}

/// Which output and how to send it.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    /// `logits` or `probabilities`.
    pub name: &'static str,
    /// Top-k of the classification extension.
    pub classification: Option<usize>,
    /// Send as binary data after the JSON header.
    pub binary: bool,
}

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    /// The client's request id, echoed back.
    pub id: Option<String>,
    /// The images.
    pub pixels: Pixels,
    /// How many.
    pub images: usize,
    /// What to answer with.
    pub outputs: Vec<OutputSpec>,
}

/// One input tensor, from either wire format (JSON/binary over HTTP, protobuf over gRPC).
#[derive(Debug)]
pub struct InputTensor<'a> {
    /// The tensor's name (only quoted in errors: the datatype and shape say which input).
    pub name: &'a str,
    /// `UINT8` or `FP32`.
    pub datatype: &'a str,
    /// `[N, H, W, 3]` for UINT8, `[N, 3, H, W]` for FP32.
    pub shape: &'a [i64],
    /// The values.
    pub data: InputData<'a>,
}

/// Where an input tensor's values are.
#[derive(Debug)]
pub enum InputData<'a> {
    /// JSON numbers, flattened.
    Numbers(&'a [f64]),
    /// Little-endian bytes, row-major (binary tensor data, `raw_input_contents`).
    Raw(&'a [u8]),
    /// gRPC `uint_contents` (UINT8 values).
    Uint(&'a [u32]),
    /// gRPC `fp32_contents`.
    Fp32(&'a [f32]),
    /// No values were sent.
    Missing,
}

/// The images of an input tensor: its shape checked against the model and the batch
/// limit, its values against its datatype. Returns `(images, pixels)`.
pub fn input_pixels(input: &InputTensor, model: &ServedModel, max_images: usize) -> ApiResult<(usize, Pixels)> {
    let [c, h, w] = model.input_shape();
    let what = format!("input `{}`", input.name);
    let (images, uint8) = match (input.datatype, input.shape) {
        ("UINT8", &[n, sh, sw, sc]) if [sh, sw, sc] == [h as i64, w as i64, c as i64] => (n, true),
        ("FP32", &[n, sc, sh, sw]) if [sc, sh, sw] == [c as i64, h as i64, w as i64] => (n, false),
        ("UINT8" | "FP32", shape) => {
            return Err(ApiError::bad_request(format!(
                "{what}: shape {shape:?} does not fit the model: UINT8 must be [N, {h}, {w}, {c}] and FP32 [N, {c}, {h}, {w}]"
            )))
        }
        (dt, _) => {
            return Err(ApiError::bad_request(format!("{what}: datatype {dt} is not supported (UINT8 or FP32)")))
        }
    };
    if images < 1 || images as u64 > max_images as u64 {
        return Err(ApiError::bad_request(format!("{what}: batch size {images} is outside 1..={max_images}")));
    }
    let images = images as usize;
    let count = images * c * h * w;
    let count_error =
        |n: usize| ApiError::bad_request(format!("{what}: {n} values for shape {:?} ({count} expected)", input.shape));
    let not_finite = || ApiError::bad_request(format!("{what}: FP32 data contains NaN or infinity"));
    let pixels = match (&input.data, uint8) {
        (InputData::Raw(bytes), _) => {
            let elem = if uint8 { 1 } else { 4 };
            if bytes.len() != count * elem {
                return Err(ApiError::bad_request(format!(
                    "{what}: {} bytes of raw data for shape {:?} {} ({} expected)",
                    bytes.len(),
                    input.shape,
                    input.datatype,
                    count * elem
                )));
            }
            if uint8 {
                Pixels::Rgb8(bytes.to_vec())
            } else {
                let values: Vec<f32> =
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(not_finite());
                }
                Pixels::Nchw(values)
            }
        }
        (InputData::Numbers(values), true) => {
            if values.len() != count {
                return Err(count_error(values.len()));
            }
            let mut px = Vec::with_capacity(count);
            for (i, &v) in values.iter().enumerate() {
                if !(0.0..=255.0).contains(&v) || v.fract() != 0.0 {
                    return Err(ApiError::bad_request(format!("{what}: value {v} at {i} is not a UINT8")));
                }
                px.push(v as u8);
            }
            Pixels::Rgb8(px)
        }
        (InputData::Numbers(values), false) => {
            if values.len() != count {
                return Err(count_error(values.len()));
            }
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(ApiError::bad_request(format!("{what}: a value does not fit in FP32")));
            }
            Pixels::Nchw(values)
        }
        (InputData::Uint(values), true) => {
            if values.len() != count {
                return Err(count_error(values.len()));
            }
            let mut px = Vec::with_capacity(count);
            for (i, &v) in values.iter().enumerate() {
                px.push(
                    u8::try_from(v)
                        .map_err(|_| ApiError::bad_request(format!("{what}: value {v} at {i} is not a UINT8")))?,
                );
            }
            Pixels::Rgb8(px)
        }
        (InputData::Fp32(values), false) => {
            if values.len() != count {
                return Err(count_error(values.len()));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(not_finite());
            }
            Pixels::Nchw(values.to_vec())
        }
        (InputData::Uint(_), false) | (InputData::Fp32(_), true) => {
            return Err(ApiError::bad_request(format!(
                "{what}: its contents do not match its datatype {} (uint_contents for UINT8, fp32_contents for FP32)",
                input.datatype
            )))
        }
        (InputData::Missing, _) => return Err(ApiError::bad_request(format!("{what} has no data"))),
    };
    Ok((images, pixels))
}

/// Parses a request body. `header_len` is the `Inference-Header-Content-Length` header:
/// the JSON is the first `header_len` bytes and binary tensor data follows.
pub fn decode_request(
    body: &[u8],
    header_len: Option<usize>,
    model: &ServedModel,
    max_images: usize,
) -> ApiResult<InferRequest> {
    let (json_part, binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(ApiError::bad_request(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: RequestJson = serde_json::from_slice(json_part)
        .map_err(|e| ApiError::bad_request(format!("invalid inference request JSON: {e}")))?;
    let [input] = req.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!(
            "expected exactly one input tensor ({INPUT_UINT8} UINT8 [N,H,W,3] or {INPUT_FP32} FP32 [N,3,H,W]), got {}",
            req.inputs.len()
        )));
    };
    let what = format!("input `{}`", input.name);
    let data = match input.parameters.get("binary_data_size") {
        Some(size) => {
            let size = size
                .as_u64()
                .ok_or_else(|| ApiError::bad_request(format!("{what}: binary_data_size must be a byte count")))?;
            if header_len.is_none() {
                return Err(ApiError::bad_request(format!(
                    "{what} has binary_data_size but the Inference-Header-Content-Length header is missing"
                )));
            }
            if size > binary.len() as u64 {
                return Err(ApiError::bad_request(format!(
                    "{what}: binary data is truncated: {} bytes present, binary_data_size says {size}",
                    binary.len(),
                )));
            }
            if size < binary.len() as u64 {
                return Err(ApiError::bad_request(format!(
                    "{} bytes of binary data follow the last binary input (wrong Inference-Header-Content-Length?)",
                    binary.len() as u64 - size
                )));
            }
            InputData::Raw(binary)
        }
        None => {
            if !binary.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{} bytes of binary data follow the JSON but no input has binary_data_size",
                    binary.len()
                )));
            }
            match &input.data {
                Some(d) => InputData::Numbers(&d.0),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "{what} has neither `data` nor a binary_data_size parameter"
                    )))
                }
            }
        }
    };
    let tensor = InputTensor { name: &input.name, datatype: &input.datatype, shape: &input.shape, data };
    let (images, pixels) = input_pixels(&tensor, model, max_images)?;
    let binary_default = flag(&req.parameters, "binary_data_output")?.unwrap_or(false);
    let outputs = if req.outputs.is_empty() {
        default_outputs(binary_default)
    } else {
        req.outputs
            .iter()
            .map(|o| output_spec(&o.name, &o.parameters, model, binary_default))
            .collect::<ApiResult<Vec<_>>>()?
    };
    Ok(InferRequest { id: req.id, pixels, images, outputs })
}

/// Every output, without classification (what a request that names none gets).
pub fn default_outputs(binary: bool) -> Vec<OutputSpec> {
    OUTPUTS.iter().map(|&name| OutputSpec { name, classification: None, binary }).collect()
}

fn flag(params: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad_request(format!("parameter {key} must be true or false, got {v}"))),
    }
}

/// A requested output by name, with its parameters (`classification`: top-k as strings;
/// `binary_data`: HTTP only).
pub fn output_spec(
    name: &str,
    parameters: &Map<String, Value>,
    model: &ServedModel,
    binary_default: bool,
) -> ApiResult<OutputSpec> {
    let name = OUTPUTS.iter().find(|&&n| n == name).copied().ok_or_else(|| {
        ApiError::bad_request(format!("unknown output `{name}` (this model has {})", OUTPUTS.join(", ")))
    })?;
    let classes = model.model.classes();
    let classification = match parameters.get("classification") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(k) if (1..=classes as u64).contains(&k) => Some(k as usize),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "output `{name}`: classification must be an integer in 1..={classes}, got {v}"
                )))
            }
        },
    };
    let binary = flag(parameters, "binary_data")?.unwrap_or(binary_default);
    Ok(OutputSpec { name, classification, binary })
}

/// A response body; `json_len` is set when binary data follows the JSON (the value of
/// the `Inference-Header-Content-Length` response header).
#[derive(Debug)]
pub struct EncodedResponse {
    /// The bytes to send.
    pub body: Vec<u8>,
    /// Length of the JSON part when binary data follows.
    pub json_len: Option<usize>,
}

/// One answered output tensor, before it is put on either wire.
#[derive(Debug)]
pub struct OutputTensor {
    /// `logits` or `probabilities`.
    pub name: &'static str,
    /// `[images, classes]`, or `[images, k]` for classification strings.
    pub shape: [usize; 2],
    /// The values.
    pub data: OutputData,
    /// Sent as binary data (HTTP); gRPC always sends raw bytes.
    pub binary: bool,
}

/// The values of an [`OutputTensor`].
#[derive(Debug)]
pub enum OutputData {
    /// `FP32`.
    Fp32(Vec<f32>),
    /// `BYTES`: the classification extension's `"score:index:label"` strings.
    Strings(Vec<String>),
}

impl OutputTensor {
    /// The protocol's datatype name.
    pub fn datatype(&self) -> &'static str {
        match self.data {
            OutputData::Fp32(_) => "FP32",
            OutputData::Strings(_) => "BYTES",
        }
    }

    /// The binary form: little-endian FP32, or each string as a 4-byte little-endian
    /// length and its bytes (the protocol's BYTES layout).
    pub fn raw_bytes(&self) -> Vec<u8> {
        match &self.data {
            OutputData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::Strings(strings) => {
                let mut bytes = Vec::new();
                for s in strings {
                    bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    bytes.extend_from_slice(s.as_bytes());
                }
                bytes
            }
        }
    }
}

/// The requested outputs for `logits` (`[images][classes]`).
pub fn output_tensors(model: &ServedModel, req: &InferRequest, logits: &[f32]) -> Vec<OutputTensor> {
    let classes = model.model.classes().max(1);
    let labels = model.labels();
    let wants_probabilities = req.outputs.iter().any(|o| o.name == "probabilities");
    let probabilities: Vec<f32> = if wants_probabilities {
        logits.chunks_exact(classes).flat_map(cifar_sdk::softmax).collect()
    } else {
        Vec::new()
    };
    req.outputs
        .iter()
        .map(|spec| {
            let values = if spec.name == "logits" { logits } else { &probabilities[..] };
            let (shape, data) = match spec.classification {
                Some(k) => (
                    [req.images, k],
                    OutputData::Strings(values.chunks_exact(classes).flat_map(|row| top_k(row, k, labels)).collect()),
                ),
                None => ([req.images, classes], OutputData::Fp32(values.to_vec())),
            };
            OutputTensor { name: spec.name, shape, data, binary: spec.binary }
        })
        .collect()
}

/// Builds the HTTP response for `logits` (`[images][classes]`).
pub fn encode_response(model: &ServedModel, req: &InferRequest, logits: &[f32]) -> EncodedResponse {
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for tensor in output_tensors(model, req, logits) {
        let mut out = json!({ "name": tensor.name, "datatype": tensor.datatype(), "shape": tensor.shape });
        if tensor.binary {
            let bytes = tensor.raw_bytes();
            out["parameters"] = json!({ "binary_data_size": bytes.len() });
            binary.extend_from_slice(&bytes);
        } else {
            out["data"] = match tensor.data {
                OutputData::Fp32(v) => json!(v),
                OutputData::Strings(s) => json!(s),
            };
        }
        outputs.push(out);
    }
    let mut response = json!({
        "model_name": model.name,
        "model_version": model.version_string(),
        "outputs": outputs,
    });
    if let Some(id) = &req.id {
        response["id"] = json!(id);
    }
    let mut body = response.to_string().into_bytes();
    let json_len = (!binary.is_empty() || req.outputs.iter().any(|o| o.binary)).then_some(body.len());
    body.extend_from_slice(&binary);
    EncodedResponse { body, json_len }
}

/// Triton's classification strings for one row: `"score:index:label"`, best first.
pub fn top_k(row: &[f32], k: usize, labels: &[String]) -> Vec<String> {
    cifar_sdk::top_k_indices(row, k)
        .into_iter()
        .map(|i| {
            let score = row.get(i).copied().unwrap_or(0.0);
            let label = labels.get(i).map(String::as_str).unwrap_or("");
            format!("{score}:{i}:{label}")
        })
        .collect()
}

/// The model metadata object (`GET /v2/models/{name}`); `versions` are the served ones.
pub fn model_metadata(model: &ServedModel, versions: &[String]) -> Value {
    let [c, h, w] = model.input_shape();
    let classes = model.model.classes();
    let m = model.model.metadata();
    json!({
        "name": model.name,
        "versions": versions,
        "platform": "cifar",
        "inputs": [
            { "name": INPUT_UINT8, "datatype": "UINT8", "shape": [-1, h, w, c] },
            { "name": INPUT_FP32, "datatype": "FP32", "shape": [-1, c, h, w] },
        ],
        "outputs": OUTPUTS.iter().map(|n| json!({ "name": n, "datatype": "FP32", "shape": [-1, classes] })).collect::<Vec<_>>(),
        "parameters": {
            "note": "send exactly one of the inputs",
            "labels": model.labels(),
            "precision": model.model.precision().to_string(),
            "device": model.model.device().to_string(),
            "device_reason": model.model.device_reason(),
            "digest": model.digest,
            "normalization": { "mean": m.preprocessing.normalization.mean, "std": m.preprocessing.normalization.std },
            "compiled_accuracy": m.quality.compiled_accuracy,
            "validation_images": m.quality.validation_images,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_flattened_from_any_nesting() {
        let d: FlatData = serde_json::from_str("[[1, 2], [3, [4.5, -6]]]").unwrap();
        assert_eq!(d.0, vec![1.0, 2.0, 3.0, 4.5, -6.0]);
        let d: FlatData = serde_json::from_str("7").unwrap();
        assert_eq!(d.0, vec![7.0]);
        assert!(serde_json::from_str::<FlatData>("[1, \"x\"]").is_err());
        assert!(serde_json::from_str::<FlatData>("[1, null]").is_err());
    }

    #[test]
    fn classification_strings_are_best_first() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(top_k(&[0.1, 2.5, -1.0], 2, &labels), vec!["2.5:1:b", "0.1:0:a"]);
    }
}
