//! `trainer import-onnx` on the committed fixtures (`fixtures/onnx`, made from real
//! PyTorch models by `scripts/onnx-fixtures.sh`): the imported files give ONNX Runtime's
//! logits on real validation images (f32) or its top-1 (int8); hostile files are refused
//! with a clear error and leave no output file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_onnx::onnx::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};
use cifar_sdk::{DevicePolicy, Model, ModelOptions};
use common::*;
use prost::Message;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/onnx")
}

/// The real CIFAR-10 data imported once per test process (the fixtures' reference
/// logits are on its validation split), or `None` where the archive is absent.
fn cifar10() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10-train-jpg.tar.gz");
        if !archive.exists() {
            eprintln!("skipped: {} is not present on this machine", archive.display());
            return None;
        }
        let dir = tempdir().keep().join("cifar10");
        ok(trainer().args(["data", "import"]).arg(&archive).arg("--out").arg(&dir).output().unwrap());
        Some(dir)
    })
    .as_deref()
}

/// The first `n` validation images (HWC RGB8), as the fixtures' manifest says.
fn validation_pixels(data: &Path, n: usize) -> Vec<u8> {
    let bytes = std::fs::read(data.join("train.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let images = st.tensor("images").unwrap();
    let val = st.tensor("val_indices").unwrap();
    let idx: Vec<u32> = val.data().chunks_exact(4).take(n).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(idx.len(), n);
    idx.iter().flat_map(|&i| &images.data()[i as usize * 3072..(i as usize + 1) * 3072]).copied().collect()
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn argmax(row: &[f32]) -> usize {
    cifar_sdk::top_k_indices(row, 1)[0]
}

fn import(model: &Path, data: &Path, precision: &str, out: &Path) -> String {
    let o = trainer()
        .arg("import-onnx")
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--precision", precision, "-o"])
        .arg(out)
        .output()
        .unwrap();
    ok(o)
}

#[test]
fn imported_models_give_onnx_runtime_logits() {
    let Some(data) = cifar10() else { return };
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap()).unwrap();
    let dataset: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["dataset_digest"], dataset["digest"], "the fixtures were made on another dataset");
    let tmp = tempdir();
    let opts = ModelOptions { device: DevicePolicy::Cpu, threads: 2, max_batch: 250 };
    // The target: the same top-1 as ONNX Runtime f32 on 99% of the images, for
    // both. Measured 2026-12-03: ResNet-20 99.5%, MobileNetV2 99.6%. The MobileNetV2
    // fixture was trained 3 epochs until then (69.6% top-1) and agreed on 98.8%: a model
    // that weak has many near ties, and ONNX Runtime's own static quantization of it
    // agreed on 98.1-98.7% of all 5,000 validation images where ours did on 98.5%
    // (BENCHMARKS.md); trained 10 epochs (82.6%) it measures quantization, not tie-breaks.
    for (name, min_agreement) in [("resnet20", 0.99), ("mobilenetv2", 0.99)] {
        let onnx = fixtures().join(format!("{name}.onnx"));
        let want = read_f32(&fixtures().join(format!("{name}.ort-logits.f32")));
        let n = want.len() / 10;
        assert_eq!(n, 1000);
        let pixels = validation_pixels(data, n);
        let ort_top1: Vec<usize> = want.chunks_exact(10).map(argmax).collect();

        let f32_path = tmp.path().join(format!("{name}-f32.cifar"));
        let out = import(&onnx, data, "f32", &f32_path);
        assert!(out.contains("ONNX ->"), "{out}");
        let got = Model::open(&f32_path, &opts).unwrap().session().unwrap().logits_rgb8(&pixels, n).unwrap();
        let err = cifar_sdk::max_relative_error(&want, &got, 10);
        assert!(err < 1e-4, "{name} f32: max relative error {err:.2e} against ONNX Runtime");

        let int8_path = tmp.path().join(format!("{name}-int8.cifar"));
        import(&onnx, data, "int8", &int8_path);
        let model = Model::open(&int8_path, &opts).unwrap();
        assert_eq!(model.precision(), cifar_sdk::Precision::Int8);
        assert!(model.metadata().drift.is_some(), "no drift reference");
        let got = model.session().unwrap().logits_rgb8(&pixels, n).unwrap();
        let same = got.chunks_exact(10).map(argmax).zip(&ort_top1).filter(|(a, b)| a == *b).count();
        eprintln!("{name}: f32 max relative error {err:.2e}; int8 top-1 agrees with ONNX Runtime on {same}/{n}");
        assert!(
            same as f64 >= min_agreement * n as f64,
            "{name} int8: top-1 agrees with ONNX Runtime f32 on {same} of {n} images"
        );
    }
}

fn resnet20() -> ModelProto {
    ModelProto::decode(std::fs::read(fixtures().join("resnet20.onnx")).unwrap().as_slice()).unwrap()
}

/// Imports `bytes` as `model.onnx` in a fresh folder; asserts the error names every one
/// of `needles` and that nothing was written.
fn refused(bytes: &[u8], needles: &[&str]) {
    let tmp = tempdir();
    let model = tmp.path().join("model.onnx");
    std::fs::write(&model, bytes).unwrap();
    let out = tmp.path().join("out.cifar");
    let o = trainer()
        .arg("import-onnx")
        .arg(&model)
        .args(["--data", "no-dataset-needed", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    fails_with(o, needles);
    assert!(!out.exists(), "an output file was written");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "files left beside the model: {left:?}");
}

#[test]
fn hostile_onnx_files_are_refused_without_output() {
    let good = std::fs::read(fixtures().join("resnet20.onnx")).unwrap();
    refused(&good[..good.len() / 2], &["not a valid ONNX file"]);
    refused(b"", &["has no graph"]);

    // An operator the SDK does not have: the node, its op type, the supported list.
    let mut m = resnet20();
    let g = m.graph.as_mut().unwrap();
    let relu = g.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    relu.op_type = "Celu".into();
    let node = relu.name.clone();
    refused(&m.encode_to_vec(), &[&node, "operator Celu is not supported", "GlobalAveragePool"]);

    // A convolution weight that does not agree with its input's channels.
    let mut m = resnet20();
    let g = m.graph.as_mut().unwrap();
    let conv = g.node.iter().find(|n| n.op_type == "Conv").unwrap().clone();
    let w = g.initializer.iter_mut().find(|t| t.name == conv.input[1]).unwrap();
    assert_eq!(w.dims, [16, 3, 3, 3]);
    w.dims = vec![16, 1, 3, 9];
    refused(&m.encode_to_vec(), &[&conv.name, "does not agree with the input's 3 channels"]);

    // Huge dimensions: refused before anything is allocated.
    let mut m = resnet20();
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.dims = vec![1 << 30, 1 << 30, 1 << 30];
    let name = w.name.clone();
    refused(&m.encode_to_vec(), &[&name, "more than 268435456 elements"]);

    // External data that points outside the model's folder.
    for location in ["../../etc/passwd", "/etc/passwd"] {
        let mut m = resnet20();
        let w = &mut m.graph.as_mut().unwrap().initializer[0];
        w.raw_data.clear();
        w.data_location = DataLocation::External as i32;
        w.external_data = vec![StringStringEntryProto { key: "location".into(), value: location.into() }];
        refused(&m.encode_to_vec(), &["outside the model's folder", "refused"]);
    }

    // Other input sizes are refused with what to do.
    let mut m = resnet20();
    let input = &mut m.graph.as_mut().unwrap().input[0];
    let Some(candle_onnx::onnx::type_proto::Value::TensorType(t)) = input.r#type.as_mut().unwrap().value.as_mut()
    else {
        panic!("the fixture's input is a tensor")
    };
    for d in &mut t.shape.as_mut().unwrap().dim[2..] {
        d.value = Some(candle_onnx::onnx::tensor_shape_proto::dimension::Value::DimValue(224));
    }
    refused(&m.encode_to_vec(), &["only 32x32 inputs are supported"]);
}

/// Weights kept in a data file beside the model (what `torch.onnx.export` writes by
/// default for large models) are read; the result equals the self-contained file's.
#[test]
fn external_data_inside_the_folder_is_read() {
    let Some(data) = cifar10() else { return };
    let tmp = tempdir();
    let mut m = resnet20();
    let mut blob = Vec::new();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        if t.raw_data.len() >= 1024 {
            let entry = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
            t.external_data = vec![
                entry("location", "model.onnx.data".into()),
                entry("offset", blob.len().to_string()),
                entry("length", t.raw_data.len().to_string()),
            ];
            t.data_location = DataLocation::External as i32;
            blob.append(&mut t.raw_data);
        }
    }
    std::fs::write(tmp.path().join("model.onnx.data"), &blob).unwrap();
    std::fs::write(tmp.path().join("model.onnx"), m.encode_to_vec()).unwrap();
    let split = tmp.path().join("split.cifar");
    let whole = tmp.path().join("whole.cifar");
    import(&tmp.path().join("model.onnx"), data, "f32", &split);
    import(&fixtures().join("resnet20.onnx"), data, "f32", &whole);
    let pixels = validation_pixels(data, 50);
    let logits = |p: &Path| {
        let opts = ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 50 };
        Model::open(p, &opts).unwrap().session().unwrap().logits_rgb8(&pixels, 50).unwrap()
    };
    assert_eq!(logits(&split), logits(&whole));
}
