//! The device backend: a compiled model's graph run as candle tensor operations, on the
//! GPU through candle's CUDA backend (cuDNN convolutions, cuBLAS matrix products) when
//! the crate is built with `cuda`, or on candle's CPU device, where the tests compare it
//! with the hand-written CPU engine on every build that has the `candle` feature.
//!
//! Why candle rather than kernels of our own: on a GPU the work of these models is a few
//! large convolutions per batch, which cuDNN already runs near the hardware's limit; the
//! CPU engine exists because on a CPU the libraries are far from it (BENCHMARKS.md).
//!
//! Weights are uploaded once, when the model is opened, unpacked from the memory map.
//! int8 files are dequantized then (`q * scale` per output channel); their
//! activations then stay in f32, so an int8 file gives the f32 answer of its quantized
//! weights rather than the CPU int8 engine's bit-exact one. Inputs are normalized on the
//! device too: RGB8 bytes travel, not floats.

use candle_core::{DType, Device as CandleDevice, Tensor};

use crate::artifact::layers::{LayerShape, StoredLayer};
use crate::artifact::{Activation, Artifact};
use crate::{Error, Result};

/// Wraps a candle error with what the engine was doing.
fn dev_err(what: &str) -> impl Fn(candle_core::Error) -> Error + '_ {
    // candle appends a backtrace when one was captured: keep the message only.
    move |e| Error::Device(format!("{what}: {}", e.to_string().lines().next().unwrap_or_default()))
}

/// One node's device implementation (built by its op module).
pub(crate) trait DeviceOp: Send + Sync + std::fmt::Debug {
    /// The node's output for its inputs.
    fn run(&self, args: &[&Tensor]) -> candle_core::Result<Tensor>;
}

/// What an op module gets to build its [`DeviceOp`].
#[derive(Debug)]
pub(crate) struct DeviceBuild<'a> {
    pub artifact: &'a Artifact,
    pub node: &'a crate::artifact::Node,
    pub inputs: Vec<crate::artifact::validate::Shape>,
    pub device: &'a CandleDevice,
}

/// A device op from a closure (the ops without weights).
pub(crate) fn func(f: impl Fn(&[&Tensor]) -> candle_core::Result<Tensor> + Send + Sync + 'static) -> Box<dyn DeviceOp> {
    struct Func<F>(F);
    impl<F> std::fmt::Debug for Func<F> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("device op")
        }
    }
    impl<F: Fn(&[&Tensor]) -> candle_core::Result<Tensor> + Send + Sync> DeviceOp for Func<F> {
        fn run(&self, args: &[&Tensor]) -> candle_core::Result<Tensor> {
            (self.0)(args)
        }
    }
    Box::new(Func(f))
}

/// Argument `k` of a device op.
pub(crate) fn arg<'a>(args: &[&'a Tensor], k: usize) -> candle_core::Result<&'a Tensor> {
    match args.get(k) {
        Some(t) => Ok(t),
        None => candle_core::bail!("missing input {k}"),
    }
}

/// A weighted layer's weight on the device, f32 `[out, cin_g, kh, kw]` (int8 layers
/// dequantized with their per-channel scales by [`StoredLayer::to_float`]), and its bias.
fn upload(b: &DeviceBuild<'_>, shape: LayerShape) -> Result<(Tensor, Tensor)> {
    let name = &b.node.name;
    let err = dev_err(name);
    let layer = StoredLayer::read(b.artifact, name, shape)?;
    let dims = (shape.out, shape.cin_g(), shape.kernel[0], shape.kernel[1]);
    let weight = Tensor::from_vec(layer.to_float()?.weight, dims, b.device).map_err(&err)?;
    let bias = Tensor::from_slice(layer.bias, shape.out, b.device).map_err(err)?;
    Ok((weight, bias))
}

/// A convolution on the device (cuDNN on CUDA).
pub(crate) fn conv(
    b: &DeviceBuild<'_>,
    shape: LayerShape,
    stride: [usize; 2],
    padding: [usize; 2],
    act: Activation,
) -> Result<Box<dyn DeviceOp>> {
    if stride[0] != stride[1] {
        return Err(Error::graph(&b.node.name, "the device engine needs equal strides along height and width"));
    }
    let (weight, bias) = upload(b, shape)?;
    let bias = bias.reshape((1, shape.out, 1, 1)).map_err(dev_err(&b.node.name))?;
    let groups = shape.groups;
    Ok(func(move |args| {
        let x = arg(args, 0)?;
        let y = if padding[0] == padding[1] {
            x.conv2d(&weight, padding[0], stride[0], 1, groups)?
        } else {
            pad_hw(x, padding, 0.0)?.conv2d(&weight, 0, stride[0], 1, groups)?
        };
        activate(y.broadcast_add(&bias)?, act)
    }))
}

