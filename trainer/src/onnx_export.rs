//! `trainer export-onnx`: a compiled `.cifar` graph as a standard ONNX model (opset 13),
//! written with `candle-onnx`'s ONNX types, so other runtimes (ONNX Runtime, candle-onnx,
//! tract, OpenVINO) can run exactly what the SDK runs.
//!
//! - Input `input`: `FP32 [N, 3, H, W]`, normalized (the SDK's NCHW entry point); output
//!   `logits`: `FP32 [N, classes]`.
//! - Ops: Conv, Gemm, MaxPool, AveragePool (global pools as a full-size window: candle-onnx
//!   has no GlobalAveragePool), Add, Flatten, Mul (scale), Relu, Unsqueeze. GELU is the
//!   trainer's tanh form written out as `x * Sigmoid(1.5958 (x + 0.044715 x^3))` (ONNX's
//!   `Gelu` is opset 20 and candle-onnx implements only its erf form).
//! - int8 files become QDQ models: QuantizeLinear/DequantizeLinear pairs on the input
//!   and on every node output with the file's activation quantization (uint8, zero point),
//!   int8 weights with per-output-channel scales (axis 0), and int32 biases at scale
//!   `input_scale x weight_scale` — the pattern ONNX Runtime fuses into integer kernels.
//!   candle-onnx cannot run QDQ models (no QuantizeLinear), ONNX Runtime can.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_onnx::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use cifar_sdk::artifact::layers::{LayerShape, StoredLayer};
use cifar_sdk::artifact::{
    Activation, Add, Artifact, AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool, Op, Precision, QuantParams, Scale,
    INPUT_NAME,
};
use prost::Message;

/// The opset the export targets.
pub const OPSET: i64 = 13;

/// What was written.
#[derive(Debug)]
pub struct ExportSummary {
    /// ONNX nodes.
    pub nodes: usize,
    /// Initializers (weights and constants).
    pub initializers: usize,
    /// Bytes written.
    pub bytes: usize,
    /// The model's precision.
    pub precision: Precision,
}

/// Builds the ONNX graph of one artifact.
struct Builder<'a> {
    artifact: &'a Artifact,
    int8: bool,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
    /// ONNX value name and rank (2 or 4) of each graph value, by .cifar value name.
    values: HashMap<String, (String, usize)>,
    /// Quantization of each .cifar value (int8 graphs).
    quants: HashMap<String, QuantParams>,
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

