//! Test models built from random weights, and a naive NCHW reference forward pass that
//! shares no code with the engine.
#![allow(dead_code)]

use std::collections::HashMap;

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
    let pool =
        |k: usize, s: usize, p: usize, act| Op::MaxPool(Pool { kernel: [k; 2], stride: [s; 2], padding: [p; 2], act });
    let nodes = vec![
        node("c1", &["input"], conv(8, 3, 1, 1, 1, Activation::Relu)),
        node("c2", &["c1"], conv(8, 3, 2, 1, 2, Activation::Gelu)),
        node("p1", &["c2"], pool(2, 2, 0, Activation::None)),
        node("c3", &["p1"], conv(8, 1, 1, 0, 1, Activation::None)),
        node("add1", &["p1", "c3"], Op::Add { act: Activation::Relu }),
        node(
            "ap",
            &["add1"],
            Op::AvgPool(Pool { kernel: [3; 2], stride: [1; 2], padding: [1; 2], act: Activation::None }),
        ),
        node("sc", &["ap"], Op::Scale { factor: 0.5, act: Activation::Gelu }),
        node("gp", &["sc"], Op::GlobalAvgPool { act: Activation::None }),
        node("gm", &["sc"], Op::GlobalMaxPool { act: Activation::Relu }),
        node("g", &["gp", "gm"], Op::Add { act: Activation::None }),
        node("p2", &["sc"], pool(3, 4, 1, Activation::Gelu)),
        node("fl", &["p2"], Op::Flatten),
        node("lin1", &["fl"], Op::Linear(Linear { out_features: 8, act: Activation::Relu })),
        node("add2", &["lin1", "g"], Op::Add { act: Activation::None }),
        node("head", &["add2"], Op::Linear(Linear { out_features: CLASSES, act: Activation::None })),
    ];
    Graph { precision: Precision::F32, input: [3, 32, 32], input_quant: None, nodes, output: "head".into() }
}

/// Weights `[out][k]` and bias per weighted node.
pub type Weights = HashMap<String, (Vec<f32>, Vec<f32>, usize, usize)>;

pub fn random_weights(g: &Graph, seed: u64) -> Weights {
    let info = cifar_sdk::artifact::validate::validate_graph(g).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Weights::new();
    for (n, i) in g.nodes.iter().zip(&info.nodes) {
        let cin = i.input_shapes[0][0];
        let (out, k) = match &n.op {
            Op::Conv2d(c) => (c.out_channels, cin / c.groups * c.kernel[0] * c.kernel[1]),
            Op::Linear(l) => (l.out_features, cin),
            _ => continue,
        };
        let bound = (3.0 / k as f32).sqrt();
        let wt = (0..out * k).map(|_| rng.gen_range(-bound..bound)).collect();
        let b = (0..out).map(|_| rng.gen_range(-0.2..0.2)).collect();
        w.insert(n.name.clone(), (wt, b, out, k));
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
    for (n, (wt, b, out, k)) in w {
        wr.insert(format!("{n}.weight"), TensorData::f32(wt, &[*out, *k]));
        wr.insert(format!("{n}.bias"), TensorData::f32(b, &[*out]));
    }
    wr
}

/// Symmetric per-row int8 quantization.
pub fn quantize_rows(wt: &[f32], out: usize, k: usize) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
    let mut q = Vec::new();
    let mut scales = Vec::new();
    let mut sums = Vec::new();
    for row in wt.chunks(k).take(out) {
        let s = row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) / 127.0;
        let r: Vec<i8> = row.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8).collect();
        sums.push(r.iter().map(|&v| i32::from(v)).sum());
        q.extend(r);
        scales.push(s);
    }
    (q, scales, sums)
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
    g8.input_quant = Some(QuantParams::from_range(-2.5, 2.5));
    for (i, nd) in g8.nodes.iter_mut().enumerate() {
        if nd.name != g.output {
            nd.quant = Some(QuantParams::from_range(lo[i], hi[i]));
        }
    }
    let mut wr = ArtifactWriter::new(metadata(g8));
    for (name, (wt, b, out, k)) in w {
        let (q, s, sums) = quantize_rows(wt, *out, *k);
        wr.insert(format!("{name}.weight"), TensorData::i8(&q, &[*out, *k]));
        wr.insert(format!("{name}.bias"), TensorData::f32(b, &[*out]));
        wr.insert(format!("{name}.weight_scale"), TensorData::f32(&s, &[*out]));
        wr.insert(format!("{name}.weight_sum"), TensorData::i32(&sums, &[*out]));
    }
    wr
}

