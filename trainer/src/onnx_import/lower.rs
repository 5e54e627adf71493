//! An ONNX graph lowered to the SDK's f32 execution graph.
//!
//! Two passes. The first maps each ONNX node to SDK nodes or folds it: constants and the
//! shape arithmetic exporters emit around `Reshape` are evaluated here; `Identity`,
//! `Dropout`, and reshapes between `[N, F]` and `[N, F, 1, 1]` become aliases; every
//! per-channel affine map (`BatchNormalization`, `Add`/`Sub`/`Mul`/`Div` by a constant)
//! becomes a 1x1 depthwise convolution, and every activation a `scale` node with factor
//! one. The second pass ([`fuse`]) folds each affine map into the convolution or linear
//! layer before it and each activation into the op before it, wherever that op's output
//! has no other reader: what is left standalone still computes the right thing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_onnx::onnx::{
    tensor_shape_proto::dimension::Value as Dim, type_proto, AttributeProto, ModelProto, NodeProto,
};
use cifar_sdk::artifact::layers::{FloatLayer, LayerShape};
use cifar_sdk::artifact::{
    Activation, Add, AvgPool, Conv2d, Flatten, GlobalAvgPool, GlobalMaxPool, Graph, Linear, MaxPool, Node, Op,
    Precision, Scale, INPUT_NAME,
};

use super::tensor::{decode, element_count, Const, Data};
use crate::compile::fold::FloatModel;

/// The ONNX operators the importer understands (what an error lists).
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat (of constants)",
    "Constant",
    "Conv",
    "Div (by a constant)",
    "Dropout",
    "Flatten",
    "Gather (of constants)",
    "Gemm",
    "Gelu (approximate = tanh)",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSwish",
    "Identity",
    "MatMul (by a constant)",
    "MaxPool",
    "Mul (by a constant)",
    "ReduceMean (over H and W)",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Squeeze",
    "Sub (a constant)",
    "Unsqueeze",
];

/// The input size the SDK takes.
pub const INPUT_HW: usize = 32;

/// A value of the ONNX graph.
#[derive(Debug, Clone)]
enum Value {
    Const(Const),
    /// A value computed per image: the SDK value that holds it, its `[c, h, w]`, and its
    /// ONNX rank (4: `[N, C, H, W]`; 2: `[N, F]`, stored as `[F, 1, 1]`).
    Dyn {
        sdk: String,
        shape: [usize; 3],
        rank: usize,
    },
}

/// What the nodes that the second pass may fold are.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// A per-channel affine map (a 1x1 depthwise convolution with no activation).
    Affine,
    /// A standalone activation (`scale` by 1).
    Activation,
}

/// What the lowering made, and facts for the report.
#[derive(Debug)]
pub struct Lowered {
    pub model: FloatModel,
    pub classes: usize,
    /// ONNX nodes read.
    pub onnx_nodes: usize,
    /// `producer_name producer_version, opset N`.
    pub producer: String,
}

struct Lowering<'a> {
    dir: &'a Path,
    values: HashMap<String, Value>,
    nodes: Vec<Node>,
    layers: BTreeMap<String, FloatLayer>,
    roles: HashMap<String, Role>,
    names: HashSet<String>,
    /// The shape of each SDK value.
    shapes: HashMap<String, [usize; 3]>,
}

/// Lowers a decoded ONNX model (`dir`: its folder, for the external-data check).
pub fn lower(model: &ModelProto, dir: &Path) -> Result<Lowered> {
    let graph = model.graph.as_ref().context("the file has no graph (is it an ONNX model?)")?;
    let opset = model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version);
    let producer = format!(
        "{} {}, opset {}",
        model.producer_name,
        model.producer_version,
        opset.map_or("?".to_string(), |v| v.to_string())
    );
    let mut l = Lowering {
        dir,
        values: HashMap::new(),
        nodes: Vec::new(),
        layers: BTreeMap::new(),
        roles: HashMap::new(),
        names: HashSet::from([INPUT_NAME.to_string()]),
        shapes: HashMap::from([(INPUT_NAME.to_string(), [3, INPUT_HW, INPUT_HW])]),
    };
    for t in &graph.initializer {
        ensure!(!t.name.is_empty(), "an initializer has no name");
        let c = decode(t, dir).with_context(|| format!("initializer `{}`", t.name))?;
        l.values.insert(t.name.clone(), Value::Const(c));
    }
    let inputs: Vec<_> = graph.input.iter().filter(|i| !l.values.contains_key(&i.name)).collect();
    let [input] = inputs.as_slice() else {
        bail!(
            "the model has {} inputs besides its weights; the SDK takes one image tensor [N, 3, 32, 32]",
            inputs.len()
        );
    };
    l.values.insert(input.name.clone(), Value::Dyn { sdk: INPUT_NAME.into(), shape: input_shape(input)?, rank: 4 });
    for (i, node) in graph.node.iter().enumerate() {
        let what = || {
            let name = if node.name.is_empty() { format!("#{i}") } else { format!("`{}`", node.name) };
            format!("node {name} ({})", node.op_type)
        };
        l.node(node).with_context(what)?;
    }
    let [output] = graph.output.as_slice() else {
        bail!("the model has {} outputs; the SDK takes one (the logits [N, classes])", graph.output.len());
    };
    let (sdk, shape) = match l.values.get(&output.name) {
        Some(Value::Dyn { sdk, shape, .. }) if sdk != INPUT_NAME => (sdk.clone(), *shape),
        Some(_) => bail!("the output `{}` is not computed from the image", output.name),
        None => bail!("no node computes the output `{}`", output.name),
    };
    ensure!(
        shape[1] == 1 && shape[2] == 1,
        "the output `{}` has shape [N, {}, {}, {}]; the SDK's output is logits [N, classes]",
        output.name,
        shape[0],
        shape[1],
        shape[2]
    );
    let mut graph = Graph {
        precision: Precision::F32,
        input: [3, INPUT_HW, INPUT_HW],
        input_quant: None,
        weight_bits: None,
        nodes: l.nodes,
        output: sdk,
    };
    let mut layers = l.layers;
    fuse(&mut graph, &mut layers, &l.roles)?;
    cifar_sdk::artifact::validate::validate_graph(&graph).context("the lowered graph is not valid")?;
    let onnx_nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
    Ok(Lowered { model: FloatModel { graph, layers }, classes: shape[0], onnx_nodes, producer })
}

