//! The device engine: a compiled model's graph run as candle tensor operations, on the
//! GPU through candle's CUDA backend (cuDNN convolutions, cuBLAS matrix products) when
//! the crate is built with `cuda`, or on candle's CPU device, where the tests compare it
//! with the hand-written CPU engine on every build that has the `candle` feature.
//!
//! Why candle rather than kernels of our own: on a GPU the work of these models is a few
//! large convolutions per batch, which cuDNN already runs near the hardware's limit; the
//! CPU engine exists because on a CPU the libraries are far from it (BENCHMARKS.md).
//!
//! Weights are uploaded once, when the model is opened, straight from the memory map.
//! int8 files are dequantized on the device (`q * scale` per output channel); their
//! activations then stay in f32, so an int8 file gives the f32 answer of its quantized
//! weights rather than the CPU int8 engine's bit-exact one. Inputs are normalized on the
//! device too: RGB8 bytes travel, not floats.

use candle_core::{DType, Device as CandleDevice, Tensor};

use crate::artifact::{Activation, Artifact, Op, Precision};
use crate::{Error, Result};

/// Wraps a candle error with what the engine was doing.
fn dev_err(what: &str) -> impl Fn(candle_core::Error) -> Error + '_ {
    // candle appends a backtrace when one was captured: keep the message only.
    move |e| Error::Device(format!("{what}: {}", e.to_string().lines().next().unwrap_or_default()))
}

/// One node's operation, with its weights on the device.
#[derive(Debug)]
enum DeviceOp {
    Conv { weight: Tensor, bias: Tensor, stride: usize, padding: [usize; 2], groups: usize, act: Activation },
    Linear { weight_t: Tensor, bias: Tensor, act: Activation },
    MaxPool { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], act: Activation },
    AvgPool { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], act: Activation },
    GlobalMax { act: Activation },
    GlobalAvg { act: Activation },
    Add { act: Activation },
    Flatten,
    Scale { factor: f64, act: Activation },
}

#[derive(Debug)]
struct DeviceNode {
    name: String,
    op: DeviceOp,
    inputs: Vec<usize>,
}

/// A model's graph on one candle device: weights resident, ready to run batches.
#[derive(Debug)]
pub struct DeviceGraph {
    device: CandleDevice,
    nodes: Vec<DeviceNode>,
    /// Value index of the logits (`0` is the input, `i + 1` node `i`'s output).
    output: usize,
    input: [usize; 3],
    classes: usize,
    /// `[1, 3, 1, 1]` RGB8 byte -> normalized value: `p * scale + shift`.
    pixel_scale: Tensor,
    pixel_shift: Tensor,
}

/// Uploads `name`'s weight as f32 `[out, k]`: f32 files as they are, int8 files
/// dequantized on the device with their per-channel scales.
fn upload_weight(a: &Artifact, name: &str, out: usize, dev: &CandleDevice) -> Result<Tensor> {
    let key = format!("{name}.weight");
    let err = dev_err(name);
    match a.metadata.graph.precision {
        Precision::F32 => {
            let w = a.f32s(&key)?;
            let k = w.len() / out.max(1);
            Tensor::from_slice(w, (out, k), dev).map_err(err)
        }
        Precision::Int8 => {
            let q: &[u8] = bytemuck::cast_slice(a.i8s(&key)?);
            let k = q.len() / out.max(1);
            let scale = a.f32s(&format!("{name}.weight_scale"))?;
            let codes = Tensor::from_slice(q, (out, k), dev).map_err(&err)?;
            // Two's complement on the device: bytes 128..=255 are -128..=-1.
            let unsigned = codes.to_dtype(DType::F32).map_err(&err)?;
            let negative = codes.ge(128u8).and_then(|m| m.to_dtype(DType::F32)).map_err(&err)?;
            let signed = (unsigned - (negative * 256.0).map_err(&err)?).map_err(&err)?;
            let scale = Tensor::from_slice(scale, (out, 1), dev).map_err(&err)?;
            signed.broadcast_mul(&scale).map_err(err)
        }
    }
}

