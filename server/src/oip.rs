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

/// Parses a request body. `header_len` is the `Inference-Header-Content-Length` header:
/// the JSON is the first `header_len` bytes and binary tensor data follows.
pub fn decode_request(
    body: &[u8],
    header_len: Option<usize>,
    model: &ServedModel,
    max_images: usize,
) -> ApiResult<InferRequest> {
    let (json_part, mut binary) = match header_len {
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
    let [c, h, w] = model.input_shape();
    let what = format!("input `{}`", input.name);
    let (images, uint8) = match (input.datatype.as_str(), input.shape.as_slice()) {
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
    let elem = if uint8 { 1 } else { 4 };
    let pixels = match input.parameters.get("binary_data_size") {
        Some(size) => {
            let size = size
                .as_u64()
                .ok_or_else(|| ApiError::bad_request(format!("{what}: binary_data_size must be a byte count")))?;
            if size != (count * elem) as u64 {
                return Err(ApiError::bad_request(format!(
                    "{what}: binary_data_size is {size} bytes but shape {:?} {} needs {}",
                    input.shape,
                    input.datatype,
                    count * elem
                )));
            }
            if header_len.is_none() {
                return Err(ApiError::bad_request(format!(
                    "{what} has binary_data_size but the Inference-Header-Content-Length header is missing"
                )));
            }
            if binary.len() < count * elem {
                return Err(ApiError::bad_request(format!(
                    "{what}: binary data is truncated: {} bytes present, {} expected",
                    binary.len(),
                    count * elem
                )));
            }
            let (mine, rest) = binary.split_at(count * elem);
            binary = rest;
            if uint8 {
                Pixels::Rgb8(mine.to_vec())
            } else {
                let values: Vec<f32> =
                    mine.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(ApiError::bad_request(format!("{what}: FP32 data contains NaN or infinity")));
                }
                Pixels::Nchw(values)
            }
        }
        None => {
            let data = input.data.as_ref().ok_or_else(|| {
                ApiError::bad_request(format!("{what} has neither `data` nor a binary_data_size parameter"))
            })?;
            if data.0.len() != count {
                return Err(ApiError::bad_request(format!(
                    "{what}: {} values for shape {:?} ({count} expected)",
                    data.0.len(),
                    input.shape
                )));
            }
            if uint8 {
                let mut px = Vec::with_capacity(count);
                for (i, &v) in data.0.iter().enumerate() {
                    if !(0.0..=255.0).contains(&v) || v.fract() != 0.0 {
                        return Err(ApiError::bad_request(format!("{what}: value {v} at {i} is not a UINT8")));
                    }
                    px.push(v as u8);
                }
                Pixels::Rgb8(px)
            } else {
                let values: Vec<f32> = data.0.iter().map(|&v| v as f32).collect();
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(ApiError::bad_request(format!("{what}: a value does not fit in FP32")));
                }
                Pixels::Nchw(values)
            }
        }
    };
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the last binary input (wrong Inference-Header-Content-Length?)",
            binary.len()
        )));
    }
    let binary_default = flag(&req.parameters, "binary_data_output")?.unwrap_or(false);
    let outputs = if req.outputs.is_empty() {
        OUTPUTS.iter().map(|&name| OutputSpec { name, classification: None, binary: binary_default }).collect()
    } else {
        req.outputs.iter().map(|o| output_spec(o, model, binary_default)).collect::<ApiResult<Vec<_>>>()?
    };
    Ok(InferRequest { id: req.id, pixels, images, outputs })
}

fn flag(params: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad_request(format!("parameter {key} must be true or false, got {v}"))),
    }
}

fn output_spec(o: &OutputJson, model: &ServedModel, binary_default: bool) -> ApiResult<OutputSpec> {
    let name = OUTPUTS.iter().find(|&&n| n == o.name).copied().ok_or_else(|| {
        ApiError::bad_request(format!("unknown output `{}` (this model has {})", o.name, OUTPUTS.join(", ")))
    })?;
    let classes = model.model.classes();
    let classification = match o.parameters.get("classification") {
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
    let binary = flag(&o.parameters, "binary_data")?.unwrap_or(binary_default);
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

/// Builds the response for `logits` (`[images][classes]`).
pub fn encode_response(model: &ServedModel, req: &InferRequest, logits: &[f32]) -> EncodedResponse {
    let classes = model.model.classes().max(1);
    let labels = model.model.labels();
    let probabilities: Vec<f32> = logits.chunks_exact(classes).flat_map(cifar_sdk::softmax).collect();
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for spec in &req.outputs {
        let values = if spec.name == "logits" { logits } else { &probabilities[..] };
        let (datatype, shape, data): (&str, Vec<usize>, Value);
        let mut bytes = Vec::new();
        match spec.classification {
            Some(k) => {
                let strings: Vec<String> = values.chunks_exact(classes).flat_map(|row| top_k(row, k, labels)).collect();
                datatype = "BYTES";
                shape = vec![req.images, k];
                if spec.binary {
                    for s in &strings {
                        bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
                        bytes.extend_from_slice(s.as_bytes());
                    }
                }
                data = json!(strings);
            }
            None => {
                datatype = "FP32";
                shape = vec![req.images, classes];
                if spec.binary {
                    bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                }
                data = json!(values);
            }
        }
        let mut out = json!({ "name": spec.name, "datatype": datatype, "shape": shape });
        if spec.binary {
            out["parameters"] = json!({ "binary_data_size": bytes.len() });
            binary.extend_from_slice(&bytes);
        } else {
            out["data"] = data;
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

/// The model metadata object (`GET /v2/models/{name}`).
pub fn model_metadata(model: &ServedModel) -> Value {
    let [c, h, w] = model.input_shape();
    let classes = model.model.classes();
    let m = model.model.metadata();
    json!({
        "name": model.name,
        "versions": [model.version_string()],
        "platform": "cifar",
        "inputs": [
            { "name": INPUT_UINT8, "datatype": "UINT8", "shape": [-1, h, w, c] },
            { "name": INPUT_FP32, "datatype": "FP32", "shape": [-1, c, h, w] },
        ],
        "outputs": OUTPUTS.iter().map(|n| json!({ "name": n, "datatype": "FP32", "shape": [-1, classes] })).collect::<Vec<_>>(),
        "parameters": {
            "note": "send exactly one of the inputs",
            "labels": model.model.labels(),
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
