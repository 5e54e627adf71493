//! Test models built from random weights, and the reference forward pass.
#![allow(dead_code)]

use std::collections::HashMap;

use cifar_sdk::artifact::layers::{self, FloatLayer};
use cifar_sdk::artifact::*;
use cifar_sdk::QuantParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const CLASSES: usize = 10;

fn conv(out: usize, k: usize, s: usize, p: usize, groups: usize, act: Activation) -> Op {
    Op::Conv2d(Conv2d { out_channels: out, kernel: [k; 2], stride: [s; 2], padding: [p; 2], groups, act })
}

fn node(name: &str, inputs: &[&str], op: Op) -> Node {
    Node { name: name.into(), inputs: inputs.iter().map(|s| s.to_string()).collect(), op, quant: None }
}

/// A graph that uses every op: grouped, strided, padded and pointwise convs, max/avg
/// pools, residual adds, scale, flatten, global pools and linear layers.
pub fn zoo_graph() -> Graph {
    let pool = |k: usize, s: usize, p: usize, act| {
        Op::MaxPool(MaxPool { kernel: [k; 2], stride: [s; 2], padding: [p; 2], act })
    };
    let nodes = vec![
        node("c1", &["input"], conv(8, 3, 1, 1, 1, Activation::Relu)),
        node("c2", &["c1"], conv(8, 3, 2, 1, 2, Activation::Gelu)),
        node("p1", &["c2"], pool(2, 2, 0, Activation::None)),
        node("c3", &["p1"], conv(8, 1, 1, 0, 1, Activation::None)),
        node("add1", &["p1", "c3"], Op::Add(Add { act: Activation::Relu })),
        node(
            "ap",
            &["add1"],
            Op::AvgPool(AvgPool { kernel: [3; 2], stride: [1; 2], padding: [1; 2], act: Activation::None }),
        ),
        node("sc", &["ap"], Op::Scale(Scale { factor: 0.5, act: Activation::Gelu })),
        node("gp", &["sc"], Op::GlobalAvgPool(GlobalAvgPool { act: Activation::None })),
        node("gm", &["sc"], Op::GlobalMaxPool(GlobalMaxPool { act: Activation::Relu })),
        node("g", &["gp", "gm"], Op::Add(Add { act: Activation::None })),
        node("p2", &["sc"], pool(3, 4, 1, Activation::Gelu)),
        node("fl", &["p2"], Op::Flatten(Flatten {})),
        node("lin1", &["fl"], Op::Linear(Linear { out_features: 8, act: Activation::Relu })),
        node("add2", &["lin1", "g"], Op::Add(Add { act: Activation::None })),
        node("head", &["add2"], Op::Linear(Linear { out_features: CLASSES, act: Activation::None })),
    ];
    Graph {
        precision: Precision::F32,
        input: [3, 32, 32],
        input_quant: None,
        weight_bits: None,
        nodes,
        output: "head".into(),
    }
}

/// The f32 layers of a graph, by node name (logical layout).
pub type Weights = HashMap<String, FloatLayer>;

pub fn random_weights(g: &Graph, seed: u64) -> Weights {
    let info = cifar_sdk::artifact::validate::validate_graph(g).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Weights::new();
    for (n, i) in g.nodes.iter().zip(&info.nodes) {
        let Some(shape) = n.op.layer(&i.input_shapes) else { continue };
        let bound = (3.0 / shape.k() as f32).sqrt();
        let weight = (0..shape.logical_len()).map(|_| rng.gen_range(-bound..bound)).collect();
        let bias = (0..shape.out).map(|_| rng.gen_range(-0.2..0.2)).collect();
        w.insert(n.name.clone(), FloatLayer { shape, weight, bias });
    }
    w
}

pub fn metadata(graph: Graph) -> ModelMetadata {
    ModelMetadata {
        graph,
        labels: (0..CLASSES).map(|i| format!("class{i}")).collect(),
        preprocessing: Preprocessing::default(),
        provenance: Provenance { trainer_version: "test".into(), ..Default::default() },
        quality: Quality::default(),
        drift: None,
    }
}

pub fn f32_writer(g: &Graph, w: &Weights) -> ArtifactWriter {
    let mut wr = ArtifactWriter::new(metadata(g.clone()));
    for (n, l) in w {
        l.write(n, &mut wr).unwrap();
    }
    wr
}

/// The int8 version: node output ranges from the reference run on `images`.
pub fn int8_writer(g: &Graph, w: &Weights, images: &[f32], n: usize) -> ArtifactWriter {
    let mut lo = vec![f32::INFINITY; g.nodes.len()];
    let mut hi = vec![f32::NEG_INFINITY; g.nodes.len()];
    for img in images.chunks(3 * 32 * 32).take(n) {
        reference(g, w, img, &mut |i, v: &mut Vec<f32>| {
            for &x in v.iter() {
                lo[i] = lo[i].min(x);
                hi[i] = hi[i].max(x);
            }
        });
    }
    let mut g8 = g.clone();
    g8.precision = Precision::Int8;
    g8.weight_bits = Some(layers::WEIGHT_BITS);
    g8.input_quant = Some(QuantParams::from_range(-2.5, 2.5));
    for (i, nd) in g8.nodes.iter_mut().enumerate() {
        if nd.name != g.output {
            nd.quant = Some(QuantParams::from_range(lo[i], hi[i]));
        }
    }
    let mut wr = ArtifactWriter::new(metadata(g8));
    for (name, l) in w {
        l.quantize().write(name, &mut wr).unwrap();
    }
    wr
}

/// The reference forward pass of one normalized `[3][32][32]` image (the SDK's per-op
/// reference implementations, which share no code with the backends); `post(node,
/// value)` may rewrite each node's output (fake quantization).
pub fn reference(g: &Graph, w: &Weights, img: &[f32], post: &mut dyn FnMut(usize, &mut Vec<f32>)) -> Vec<f32> {
    cifar_sdk::ops::reference_forward(g, w, img, post).unwrap()
}

/// Random normalized images `[n][3][32][32]` (smooth-ish, like real ones).
pub fn random_images(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * 3 * 32 * 32).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

pub fn random_rgb8(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * 32 * 32 * 3).map(|_| rng.gen()).collect()
}

/// `w` with every layer's weight replaced by its int8 codes times their scales, as read
/// back from a compiled int8 file.
#[allow(dead_code)]
pub fn dequantized_weights(a: &cifar_sdk::artifact::Artifact, w: &Weights) -> Weights {
    w.iter()
        .map(|(name, l)| (name.clone(), layers::StoredLayer::read(a, name, l.shape).unwrap().to_float().unwrap()))
        .collect()
}