fn activate(x: Tensor, act: Activation) -> candle_core::Result<Tensor> {
    match act {
        Activation::None => Ok(x),
        Activation::Relu => x.relu(),
        // candle's `gelu` is the tanh form, the one the file format specifies.
        Activation::Gelu => x.gelu(),
    }
}

/// Pads dims 2 and 3 with `value` (`[ph, pw]` on each side).
fn pad_hw(x: &Tensor, padding: [usize; 2], value: f32) -> candle_core::Result<Tensor> {
    let [ph, pw] = padding;
    if ph == 0 && pw == 0 {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw);
    }
    let (n, c, h, w) = x.dims4()?;
    let rows = Tensor::full(value, (n, c, ph, w), x.device())?;
    let x = Tensor::cat(&[&rows, x, &rows], 2)?;
    let cols = Tensor::full(value, (n, c, h + 2 * ph, pw), x.device())?;
    Tensor::cat(&[&cols, &x, &cols], 3)
}

impl DeviceGraph {
    /// Uploads the weights of a validated artifact to `device`.
    pub fn new(a: &Artifact, device: &CandleDevice) -> Result<Self> {
        let g = &a.metadata.graph;
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for (node, info) in g.nodes.iter().zip(&a.info.nodes) {
            let name = &node.name;
            let err = dev_err(name);
            let bias = |out: usize| -> Result<Tensor> {
                Tensor::from_slice(a.f32s(&format!("{name}.bias"))?, out, device).map_err(dev_err(name))
            };
            let cin = info.input_shapes.first().map_or(0, |s| s[0]);
            let op = match &node.op {
                Op::Conv2d(cv) => {
                    if cv.stride[0] != cv.stride[1] {
                        return Err(Error::graph(name, "the GPU engine needs equal strides along height and width"));
                    }
                    let w = upload_weight(a, name, cv.out_channels, device)?;
                    let weight = w
                        .reshape((cv.out_channels, cin / cv.groups.max(1), cv.kernel[0], cv.kernel[1]))
                        .map_err(&err)?;
                    DeviceOp::Conv {
                        weight,
                        bias: bias(cv.out_channels)?.reshape((1, cv.out_channels, 1, 1)).map_err(&err)?,
                        stride: cv.stride[0],
                        padding: cv.padding,
                        groups: cv.groups,
                        act: cv.act,
                    }
                }
                Op::Linear(l) => DeviceOp::Linear {
                    weight_t: upload_weight(a, name, l.out_features, device)?.t().map_err(&err)?,
                    bias: bias(l.out_features)?.reshape((1, l.out_features)).map_err(&err)?,
                    act: l.act,
                },
                Op::MaxPool(p) => {
                    DeviceOp::MaxPool { kernel: p.kernel, stride: p.stride, padding: p.padding, act: p.act }
                }
                Op::AvgPool(p) => {
                    DeviceOp::AvgPool { kernel: p.kernel, stride: p.stride, padding: p.padding, act: p.act }
                }
                Op::GlobalMaxPool { act } => DeviceOp::GlobalMax { act: *act },
                Op::GlobalAvgPool { act } => DeviceOp::GlobalAvg { act: *act },
                Op::Add { act } => DeviceOp::Add { act: *act },
                Op::Flatten => DeviceOp::Flatten,
                Op::Scale { factor, act } => DeviceOp::Scale { factor: f64::from(*factor), act: *act },
            };
            nodes.push(DeviceNode { name: name.clone(), op, inputs: info.inputs.clone() });
        }
        let affine = a.metadata.preprocessing.normalization.affine();
        let pixel = |f: fn(&(f32, f32)) -> f32| -> Result<Tensor> {
            let v: Vec<f32> = affine.iter().map(f).collect();
            Tensor::from_vec(v, (1, 3, 1, 1), device).map_err(dev_err("input normalization"))
        };
        Ok(Self {
            device: device.clone(),
            nodes,
            output: a.info.output + 1,
            input: g.input,
            classes: a.metadata.labels.len(),
            pixel_scale: pixel(|p| p.0)?,
            pixel_shift: pixel(|p| p.1)?,
        })
    }

    /// The candle device the graph lives on.
    pub fn device(&self) -> &CandleDevice {
        &self.device
    }