/// The image input's `[3, 32, 32]`, or an error saying what the SDK takes.
fn input_shape(input: &candle_onnx::onnx::ValueInfoProto) -> Result<[usize; 3]> {
    let dims: Vec<Option<i64>> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            ensure!(
                t.elem_type == 1,
                "the input `{}` is not a float tensor (element type {})",
                input.name,
                t.elem_type
            );
            let shape = t.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
            shape
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        }
        _ => bail!("the input `{}` is not a tensor", input.name),
    };
    ensure!(dims.len() == 4, "the input `{}` has {} dimensions; the SDK takes [N, 3, 32, 32]", input.name, dims.len());
    ensure!(
        dims[1].is_none_or(|c| c == 3),
        "the input `{}` has {:?} channels; the SDK takes RGB images [N, 3, 32, 32]",
        input.name,
        dims[1]
    );
    for d in &dims[2..] {
        ensure!(
            d.is_none_or(|v| v == INPUT_HW as i64),
            "the input `{}` is {:?} x {:?}: only 32x32 inputs are supported (the SDK's preprocessing, drift \
             features and kernels are built for CIFAR-size images); export the model at 32x32",
            input.name,
            dims[2],
            dims[3]
        );
    }
    Ok([3, INPUT_HW, INPUT_HW])
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_str(node: &NodeProto, name: &str) -> String {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default()
}

/// A 2-D window attribute (`kernel_shape`, `strides`, `dilations`) as `[h, w]`.
fn pair(node: &NodeProto, name: &str, default: usize) -> Result<[usize; 2]> {
    match attr_ints(node, name) {
        None => Ok([default, default]),
        Some(v) => match v.as_slice() {
            &[h, w] if h >= 0 && w >= 0 && h <= 1 << 16 && w <= 1 << 16 => Ok([h as usize, w as usize]),
            _ => bail!("`{name}` is {v:?}; a 2-D image op needs two small non-negative values"),
        },
    }
}

/// `pads` as symmetric `[ph, pw]`; `auto_pad` other than NOTSET/VALID is refused.
fn pads(node: &NodeProto) -> Result<[usize; 2]> {
    let auto = attr_str(node, "auto_pad");
    ensure!(
        matches!(auto.as_str(), "" | "NOTSET" | "VALID"),
        "auto_pad {auto} is not supported; export with explicit pads"
    );
    if auto == "VALID" {
        return Ok([0, 0]);
    }
    match attr_ints(node, "pads") {
        None => Ok([0, 0]),
        Some(v) => match v.as_slice() {
            &[t, l, b, r] if t == b && l == r && (0..=1 << 16).contains(&t) && (0..=1 << 16).contains(&l) => {
                Ok([t as usize, l as usize])
            }
            _ => bail!("pads {v:?}: only symmetric padding [top, left, bottom, right] with top = bottom and left = right is supported"),
        },
    }
}

