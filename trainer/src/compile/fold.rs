//! From a trained network to the SDK's execution graph in f32: batch norm folded into
//! the convolution before it, the output scale folded into the head; layers in the
//! SDK's logical layout (`[out][in][kh][kw]`, [`cifar_sdk::artifact::layers`]), which
//! packs them for its kernels when the file is written.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use cifar_sdk::artifact::layers::{FloatLayer, LayerShape};
use cifar_sdk::artifact::{
    Activation, Add, Conv2d, GlobalAvgPool, GlobalMaxPool, Graph, Linear, MaxPool, Node, Op, Precision, INPUT_NAME,
};

use crate::model::{ModelConfig, ModelKind};
use crate::ops::batchnorm::Activation as TrainAct;

/// The f32 graph and its layers by node name.
#[derive(Debug, Clone)]
pub struct FloatModel {
    pub graph: Graph,
    pub layers: BTreeMap<String, FloatLayer>,
}

pub fn act(a: TrainAct) -> Activation {
    match a {
        TrainAct::None => Activation::None,
        TrainAct::Relu => Activation::Relu,
        TrainAct::Gelu => Activation::Gelu,
    }
}

struct Builder<'a> {
    params: &'a HashMap<String, Tensor>,
    cfg: &'a ModelConfig,
    nodes: Vec<Node>,
    layers: BTreeMap<String, FloatLayer>,
}

impl Builder<'_> {
    fn vec(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.params.get(name).with_context(|| format!("the checkpoint has no tensor {name}"))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    }

    fn push(&mut self, name: &str, inputs: &[&str], op: Op) -> String {
        self.nodes.push(Node {
            name: name.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            op,
            quant: None,
        });
        name.to_string()
    }

    /// A conv whose output passes through batch norm `bn` (eval mode): the BN's
    /// per-channel affine `s * x + t` becomes the conv's weight scale and bias. Returns
    /// the per-channel scales (a max pool between conv and BN needs them positive).
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        node: &str,
        input: &str,
        conv: &str,
        bn: &str,
        (kernel, stride, padding): (usize, usize, usize),
        act: Activation,
    ) -> Result<(String, Vec<f32>)> {
        let w = self.params.get(&format!("{conv}.weight")).with_context(|| format!("no tensor {conv}.weight"))?;
        let (out, cin) = (w.dim(0)?, w.dim(1)?);
        let k = cin * kernel * kernel;
        let mut weight = self.vec(&format!("{conv}.weight"))?;
        let gamma = self.vec(&format!("{bn}.weight"))?;
        let beta = self.vec(&format!("{bn}.bias"))?;
        let mean = self.vec(&format!("{bn}.running_mean"))?;
        let var = self.vec(&format!("{bn}.running_var"))?;
        let eps = self.cfg.bn_eps as f32;
        let mut bias = vec![0f32; out];
        let mut scales = vec![0f32; out];
        for o in 0..out {
            // The same expression as the trainer's eval-mode batch norm.
            let s = gamma[o] * (1.0 / (var[o] + eps).sqrt());
            scales[o] = s;
            bias[o] = beta[o] - mean[o] * s;
            weight[o * k..(o + 1) * k].iter_mut().for_each(|v| *v *= s);
        }
        let shape = LayerShape { out, cin, kernel: [kernel; 2], groups: 1 };
        self.layers.insert(node.into(), FloatLayer { shape, weight, bias });
        let op = Op::Conv2d(Conv2d {
            out_channels: out,
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
            groups: 1,
            act,
        });
        Ok((self.push(node, &[input], op), scales))
    }

    fn head(&mut self, input: &str, bias: bool) -> Result<String> {
        let w = self.params.get("head.weight").context("the checkpoint has no head.weight")?;
        let (out, k) = (w.dim(0)?, w.dim(1)?);
        let scale = self.cfg.output_scale as f32;
        let weight = self.vec("head.weight")?.iter().map(|v| v * scale).collect();
        let bias = if bias { self.vec("head.bias")?.iter().map(|v| v * scale).collect() } else { vec![0.0; out] };
        let shape = LayerShape { out, cin: k, kernel: [1, 1], groups: 1 };
        self.layers.insert("head".into(), FloatLayer { shape, weight, bias });
        Ok(self.push("head", &[input], Op::Linear(Linear { out_features: out, act: Activation::None })))
    }
}