fn tensor_value(name: &str, elem: DataType, dims: Vec<tensor_shape_proto::dimension::Value>) -> ValueInfoProto {
    let dim =
        dims.into_iter().map(|v| tensor_shape_proto::Dimension { value: Some(v), ..Default::default() }).collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl<'a> Builder<'a> {
    fn fresh(&mut self, stem: &str) -> String {
        self.counter += 1;
        format!("{stem}__{}", self.counter)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, stem: &str) -> String {
        let out = self.fresh(stem);
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: out.clone(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn init_f32(&mut self, stem: &str, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh(stem);
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    fn init_raw(&mut self, stem: &str, dims: &[i64], dtype: DataType, raw: Vec<u8>) -> String {
        let name = self.fresh(stem);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: dtype as i32,
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// `Q` then `DQ` with per-tensor uint8 parameters: the value as the SDK sees it.
    fn fake_quant(&mut self, x: &str, q: QuantParams, stem: &str) -> String {
        let scale = self.init_f32(&format!("{stem}.scale"), &[], &[q.scale]);
        let zero = self.init_raw(&format!("{stem}.zero_point"), &[], DataType::Uint8, vec![q.zero_point]);
        let quantized = self.node("QuantizeLinear", &[x, &scale, &zero], vec![], &format!("{stem}.q"));
        self.node("DequantizeLinear", &[&quantized, &scale, &zero], vec![], &format!("{stem}.dq"))
    }

    fn activation(&mut self, x: &str, act: Activation, stem: &str) -> String {
        match act {
            Activation::None => x.to_string(),
            Activation::Relu => self.node("Relu", &[x], vec![], &format!("{stem}.relu")),
            Activation::Gelu => {
                // x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), the trainer's tanh form.
                let c3 = self.init_f32("gelu.c3", &[], &[0.044715]);
                let k = self.init_f32("gelu.k", &[], &[2.0 * (2.0 / std::f32::consts::PI).sqrt()]);
                let x2 = self.node("Mul", &[x, x], vec![], &format!("{stem}.gelu"));
                let x3 = self.node("Mul", &[&x2, x], vec![], &format!("{stem}.gelu"));
                let t = self.node("Mul", &[&x3, &c3], vec![], &format!("{stem}.gelu"));
                let inner = self.node("Add", &[x, &t], vec![], &format!("{stem}.gelu"));
                let z = self.node("Mul", &[&inner, &k], vec![], &format!("{stem}.gelu"));
                let s = self.node("Sigmoid", &[&z], vec![], &format!("{stem}.gelu"));
                self.node("Mul", &[x, &s], vec![], &format!("{stem}.gelu"))
            }
            Activation::Relu6 => self.clip(x, 0.0, 6.0, &format!("{stem}.relu6")),
            Activation::Hardswish => {
                // x * (clip(x + 3, 0, 6) * (1 / 6)), the SDK's operations in its order.
                let three = self.init_f32("hardswish.three", &[], &[3.0]);
                let sixth = self.init_f32("hardswish.sixth", &[], &[1.0 / 6.0]);
                let shifted = self.node("Add", &[x, &three], vec![], &format!("{stem}.hardswish"));
                let clipped = self.clip(&shifted, 0.0, 6.0, &format!("{stem}.hardswish"));
                let gate = self.node("Mul", &[&clipped, &sixth], vec![], &format!("{stem}.hardswish"));
                self.node("Mul", &[x, &gate], vec![], &format!("{stem}.hardswish"))
            }
            Activation::Sigmoid => self.node("Sigmoid", &[x], vec![], &format!("{stem}.sigmoid")),
        }
    }

    /// `Clip(x, lo, hi)` (opset 11+: the bounds are inputs).
    fn clip(&mut self, x: &str, lo: f32, hi: f32, stem: &str) -> String {
        let lo = self.init_f32(&format!("{stem}.min"), &[], &[lo]);
        let hi = self.init_f32(&format!("{stem}.max"), &[], &[hi]);
        self.node("Clip", &[x, &lo, &hi], vec![], stem)
    }

    /// The ONNX name of a .cifar value at the rank an op needs (2-D values are
    /// unsqueezed to `[N, C, 1, 1]` for 4-D ops).
    fn input(&mut self, value: &str, rank: usize) -> Result<String> {
        let (name, have) = self.values.get(value).cloned().with_context(|| format!("undefined value `{value}`"))?;
        Ok(match (have, rank) {
            (2, 4) => {
                let axes = self.init_raw(
                    "axes",
                    &[2],
                    DataType::Int64,
                    [2i64, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
                );
                self.node("Unsqueeze", &[&name, &axes], vec![], &format!("{value}.as4d"))
            }
            (4, 2) => self.node("Flatten", &[&name], vec![attr_int("axis", 1)], &format!("{value}.as2d")),
            _ => name,
        })
    }

    /// Weight (and bias) initializers of a conv or linear node: float, or int8 behind
    /// DequantizeLinear with the int32 bias at `input_scale * weight_scale`.
    fn weights(&mut self, node: &str, shape: LayerShape, dims: &[i64], input: &str) -> Result<(String, String)> {
        let a = self.artifact;
        let out = shape.out;
        let layer = StoredLayer::read(a, node, shape)?;
        let bias = layer.bias;
        if !self.int8 {
            let w = self.init_f32(&format!("{node}.weight"), dims, &layer.to_float()?.weight);
            let b = self.init_f32(&format!("{node}.bias"), &[out as i64], bias);
            return Ok((w, b));
        }
        let in_scale =
            self.quants.get(input).map(|q| q.scale).with_context(|| format!("`{input}` has no quantization"))?;
        let (Some(w), Some((scales, _))) = (layer.codes(), layer.quant) else {
            bail!("{node}: an int8 file without int8 weights");
        };
        let wq = self.init_raw(&format!("{node}.weight_q"), dims, DataType::Int8, w.iter().map(|&v| v as u8).collect());
        let ws = self.init_f32(&format!("{node}.weight_scale"), &[out as i64], scales);
        let wz = self.init_raw(&format!("{node}.weight_zero"), &[out as i64], DataType::Int8, vec![0; out]);
        let wf = self.node("DequantizeLinear", &[&wq, &ws, &wz], vec![attr_int("axis", 0)], &format!("{node}.weight"));
        let bscale: Vec<f32> = scales.iter().map(|s| s * in_scale).collect();
        let bq: Vec<u8> = bias
            .iter()
            .zip(&bscale)
            .flat_map(|(b, s)| ((b / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes())
            .collect();
        let bqn = self.init_raw(&format!("{node}.bias_q"), &[out as i64], DataType::Int32, bq);
        let bs = self.init_f32(&format!("{node}.bias_scale"), &[out as i64], &bscale);
        let bz = self.init_raw(&format!("{node}.bias_zero"), &[out as i64], DataType::Int32, vec![0; out * 4]);
        let bf = self.node("DequantizeLinear", &[&bqn, &bs, &bz], vec![attr_int("axis", 0)], &format!("{node}.bias"));
        Ok((wf, bf))
    }
}

/// Converts the model file at `model` into ONNX at `out` (written atomically).
pub fn export(model: &Path, out: &Path) -> Result<ExportSummary> {
    let artifact = Artifact::open(model).with_context(|| format!("cannot open {}", model.display()))?;
    let graph = artifact.metadata.graph.clone();
    let int8 = graph.precision == Precision::Int8;
    let mut b = Builder {
        artifact: &artifact,
        int8,
        nodes: Vec::new(),
        initializers: Vec::new(),
        counter: 0,
        values: HashMap::new(),
        quants: HashMap::new(),
    };
    let [c, h, w] = graph.input;
    let mut x = "input".to_string();
    if let Some(q) = graph.input_quant {
        x = b.fake_quant(&x, q, "input");
        b.quants.insert(INPUT_NAME.into(), q);
    }
    b.values.insert(INPUT_NAME.into(), (x, 4));
    for (i, node) in graph.nodes.iter().enumerate() {
        let info = artifact.info.nodes.get(i).context("graph info")?;
        let first = node.inputs.first().cloned().unwrap_or_default();
        let in_shape = info.input_shapes.first().copied().unwrap_or([0; 3]);
        let n = node.name.as_str();
        let (y, rank, act) = match &node.op {
            Op::Conv2d(conv) => {
                let x = b.input(&first, 4)?;
                let cin = (in_shape[0] / conv.groups.max(1)) as i64;
                let dims = [conv.out_channels as i64, cin, conv.kernel[0] as i64, conv.kernel[1] as i64];
                let shape = node.op.layer(&info.input_shapes).context("conv layer")?;
                let (wt, bias) = b.weights(n, shape, &dims, &first)?;
                let [ph, pw] = conv.padding.map(|p| p as i64);
                let attrs = vec![
                    attr_ints("kernel_shape", &conv.kernel.map(|k| k as i64)),
                    attr_ints("strides", &conv.stride.map(|s| s as i64)),
                    attr_ints("pads", &[ph, pw, ph, pw]),
                    attr_ints("dilations", &[1, 1]),
                    attr_int("group", conv.groups as i64),
                ];
                (b.node("Conv", &[&x, &wt, &bias], attrs, n), 4, conv.act)
            }
            Op::Linear(lin) => {
                let x = b.input(&first, 2)?;
                let dims = [lin.out_features as i64, (in_shape[0] * in_shape[1] * in_shape[2]) as i64];
                let shape = node.op.layer(&info.input_shapes).context("linear layer")?;
                let (wt, bias) = b.weights(n, shape, &dims, &first)?;
                (b.node("Gemm", &[&x, &wt, &bias], vec![attr_int("transB", 1)], n), 2, lin.act)
            }
            Op::MaxPool(MaxPool { kernel, stride, padding, act })
            | Op::AvgPool(AvgPool { kernel, stride, padding, act }) => {
                let x = b.input(&first, 4)?;
                let [ph, pw] = padding.map(|v| v as i64);
                let mut attrs = vec![
                    attr_ints("kernel_shape", &kernel.map(|k| k as i64)),
                    attr_ints("strides", &stride.map(|s| s as i64)),
                ];
                if ph > 0 || pw > 0 {
                    attrs.push(attr_ints("pads", &[ph, pw, ph, pw]));
                }
                let op = if matches!(node.op, Op::MaxPool(_)) { "MaxPool" } else { "AveragePool" };
                if op == "AveragePool" {
                    attrs.push(attr_int("count_include_pad", 1));
                }
                (b.node(op, &[&x], attrs, n), 4, *act)
            }
            Op::GlobalAvgPool(GlobalAvgPool { act }) | Op::GlobalMaxPool(GlobalMaxPool { act }) => {
                let x = b.input(&first, 4)?;
                let window = [in_shape[1] as i64, in_shape[2] as i64];
                let attrs = vec![attr_ints("kernel_shape", &window), attr_ints("strides", &window)];
                let op = if matches!(node.op, Op::GlobalMaxPool(_)) { "MaxPool" } else { "AveragePool" };
                (b.node(op, &[&x], attrs, n), 4, *act)
            }
            Op::Add(Add { act }) => {
                let second = node.inputs.get(1).cloned().unwrap_or_default();
                let (_, ra) = b.values.get(&first).cloned().context("add input")?;
                let x0 = b.input(&first, ra)?;
                let x1 = b.input(&second, ra)?;
                (b.node("Add", &[&x0, &x1], vec![], n), ra, *act)
            }
            Op::Flatten(_) => {
                let x = b.input(&first, 4)?;
                (b.node("Flatten", &[&x], vec![attr_int("axis", 1)], n), 2, Activation::None)
            }
            Op::Scale(Scale { factor, act }) => {
                let (_, r) = b.values.get(&first).cloned().context("scale input")?;
                let x = b.input(&first, r)?;
                let f = b.init_f32(&format!("{n}.factor"), &[], &[*factor]);
                (b.node("Mul", &[&x, &f], vec![], n), r, *act)
            }
        };
        let mut y = b.activation(&y, act, n);
        if let Some(q) = node.quant {
            y = b.fake_quant(&y, q, n);
            b.quants.insert(node.name.clone(), q);
        }
        b.values.insert(node.name.clone(), (y, rank));
    }
    let logits = b.input(&graph.output, 2)?;
    b.nodes.push(NodeProto {
        op_type: "Identity".into(),
        name: "logits".into(),
        input: vec![logits],
        output: vec!["logits".into()],
        ..Default::default()
    });
    use tensor_shape_proto::dimension::Value as Dim;
    let classes = artifact.metadata.labels.len() as i64;
    let onnx_graph = GraphProto {
        name: format!("cifar-{}", graph.precision),
        node: b.nodes,
        initializer: b.initializers,
        input: vec![tensor_value(
            "input",
            DataType::Float,
            vec![Dim::DimParam("N".into()), Dim::DimValue(c as i64), Dim::DimValue(h as i64), Dim::DimValue(w as i64)],
        )],
        output: vec![tensor_value("logits", DataType::Float, vec![Dim::DimParam("N".into()), Dim::DimValue(classes)])],
        doc_string: format!(
            "exported from {} ({}); labels: {}",
            model.display(),
            artifact.checksum,
            artifact.metadata.labels.join(",")
        ),
        ..Default::default()
    };
    let nodes = onnx_graph.node.len();
    let initializers = onnx_graph.initializer.len();
    let proto = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "cifar-edge trainer".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(onnx_graph),
        ..Default::default()
    };
    let bytes = proto.encode_to_vec();
    cifar_sdk::write_atomic(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(ExportSummary { nodes, initializers, bytes: bytes.len(), precision: graph.precision })
}

/// Runs an exported f32 model through candle-onnx on `input` (`[n, c, h, w]`, normalized)
/// and returns the logits.
pub fn candle_onnx_logits(onnx: &Path, input: &[f32], n: usize, chw: [usize; 3]) -> Result<Vec<f32>> {
    let proto = candle_onnx::read_file(onnx).with_context(|| format!("cannot read {}", onnx.display()))?;
    let x = candle_core::Tensor::from_slice(input, (n, chw[0], chw[1], chw[2]), &candle_core::Device::Cpu)?;
    let mut inputs = HashMap::new();
    inputs.insert("input".to_string(), x);
    let mut outputs = candle_onnx::simple_eval(&proto, inputs)?;
    let logits = outputs.remove("logits").context("the ONNX model has no `logits` output")?;
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}