impl Lowering<'_> {
    fn get(&self, name: &str) -> Result<&Value> {
        self.values.get(name).with_context(|| {
            format!("reads `{name}`, which no earlier node defines (nodes must be in topological order)")
        })
    }

    fn dyn_input(&self, node: &NodeProto, k: usize) -> Result<(String, [usize; 3], usize)> {
        let name = node.input.get(k).filter(|n| !n.is_empty()).with_context(|| format!("input {k} is missing"))?;
        match self.get(name)? {
            Value::Dyn { sdk, shape, rank } => Ok((sdk.clone(), *shape, *rank)),
            Value::Const(_) => bail!("input {k} (`{name}`) is a constant where an image value is expected"),
        }
    }

    fn const_input(&self, node: &NodeProto, k: usize) -> Result<Option<Const>> {
        let Some(name) = node.input.get(k).filter(|n| !n.is_empty()) else { return Ok(None) };
        match self.get(name)? {
            Value::Const(c) => Ok(Some(c.clone())),
            Value::Dyn { .. } => bail!("input {k} (`{name}`) must be a constant (weights, bounds, shapes)"),
        }
    }

    fn is_const(&self, node: &NodeProto, k: usize) -> bool {
        node.input.get(k).and_then(|n| self.values.get(n)).is_some_and(|v| matches!(v, Value::Const(_)))
    }

    fn output(&mut self, node: &NodeProto, v: Value) -> Result<()> {
        let name = node.output.first().filter(|n| !n.is_empty()).context("has no output")?;
        self.values.insert(name.clone(), v);
        Ok(())
    }

    /// A unique SDK node name from the ONNX node's name (or its op type).
    fn fresh(&mut self, node: &NodeProto, suffix: &str) -> String {
        let base: String = if node.name.is_empty() { node.op_type.to_lowercase() } else { node.name.clone() }
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' { c } else { '_' })
            .collect();
        let base = format!("{}{suffix}", base.trim_start_matches(['_', '.']).chars().take(150).collect::<String>());
        let base = if base.is_empty() { "node".to_string() } else { base };
        let mut name = base.clone();
        let mut k = 1;
        while !self.names.insert(name.clone()) {
            k += 1;
            name = format!("{base}_{k}");
        }
        name
    }

    /// Appends an SDK node reading `input`; returns its value.
    fn push(
        &mut self,
        node: &NodeProto,
        input: &[String],
        op: Op,
        layer: Option<FloatLayer>,
        rank: usize,
    ) -> Result<Value> {
        let name = self.fresh(node, "");
        let shapes: Vec<[usize; 3]> = input
            .iter()
            .map(|i| self.shapes.get(i).copied().with_context(|| format!("internal: no shape for `{i}`")))
            .collect::<Result<_>>()?;
        let shape = op.output_shape(&name, &shapes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        ensure!(elements.is_some_and(|n| n <= 1 << 24), "its output {shape:?} is too large");
        ensure!(shape.iter().all(|&d| d > 0), "its output {shape:?} is empty");
        if let Some(l) = layer {
            ensure!(
                Some(l.shape) == op.layer(&shapes),
                "weight shape {:?} does not agree with the input {:?}",
                l.shape,
                shapes.first()
            );
            self.layers.insert(name.clone(), l);
        }
        self.nodes.push(Node { name: name.clone(), inputs: input.to_vec(), op, quant: None });
        self.shapes.insert(name.clone(), shape);
        Ok(Value::Dyn { sdk: name, shape, rank })
    }

    /// A per-channel affine map `scale[c] * x + shift[c]` of `x` (1x1 depthwise conv).
    fn affine(
        &mut self,
        node: &NodeProto,
        x: (String, [usize; 3], usize),
        scale: Vec<f32>,
        shift: Vec<f32>,
    ) -> Result<Value> {
        let (sdk, shape, rank) = x;
        let c = shape[0];
        ensure!(
            scale.iter().chain(&shift).all(|v| v.is_finite()),
            "its per-channel scale or shift is not finite (a zero variance or divisor?)"
        );
        let layer =
            FloatLayer { shape: LayerShape { out: c, cin: c, kernel: [1, 1], groups: c }, weight: scale, bias: shift };
        let op = Op::Conv2d(Conv2d {
            out_channels: c,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            groups: c,
            act: Activation::None,
        });
        let v = self.push(node, &[sdk], op, Some(layer), rank)?;
        if let Value::Dyn { sdk, .. } = &v {
            self.roles.insert(sdk.clone(), Role::Affine);
        }
        Ok(v)
    }

    fn activation(&mut self, node: &NodeProto, act: Activation) -> Result<Value> {
        let (sdk, _, rank) = self.dyn_input(node, 0)?;
        let v = self.push(node, &[sdk], Op::Scale(Scale { factor: 1.0, act }), None, rank)?;
        if let Value::Dyn { sdk, .. } = &v {
            self.roles.insert(sdk.clone(), Role::Activation);
        }
        Ok(v)
    }

    fn node(&mut self, node: &NodeProto) -> Result<()> {
        ensure!(
            node.domain.is_empty() || node.domain == "ai.onnx",
            "operator {}::{} is not supported (supported: {})",
            node.domain,
            node.op_type,
            SUPPORTED_OPS.join(", ")
        );
        for (k, i) in node.input.iter().enumerate() {
            if !i.is_empty() {
                self.get(i).with_context(|| format!("input {k}"))?;
            }
        }
        let v = match node.op_type.as_str() {
            "Constant" => Value::Const(self.constant(node)?),
            "Identity" | "Dropout" => {
                ensure!(
                    node.output.get(1).is_none_or(|m| m.is_empty()),
                    "a Dropout whose mask is read is not supported (inference has no mask)"
                );
                self.get(node.input.first().context("has no input")?)?.clone()
            }
            "Conv" => self.conv(node)?,
            "BatchNormalization" => {
                let x = self.dyn_input(node, 0)?;
                let c = x.1[0];
                let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|k| self.const_input(node, k));
                let [gamma, beta, mean, var] =
                    [gamma?, beta?, mean?, var?].map(|t| t.map(|t| t.f32s()).filter(|v| v.len() == c));
                let (Some(gamma), Some(beta), Some(mean), Some(var)) = (gamma, beta, mean, var) else {
                    bail!("scale, bias, mean and variance must be constants of {c} values (the input's channels)");
                };
                let eps = attr_f(node, "epsilon", 1e-5);
                let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
                let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
                self.affine(node, x, scale, shift)?
            }
            "Relu" => self.activation(node, Activation::Relu)?,
            "Sigmoid" => self.activation(node, Activation::Sigmoid)?,
            "HardSwish" => self.activation(node, Activation::Hardswish)?,
            "Gelu" => {
                // The SDK's GELU is the tanh form; the exact (erf) one differs by up to 1e-3.
                let approximate = attr_str(node, "approximate");
                ensure!(
                    approximate == "tanh",
                    "Gelu with approximate = {:?} (erf) is not supported: the SDK computes the tanh form; export \
                     with nn.GELU(approximate=\"tanh\")",
                    if approximate.is_empty() { "none" } else { approximate.as_str() }
                );
                self.activation(node, Activation::Gelu)?
            }
            "Clip" => {
                let bound = |k: usize, name: &str| -> Result<Option<f32>> {
                    Ok(match self.const_input(node, k)? {
                        Some(c) => Some(c.scalar().with_context(|| format!("the {name} bound is not a scalar"))?),
                        None => attr(node, name).map(|a| a.f),
                    })
                };
                let (lo, hi) = (bound(1, "min")?, bound(2, "max")?);
                let act = match (lo, hi) {
                    (Some(l), Some(h)) if l == 0.0 && h == 6.0 => Activation::Relu6,
                    (Some(0.0), None) => Activation::Relu,
                    _ => bail!("Clip({lo:?}, {hi:?}) is not supported: only Clip(0, 6) (ReLU6) and Clip(0) (ReLU)"),
                };
                self.activation(node, act)?
            }
            "MaxPool" | "AveragePool" => self.pool(node)?,
            "GlobalAveragePool" | "GlobalMaxPool" | "ReduceMean" => {
                let (sdk, shape, rank) = self.dyn_input(node, 0)?;
                ensure!(rank == 4, "needs an [N, C, H, W] input");
                let keep = if node.op_type == "ReduceMean" {
                    let axes = match self.const_input(node, 1)? {
                        Some(c) => c.ints("axes")?,
                        None => attr_ints(node, "axes").unwrap_or_default(),
                    };
                    let mut axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
                    axes.sort_unstable();
                    ensure!(axes == [2, 3], "ReduceMean over axes {axes:?}: only the mean over H and W is supported");
                    attr_int(node, "keepdims", 1) != 0
                } else {
                    true
                };
                let op = if node.op_type == "GlobalMaxPool" {
                    Op::GlobalMaxPool(GlobalMaxPool { act: Activation::None })
                } else {
                    Op::GlobalAvgPool(GlobalAvgPool { act: Activation::None })
                };
                let _ = shape;
                self.push(node, &[sdk], op, None, if keep { 4 } else { 2 })?
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arithmetic(node)?,
            "Flatten" => {
                let (sdk, shape, rank) = self.dyn_input(node, 0)?;
                ensure!(attr_int(node, "axis", 1) == 1, "only Flatten(axis = 1) is supported");
                self.flatten(node, sdk, shape, rank)?
            }
            "Reshape" => self.reshape(node)?,
            "Squeeze" | "Unsqueeze" => self.squeeze(node)?,
            "Gemm" | "MatMul" => self.linear(node)?,
            "Shape" => {
                ensure!(
                    attr(node, "start").is_none() && attr(node, "end").is_none(),
                    "Shape with start or end is not supported"
                );
                let (_, [c, h, w], rank) = self.dyn_input(node, 0)?;
                let dims = if rank == 4 { vec![1, c as i64, h as i64, w as i64] } else { vec![1, c as i64] };
                Value::Const(Const { dims: vec![dims.len()], data: Data::I64(dims) })
            }
            "Gather" => {
                let data = self.const_input(node, 0)?.context("Gather of an image value is not supported")?;
                let idx = self.const_input(node, 1)?.context("indices must be constant")?.ints("indices")?;
                ensure!(data.dims.len() == 1 && attr_int(node, "axis", 0) == 0, "only Gather from a 1-D constant");
                let n = data.len() as i64;
                let picked = idx
                    .iter()
                    .map(|&i| {
                        let i = if i < 0 { i + n } else { i };
                        data.ints("data").ok().and_then(|d| d.get(i as usize).copied())
                    })
                    .collect::<Option<Vec<i64>>>()
                    .context("an index is out of range")?;
                let dims = if self.const_input(node, 1)?.is_some_and(|c| c.dims.is_empty()) {
                    vec![]
                } else {
                    vec![picked.len()]
                };
                Value::Const(Const { dims, data: Data::I64(picked) })
            }
            "Concat" => {
                let mut all = Vec::new();
                for k in 0..node.input.len() {
                    let c = self
                        .const_input(node, k)?
                        .context("Concat of image values is not supported (only of constant shapes)")?;
                    all.extend(c.ints("a Concat input")?);
                }
                ensure!(all.len() <= 64, "Concat of {} values: only short shape vectors are supported", all.len());
                Value::Const(Const { dims: vec![all.len()], data: Data::I64(all) })
            }
            other => {
                bail!("operator {other} is not supported (supported: {})", SUPPORTED_OPS.join(", "))
            }
        };
        self.output(node, v)
    }

    fn constant(&self, node: &NodeProto) -> Result<Const> {
        let a = node.attribute.first().context("has no value attribute")?;
        Ok(match a.name.as_str() {
            "value" => decode(a.t.as_ref().context("`value` holds no tensor")?, self.dir)?,
            "value_float" => Const { dims: vec![], data: Data::F32(vec![a.f]) },
            "value_floats" => Const { dims: vec![a.floats.len()], data: Data::F32(a.floats.clone()) },
            "value_int" => Const { dims: vec![], data: Data::I64(vec![a.i]) },
            "value_ints" => Const { dims: vec![a.ints.len()], data: Data::I64(a.ints.clone()) },
            other => bail!("a Constant given as `{other}` is not supported"),
        })
    }

    fn conv(&mut self, node: &NodeProto) -> Result<Value> {
        let (sdk, [c, _, _], rank) = self.dyn_input(node, 0)?;
        ensure!(rank == 4, "needs an [N, C, H, W] input");
        let w = self.const_input(node, 1)?.context("the weight must be a constant")?;
        let &[o, cg, kh, kw] = w.dims.as_slice() else {
            bail!("the weight has shape {:?}, not [O, C/groups, kH, kW]", w.dims)
        };
        let groups =
            usize::try_from(attr_int(node, "group", 1)).ok().filter(|&g| g >= 1).context("group must be >= 1")?;
        ensure!([o, cg, kh, kw].iter().all(|&d| d > 0), "the weight [{o}, {cg}, {kh}, {kw}] is empty");
        ensure!(
            cg.checked_mul(groups) == Some(c) && o % groups == 0,
            "the weight [{o}, {cg}, {kh}, {kw}] with {groups} groups does not agree with the input's {c} channels"
        );
        ensure!(pair(node, "dilations", 1)? == [1, 1], "dilated convolutions are not supported");
        if let Some(k) = attr_ints(node, "kernel_shape") {
            ensure!(k == [kh as i64, kw as i64], "kernel_shape {k:?} does not agree with the weight [{kh}, {kw}]");
        }
        let bias = match self.const_input(node, 2)? {
            Some(b) => {
                ensure!(b.len() == o, "the bias has {} values for {o} output channels", b.len());
                b.f32s()
            }
            None => vec![0.0; o],
        };
        let op = Op::Conv2d(Conv2d {
            out_channels: o,
            kernel: [kh, kw],
            stride: pair(node, "strides", 1)?,
            padding: pads(node)?,
            groups,
            act: Activation::None,
        });
        let layer =
            FloatLayer { shape: LayerShape { out: o, cin: c, kernel: [kh, kw], groups }, weight: w.f32s(), bias };
        self.push(node, &[sdk], op, Some(layer), 4)
    }

    fn pool(&mut self, node: &NodeProto) -> Result<Value> {
        let (sdk, [_, h, w], rank) = self.dyn_input(node, 0)?;
        ensure!(rank == 4, "needs an [N, C, H, W] input");
        let kernel = pair(node, "kernel_shape", 0)?;
        let stride = pair(node, "strides", 1)?;
        let padding = pads(node)?;
        ensure!(pair(node, "dilations", 1)? == [1, 1], "dilated pooling is not supported");
        if attr_int(node, "ceil_mode", 0) != 0 {
            // Ceil mode changes nothing where every window fits exactly.
            for (size, k, s, p) in [(h, kernel[0], stride[0], padding[0]), (w, kernel[1], stride[1], padding[1])] {
                let span = (size + 2 * p).checked_sub(k).context("the window is larger than the input")?;
                ensure!(s > 0 && span % s == 0, "ceil_mode = 1 with windows that overhang the input is not supported");
            }
        }
        let op = if node.op_type == "MaxPool" {
            ensure!(node.output.len() <= 1 || node.output[1].is_empty(), "MaxPool's indices output is not supported");
            Op::MaxPool(MaxPool { kernel, stride, padding, act: Activation::None })
        } else {
            ensure!(
                padding == [0, 0] || attr_int(node, "count_include_pad", 0) != 0,
                "AveragePool with padding and count_include_pad = 0 is not supported (the SDK counts padded cells)"
            );
            Op::AvgPool(AvgPool { kernel, stride, padding, act: Activation::None })
        };
        self.push(node, &[sdk], op, None, 4)
    }

    /// `Add`, `Sub`, `Mul`, `Div`: of two image values (Add only), or of an image value
    /// and a constant broadcast per channel (an affine map); constants fold.
    fn arithmetic(&mut self, node: &NodeProto) -> Result<Value> {
        let op = node.op_type.as_str();
        if self.is_const(node, 0) && self.is_const(node, 1) {
            let (a, b) = (self.const_input(node, 0)?.context("a")?, self.const_input(node, 1)?.context("b")?);
            return const_arithmetic(op, &a, &b);
        }
        if !self.is_const(node, 0) && !self.is_const(node, 1) {
            let (a, sa, ra) = self.dyn_input(node, 0)?;
            let (b, sb, _) = self.dyn_input(node, 1)?;
            ensure!(op == "Add", "{op} of two image values is not supported (only Add; {op} by a constant is)");
            ensure!(sa == sb, "the shapes do not agree: {sa:?} and {sb:?} (no broadcasting between image values)");
            return self.push(node, &[a, b], Op::Add(Add { act: Activation::None }), None, ra);
        }
        let x_first = !self.is_const(node, 0);
        let x = self.dyn_input(node, if x_first { 0 } else { 1 })?;
        let k = self.const_input(node, if x_first { 1 } else { 0 })?.context("the constant")?;
        let c = x.1[0];
        // Broadcast per channel: a scalar; [C, 1, 1] or [1, C, 1, 1] over [N, C, H, W];
        // [F] or [1, F] over [N, F] (numpy's rules align the trailing axes).
        let d = &k.dims;
        let ones_before = |n: usize| d.iter().take(n).all(|&v| v == 1);
        let per_channel = if x.2 == 4 {
            d.len() >= 3 && d[d.len() - 3] == c && d[d.len() - 2..].iter().all(|&v| v == 1) && ones_before(d.len() - 3)
        } else {
            d.last() == Some(&c) && ones_before(d.len() - 1)
        };
        let values = k.f32s();
        let values: Vec<f32> = if d.iter().all(|&v| v == 1) {
            vec![values.first().copied().unwrap_or(0.0); c]
        } else if per_channel {
            values
        } else {
            bail!("the constant of shape {d:?} does not broadcast per channel over [N, {c}, ...]")
        };
        let ones = vec![1.0; c];
        let zeros = vec![0.0; c];
        let (scale, shift) = match (op, x_first) {
            ("Add", _) => (ones, values),
            ("Sub", true) => (ones, values.iter().map(|v| -v).collect()),
            ("Sub", false) => (vec![-1.0; c], values),
            ("Mul", _) => (values, zeros),
            ("Div", true) => {
                ensure!(values.iter().all(|&v| v != 0.0), "division by zero");
                (values.iter().map(|v| 1.0 / v).collect(), zeros)
            }
            _ => bail!("a constant divided by an image value is not supported"),
        };
        self.affine(node, x, scale, shift)
    }

    fn flatten(&mut self, node: &NodeProto, sdk: String, shape: [usize; 3], rank: usize) -> Result<Value> {
        if rank == 2 || (shape[1] == 1 && shape[2] == 1) {
            return Ok(Value::Dyn { sdk, shape, rank: 2 });
        }
        self.push(node, &[sdk], Op::Flatten(Flatten {}), None, 2)
    }

    fn reshape(&mut self, node: &NodeProto) -> Result<Value> {
        if let Some(data) = self.const_input(node, 0).ok().flatten() {
            let target = self.const_input(node, 1)?.context("the shape must be constant")?.ints("shape")?;
            let (dims, n) = element_count("reshape", &target.iter().map(|&d| d.max(1)).collect::<Vec<_>>())?;
            ensure!(n == data.len() && !target.contains(&-1), "constant reshapes with -1 are not supported");
            return Ok(Value::Const(Const { dims, ..data }));
        }
        let (sdk, shape, rank) = self.dyn_input(node, 0)?;
        let target = self.const_input(node, 1)?.context("the shape must be constant")?.ints("shape")?;
        let [c, h, w] = shape;
        let batch_ok = |d: i64| d == 0 || d == -1 || d == 1;
        let total = (c * h * w) as i64;
        match *target.as_slice() {
            [b, f] if batch_ok(b) && (f == total || (f == -1 && b != -1)) => self.flatten(node, sdk, shape, rank),
            [b, f, 1, 1] if batch_ok(b) && h == 1 && w == 1 && (f == c as i64 || f == -1) => {
                Ok(Value::Dyn { sdk, shape, rank: 4 })
            }
            _ => bail!("Reshape of [N, {c}, {h}, {w}] to {target:?}: only flattening to [N, features] is supported"),
        }
    }

    fn squeeze(&mut self, node: &NodeProto) -> Result<Value> {
        let axes = match self.const_input(node, 1)? {
            Some(c) => c.ints("axes")?,
            None => attr_ints(node, "axes").unwrap_or_default(),
        };
        if let Some(c) = self.const_input(node, 0).ok().flatten() {
            // Shape arithmetic: a scalar becomes [1] and back.
            let dims = if node.op_type == "Unsqueeze" { vec![c.len()] } else { vec![] };
            ensure!(c.len() == 1 || node.op_type == "Unsqueeze", "only scalar constants are squeezed");
            return Ok(Value::Const(Const { dims: if c.len() == 1 { dims } else { vec![c.len()] }, ..c }));
        }
        let (sdk, shape, rank) = self.dyn_input(node, 0)?;
        let mut axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
        axes.sort_unstable();
        ensure!(shape[1] == 1 && shape[2] == 1, "only the 1x1 spatial axes of [N, C, 1, 1] can be squeezed");
        match (node.op_type.as_str(), rank, axes.as_slice()) {
            ("Squeeze", 4, [2, 3]) => Ok(Value::Dyn { sdk, shape, rank: 2 }),
            ("Squeeze", 4, []) if shape[0] > 1 => Ok(Value::Dyn { sdk, shape, rank: 2 }),
            ("Unsqueeze", 2, [2, 3]) => Ok(Value::Dyn { sdk, shape, rank: 4 }),
            _ => bail!("{} of axes {axes:?} of a rank-{rank} value is not supported", node.op_type),
        }
    }

    fn linear(&mut self, node: &NodeProto) -> Result<Value> {
        let (sdk, shape, rank) = self.dyn_input(node, 0)?;
        ensure!(rank == 2, "needs an [N, features] input (flatten first)");
        let f = shape[0];
        let b = self.const_input(node, 1)?.context("the weight must be a constant")?;
        let &[r, k] = b.dims.as_slice() else { bail!("the weight has shape {:?}, not 2-D", b.dims) };
        let gemm = node.op_type == "Gemm";
        ensure!(!gemm || attr_int(node, "transA", 0) == 0, "Gemm with transA = 1 is not supported");
        let trans_b = gemm && attr_int(node, "transB", 0) != 0;
        let (out, inp) = if trans_b { (r, k) } else { (k, r) };
        ensure!(inp == f, "the weight {:?} does not agree with the input's {f} features", b.dims);
        ensure!(out > 0 && out <= 1 << 24, "the weight {:?} gives {out} outputs", b.dims);
        let alpha = if gemm { attr_f(node, "alpha", 1.0) } else { 1.0 };
        let beta = if gemm { attr_f(node, "beta", 1.0) } else { 1.0 };
        let v = b.f32s();
        // The logical layout is [out][in].
        let weight: Vec<f32> = (0..out)
            .flat_map(|o| (0..inp).map(move |i| if trans_b { (o, i) } else { (i, o) }))
            .map(|(a, c)| alpha * v.get(a * k + c).copied().unwrap_or(0.0))
            .collect();
        let bias = match self.const_input(node, 2)? {
            Some(c) if c.len() == out => c.f32s().iter().map(|x| beta * x).collect(),
            Some(c) if c.len() == 1 => vec![beta * c.f32s().first().copied().unwrap_or(0.0); out],
            Some(c) => bail!("the bias of shape {:?} does not agree with {out} outputs", c.dims),
            None => vec![0.0; out],
        };
        let layer = FloatLayer { shape: LayerShape { out, cin: f, kernel: [1, 1], groups: 1 }, weight, bias };
        self.push(node, &[sdk], Op::Linear(Linear { out_features: out, act: Activation::None }), Some(layer), 2)
    }
}

