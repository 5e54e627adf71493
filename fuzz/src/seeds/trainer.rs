//! Inputs for the trainer's targets: ImageFolder archives of the sample images, the
//! repository's configs, and two small CNNs in ONNX.

use std::io::Write;

use candle_onnx::onnx::{
    tensor_shape_proto::{dimension::Value as Dim, Dimension},
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use prost::Message;

use super::Seed;
use crate::fixtures_dir;

/// A tar archive of `files` (path, bytes).
fn tar_of(files: &[(String, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *bytes)?;
    }
    Ok(builder.into_inner()?)
}

pub(super) fn archives(seeds: &mut Vec<Seed>, images: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let class = |name: &str| name.split(['-', '.']).nth(1).unwrap_or("x").to_string();
    let flat: Vec<(String, &[u8])> =
        images.iter().take(3).map(|(n, b)| (format!("cifar/{}/{n}", class(n)), b.as_slice())).collect();
    let split: Vec<(String, &[u8])> = images
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, (n, b))| {
            (format!("{}/{}/{n}", if i < 2 { "train" } else { "test" }, class(&images[i % 2].0)), b.as_slice())
        })
        .collect();
    let flat_tar = tar_of(&flat)?;
    seeds.push(("dataset_tar", "classes.tar".into(), flat_tar));
    let split_tar = tar_of(&split)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&split_tar)?;
    seeds.push(("dataset_tar", "splits.tar.gz".into(), gz.finish()?));
    seeds.push(("dataset_tar", "splits.tar".into(), split_tar));
    Ok(())
}

pub(super) fn configs(seeds: &mut Vec<Seed>) -> anyhow::Result<()> {
    let dir = fixtures_dir().join("../configs");
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("sweep") {
            continue; // a sweep spec, not a config
        }
        let text = std::fs::read(&path)?;
        seeds.push(("config", name.clone(), text.clone()));
        let mut with = text;
        with.extend_from_slice(b"\0train.epochs=2\ntrain.lr=0.5\ndevice=cpu\n");
        seeds.push(("config", format!("{name}-overrides"), with));
    }
    Ok(())
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 7, ints: v.to_vec(), ..Default::default() }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 2, i: v, ..Default::default() }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// A float initializer with deterministic small values.
fn weight(name: &str, dims: &[i64], seed: u32) -> TensorProto {
    let n: i64 = dims.iter().product();
    let values =
        (0..n as u32).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 200) as f32 / 1000.0 - 0.1);
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: values.flat_map(f32::to_le_bytes).collect(),
        ..Default::default()
    }
}

fn tensor_value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims.iter().map(|&d| Dimension { value: Some(Dim::DimValue(d)), ..Default::default() }).collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Two small CNNs in ONNX: a conv-BN-ReLU-pool-residual net and a depthwise one with
/// ReLU6, hard-swish and a Gemm head, so that every lowering path starts covered.
pub(super) fn onnx(seeds: &mut Vec<Seed>) {
    let model = |nodes: Vec<NodeProto>, initializer: Vec<TensorProto>| {
        ModelProto {
            ir_version: 8,
            producer_name: "cifar-fuzz seeds".into(),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(GraphProto {
                name: "seed".into(),
                node: nodes,
                initializer,
                input: vec![tensor_value("x", &[1, 3, 32, 32])],
                output: vec![tensor_value("logits", &[1, 10])],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let conv = |x: &str, w: &str, out: &str, group: i64| {
        node(
            "Conv",
            &[x, w],
            out,
            vec![attr_ints("pads", &[1, 1, 1, 1]), attr_ints("kernel_shape", &[3, 3]), attr_int("group", group)],
        )
    };
    let bn = |c: i64, p: &str| {
        vec![
            weight(&format!("{p}.g"), &[c], 1),
            weight(&format!("{p}.b"), &[c], 2),
            weight(&format!("{p}.m"), &[c], 3),
            {
                let mut v = weight(&format!("{p}.v"), &[c], 4);
                v.raw_data = (0..c).flat_map(|_| 1.0f32.to_le_bytes()).collect();
                v
            },
        ]
    };
    let mut init = vec![weight("w1", &[4, 3, 3, 3], 5), weight("w2", &[4, 4, 3, 3], 6), weight("fc", &[10, 4], 7)];
    init.extend(bn(4, "bn1"));
    init.push(weight("fcb", &[10], 8));
    let residual = model(
        vec![
            conv("x", "w1", "c1", 1),
            node("BatchNormalization", &["c1", "bn1.g", "bn1.b", "bn1.m", "bn1.v"], "b1", vec![]),
            node("Relu", &["b1"], "r1", vec![]),
            conv("r1", "w2", "c2", 1),
            node("Add", &["c2", "r1"], "a", vec![]),
            node("MaxPool", &["a"], "p", vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])]),
            node("GlobalAveragePool", &["p"], "g", vec![]),
            node("Flatten", &["g"], "f", vec![]),
            node("Gemm", &["f", "fc", "fcb"], "logits", vec![attr_int("transB", 1)]),
        ],
        init,
    );
    seeds.push(("onnx_import", "residual.onnx".into(), residual));
    let mut init = vec![weight("w1", &[6, 3, 3, 3], 9), weight("dw", &[6, 1, 3, 3], 10), weight("fc", &[6, 10], 11)];
    let (lo, hi) = (
        {
            let mut t = weight("lo", &[], 0);
            t.raw_data = 0.0f32.to_le_bytes().to_vec();
            t
        },
        {
            let mut t = weight("hi", &[], 0);
            t.raw_data = 6.0f32.to_le_bytes().to_vec();
            t
        },
    );
    init.extend([lo, hi]);
    let depthwise = model(
        vec![
            conv("x", "w1", "c1", 1),
            node("Clip", &["c1", "lo", "hi"], "r1", vec![]),
            conv("r1", "dw", "d", 6),
            node("HardSwish", &["d"], "h", vec![]),
            node("ReduceMean", &["h"], "m", vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 0)]),
            node("MatMul", &["m", "fc"], "logits", vec![]),
        ],
        init,
    );
    seeds.push(("onnx_import", "depthwise.onnx".into(), depthwise));
}
