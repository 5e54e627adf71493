//! `trainer compile`, `classify` and `inspect` on trained runs of both model families.

mod common;

use std::path::Path;

use cifar_sdk::{Model, ModelOptions, Precision};
use common::*;

fn report(run: &Path, precision: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join(format!("compile-{precision}.json"))).unwrap()).unwrap()
}

fn train_and_compile(root: &Path, overrides: &[&str], name: &str) {
    let data = synthetic_dataset(root, 60, 100);
    let cfg = tiny_config(root, &data, "");
    let run_dir = root.join(format!("runs/{name}"));
    let mut args = vec!["fit", "--config", cfg.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()];
    args.extend_from_slice(overrides);
    ok(run(root, &args));
    let r = run_dir.to_str().unwrap();
    let f32_path = root.join(format!("{name}-f32.cifar"));
    let int8_path = root.join(format!("{name}-int8.cifar"));
    let out = ok(run(root, &["compile", "--run", r, "--precision", "f32", "-o", f32_path.to_str().unwrap()]));
    assert!(out.contains("f32 max relative logit error"), "{out}");
    let f = report(&run_dir, "f32");
    assert!(f["f32_max_relative_error"].as_f64().unwrap() < 1e-4, "SDK f32 vs trainer: {f}");
    assert_eq!(f["f32_accuracy"], f["checkpoint_accuracy"], "{f}");
    let out = ok(run(root, &["compile", "--run", r, "--calibration", "200", "-o", int8_path.to_str().unwrap()]));
    assert!(out.contains("percentile calibration") && out.contains("min/max calibration"), "{out}");
    let q = report(&run_dir, "int8");
    let (acc8, acc32) = (q["compiled_accuracy"].as_f64().unwrap(), q["f32_accuracy"].as_f64().unwrap());
    // 100 validation images of a barely trained net: a few images either way. The
    // 0.5 pp criterion is measured on real models (BENCHMARKS.md).
    assert!((acc8 - acc32).abs() <= 0.06, "int8 {acc8} vs f32 {acc32}");

    // The files open through the SDK and describe themselves.
    let m = Model::open(&int8_path, &ModelOptions::default()).unwrap();
    assert_eq!(m.precision(), Precision::Int8);
    assert_eq!(m.labels()[9], "truck");
    let meta = m.metadata();
    assert_eq!(meta.quality.compiled_accuracy, acc8);
    assert_eq!(meta.provenance.dataset_digest.len(), 64);
    assert!(meta.provenance.training_config.contains("[model]"));
    let drift = meta.drift.as_ref().unwrap();
    assert_eq!(drift.images, 100);
    assert_eq!(drift.features.len(), 8);
    assert_eq!(drift.predicted_classes.iter().sum::<u64>(), 100);
    assert_eq!(m.artifact().tensors["head.weight"].dtype, cifar_sdk::artifact::DType::I8);

    let out = ok(run(root, &["inspect", int8_path.to_str().unwrap()]));
    assert!(out.contains("precision   int8") && out.contains("head") && out.contains("weight_scale"), "{out}");

    // classify: images of the training distribution, any size.
    let img = synthetic_image(3, 999);
    let png = root.join("cat.png");
    img.save(&png).unwrap();
    let big = root.join("big.png");
    image::imageops::resize(&img, 64, 64, image::imageops::FilterType::Nearest).save(&big).unwrap();
    let out = ok(run(root, &["classify", int8_path.to_str().unwrap(), png.to_str().unwrap(), big.to_str().unwrap()]));
    assert!(out.contains("cat.png: ") && out.contains("big.png: "), "{out}");
    assert!(out.contains("fell back to the CPU"), "the device fallback is reported: {out}");
    let junk = root.join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    fails_with(run(root, &["classify", int8_path.to_str().unwrap(), junk.to_str().unwrap()]), &["junk.png", "1 of 1"]);
    fails_with(
        run(root, &["classify", "--device", "gpu", int8_path.to_str().unwrap(), png.to_str().unwrap()]),
        &["cuda"],
    );
    fails_with(run(root, &["inspect", junk.to_str().unwrap()]), &["junk.png"]);
}

#[test]
fn compile_refuses_what_is_not_a_run() {
    let tmp = tempdir();
    let root = tmp.path();
    fails_with(run(root, &["compile", "--run", "nowhere"]), &["nowhere", "not a run directory"]);
    fails_with(run(root, &["classify", "missing.cifar", "x.png"]), &["missing.cifar"]);
    fails_with(run(root, &["compile", "--run", "x", "--precision", "int4"]), &["int4"]);
}

#[test]
fn airbench_compiles_to_f32_and_int8() {
    let tmp = tempdir();
    train_and_compile(tmp.path(), &[], "airbench");
}

#[test]
fn resnet_compiles_to_f32_and_int8() {
    let tmp = tempdir();
    train_and_compile(tmp.path(), &["model.kind=resnet", "model.act=relu"], "resnet");
}
