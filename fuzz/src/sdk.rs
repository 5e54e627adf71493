//! `.cifar` model files: the SDK's reader, validator and CPU engine.

use std::collections::HashMap;

use cifar_sdk::artifact::{checksum, keys, DType};
use cifar_sdk::{DevicePolicy, Model, ModelOptions};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

/// The tiny fixture models (airbench 8/16/32): small enough to mutate quickly.
pub const TINY_INT8: &[u8] = include_bytes!("../../fixtures/models/tiny-int8.cifar");
/// The f32 twin of [`TINY_INT8`].
pub const TINY_F32: &[u8] = include_bytes!("../../fixtures/models/tiny-f32.cifar");

/// The options every target opens models with: the CPU, one thread (no thread start per
/// input), batches of up to 4.
pub fn options() -> ModelOptions {
    ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 4 }
}

/// A model that validated must run: two images of its input size (a gradient and its
/// negative) give `classes` logits each, and classify.
pub(crate) fn run_model(model: &std::sync::Arc<Model>) {
    let mut session = model.session().unwrap_or_else(|e| panic!("a model that validated has no session: {e}"));
    let [_, h, w] = model.input_shape();
    let image = h * w * 3;
    let pixels: Vec<u8> =
        (0..2 * image).map(|i| if i < image { (i % 251) as u8 } else { 255 - (i % 251) as u8 }).collect();
    match session.logits_rgb8(&pixels, 2) {
        Ok(logits) => assert_eq!(logits.len(), 2 * model.classes(), "logits for 2 images"),
        Err(e) => panic!("a model that validated failed to run: {e}"),
    }
    if let Err(e) = session.classify_rgb8(&pixels[..image], 1, 3) {
        panic!("a model that validated failed to classify: {e}");
    }
}

/// Target `model_file`: any bytes as a model file. Whatever validates runs. Returns
/// whether the file validated.
pub fn model_file(data: &[u8]) -> bool {
    match Model::from_bytes(data, &options()) {
        Ok(model) => {
            run_model(&model);
            true
        }
        Err(_) => false,
    }
}

/// Target `model_graph`: a fixture model with its header rewritten and its checksum
/// recomputed, so that the mutations reach the graph validator and the engine instead of
/// stopping at the checksum. Input: one byte choosing the base (even: tiny int8, odd:
/// tiny f32), then up to four sections separated by 0xFF (never in UTF-8): the graph
/// JSON, the preprocessing JSON, the labels JSON (an empty section keeps the base's), and
/// tensor edits of 4 bytes each (tensor index, offset as u16 LE, XOR mask). Returns
/// whether the rebuilt file validated.
pub fn model_graph(data: &[u8]) -> bool {
    rebuild(data).is_some_and(|bytes| model_file(&bytes))
}

/// The file that [`model_graph`] opens for `data` (None where the input cannot make
/// one: a section that is not UTF-8).
pub fn rebuild(data: &[u8]) -> Option<Vec<u8>> {
    let (&base, rest) = data.split_first()?;
    let base = if base & 1 == 0 { TINY_INT8 } else { TINY_F32 };
    let mut sections = rest.splitn(4, |&b| b == 0xFF);
    let mut header = header_of(base);
    for key in [keys::GRAPH, keys::PREPROCESSING, keys::LABELS] {
        match sections.next() {
            Some(s) if !s.is_empty() => {
                header.insert(key.to_string(), std::str::from_utf8(s).ok()?.to_string());
            }
            _ => {}
        }
    }
    let parsed = SafeTensors::deserialize(base).ok()?;
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        parsed.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(edits) = sections.next() {
        for e in edits.chunks_exact(4) {
            let Some(t) = tensors.get_mut(usize::from(e[0]) % parsed.len().max(1)) else { continue };
            let len = t.3.len();
            if len > 0 {
                t.3[usize::from(u16::from_le_bytes([e[1], e[2]])) % len] ^= e[3];
            }
        }
    }
    let typed: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| DType::from_safetensors(*d).map(|d| (n.as_str(), d, s.as_slice(), b.as_slice())))
        .collect::<Option<_>>()?;
    let sum = checksum(header.iter().map(|(k, v)| (k.as_str(), v.as_str())), typed.into_iter());
    header.insert(keys::CHECKSUM.to_string(), sum);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<_, _>>()
        .ok()?;
    safetensors::serialize(views, Some(header)).ok()
}

/// The `__metadata__` map of a valid file.
pub fn header_of(file: &[u8]) -> HashMap<String, String> {
    SafeTensors::read_metadata(file).ok().and_then(|(_, m)| m.metadata().clone()).unwrap_or_default()
}
