//! The metadata schema of a `.cifar` file: the execution graph and everything a user of
//! the model needs to know about it (labels, preprocessing, provenance, quality, the
//! drift reference). Each part is stored as a JSON string under its own `__metadata__`
//! key, so any safetensors tool can list the tensors and print the metadata.

use serde::{Deserialize, Serialize};

use crate::preprocess::Normalization;

/// The `format` metadata value of every model file.
pub const FORMAT_NAME: &str = "cifar-edge-model";
/// The format version this SDK writes. Readers take [`OLDEST_FORMAT_VERSION`] to this
/// one and refuse others.
///
/// - 1: weights as plain `[out][in * kh * kw]` rows, 8-bit int8 weights.
/// - 2: weights packed in the CPU kernels' layout, 7-bit int8 weights
///   ([`super::layers`]); activations NHWC.
/// - 3: as 2, but depthwise layers' int8 weights use 8 bits
///   ([`super::layers::LayerShape::weight_max`]). A version-2 file is a valid
///   version-3 file.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version this SDK reads.
pub const OLDEST_FORMAT_VERSION: u32 = 2;

/// Metadata keys.
pub mod keys {
    /// Always [`super::FORMAT_NAME`].
    pub const FORMAT: &str = "format";
    /// [`super::FORMAT_VERSION`] as a decimal string.
    pub const VERSION: &str = "format_version";
    /// The execution graph ([`super::Graph`]).
    pub const GRAPH: &str = "graph";
    /// Class labels (a JSON array of strings, in class-index order).
    pub const LABELS: &str = "labels";
    /// [`super::Preprocessing`].
    pub const PREPROCESSING: &str = "preprocessing";
    /// [`super::Provenance`].
    pub const PROVENANCE: &str = "provenance";
    /// [`super::Quality`].
    pub const QUALITY: &str = "quality";
    /// [`crate::drift::DriftReference`] (optional).
    pub const DRIFT: &str = "drift_reference";
    /// `sha256:<hex>` over the other metadata entries and every tensor.
    pub const CHECKSUM: &str = "checksum";
}

/// Numeric precision of a compiled graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and activations.
    F32,
    /// int8 weights (symmetric, per output channel), u8 activations (per tensor, with a
    /// zero point), i32 accumulation.
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        })
    }
}

/// An activation fused into the op that produces a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// GELU, tanh form: `x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))` (what the trainer uses).
    Gelu,
    /// `min(max(x, 0), 6)` (ONNX `Clip(0, 6)`, MobileNetV2's activation).
    Relu6,
    /// `x * min(max(x + 3, 0), 6) / 6` (PyTorch's `hardswish`, ONNX `HardSwish`).
    Hardswish,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
}

impl Activation {
    /// Every activation, in declaration order (for tests and `--help` texts).
    pub const ALL: [Activation; 6] = [
        Activation::None,
        Activation::Relu,
        Activation::Gelu,
        Activation::Relu6,
        Activation::Hardswish,
        Activation::Sigmoid,
    ];
}

/// Affine quantization of a u8 tensor: `real = scale * (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    /// Step between adjacent codes; finite and positive.
    pub scale: f32,
    /// The code that represents 0.0 exactly (so zero padding is exact).
    pub zero_point: u8,
}

pub use crate::ops::{Add, AvgPool, Conv2d, Flatten, GlobalAvgPool, GlobalMaxPool, Linear, MaxPool, Op, Scale};

/// One step of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique name; also the prefix of the node's tensors.
    pub name: String,
    /// Names of the values it reads: `input` or earlier nodes.
    pub inputs: Vec<String>,
    /// What it computes.
    pub op: Op,
    /// Quantization of its output (int8 graphs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantParams>,
}

/// The execution graph: nodes in execution order (every input defined before use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    /// Precision of the weights and kernels.
    pub precision: Precision,
    /// Input shape `[channels, height, width]` (normalized image, NCHW without the batch).
    pub input: [usize; 3],
    /// Quantization of the normalized input (int8 graphs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_quant: Option<QuantParams>,
    /// Bits of the int8 weights on the tile kernels (int8 graphs): 7, see
    /// [`super::layers`] (depthwise layers' 8 bits follow from their shapes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_bits: Option<u8>,
    /// The nodes, in execution order.
    pub nodes: Vec<Node>,
    /// The node whose value is the output (logits).
    pub output: String,
}

/// The name by which nodes refer to the graph input.
pub const INPUT_NAME: &str = "input";

/// How raw images become the model's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// `[height, width]` the images are resized to.
    pub input_size: [usize; 2],
    /// Channel order of the pixels (always `rgb`).
    pub color: String,
    /// Per-channel normalization after scaling pixels to `[0, 1]`.
    pub normalization: Normalization,
    /// Resampling filter for images of another size.
    pub resize: String,
}

impl Default for Preprocessing {
    fn default() -> Self {
        Self {
            input_size: [crate::INPUT_SIZE, crate::INPUT_SIZE],
            color: "rgb".into(),
            normalization: Normalization::CIFAR10,
            resize: "triangle".into(),
        }
    }
}

/// Where a model came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Provenance {
    /// Content digest of the training dataset.
    pub dataset_digest: String,
    /// The resolved training config (TOML).
    pub training_config: String,
    /// Version of the trainer that compiled the model.
    pub trainer_version: String,
    /// Source revision (git) of the trainer, when known.
    pub source_revision: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The run directory the model was compiled from.
    pub run: String,
}

/// Measured quality at compile time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Quality {
    /// Validation images used for the numbers below.
    pub validation_images: usize,
    /// Accuracy of the training checkpoint (trainer, f32, no TTA).
    pub checkpoint_accuracy: f64,
    /// Accuracy of this compiled file through the SDK.
    pub compiled_accuracy: f64,
    /// Calibration method of int8 models (`minmax` or `percentile`), empty for f32.
    pub calibration: String,
    /// Calibration images (int8).
    pub calibration_images: usize,
    /// Multiply-accumulates per image ([`super::graph_cost`]); 0 in files from before
    /// this field.
    pub macs: u64,
    /// Weights and biases as stored (a layer without a bias stores zeros).
    pub parameters: u64,
    /// For a pruned model: the multiply-accumulates per image of the model it was pruned
    /// from (its parent run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpruned_macs: Option<u64>,
    /// For a pruned model: its parent's weights and biases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpruned_parameters: Option<u64>,
}