    /// Logits (`n x classes`, row-major) of `n` normalized NCHW images.
    pub fn logits_nchw(&self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.input;
        let x = Tensor::from_slice(input, (n, c, h, w), &self.device).map_err(dev_err("uploading the input"))?;
        self.logits(x)
    }

    /// Logits of `n` RGB8 images (`[N][H][W][3]`), normalized on the device.
    pub fn logits_rgb8(&self, pixels: &[u8], n: usize) -> Result<Vec<f32>> {
        let [_, h, w] = self.input;
        let err = dev_err("preparing the input");
        let x = Tensor::from_slice(pixels, (n, h, w, 3), &self.device)
            .and_then(|x| x.to_dtype(DType::F32))
            .and_then(|x| x.permute((0, 3, 1, 2)))
            .and_then(|x| x.broadcast_mul(&self.pixel_scale))
            .and_then(|x| x.broadcast_add(&self.pixel_shift))
            .map_err(err)?;
        self.logits(x)
    }

    /// Runs the graph on an `[N, C, H, W]` f32 tensor; returns the logits row-major.
    pub fn logits(&self, x: Tensor) -> Result<Vec<f32>> {
        let n = x.dim(0).map_err(dev_err("input"))?;
        let x = x.contiguous().map_err(dev_err("input"))?;
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len() + 1];
        if let Some(slot) = values.first_mut() {
            *slot = Some(x);
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let args: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|&v| values.get(v).and_then(Option::as_ref))
                .collect::<Option<_>>()
                .ok_or_else(|| Error::graph(&node.name, "reads a value that was not computed"))?;
            let y = run_node(&node.op, &args).map_err(dev_err(&node.name))?;
            if let Some(slot) = values.get_mut(i + 1) {
                *slot = Some(y);
            }
        }
        let out = values
            .get(self.output)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Device("the graph's output was not computed".into()))?;
        out.reshape((n, self.classes))
            .and_then(|o| o.to_dtype(DType::F32))
            .and_then(|o| o.flatten_all())
            .and_then(|o| o.to_vec1::<f32>())
            .map_err(dev_err("reading the logits"))
    }
}

fn run_node(op: &DeviceOp, args: &[&Tensor]) -> candle_core::Result<Tensor> {
    let Some(&x) = args.first() else { candle_core::bail!("missing input") };
    match op {
        DeviceOp::Conv { weight, bias, stride, padding, groups, act } => {
            let y = if padding[0] == padding[1] {
                x.conv2d(weight, padding[0], *stride, 1, *groups)?
            } else {
                pad_hw(x, *padding, 0.0)?.conv2d(weight, 0, *stride, 1, *groups)?
            };
            activate(y.broadcast_add(bias)?, *act)
        }
        DeviceOp::Linear { weight_t, bias, act } => {
            let (n, c, h, w) = x.dims4()?;
            let y = x.reshape((n, c * h * w))?.matmul(weight_t)?.broadcast_add(bias)?;
            let o = y.dim(1)?;
            activate(y, *act)?.reshape((n, o, 1, 1))
        }
        DeviceOp::MaxPool { kernel, stride, padding, act } => {
            let y = pad_hw(x, *padding, f32::NEG_INFINITY)?
                .max_pool2d_with_stride((kernel[0], kernel[1]), (stride[0], stride[1]))?;
            activate(y, *act)
        }
        DeviceOp::AvgPool { kernel, stride, padding, act } => {
            let y = pad_hw(x, *padding, 0.0)?.avg_pool2d_with_stride((kernel[0], kernel[1]), (stride[0], stride[1]))?;
            activate(y, *act)
        }
        DeviceOp::GlobalMax { act } => activate(x.max_keepdim(3)?.max_keepdim(2)?, *act),
        DeviceOp::GlobalAvg { act } => activate(x.mean_keepdim(3)?.mean_keepdim(2)?, *act),
        DeviceOp::Add { act } => {
            let Some(&b) = args.get(1) else { candle_core::bail!("add needs two inputs") };
            activate((x + b)?, *act)
        }
        DeviceOp::Flatten => {
            let (n, c, h, w) = x.dims4()?;
            x.reshape((n, c * h * w, 1, 1))
        }
        DeviceOp::Scale { factor, act } => activate(x.affine(*factor, 0.0)?, *act),
    }
}
