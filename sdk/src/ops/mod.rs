//! The operations of the execution graph, one module each: its parameters (as stored in
//! the file), its shape rule, the weighted layer it owns (if any), its CPU
//! implementation and its device (candle) implementation. [`Op`] is generated from the
//! registry at the bottom of this file: adding an op is a new module plus one line
//! there (see `sdk/README.md`).

pub mod add;
pub mod avg_pool;
pub mod conv2d;
pub mod flatten;
pub mod global_avg_pool;
pub mod global_max_pool;
pub mod linear;
pub mod max_pool;
mod rows;
pub mod scale;

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::artifact::layers::{FloatLayer, LayerShape};
use crate::artifact::validate::{Shape, MAX_DIM};
use crate::artifact::Activation;
use crate::artifact::Graph;
use crate::backend::cpu::{CpuBuild, CpuOp};
use crate::{Error, Result};

/// What each op defines.
pub(crate) trait OpSpec: std::fmt::Debug + Sync {
    /// Inputs it reads.
    fn arity(&self) -> usize {
        1
    }
    /// Its output shape for `inputs` (already of the right count), or an error naming
    /// `node` and what is wrong.
    fn output_shape(&self, node: &str, inputs: &[Shape]) -> Result<Shape>;
    /// The weighted layer it owns, for its input shapes.
    fn layer(&self, _inputs: &[Shape]) -> Option<LayerShape> {
        None
    }
    /// The padding its input must carry around each plane (convolutions).
    fn input_border(&self) -> usize {
        0
    }
    /// Its fused activation.
    fn act(&self) -> Activation;
    /// The op on one image in f32 NCHW, as plainly as possible: the reference every
    /// backend is tested against (it shares no code with them). `inputs` are the input
    /// values with their shapes, `layer` the op's weights in logical layout.
    fn reference(&self, inputs: &[(&[f32], Shape)], layer: Option<&FloatLayer>, out: Shape) -> Vec<f32>;
    /// Its CPU implementation.
    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>>;
    /// Its device implementation.
    #[cfg(feature = "candle")]
    fn device(&self, b: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>>;
}

/// Output size of a sliding window along one axis, or an error naming the node.
pub(crate) fn window(node: &str, size: usize, k: usize, s: usize, p: usize) -> Result<usize> {
    if k == 0 || s == 0 || k > MAX_DIM || s > MAX_DIM || p > MAX_DIM {
        return Err(Error::graph(node, format!("kernel {k}, stride {s}, padding {p}: kernel and stride must be >= 1")));
    }
    if p >= k {
        return Err(Error::graph(node, format!("padding {p} must be smaller than the kernel {k}")));
    }
    let padded = size + 2 * p;
    if padded < k {
        return Err(Error::graph(node, format!("kernel {k} is larger than the padded input {padded}")));
    }
    Ok((padded - k) / s + 1)
}

/// The output shape of a pooling window over the first input.
fn pool_shape(
    node: &str,
    inputs: &[Shape],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Shape> {
    let [c, h, w] = first(inputs);
    Ok([c, window(node, h, kernel[0], stride[0], padding[0])?, window(node, w, kernel[1], stride[1], padding[1])?])
}

/// The reference of max (`max = true`) or average pooling (padded cells count as 0, and
/// are skipped by the max), then `act`.
#[allow(clippy::too_many_arguments)]
fn pool_reference(
    inputs: &[(&[f32], Shape)],
    out: Shape,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    act: Activation,
    max: bool,
) -> Vec<f32> {
    let (x, s) = inputs.first().copied().unwrap_or((&[], [0; 3]));
    let [c, oh, ow] = out;
    let mut y = Vec::with_capacity(c * oh * ow);
    for ch in 0..c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0);
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                        let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                        if let Some(v) = nchw(x, s, ch, iy, ix) {
                            m = m.max(v);
                            sum += v;
                        }
                    }
                }
                let v = if max { m } else { sum / (kernel[0] * kernel[1]) as f32 };
                y.push(crate::kernels::act::activate(act, v));
            }
        }
    }
    y
}

/// The first input's shape.
fn first(inputs: &[Shape]) -> Shape {
    inputs.first().copied().unwrap_or([0; 3])
}

macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident($module:ident::$ty:ident) = $kind:literal,)*) => {
        $(pub use $module::$ty;)*

        /// The operations of the execution graph, stored as `{"type": "<kind>", ...params}`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum Op {
            $($(#[$doc])* #[serde(rename = $kind)] $variant($ty),)*
        }

        impl Op {
            /// The op's name as stored in the file.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Op::$variant(_) => $kind,)*
                }
            }

            pub(crate) fn spec(&self) -> &dyn OpSpec {
                match self {
                    $(Op::$variant(o) => o,)*
                }
            }
        }
    };
}

registry! {
    /// A 2-D convolution ([`conv2d`]).
    Conv2d(conv2d::Conv2d) = "conv2d",
    /// A fully connected layer ([`linear`]).
    Linear(linear::Linear) = "linear",
    /// Max pooling ([`max_pool`]).
    MaxPool(max_pool::MaxPool) = "max_pool",
    /// Average pooling ([`avg_pool`]).
    AvgPool(avg_pool::AvgPool) = "avg_pool",
    /// Mean over each channel's plane ([`global_avg_pool`]).
    GlobalAvgPool(global_avg_pool::GlobalAvgPool) = "global_avg_pool",
    /// Max over each channel's plane ([`global_max_pool`]).
    GlobalMaxPool(global_max_pool::GlobalMaxPool) = "global_max_pool",
    /// Elementwise sum of two values ([`add`]).
    Add(add::Add) = "add",
    /// `[c, h, w] -> [c * h * w, 1, 1]` ([`flatten`]).
    Flatten(flatten::Flatten) = "flatten",
    /// Multiplication by a constant ([`scale`]).
    Scale(scale::Scale) = "scale",
}

impl Op {
    /// Whether the op owns weight tensors.
    pub fn has_weights(&self) -> bool {
        self.spec().layer(&[[1, 1, 1]]).is_some()
    }

    /// Its fused activation.
    pub fn act(&self) -> Activation {
        self.spec().act()
    }

    /// The weighted layer it owns for input shapes `inputs`.
    pub fn layer(&self, inputs: &[Shape]) -> Option<LayerShape> {
        self.spec().layer(inputs)
    }

    /// Inputs it reads.
    pub fn arity(&self) -> usize {
        self.spec().arity()
    }

    /// Its output shape (see the op's module).
    pub fn output_shape(&self, node: &str, inputs: &[Shape]) -> Result<Shape> {
        self.spec().output_shape(node, inputs)
    }
}

/// Value `(ch, y, x)` of a `[c, h, w]` NCHW value, or `None` outside the plane (padding).
pub(crate) fn nchw(v: &[f32], s: Shape, ch: usize, y: isize, x: isize) -> Option<f32> {
    let [_, h, w] = s;
    let (y, x) = (usize::try_from(y).ok()?, usize::try_from(x).ok()?);
    if y >= h || x >= w {
        return None;
    }
    v.get((ch * h + y) * w + x).copied()
}

/// Runs the reference implementations of `graph`'s ops on one normalized NCHW image;
/// `post(node, value)` may rewrite each node's output (the tests' fake quantization).
/// Returns the output node's value. The tests compare every backend with this.
#[doc(hidden)]
pub fn reference_forward(
    graph: &Graph,
    layers: &HashMap<String, FloatLayer>,
    image: &[f32],
    post: &mut dyn FnMut(usize, &mut Vec<f32>),
) -> Result<Vec<f32>> {
    let info = crate::artifact::validate::validate_graph(graph)?;
    let mut values: Vec<(Vec<f32>, Shape)> = vec![(image.to_vec(), graph.input)];
    for (i, (node, ni)) in graph.nodes.iter().zip(&info.nodes).enumerate() {
        let inputs: Vec<(&[f32], Shape)> = ni
            .inputs
            .iter()
            .map(|&v| values.get(v).map(|(x, s)| (x.as_slice(), *s)))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Internal(format!("{}: input not computed", node.name)))?;
        let mut y = node.op.spec().reference(&inputs, layers.get(&node.name), ni.shape);
        post(i, &mut y);
        values.push((y, ni.shape));
    }
    values.get(info.output + 1).map(|v| v.0.clone()).ok_or_else(|| Error::Internal("no output".into()))
}
