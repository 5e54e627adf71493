//! The committed fixtures (scripts/make-fixtures.sh): the tiny models reproduce their
//! golden outputs, and every file of the malformed corpus is refused without a panic.

use std::path::{Path, PathBuf};

use cifar_sdk::{DevicePolicy, Model, ModelOptions, Precision};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn opts() -> ModelOptions {
    ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 4 }
}

#[test]
fn tiny_models_reproduce_their_golden_outputs() {
    for (name, precision) in [("f32", Precision::F32), ("int8", Precision::Int8)] {
        let model = Model::open(fixtures().join(format!("models/tiny-{name}.cifar")), &opts()).unwrap();
        assert_eq!(model.precision(), precision);
        let mut session = model.session().unwrap();
        let golden = std::fs::read_to_string(fixtures().join(format!("golden/tiny-{name}.jsonl"))).unwrap();
        let mut lines = 0;
        for line in golden.lines() {
            let g: serde_json::Value = serde_json::from_str(line).unwrap();
            let image = fixtures().join("..").join(g["image"].as_str().unwrap());
            let answer = session.classify_image(&std::fs::read(&image).unwrap(), 10).unwrap();
            let want: Vec<f32> = g["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            for (a, b) in answer.logits.iter().zip(&want) {
                // int8 accumulates exactly; f32 may differ in the last bits where the
                // GEMM picks another micro-kernel on another CPU.
                let tol = if precision == Precision::Int8 { 0.0 } else { 1e-5 * (1.0 + b.abs()) };
                assert!((a - b).abs() <= tol, "{name} {}: logit {a} vs golden {b}", image.display());
            }
            assert_eq!(answer.top[0].label, g["top"][0]["label"].as_str().unwrap());
            lines += 1;
        }
        assert_eq!(lines, 10);
    }
}

#[test]
fn the_malformed_corpus_is_refused() {
    let dir = fixtures().join("malformed");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let err = Model::open(&path, &opts()).expect_err(&format!("{} was accepted", path.display()));
        assert!(!err.to_string().is_empty());
        n += 1;
    }
    assert!(n >= 30, "the corpus has {n} files");
}

#[test]
fn files_of_the_old_format_are_refused_with_what_to_do() {
    for entry in std::fs::read_dir(fixtures().join("old-format")).unwrap() {
        let path = entry.unwrap().path();
        let err = Model::open(&path, &opts()).expect_err(&format!("{} was accepted", path.display()));
        assert!(matches!(err, cifar_sdk::Error::UnsupportedVersion { .. }), "{}: {err}", path.display());
        assert!(err.to_string().contains("recompile"), "{err}");
    }
}

/// The benchmark models of both families: int8 keeps the accuracy of f32 (within 0.3
/// percentage points on the 5,000 validation images, as measured when compiled).
#[test]
fn benchmark_models_keep_their_accuracy_in_int8() {
    for family in ["cpu", "resnet"] {
        let q = |p: &str| {
            let m = Model::open(fixtures().join(format!("models/{family}-{p}.cifar")), &opts()).unwrap();
            m.metadata().quality.clone()
        };
        let (f, i) = (q("f32"), q("int8"));
        assert_eq!((f.validation_images, i.validation_images), (5000, 5000), "{family}");
        let drop = f.compiled_accuracy - i.compiled_accuracy;
        assert!(drop <= 0.003, "{family}: int8 {:.4} vs f32 {:.4}", i.compiled_accuracy, f.compiled_accuracy);
        assert!(f.compiled_accuracy > 0.75, "{family}: f32 accuracy {:.4}", f.compiled_accuracy);
    }
}

/// MACs and parameters of the configs/cpu.toml net, counted by hand layer by layer
/// (out x cin x k x k x output pixels; weights + biases): whitening 2x2 (3 -> 24, 31x31),
/// three groups of conv3x3 (24 -> 32 at 31x31, 32 -> 32 at 15x15; 32 -> 64 at 15x15,
/// 64 -> 64 at 7x7; 64 -> 128 at 7x7, 128 -> 128 at 3x3), and the 128 -> 10 classifier.
#[test]
fn graph_cost_counts_macs_and_parameters() {
    let model = Model::open(fixtures().join("models/cpu-int8.cifar"), &opts()).unwrap();
    let cost = cifar_sdk::artifact::graph_cost(&model.metadata().graph).unwrap();
    let convs: [(u64, u64, u64, u64); 7] = [
        (24, 3, 2, 31),
        (32, 24, 3, 31),
        (32, 32, 3, 15),
        (64, 32, 3, 15),
        (64, 64, 3, 7),
        (128, 64, 3, 7),
        (128, 128, 3, 3),
    ];
    let macs: u64 = convs.iter().map(|(o, i, k, hw)| o * i * k * k * hw * hw).sum::<u64>() + 128 * 10;
    let params: u64 = convs.iter().map(|(o, i, k, _)| o * i * k * k + o).sum::<u64>() + 128 * 10 + 10;
    assert_eq!((cost.macs, cost.parameters), (macs, params));
    assert_eq!(macs, 19_887_392);
}
