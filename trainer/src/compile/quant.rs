//! int8 quantization: per-output-channel symmetric weights, per-tensor u8 activations
//! calibrated on training images (min/max, percentiles or least squared error), and the writers for both
//! precisions.

use std::sync::Arc;

use anyhow::Result;
use cifar_sdk::artifact::{layers, ArtifactWriter, ModelMetadata, Precision};
use cifar_sdk::{Model, QuantParams};

use super::fold::FloatModel;
use crate::data::Split;

/// Activation statistics per node.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    /// An evenly strided sample of each node's values (for percentiles).
    pub samples: Vec<Vec<f32>>,
}

/// How activation ranges are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// The 0.01% and 99.99% percentiles: a few outliers no longer stretch the scale.
    Percentile,
    /// Per node, the percentile range (from min/max to 1%/99%) whose 8-bit rounding of
    /// the sampled values has the least squared error: clips long tails where they cost
    /// more resolution than they are worth (depthwise and linear-bottleneck outputs).
    Mse,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile => "percentile",
            Method::Mse => "mse",
        }
    }
}

const SAMPLE_STRIDE: usize = 7;
const MAX_SAMPLES: usize = 2_000_000;

/// Runs the f32 `model` over `indices` of `split` and records every node's outputs.
pub fn calibrate(model: &Arc<Model>, split: &Split, indices: &[u32]) -> Result<Calibration> {
    let nodes = model.metadata().graph.nodes.len();
    let mut cal = Calibration {
        min: vec![f32::INFINITY; nodes],
        max: vec![f32::NEG_INFINITY; nodes],
        samples: vec![Vec::new(); nodes],
    };
    let mut session = model.session()?;
    let norm = model.metadata().preprocessing.normalization.affine();
    for chunk in indices.chunks(session.capacity()) {
        let (x, _) = crate::data::loader::fill(split, chunk, |_| crate::data::loader::View::default(), &norm);
        let mut observe = |node: usize, v: &[f32]| {
            let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            cal.min[node] = cal.min[node].min(lo);
            cal.max[node] = cal.max[node].max(hi);
            let s = &mut cal.samples[node];
            if s.len() < MAX_SAMPLES {
                s.extend(v.iter().step_by(SAMPLE_STRIDE).take(MAX_SAMPLES - s.len()));
            }
        };
        session.run_observed(&x, chunk.len(), &mut observe)?;
    }
    Ok(cal)
}

fn percentile(sorted: &[f32], p: f64) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Output quantization of every node.
pub fn activation_quant(cal: &Calibration, method: Method) -> Vec<QuantParams> {
    (0..cal.min.len())
        .map(|i| match method {
            Method::MinMax => QuantParams::from_range(cal.min[i], cal.max[i]),
            Method::Percentile => {
                let mut s = cal.samples[i].clone();
                s.sort_unstable_by(f32::total_cmp);
                QuantParams::from_range(percentile(&s, 1e-4), percentile(&s, 1.0 - 1e-4))
            }
            Method::Mse => least_squared_error(&cal.samples[i], (cal.min[i], cal.max[i])),
        })
        .collect()
}

/// The parameters of [`Method::Mse`] for one node's sampled values and observed range.
fn least_squared_error(samples: &[f32], (min, max): (f32, f32)) -> QuantParams {
    // A strided subsample keeps the search cheap (the full range is the first candidate).
    let step = samples.len().div_ceil(200_000).max(1);
    let mut s: Vec<f32> = samples.iter().step_by(step).copied().collect();
    s.sort_unstable_by(f32::total_cmp);
    let error = |q: QuantParams| -> f64 {
        let inv = 1.0 / q.scale;
        let zp = f32::from(q.zero_point);
        s.iter()
            .map(|&x| {
                let code = (x * inv + zp).round().clamp(0.0, 255.0);
                let d = (code - zp) * q.scale - x;
                f64::from(d * d)
            })
            .sum()
    };
    [0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
        .into_iter()
        .map(|p| if p == 0.0 { (min, max) } else { (percentile(&s, p), percentile(&s, 1.0 - p)) })
        .map(|(lo, hi)| QuantParams::from_range(lo, hi))
        .map(|q| (error(q), q))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(QuantParams::from_range(0.0, 0.0), |(_, q)| q)
}

/// The exact range of normalized pixels: every channel's `(0 - mean) / std` to `(1 - mean) / std`.
pub fn input_quant(norm: &cifar_sdk::Normalization) -> QuantParams {
    let lo = (0..3).map(|c| -norm.mean[c] / norm.std[c]).fold(f32::INFINITY, f32::min);
    let hi = (0..3).map(|c| (1.0 - norm.mean[c]) / norm.std[c]).fold(f32::NEG_INFINITY, f32::max);
    QuantParams::from_range(lo, hi)
}

/// The f32 model file.
pub fn f32_writer(float: &FloatModel, mut meta: ModelMetadata) -> Result<ArtifactWriter> {
    meta.graph = float.graph.clone();
    let mut w = ArtifactWriter::new(meta);
    for (name, l) in &float.layers {
        l.write(name, &mut w)?;
    }
    Ok(w)
}

/// The int8 model file: weights quantized per output channel to 7 bits
/// ([`cifar_sdk::artifact::layers`]); `quant[i]` is node `i`'s output encoding (the
/// output node keeps f32 logits).
pub fn int8_writer(
    float: &FloatModel,
    input: QuantParams,
    quant: &[QuantParams],
    mut meta: ModelMetadata,
) -> Result<ArtifactWriter> {
    let mut graph = float.graph.clone();
    graph.precision = Precision::Int8;
    graph.weight_bits = Some(layers::WEIGHT_BITS);
    graph.input_quant = Some(input);
    let output = graph.output.clone();
    for (node, &q) in graph.nodes.iter_mut().zip(quant) {
        node.quant = if node.name == output && node.op.has_weights() { None } else { Some(q) };
    }
    meta.graph = graph;
    let mut w = ArtifactWriter::new(meta);
    for (name, l) in &float.layers {
        l.quantize().write(name, &mut w)?;
    }
    Ok(w)
}