/// `Add`, `Sub`, `Mul`, `Div` of two constants: equal shapes, or a single value on
/// either side (general broadcasting is refused); integers stay integers (`Div`
/// truncates, as ONNX's integer division does).
fn const_arithmetic(op: &str, a: &Const, b: &Const) -> Result<Value> {
    let dims = if a.len() == 1 && b.len() != 1 { b.dims.clone() } else { a.dims.clone() };
    ensure!(
        a.dims == b.dims || a.len() == 1 || b.len() == 1,
        "constant {op} of shapes {:?} and {:?}: only equal shapes or a single value broadcast",
        a.dims,
        b.dims
    );
    let n = a.len().max(b.len());
    if let (Data::I64(x), Data::I64(y)) = (&a.data, &b.data) {
        let pick = |v: &[i64], i: usize| v.get(i).or(v.first()).copied().unwrap_or(0);
        let v = (0..n)
            .map(|i| {
                let (x, y) = (pick(x, i), pick(y, i));
                match op {
                    "Add" => x.checked_add(y),
                    "Sub" => x.checked_sub(y),
                    "Mul" => x.checked_mul(y),
                    _ => x.checked_div(y),
                }
            })
            .collect::<Option<Vec<i64>>>()
            .with_context(|| format!("integer {op} of constants overflows or divides by zero"))?;
        return Ok(Value::Const(Const { dims, data: Data::I64(v) }));
    }
    let pick = |v: &[f32], i: usize| v.get(i).or(v.first()).copied().unwrap_or(0.0);
    let (x, y) = (a.f32s(), b.f32s());
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let (x, y) = (pick(&x, i), pick(&y, i));
            match op {
                "Add" => x + y,
                "Sub" => x - y,
                "Mul" => x * y,
                _ => x / y,
            }
        })
        .collect();
    ensure!(v.iter().all(|x| x.is_finite()), "constant {op} gives a non-finite value");
    Ok(Value::Const(Const { dims, data: Data::F32(v) }))
}