/// A linear layer on the device (cuBLAS on CUDA).
pub(crate) fn linear(b: &DeviceBuild<'_>, shape: LayerShape, act: Activation) -> Result<Box<dyn DeviceOp>> {
    let err = dev_err(&b.node.name);
    let (weight, bias) = upload(b, shape)?;
    let weight_t = weight.reshape((shape.out, shape.cin)).and_then(|w| w.t()).map_err(&err)?;
    let bias = bias.reshape((1, shape.out)).map_err(err)?;
    Ok(func(move |args| {
        let x = arg(args, 0)?;
        let (n, c, h, w) = x.dims4()?;
        let y = x.reshape((n, c * h * w))?.matmul(&weight_t)?.broadcast_add(&bias)?;
        let o = y.dim(1)?;
        activate(y, act)?.reshape((n, o, 1, 1))
    }))
}

#[derive(Debug)]
struct DeviceNode {
    name: String,
    op: Box<dyn DeviceOp>,
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

/// The fused activation on the device.
pub(crate) fn activate(x: Tensor, act: Activation) -> candle_core::Result<Tensor> {
    match act {
        Activation::None => Ok(x),
        Activation::Relu => x.relu(),
        // candle's `gelu` is the tanh form, the one the file format specifies.
        Activation::Gelu => x.gelu(),
        Activation::Relu6 => x.clamp(0f32, 6f32),
        Activation::Hardswish => x.mul(&((x.clone() + 3.0)?.clamp(0f32, 6f32)? * (1.0 / 6.0))?),
        Activation::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip(),
    }
}

/// Pads dims 2 and 3 with `value` (`[ph, pw]` on each side).
pub(crate) fn pad_hw(x: &Tensor, padding: [usize; 2], value: f32) -> candle_core::Result<Tensor> {
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
    /// Uploads the weights of a validated artifact to `device`; each node's op module
    /// builds its device op.
    pub fn new(a: &Artifact, device: &CandleDevice) -> Result<Self> {
        let g = &a.metadata.graph;
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for (node, info) in g.nodes.iter().zip(&a.info.nodes) {
            let b = DeviceBuild { artifact: a, node, inputs: info.input_shapes.clone(), device };
            let op = node.op.spec().device(&b)?;
            nodes.push(DeviceNode { name: node.name.clone(), op, inputs: info.inputs.clone() });
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
            let y = node.op.run(&args).map_err(dev_err(&node.name))?;
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

/// The device backend of a model: its graph on the device, shared by its sessions. (Only
/// GPU builds open models on a device; without `cuda` the graph serves the tests.)
#[cfg(feature = "cuda")]
#[derive(Debug)]
pub(crate) struct DeviceBackend {
    graph: std::sync::Arc<DeviceGraph>,
}

#[cfg(feature = "cuda")]
impl DeviceBackend {
    pub fn new(graph: DeviceGraph) -> Self {
        Self { graph: std::sync::Arc::new(graph) }
    }
}

#[cfg(feature = "cuda")]
impl crate::backend::Backend for DeviceBackend {
    fn runner(&self, model: &crate::model::Model) -> Result<Box<dyn crate::backend::Runner>> {
        Ok(Box::new(DeviceRunner { graph: std::sync::Arc::clone(&self.graph), capacity: model.options().max_batch }))
    }
}

#[cfg(feature = "cuda")]
#[derive(Debug)]
struct DeviceRunner {
    graph: std::sync::Arc<DeviceGraph>,
    capacity: usize,
}

#[cfg(feature = "cuda")]
impl crate::backend::Runner for DeviceRunner {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn threads(&self) -> usize {
        1
    }

    fn run(
        &mut self,
        _: &crate::model::Model,
        input: crate::backend::Input<'_>,
        n: usize,
        out: &mut [f32],
        watch: &mut crate::backend::Watch<'_, '_>,
    ) -> Result<()> {
        if !matches!(watch, crate::backend::Watch::None) {
            return Err(Error::Input(
                "per-node observation runs on the CPU backend: open the model with device policy `cpu`".into(),
            ));
        }
        let logits = match input {
            crate::backend::Input::Nchw(x) => self.graph.logits_nchw(x, n)?,
            crate::backend::Input::Rgb8(x) => self.graph.logits_rgb8(x, n)?,
        };
        if logits.len() != out.len() {
            return Err(Error::Device(format!("the device returned {} logits, expected {}", logits.len(), out.len())));
        }
        out.copy_from_slice(&logits);
        Ok(())
    }
}