/// Folds the network described by `cfg` with trained `params` into an f32 graph.
pub fn fold(cfg: &ModelConfig, params: &HashMap<String, Tensor>) -> Result<FloatModel> {
    let mut b = Builder { params, cfg, nodes: Vec::new(), layers: BTreeMap::new() };
    let a = act(cfg.act);
    match cfg.kind {
        ModelKind::Airbench => {
            let w = params.get("whiten.weight").context("the checkpoint has no whiten.weight")?;
            let (out, cin, kernel) = (w.dim(0)?, w.dim(1)?, w.dim(2)?);
            let shape = LayerShape { out, cin, kernel: [kernel; 2], groups: 1 };
            b.layers.insert(
                "whiten".into(),
                FloatLayer { shape, weight: b.vec("whiten.weight")?, bias: b.vec("whiten.bias")? },
            );
            let op = Op::Conv2d(Conv2d {
                out_channels: out,
                kernel: [kernel; 2],
                stride: [1; 2],
                padding: [0; 2],
                groups: 1,
                act: Activation::Gelu,
            });
            let mut x = b.push("whiten", &[INPUT_NAME], op);
            for g in 1..=cfg.widths.len() {
                let name = format!("group{g}");
                // conv1 -> maxpool -> BN -> act: the BN's affine commutes with the max
                // pool when its scales are positive, so it folds into conv1 and the
                // activation moves onto the pool.
                let (c1, scales) = b.conv_bn(
                    &format!("{name}.conv1"),
                    &x,
                    &format!("{name}.conv1"),
                    &format!("{name}.bn1"),
                    (3, 1, 1),
                    Activation::None,
                )?;
                if let Some(s) = scales.iter().find(|s| **s <= 0.0) {
                    bail!("{name}.bn1 has a non-positive scale ({s}): it cannot be folded across the max pool");
                }
                let pool = Op::MaxPool(MaxPool { kernel: [2; 2], stride: [2; 2], padding: [0; 2], act: a });
                let p = b.push(&format!("{name}.pool"), &[&c1], pool);
                x = b
                    .conv_bn(
                        &format!("{name}.conv2"),
                        &p,
                        &format!("{name}.conv2"),
                        &format!("{name}.bn2"),
                        (3, 1, 1),
                        a,
                    )?
                    .0;
            }
            let p = b.push("pool", &[&x], Op::GlobalMaxPool(GlobalMaxPool { act: Activation::None }));
            b.head(&p, false)?;
        }
        ModelKind::Resnet => {
            let mut x = b.conv_bn("stem", INPUT_NAME, "stem.conv", "stem.bn", (3, 1, 1), a)?.0;
            for (s, _) in cfg.widths.iter().enumerate() {
                for blk in 0..cfg.blocks {
                    let stride = if s > 0 && blk == 0 { 2 } else { 1 };
                    let n = format!("layer{}.{blk}", s + 1);
                    let c1 = b
                        .conv_bn(
                            &format!("{n}.conv1"),
                            &x,
                            &format!("{n}.conv1"),
                            &format!("{n}.bn1"),
                            (3, stride, 1),
                            a,
                        )?
                        .0;
                    let c2 = b
                        .conv_bn(
                            &format!("{n}.conv2"),
                            &c1,
                            &format!("{n}.conv2"),
                            &format!("{n}.bn2"),
                            (3, 1, 1),
                            Activation::None,
                        )?
                        .0;
                    let short = if params.contains_key(&format!("{n}.shortcut.conv.weight")) {
                        let sc = format!("{n}.shortcut");
                        b.conv_bn(
                            &sc,
                            &x,
                            &format!("{sc}.conv"),
                            &format!("{sc}.bn"),
                            (1, stride, 0),
                            Activation::None,
                        )?
                        .0
                    } else {
                        x.clone()
                    };
                    x = b.push(&format!("{n}.add"), &[&c2, &short], Op::Add(Add { act: a }));
                }
            }
            let p = b.push("pool", &[&x], Op::GlobalAvgPool(GlobalAvgPool { act: Activation::None }));
            b.head(&p, true)?;
        }
    }
    let graph = Graph {
        precision: Precision::F32,
        input: [3, cifar_sdk::INPUT_SIZE, cifar_sdk::INPUT_SIZE],
        input_quant: None,
        weight_bits: None,
        nodes: b.nodes,
        output: "head".into(),
    };
    Ok(FloatModel { graph, layers: b.layers })
}
