//! Requests for the server's targets: OIP v2 JSON and binary, `/v1/classify` bodies,
//! gRPC `ModelInferRequest`s, all valid for the tiny fixture model.

use std::io::Write;

use cifar_server::grpc::pb;
use prost::Message;

use super::Seed;
use crate::server::{BOUNDARY, MODEL};

pub(super) fn requests(seeds: &mut Vec<Seed>, images: &[(String, Vec<u8>)]) {
    let pixels: Vec<u8> = images
        .iter()
        .take(2)
        .flat_map(|(_, png)| image::load_from_memory(png).map(|i| i.to_rgb8().into_raw()).unwrap_or_default())
        .collect();
    let one = &pixels[..3072.min(pixels.len())];
    let uint8 = |n: usize, data: &[u8]| {
        serde_json::json!({
            "id": "seed",
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [n, 32, 32, 3], "data": data}],
        })
    };
    let fp32: Vec<f32> = one.iter().map(|&p| f32::from(p) / 255.0 - 0.5).collect();
    let json_seeds = [
        ("uint8-1", uint8(1, one)),
        ("uint8-2-top3", {
            let mut r = uint8(2, &pixels);
            r["outputs"] = serde_json::json!([{"name": "probabilities", "parameters": {"classification": 3}}]);
            r
        }),
        (
            "fp32-1",
            serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": fp32}],
                               "outputs": [{"name": "logits"}]}),
        ),
    ];
    for (name, body) in json_seeds {
        seeds.push(("oip_json", name.into(), body.to_string().into_bytes()));
    }
    for (name, n, binary_out) in [("uint8-1", 1, false), ("uint8-2-binary-output", 2, true)] {
        let header = serde_json::json!({
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [n, 32, 32, 3],
                        "parameters": {"binary_data_size": n * 3072}}],
            "parameters": {"binary_data_output": binary_out},
        })
        .to_string();
        let mut input = u16::try_from(header.len()).unwrap_or(u16::MAX).to_le_bytes().to_vec();
        input.extend_from_slice(header.as_bytes());
        input.extend_from_slice(&pixels[..n * 3072]);
        seeds.push(("oip_binary", name.into(), input));
    }
    // Modes 0 and 2: a raw image, without a query and with top_k=3.
    for (i, (name, png)) in images.iter().take(2).enumerate() {
        let mut raw = vec![(i as u8) << 1];
        raw.extend_from_slice(png);
        seeds.push(("classify_body", format!("raw-{name}"), raw));
    }
    let mut multipart = vec![1u8 | 2];
    for (name, png) in images.iter().take(2) {
        let _ = write!(
            multipart,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n"
        );
        multipart.extend_from_slice(png);
        multipart.extend_from_slice(b"\r\n");
    }
    let _ = write!(multipart, "--{BOUNDARY}--\r\n");
    seeds.push(("classify_body", "multipart-2-files".into(), multipart));

    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    let grpc = |n: usize, raw: bool| pb::ModelInferRequest {
        model_name: MODEL.into(),
        id: "seed".into(),
        inputs: vec![InferInputTensor {
            name: "images".into(),
            datatype: "UINT8".into(),
            shape: vec![n as i64, 32, 32, 3],
            contents: (!raw).then(|| pb::InferTensorContents {
                uint_contents: pixels[..n * 3072].iter().map(|&p| u32::from(p)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor { name: "logits".into(), ..Default::default() }],
        raw_input_contents: if raw { vec![pixels[..n * 3072].to_vec()] } else { Vec::new() },
        ..Default::default()
    };
    seeds.push(("grpc_infer", "raw-1".into(), grpc(1, true).encode_to_vec()));
    seeds.push(("grpc_infer", "contents-2".into(), grpc(2, false).encode_to_vec()));
}
