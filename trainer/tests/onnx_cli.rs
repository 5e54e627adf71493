//! `trainer export-onnx`: the exported f32 graph, run by candle-onnx, gives the SDK's
//! logits on real images; int8 exports are QDQ models; bad input is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use cifar_sdk::{Model, ModelOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn trainer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("run trainer")
}

/// The 10 sample images, normalized, `[10, 3, 32, 32]`.
fn sample_input() -> (Vec<f32>, usize) {
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(root().join("fixtures/images")).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let norm = cifar_sdk::Normalization::CIFAR10;
    let mut x = Vec::new();
    for p in &paths {
        let px = cifar_sdk::image::decode_rgb8(&std::fs::read(p).unwrap(), 32, 32).unwrap();
        for c in 0..3 {
            x.extend(px.chunks(3).map(|v| (f32::from(v[c]) / 255.0 - norm.mean[c]) / norm.std[c]));
        }
    }
    (x, paths.len())
}

fn op_types(onnx: &Path) -> Vec<String> {
    let proto = candle_onnx::read_file(onnx).expect("candle-onnx reads the export");
    let mut ops: Vec<String> = proto.graph.unwrap().node.iter().map(|n| n.op_type.clone()).collect();
    ops.sort();
    ops.dedup();
    ops
}

#[test]
fn f32_exports_match_the_sdk_through_candle_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let (x, n) = sample_input();
    for name in ["tiny-f32", "cpu-f32"] {
        let model = root().join(format!("fixtures/models/{name}.cifar"));
        let out = dir.path().join(format!("{name}.onnx"));
        let o = trainer(&["export-onnx", model.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains("checked with candle-onnx"), "{stdout}");
        for op in op_types(&out) {
            assert!(
                [
                    "Add",
                    "AveragePool",
                    "Conv",
                    "Flatten",
                    "Gemm",
                    "Identity",
                    "MaxPool",
                    "Mul",
                    "Relu",
                    "Sigmoid",
                    "Unsqueeze"
                ]
                .contains(&op.as_str()),
                "{name}: unexpected op {op}"
            );
        }
        let sdk = Model::open(&model, &ModelOptions::default()).unwrap().session().unwrap().logits_nchw(&x, n).unwrap();
        let proto = candle_onnx::read_file(&out).unwrap();
        let input = candle_core::Tensor::from_slice(&x, (n, 3, 32, 32), &candle_core::Device::Cpu).unwrap();
        let mut outputs =
            candle_onnx::simple_eval(&proto, [("input".to_string(), input)].into_iter().collect()).unwrap();
        let logits = outputs.remove("logits").unwrap();
        assert_eq!(logits.dims(), &[n, 10]);
        let onnx: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        for (i, (a, b)) in sdk.chunks(10).zip(onnx.chunks(10)).enumerate() {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
            assert!(err < 1e-4, "{name} image {i}: relative logit error {err:.2e}\nsdk  {a:?}\nonnx {b:?}");
        }
    }
}

#[test]
fn int8_exports_are_qdq_models() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-int8.onnx");
    let model = root().join("fixtures/models/tiny-int8.cifar");
    let o = trainer(&["export-onnx", model.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("QDQ"), "{stdout}");
    let ops = op_types(&out);
    assert!(ops.contains(&"QuantizeLinear".to_string()) && ops.contains(&"DequantizeLinear".to_string()), "{ops:?}");
    let proto = candle_onnx::read_file(&out).unwrap();
    let graph = proto.graph.unwrap();
    // Weights are stored as int8 (data type 3), biases as int32 (6); the file is small.
    assert!(graph.initializer.iter().any(|t| t.data_type == 3 && t.name.contains("weight_q")));
    assert!(graph.initializer.iter().any(|t| t.data_type == 6 && t.name.contains("bias_q")));
    let f32_size = {
        let f = dir.path().join("tiny-f32.onnx");
        let m = root().join("fixtures/models/tiny-f32.cifar");
        assert!(trainer(&["export-onnx", m.to_str().unwrap(), "-o", f.to_str().unwrap(), "--no-check"])
            .status
            .success());
        std::fs::metadata(f).unwrap().len()
    };
    assert!(std::fs::metadata(&out).unwrap().len() < f32_size / 2);
}

#[test]
fn bad_models_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.onnx");
    for bad in ["fixtures/malformed/truncated-to-100-bytes.cifar", "fixtures/no-such-file.cifar"] {
        let o = trainer(&["export-onnx", root().join(bad).to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("cannot open"), "{err}");
        assert!(!out.exists());
    }
}
