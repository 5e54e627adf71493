//! The graph turned into kernels: each node resolved once, when a model is opened, into
//! the parameters its kernel needs (weight locations in the file, windows, fused
//! requantization constants, lookup tables). Running a node then needs no lookups by
//! name and no allocation.

use std::ops::Range;

use crate::artifact::validate::NodeInfo;
use crate::artifact::{Activation, Artifact, Op, Precision, QuantParams};
use crate::kernels::act::requant_lut;
use crate::kernels::Window;
use crate::{Error, Result};

/// A convolution (a linear layer is a 1x1 convolution over a 1x1 plane).
#[derive(Debug, Clone)]
pub(crate) struct ConvKernel {
    pub win: Window,
    pub groups: usize,
    pub cin: usize,
    pub cout: usize,
    pub act: Activation,
    /// Byte range of the weight (`[cout][cin/groups*kh*kw]`, f32 or i8) in the file.
    pub weight: Range<usize>,
    /// Byte range of the f32 bias.
    pub bias: Range<usize>,
    /// int8 only: `y = acc * mult[o] + offset[o]` turns the i32 accumulator into the
    /// real pre-activation value (input scale x weight scale; bias minus the input
    /// zero point's contribution).
    pub mult: Vec<f32>,
    pub offset: Vec<f32>,
    /// int8 only: the code padding is filled with (the input zero point).
    pub pad: u8,
    /// int8 only: the output encoding (`None`: the node writes f32 logits).
    pub out_quant: Option<QuantParams>,
}

impl ConvKernel {
    /// Whether the input can be used as the im2col matrix directly.
    pub fn is_pointwise(&self) -> bool {
        self.win.kernel == [1, 1] && self.win.stride == [1, 1] && self.win.padding == [0, 0] && self.groups == 1
    }

    /// Rows of one group's im2col matrix.
    pub fn k(&self) -> usize {
        self.cin / self.groups.max(1) * self.win.kernel[0] * self.win.kernel[1]
    }
}

/// One node, ready to run.
#[derive(Debug, Clone)]
pub(crate) enum Kernel {
    Conv(ConvKernel),
    MaxPool { win: Window, act: Activation, lut: Option<Box<[u8; 256]>> },
    AvgPool { win: Window, act: Activation, quant: Option<(QuantParams, QuantParams)> },
    Add { act: Activation, quant: Option<(QuantParams, QuantParams, QuantParams)> },
    Flatten,
    Scale { factor: f32, act: Activation, lut: Option<Box<[u8; 256]>> },
}

/// A kernel with its value shapes.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub kernel: Kernel,
    pub info: NodeInfo,
}

fn range(a: &Artifact, name: &str) -> Result<Range<usize>> {
    let t = a.tensors.get(name).ok_or_else(|| Error::tensor(name, "missing"))?;
    Ok(t.offset..t.offset + t.len)
}

fn window(
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Window {
    Window { in_hw, out_hw, kernel, stride, padding }
}

/// Resolves every node of a validated artifact.
pub(crate) fn build(a: &Artifact) -> Result<Vec<Step>> {
    let g = &a.metadata.graph;
    let int8 = g.precision == Precision::Int8;
    let quant_of = |v: usize| -> Option<QuantParams> {
        if v == 0 {
            g.input_quant
        } else {
            g.nodes.get(v - 1).and_then(|n| n.quant)
        }
    };
    let mut steps = Vec::with_capacity(g.nodes.len());
    for (node, info) in g.nodes.iter().zip(&a.info.nodes) {
        let in_quant: Vec<QuantParams> = if int8 {
            info.inputs
                .iter()
                .map(|&v| quant_of(v).ok_or_else(|| Error::graph(&node.name, "reads a value without quantization")))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let [c, h, w] = info.input_shapes.first().copied().unwrap_or([0; 3]);
        let [_, oh, ow] = info.shape;
        let q_in = in_quant.first().copied();
        let lut = |factor: f32, act: Activation| -> Option<Box<[u8; 256]>> {
            match (q_in, node.quant) {
                (Some(i), Some(o)) => Some(Box::new(requant_lut(i, factor, act, o))),
                _ => None,
            }
        };
        let conv = |win: Window, groups: usize, cout: usize, act: Activation| -> Result<ConvKernel> {
            let n = &node.name;
            let mut k = ConvKernel {
                win,
                groups,
                cin: c,
                cout,
                act,
                weight: range(a, &format!("{n}.weight"))?,
                bias: range(a, &format!("{n}.bias"))?,
                mult: Vec::new(),
                offset: Vec::new(),
                pad: 0,
                out_quant: node.quant,
            };
            if let Some(qi) = q_in {
                let scale = a.f32s(&format!("{n}.weight_scale"))?;
                let sum = a.i32s(&format!("{n}.weight_sum"))?;
                let bias = a.f32s(&format!("{n}.bias"))?;
                k.mult = scale.iter().map(|s| s * qi.scale).collect();
                k.offset = bias
                    .iter()
                    .zip(sum)
                    .zip(&k.mult)
                    .map(|((b, &s), m)| b - m * (f32::from(qi.zero_point) * s as f32))
                    .collect();
                k.pad = qi.zero_point;
            }
            Ok(k)
        };
        let kernel = match &node.op {
            Op::Conv2d(cv) => Kernel::Conv(conv(
                window([h, w], [oh, ow], cv.kernel, cv.stride, cv.padding),
                cv.groups,
                cv.out_channels,
                cv.act,
            )?),
            Op::Linear(l) => {
                Kernel::Conv(conv(window([1, 1], [1, 1], [1, 1], [1, 1], [0, 0]), 1, l.out_features, l.act)?)
            }
            Op::MaxPool(p) => Kernel::MaxPool {
                win: window([h, w], [oh, ow], p.kernel, p.stride, p.padding),
                act: p.act,
                lut: lut(1.0, p.act),
            },
            Op::GlobalMaxPool { act } => {
                Kernel::MaxPool { win: window([h, w], [1, 1], [h, w], [1, 1], [0, 0]), act: *act, lut: lut(1.0, *act) }
            }
            Op::AvgPool(p) => Kernel::AvgPool {
                win: window([h, w], [oh, ow], p.kernel, p.stride, p.padding),
                act: p.act,
                quant: q_in.zip(node.quant),
            },
            Op::GlobalAvgPool { act } => Kernel::AvgPool {
                win: window([h, w], [1, 1], [h, w], [1, 1], [0, 0]),
                act: *act,
                quant: q_in.zip(node.quant),
            },
            Op::Add { act } => Kernel::Add {
                act: *act,
                quant: match (in_quant.first(), in_quant.get(1), node.quant) {
                    (Some(&qa), Some(&qb), Some(qo)) => Some((qa, qb, qo)),
                    _ => None,
                },
            },
            Op::Flatten => Kernel::Flatten,
            Op::Scale { factor, act } => Kernel::Scale { factor: *factor, act: *act, lut: lut(*factor, *act) },
        };
        steps.push(Step { kernel, info: info.clone() });
    }
    Ok(steps)
}