fn act(a: Activation, x: f32) -> f32 {
    match a {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + (0.797_884_6f32 * (x + 0.044_715 * x * x * x)).tanh()),
    }
}

/// Naive forward of one normalized `[3][32][32]` image; `post(node, value)` may rewrite
/// each node's output (fake quantization).
pub fn reference(g: &Graph, w: &Weights, img: &[f32], post: &mut dyn FnMut(usize, &mut Vec<f32>)) -> Vec<f32> {
    let info = cifar_sdk::artifact::validate::validate_graph(g).unwrap();
    let mut values: Vec<Vec<f32>> = vec![img.to_vec()];
    for (i, (n, inf)) in g.nodes.iter().zip(&info.nodes).enumerate() {
        let [c, h, wd] = inf.input_shapes[0];
        let x = &values[inf.inputs[0]];
        let [oc, oh, ow] = inf.shape;
        let mut y = vec![0f32; oc * oh * ow];
        let at = |x: &Vec<f32>, ch: usize, iy: isize, ix: isize| -> Option<f32> {
            (iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd)
                .then(|| x[(ch * h + iy as usize) * wd + ix as usize])
        };
        match &n.op {
            Op::Conv2d(cv) => {
                let (wt, b, _, k) = &w[&n.name];
                let (cg, og) = (c / cv.groups, oc / cv.groups);
                for o in 0..oc {
                    let gi = o / og;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut s = b[o];
                            for ci in 0..cg {
                                for ky in 0..cv.kernel[0] {
                                    for kx in 0..cv.kernel[1] {
                                        let iy = (oy * cv.stride[0] + ky) as isize - cv.padding[0] as isize;
                                        let ix = (ox * cv.stride[1] + kx) as isize - cv.padding[1] as isize;
                                        let xv = at(x, gi * cg + ci, iy, ix).unwrap_or(0.0);
                                        s += wt[o * k + (ci * cv.kernel[0] + ky) * cv.kernel[1] + kx] * xv;
                                    }
                                }
                            }
                            y[(o * oh + oy) * ow + ox] = act(cv.act, s);
                        }
                    }
                }
            }
            Op::Linear(l) => {
                let (wt, b, _, k) = &w[&n.name];
                for o in 0..oc {
                    y[o] = act(l.act, b[o] + (0..*k).map(|j| wt[o * k + j] * x[j]).sum::<f32>());
                }
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let is_max = matches!(n.op, Op::MaxPool(_));
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut m = f32::NEG_INFINITY;
                            let mut s = 0.0;
                            for ky in 0..p.kernel[0] {
                                for kx in 0..p.kernel[1] {
                                    let iy = (oy * p.stride[0] + ky) as isize - p.padding[0] as isize;
                                    let ix = (ox * p.stride[1] + kx) as isize - p.padding[1] as isize;
                                    if let Some(v) = at(x, ch, iy, ix) {
                                        m = m.max(v);
                                        s += v;
                                    }
                                }
                            }
                            let v = if is_max { m } else { s / (p.kernel[0] * p.kernel[1]) as f32 };
                            y[(ch * oh + oy) * ow + ox] = act(p.act, v);
                        }
                    }
                }
            }
            Op::GlobalAvgPool { act: a } => {
                for ch in 0..c {
                    y[ch] = act(*a, x[ch * h * wd..(ch + 1) * h * wd].iter().sum::<f32>() / (h * wd) as f32);
                }
            }
            Op::GlobalMaxPool { act: a } => {
                for ch in 0..c {
                    y[ch] =
                        act(*a, x[ch * h * wd..(ch + 1) * h * wd].iter().copied().fold(f32::NEG_INFINITY, f32::max));
                }
            }
            Op::Add { act: a } => {
                let z = &values[inf.inputs[1]];
                for j in 0..y.len() {
                    y[j] = act(*a, x[j] + z[j]);
                }
            }
            Op::Flatten => y.copy_from_slice(x),
            Op::Scale { factor, act: a } => {
                for j in 0..y.len() {
                    y[j] = act(*a, factor * x[j]);
                }
            }
        }
        post(i, &mut y);
        values.push(y);
    }
    values[info.output + 1].clone()
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
    let mut wq = w.clone();
    for (name, (wt, _, out, k)) in wq.iter_mut() {
        let q = a.i8s(&format!("{name}.weight")).unwrap();
        let s = a.f32s(&format!("{name}.weight_scale")).unwrap();
        for o in 0..*out {
            for j in 0..*k {
                wt[o * *k + j] = s[o] * f32::from(q[o * *k + j]);
            }
        }
    }
    wq
}