/// The op's fused activation, where it has one.
fn act_slot(op: &mut Op) -> Option<&mut Activation> {
    match op {
        Op::Conv2d(o) => Some(&mut o.act),
        Op::Linear(o) => Some(&mut o.act),
        Op::MaxPool(o) => Some(&mut o.act),
        Op::AvgPool(o) => Some(&mut o.act),
        Op::GlobalAvgPool(o) => Some(&mut o.act),
        Op::GlobalMaxPool(o) => Some(&mut o.act),
        Op::Add(o) => Some(&mut o.act),
        Op::Scale(o) => Some(&mut o.act),
        Op::Flatten(_) => None,
    }
}

/// The second pass: folds affine maps and activations into the node before them where
/// that node's value has no other reader (see the module docs).
fn fuse(graph: &mut Graph, layers: &mut BTreeMap<String, FloatLayer>, roles: &HashMap<String, Role>) -> Result<()> {
    let mut i = 0;
    while i < graph.nodes.len() {
        let node = graph.nodes[i].clone();
        let role = roles.get(&node.name).copied();
        let Some(input) = node.inputs.first().filter(|_| role.is_some()) else {
            i += 1;
            continue;
        };
        let readers = graph.nodes.iter().filter(|n| n.inputs.contains(input)).count();
        let producer = graph.nodes.iter().position(|n| &n.name == input);
        let fusable = readers == 1 && graph.output != *input;
        let folded = match (role, producer) {
            (Some(Role::Affine), Some(p)) if fusable => {
                let prev = &graph.nodes[p];
                let dense = matches!(&prev.op, Op::Conv2d(_) | Op::Linear(_)) && prev.op.act() == Activation::None;
                match (dense, layers.get(&node.name).cloned()) {
                    (true, Some(affine)) => {
                        let layer = layers.get_mut(&prev.name).context("internal: a layer is missing")?;
                        let per_out = layer.shape.k();
                        for (o, (s, t)) in affine.weight.iter().zip(&affine.bias).enumerate() {
                            for w in layer.weight.iter_mut().skip(o * per_out).take(per_out) {
                                *w *= s;
                            }
                            if let Some(b) = layer.bias.get_mut(o) {
                                *b = *b * s + t;
                            }
                        }
                        layers.remove(&node.name);
                        true
                    }
                    _ => false,
                }
            }
            (Some(Role::Activation), Some(p)) if fusable => {
                let act = node.op.act();
                match act_slot(&mut graph.nodes[p].op) {
                    Some(slot) if *slot == Activation::None => {
                        *slot = act;
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if folded {
            // Readers of the folded node now read its producer.
            let (gone, to) = (node.name.clone(), input.clone());
            graph.nodes.remove(i);
            for n in &mut graph.nodes {
                n.inputs.iter_mut().filter(|x| **x == gone).for_each(|x| *x = to.clone());
            }
            if graph.output == gone {
                graph.output = to;
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_onnx::onnx::{
        tensor_proto::DataType, tensor_shape_proto, type_proto, GraphProto, TensorProto, TensorShapeProto, TypeProto,
        ValueInfoProto,
    };

    use super::*;

    fn f32s(name: &str, dims: &[i64], v: impl IntoIterator<Item = f32>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            float_data: v.into_iter().collect(),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), ints: v.to_vec(), ..Default::default() }
    }

    fn image_input() -> ValueInfoProto {
        let dim = |v: i64| tensor_shape_proto::Dimension { value: Some(Dim::DimValue(v)), ..Default::default() };
        ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto { dim: vec![dim(1), dim(3), dim(32), dim(32)] }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Conv -> BatchNormalization -> Relu -> (Add with the Conv output when `shared`) ->
    /// GlobalAveragePool -> Flatten -> Gemm.
    fn model(shared: bool) -> ModelProto {
        let bn = |n: &str, v: f32| f32s(n, &[4], [v, v + 1.0, v + 2.0, v + 3.0]);
        let mut nodes = vec![
            node("Conv", &["x", "w"], "conv", vec![ints("pads", &[1, 1, 1, 1])]),
            node("BatchNormalization", &["conv", "gamma", "beta", "mean", "var"], "bn", vec![]),
            node("Relu", &["bn"], "relu", vec![]),
        ];
        let last = if shared {
            nodes.push(node("Add", &["relu", "conv"], "add", vec![]));
            "add"
        } else {
            "relu"
        };
        nodes.push(node("GlobalAveragePool", &[last], "gap", vec![]));
        nodes.push(node("Flatten", &["gap"], "flat", vec![]));
        nodes.push(node(
            "Gemm",
            &["flat", "fc", "fc_b"],
            "logits",
            vec![AttributeProto { name: "transB".into(), i: 1, ..Default::default() }],
        ));
        let graph = GraphProto {
            node: nodes,
            initializer: vec![
                f32s("w", &[4, 3, 3, 3], (0..108).map(|i| (i % 7) as f32 * 0.1 - 0.3)),
                bn("gamma", 0.5),
                bn("beta", -1.0),
                bn("mean", 0.1),
                bn("var", 1.0),
                f32s("fc", &[10, 4], (0..40).map(|i| i as f32 * 0.01)),
                f32s("fc_b", &[10], (0..10).map(|i| i as f32)),
            ],
            input: vec![image_input()],
            output: vec![ValueInfoProto { name: "logits".into(), ..Default::default() }],
            ..Default::default()
        };
        ModelProto { graph: Some(graph), ..Default::default() }
    }

    fn ops(l: &Lowered) -> Vec<String> {
        l.model.graph.nodes.iter().map(|n| format!("{}:{:?}", n.op.kind(), n.op.act())).collect()
    }

    #[test]
    fn batch_norm_and_activation_fold_into_the_convolution() {
        let l = lower(&model(false), Path::new(".")).unwrap();
        assert_eq!(ops(&l), ["conv2d:Relu", "global_avg_pool:None", "linear:None"]);
        assert_eq!(l.classes, 10);
        // The BN scale gamma / sqrt(var + eps) multiplies each output channel's weights.
        let conv = &l.model.layers["conv"];
        let s1 = 1.5 / (2.0f32 + 1e-5).sqrt();
        assert!((conv.weight[27] - (0.0 * 0.1 - 0.3 + 0.6) * s1).abs() < 1e-6, "{}", conv.weight[27]);
        assert!((conv.bias[1] - (0.0 - 1.1 * s1)).abs() < 1e-6, "{}", conv.bias[1]);
        // Gemm with transB keeps the [out][in] layout.
        assert!((l.model.layers["logits"].weight[5] - 0.05).abs() < 1e-7);
    }

    #[test]
    fn an_affine_map_of_a_shared_value_stays_standalone() {
        // The convolution's output is also read by the Add: the batch norm cannot fold
        // into it, so it stays a depthwise 1x1 convolution and takes the Relu.
        let l = lower(&model(true), Path::new(".")).unwrap();
        assert_eq!(ops(&l), ["conv2d:None", "conv2d:Relu", "add:None", "global_avg_pool:None", "linear:None"]);
        assert_eq!(l.model.layers["bn"].shape.groups, 4, "the batch norm is a depthwise 1x1 convolution");
    }

    #[test]
    fn constant_arithmetic_keeps_shapes_and_integers() {
        let c = |dims: &[usize], data: Data| Const { dims: dims.to_vec(), data };
        let get = |v: Result<Value>| match v.unwrap() {
            Value::Const(c) => c,
            other => panic!("{other:?}"),
        };
        // A [1, C, 1, 1] buffer times a scalar stays [1, C, 1, 1] (so it still broadcasts
        // per channel), and a scalar on the left works.
        let mean = c(&[1, 3, 1, 1], Data::F32(vec![0.5, 0.25, 1.0]));
        let r = get(const_arithmetic("Mul", &mean, &c(&[], Data::F32(vec![2.0]))));
        assert_eq!((r.dims, r.data), (vec![1, 3, 1, 1], Data::F32(vec![1.0, 0.5, 2.0])));
        let r = get(const_arithmetic("Div", &c(&[], Data::F32(vec![1.0])), &mean));
        assert_eq!((r.dims, r.data), (vec![1, 3, 1, 1], Data::F32(vec![2.0, 4.0, 1.0])));
        // Integer shape arithmetic stays integer; Div truncates.
        let r = get(const_arithmetic("Div", &c(&[1], Data::I64(vec![7])), &c(&[], Data::I64(vec![2]))));
        assert_eq!(r.data, Data::I64(vec![3]));
        // Shapes that would need general broadcasting, overflow, division by zero: refused.
        let row = c(&[1, 3], Data::F32(vec![1.0; 3]));
        let col = c(&[3, 1], Data::F32(vec![1.0; 3]));
        assert!(const_arithmetic("Add", &row, &col).is_err());
        assert!(const_arithmetic("Mul", &c(&[1], Data::I64(vec![i64::MAX])), &c(&[1], Data::I64(vec![2]))).is_err());
        assert!(const_arithmetic("Div", &c(&[1], Data::I64(vec![1])), &c(&[1], Data::I64(vec![0]))).is_err());
        assert!(const_arithmetic("Div", &c(&[1], Data::F32(vec![1.0])), &c(&[1], Data::F32(vec![0.0]))).is_err());
    }

    #[test]
    fn unsupported_nodes_are_named() {
        let mut m = model(false);
        m.graph.as_mut().unwrap().node[2].op_type = "Celu".into();
        let e = format!("{:#}", lower(&m, Path::new(".")).unwrap_err());
        assert!(e.contains("node `relu` (Celu)") && e.contains("operator Celu is not supported"), "{e}");
        assert!(e.contains("HardSwish"), "{e}");
        let mut m = model(false);
        m.graph.as_mut().unwrap().node[0].attribute.push(ints("dilations", &[2, 2]));
        let e = format!("{:#}", lower(&m, Path::new(".")).unwrap_err());
        assert!(e.contains("node `conv` (Conv)") && e.contains("dilated"), "{e}");
    }
}
