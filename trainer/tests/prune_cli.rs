//! `trainer prune`: pruned runs of both families compile and match the trainer, an
//! interrupted prune resumes, and bad input is refused before any work.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A finished tiny run of `kind` on a synthetic dataset; returns its directory.
fn parent(root: &Path, overrides: &[&str], per_class: usize, epochs: &str) -> PathBuf {
    let data = synthetic_dataset(root, per_class, 50);
    let cfg = tiny_config(root, &data, "");
    let dir = root.join("runs/parent");
    let mut args = vec!["fit", "--config", cfg.to_str().unwrap(), "--run-dir", dir.to_str().unwrap(), epochs];
    args.extend_from_slice(overrides);
    ok(run(root, &args));
    dir
}

fn prune(root: &Path, parent: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["prune", "--run", parent.to_str().unwrap(), "--run-dir", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(root, &args)
}

fn prune_compile_and_check(overrides: &[&str], widths: &[u64], inner: &[u64]) {
    let tmp = tempdir();
    let root = tmp.path();
    let p = parent(root, overrides, 60, "train.epochs=2");
    let out = root.join("runs/pruned");
    let text =
        ok(prune(root, &p, &out, &["--keep", "0.5", "--multiple", "4", "--finetune-epochs", "2", "eval.tta=none"]));
    assert!(text.contains("pruning and fine-tuning took"), "{text}");
    let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    let ints =
        |v: &toml::Value| v.as_array().unwrap().iter().map(|x| x.as_integer().unwrap() as u64).collect::<Vec<_>>();
    assert_eq!(ints(&cfg["model"]["widths"]), widths);
    assert_eq!(ints(&cfg["model"]["inner_widths"]), inner);
    assert_eq!(cfg["pruned"]["parent"].as_str(), Some(p.to_str().unwrap()));
    assert_eq!(cfg["pruned"]["method"].as_str(), Some("taylor"));
    let plan = json(&out.join("prune.json"));
    // Better than chance (10%) after a short fine-tune of a tiny net.
    assert!(plan["rounds"][0]["val_accuracy"].as_f64().unwrap() > 0.15, "{plan}");
    assert!(out.join("model.safetensors").exists() && out.join("summary.json").exists());

    // The compiled pruned net computes what the trainer's forward pass computes.
    let f32_file = root.join("pruned-f32.cifar");
    ok(run(root, &["compile", "--run", out.to_str().unwrap(), "--precision", "f32", "-o", f32_file.to_str().unwrap()]));
    let r = json(&out.join("compile-f32.json"));
    assert!(r["f32_max_relative_error"].as_f64().unwrap() < 1e-4, "{r}");
    assert_eq!(r["f32_accuracy"], r["checkpoint_accuracy"], "{r}");
    let int8_file = root.join("pruned-int8.cifar");
    ok(run(
        root,
        &["compile", "--run", out.to_str().unwrap(), "--calibration", "100", "-o", int8_file.to_str().unwrap()],
    ));
    let q = cifar_sdk::Model::open(&int8_file, &Default::default()).unwrap().metadata().quality.clone();
    let (before, after) = (q.unpruned_macs.unwrap(), q.macs);
    assert!(before > 2 * after && after > 0, "MACs {before} -> {after}");
    assert!(q.unpruned_parameters.unwrap() > q.parameters);
    let shown = ok(run(root, &["inspect", int8_file.to_str().unwrap(), "--brief"]));
    assert!(shown.contains("pruned from") && shown.contains("fewer MACs"), "{shown}");
    // eval works on the pruned run as on any run.
    ok(run(root, &["eval", "--run", out.to_str().unwrap()]));
}

#[test]
fn pruned_airbench_compiles_and_matches_the_trainer() {
    prune_compile_and_check(&[], &[4, 8, 8], &[4, 8, 8]);
}

#[test]
fn pruned_resnet_with_identity_shortcuts_compiles_and_matches_the_trainer() {
    prune_compile_and_check(
        &["model.kind=resnet", "model.act=relu", "model.blocks=2", "model.whiten=false"],
        &[4, 8, 8],
        &[4, 4, 8, 8, 8, 8],
    );
}

#[test]
fn interrupted_prune_resumes_and_finishes_every_round() {
    let tmp = tempdir();
    let root = tmp.path();
    let p = parent(root, &[], 100, "train.epochs=1");
    let out = root.join("runs/pruned");
    let args = [
        "prune",
        "--run",
        p.to_str().unwrap(),
        "--run-dir",
        out.to_str().unwrap(),
        "--keep",
        "0.5",
        "--multiple",
        "2",
        "--rounds",
        "2",
        "--finetune-epochs",
        "8",
        "checkpoint.every_secs=0",
    ];
    let child = trainer()
        .current_dir(root)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt in the middle of the second round.
    let start = Instant::now();
    while last_step(&out) < 5 {
        assert!(start.elapsed() < Duration::from_secs(300), "the second round made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(out.join("rounds/1/model.safetensors").exists(), "round 1 finished first");
    let st = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "an interrupted prune reports it: {t}");
    assert!(t.contains("interrupted") && t.contains("trainer prune --resume"), "{t}");
    assert!(out.join("checkpoints/last.safetensors").exists());
    let plan = json(&out.join("prune.json"));
    assert!(plan["rounds"][0]["val_accuracy"].is_number() && plan["rounds"][1]["val_accuracy"].is_null(), "{plan}");
    let elapsed = plan["elapsed_secs"].as_f64().unwrap();

    fails_with(run(root, &["prune", "--resume", out.to_str().unwrap(), "train.lr=0.1"]), &["--resume", "overrides"]);
    let done = ok(run(root, &["prune", "--resume", out.to_str().unwrap()]));
    assert!(done.contains("resuming at step"), "{done}");
    let plan = json(&out.join("prune.json"));
    assert!(plan["rounds"][1]["val_accuracy"].is_number(), "{plan}");
    assert!(plan["elapsed_secs"].as_f64().unwrap() > elapsed, "time adds up across sessions");
    // Round 2 pruned round 1's net: 16 -> 12 (keep 0.707) -> 8 channels.
    assert_eq!(plan["rounds"][0]["widths"], serde_json::json!([6, 12, 12]));
    assert_eq!(plan["rounds"][1]["widths"], serde_json::json!([4, 8, 8]));
    assert!(json(&out.join("summary.json"))["resumed"].as_bool().unwrap());
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let tmp = tempdir();
    let root = tmp.path();
    let p = parent(root, &[], 20, "train.epochs=1");
    let out = root.join("runs/pruned");
    let refused = |extra: &[&str], needles: &[&str]| {
        fails_with(prune(root, &p, &out, extra), needles);
        assert!(!out.exists(), "nothing written for {extra:?}");
    };
    refused(&["--keep", "0"], &["--keep must be in (0, 1]", "0"]);
    refused(&["--keep", "1.5"], &["--keep must be in (0, 1]"]);
    refused(&["--keep", "0.02", "--multiple", "1"], &["leaves it no channel", "group1.conv1"]);
    refused(&["--target-macs", "1k"], &["out of reach"]);
    refused(&["--target-macs", "1G"], &["already costs"]);
    refused(&["--target-macs", "lots"], &["not a count"]);
    refused(&["--keep", "0.5", "--method", "bn-scale"], &["bn_scale", "taylor"]);
    refused(&["--keep", "0.5", "--finetune-epochs", "0"], &["--finetune-epochs must be positive"]);
    refused(&["--keep", "0.5", "train.epoch=3"], &["unknown config key"]);
    refused(&["--keep", "0.5", "model.widths=[8,8,8]"], &["model.widths", "cannot change the net"]);
    refused(&["--keep", "0.5", "train.distill_from=nowhere"], &["train.distill_from", "not a run directory"]);
    refused(&[], &["--keep"]);

    // A run that has not finished.
    let unfinished = root.join("runs/unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    for f in ["config.toml", "dataset.json"] {
        std::fs::copy(p.join(f), unfinished.join(f)).unwrap();
    }
    fails_with(prune(root, &unfinished, &out, &["--keep", "0.5"]), &["not a finished run", "trainer fit --resume"]);
    assert!(!out.exists());
    // Weights that do not match their config.
    std::fs::copy(p.join("model.safetensors"), unfinished.join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(p.join("config.toml")).unwrap();
    let wider = cfg.replacen("16,\n]", "32,\n]", 1);
    assert_ne!(cfg, wider);
    std::fs::write(unfinished.join("config.toml"), wider).unwrap();
    fails_with(prune(root, &unfinished, &out, &["--keep", "0.5"]), &["do not match", "group3"]);
    assert!(!out.exists());
    // Not a run at all, and a directory that is already used.
    fails_with(prune(root, &root.join("nowhere"), &out, &["--keep", "0.5"]), &["not a run directory"]);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    fails_with(prune(root, &p, &out, &["--keep", "0.5"]), &["already exists"]);
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    fails_with(run(root, &["prune", "--resume", root.join("runs/none").to_str().unwrap()]), &["no prune to resume"]);
}
