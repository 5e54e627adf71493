//! `trainer fit` / `eval`: run directories, config errors, interruption and resume, and
//! a short run on the real CIFAR-10 data when it is present.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

fn is_png(p: &Path) -> bool {
    image::open(p).is_ok_and(|i| i.width() > 100)
}

#[test]
fn fit_writes_a_complete_run_and_eval_reports_it() {
    let tmp = tempdir();
    let root = tmp.path();
    let data = synthetic_dataset(root, 100, 100);
    let cfg = tiny_config(root, &data, "");
    let run_dir = root.join("runs/a");
    let out = ok(run_fit(root, &cfg, &run_dir, &[]));
    assert!(out.contains("device: cpu"), "the device is logged: {out}");
    for f in [
        "config.toml",
        "dataset.json",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
        "checkpoints/last.safetensors",
    ] {
        assert!(run_dir.join(f).exists(), "{f} missing");
    }
    assert!(is_png(&run_dir.join("loss.png")) && is_png(&run_dir.join("accuracy.png")));
    let s = summary(&run_dir);
    // A 10k-parameter net after 54 steps: well above chance (10%).
    assert!(s["val_accuracy_tta"].as_f64().unwrap() >= 0.4, "{s}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(s["dataset_digest"], manifest["digest"], "the run records the dataset version");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let epochs = metrics.lines().filter(|l| l.contains("\"kind\":\"epoch\"")).count();
    assert_eq!(epochs, 3);
    assert!(metrics
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .all(|l| l.contains("\"lr\"") && l.contains("images_per_sec")));

    let e = ok(run(root, &["eval", "--run", run_dir.to_str().unwrap(), "--tta"]));
    assert!(e.contains("accuracy:") && e.contains("confusion matrix") && e.contains("truck"), "{e}");
    assert!(is_png(&run_dir.join("eval-validation-fliptranslate-confusion.png")));
    // A run directory is never silently reused.
    fails_with(run_fit(root, &cfg, &run_dir, &[]), &["already holds a run", "--resume"]);
}

fn run_fit(root: &Path, cfg: &Path, run_dir: &Path, overrides: &[&str]) -> std::process::Output {
    let mut args = vec!["fit", "--config", cfg.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()];
    args.extend_from_slice(overrides);
    run(root, &args)
}

#[test]
fn bad_configs_are_refused_before_any_work() {
    let tmp = tempdir();
    let root = tmp.path();
    let data = synthetic_dataset(root, 12, 20);
    let cfg = tiny_config(root, &data, "");
    let run = root.join("runs/bad");
    fails_with(run_fit(root, &cfg, &run, &["train.epoch=3"]), &["unknown config key", "train.epoch", "train.epochs"]);
    fails_with(run_fit(root, &cfg, &run, &["train.epochs=three"]), &["train.epochs", "float"]);
    fails_with(run_fit(root, &cfg, &run, &["model.widths=8"]), &["model.widths", "array"]);
    fails_with(run_fit(root, &cfg, &run, &["train.lr=-1"]), &["train.lr"]);
    fails_with(run_fit(root, &cfg, &run, &["device=tpu"]), &["unknown device"]);
    fails_with(run_fit(root, &cfg, &run, &["device=cuda"]), &["cuda", "without the `cuda` feature"]);
    fails_with(run_fit(root, &cfg, &run, &["data.path=nowhere"]), &["nowhere", "not a dataset directory"]);
    fails_with(
        run_fit(root, &cfg, &run, &["train.distill_from=nowhere"]),
        &["train.distill_from", "not a run directory"],
    );
    fails_with(run_fit(root, &cfg, &run, &["train.distill_weight=2"]), &["train.distill_weight", "[0, 1]"]);
    let bad = root.join("bad.toml");
    std::fs::write(&bad, "[train]\nlearning_rate = 0.1\n").unwrap();
    fails_with(run_fit(root, &bad, &run, &[]), &["train.learning_rate"]);
    std::fs::write(&bad, "[train\n").unwrap();
    fails_with(run_fit(root, &bad, &run, &[]), &["invalid TOML"]);
    assert!(!run.exists(), "no run directory for a refused config");
}

/// Starts a fit in the background and kills it with SIGKILL once a checkpoint exists
/// and training is past `step`.
fn kill_after(root: &Path, cfg: &Path, run: &Path, step: u64) {
    let mut child = trainer()
        .current_dir(root)
        .args(["fit", "--config", cfg.to_str().unwrap(), "--run-dir", run.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !(last_step(run) >= step && run.join("checkpoints/last.safetensors").exists()) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(start.elapsed() < Duration::from_secs(300), "the run made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn resume_after_kill_9_reproduces_the_uninterrupted_run() {
    let tmp = tempdir();
    let root = tmp.path();
    let data = synthetic_dataset(root, 100, 100);
    // 18 steps per epoch, 4 epochs; checkpoints every 4 steps.
    // With airbench's stateful pieces on: the lookahead average must survive the kill,
    // the stem-bias freeze and the alternating flip must pick up at the right epoch.
    let cfg =
        tiny_config(root, &data, "[checkpoint]\nevery_steps = 4\nevery_secs = 0\n[augment]\nalternate_flip = true\n");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("epochs = 3", "epochs = 4\nlookahead = true\nwhiten_bias_epochs = 2");
    std::fs::write(&cfg, text.replace("widths = [8, 16, 16]", "widths = [8, 16, 16]\ndirac_init = true")).unwrap();
    let full = root.join("runs/full");
    // The uninterrupted run also warms up (as on a GPU): that must change nothing.
    ok(run_fit(root, &cfg, &full, &["train.warm_up=on"]));

    let cut = root.join("runs/cut");
    kill_after(root, &cfg, &cut, 27); // in the middle of the second epoch
    assert!(!cut.join("summary.json").exists());
    fails_with(run(root, &["fit", "--resume", cut.to_str().unwrap(), "train.epochs=9"]), &["--resume", "saved config"]);
    let out = ok(run(root, &["fit", "--resume", cut.to_str().unwrap()]));
    assert!(out.contains("resuming at step"), "{out}");

    let (a, b) = (summary(&full), summary(&cut));
    assert_eq!(a["steps"], b["steps"]);
    assert_eq!(a["val_accuracy"], b["val_accuracy"], "same accuracy");
    assert_eq!(a["val_accuracy_tta"], b["val_accuracy_tta"]);
    assert_eq!(b["resumed"], true);
    assert!(a["warmup_secs"].as_f64().unwrap() > 0.0, "{a}");
    assert_eq!(b["warmup_secs"].as_f64(), Some(0.0), "no warm-up on the CPU by default");
    // Not just the same accuracy: the same weights, bit for bit.
    assert_eq!(
        std::fs::read(full.join("model.safetensors")).unwrap(),
        std::fs::read(cut.join("model.safetensors")).unwrap(),
        "the resumed run must end with the uninterrupted run's weights"
    );
    // Per-epoch records agree too (the resumed epoch's mean loss includes the steps
    // before the kill).
    let epoch_losses = |run: &Path| -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"kind\":\"epoch\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(epoch_losses(&full), epoch_losses(&cut));
    // The metrics log has each step once.
    let steps: Vec<u64> = std::fs::read_to_string(cut.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=72).collect::<Vec<u64>>());
    // Resuming a directory that holds no run is refused clearly.
    fails_with(run(root, &["fit", "--resume", root.join("runs/none").to_str().unwrap()]), &["not a run directory"]);
}

#[test]
fn interrupt_saves_a_checkpoint_and_resume_finishes() {
    let tmp = tempdir();
    let root = tmp.path();
    let data = synthetic_dataset(root, 100, 100);
    let cfg = tiny_config(root, &data, "[checkpoint]\nevery_secs = 0\n");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("epochs = 3", "epochs = 6")).unwrap();
    let run_dir = root.join("runs/int");
    let child = trainer()
        .current_dir(root)
        .args(["fit", "--config", cfg.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while last_step(&run_dir) < 5 {
        assert!(start.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(2));
    }
    let st = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "an interrupted run reports it: {t}");
    assert!(t.contains("interrupted") && t.contains("--resume"), "{t}");
    assert!(run_dir.join("checkpoints/last.safetensors").exists());
    let done = ok(run(root, &["fit", "--resume", run_dir.to_str().unwrap()]));
    assert!(done.contains("done:"), "{done}");
}

/// The real CIFAR-10 data (shipped beside the repository on development and CI
/// machines): the README's main job (`scripts/main.sh`) end to end on it, with a short
/// recipe on a slice of the images and this build of the trainer; then the dataset's
/// version, the run's accuracy, the compiled f32 file against the trainer, and
/// `trainer eval --model` against the compile report of the committed int8 fixture.
#[test]
fn real_cifar10_main_job_end_to_end() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let archive = repo.join("../shared/data/cifar10-train-jpg.tar.gz");
    if !archive.exists() {
        eprintln!("skipped: {} is not present on this machine", archive.display());
        return;
    }
    let tmp = tempdir();
    let root = tmp.path();
    let data = root.join("cifar10");
    let run_dir = root.join("run");
    let out = std::process::Command::new("bash")
        .arg(repo.join("scripts/main.sh"))
        .arg(&archive)
        .args([
            "data.train_limit=10000",
            "data.val_limit=1000",
            "train.epochs=2",
            "model.widths=[16,32,64]",
            "train.batch_size=128",
            "train.lr=0.4",
            "eval.tta=none",
        ])
        .env("TRAINER", env!("CARGO_BIN_EXE_trainer"))
        .env("DATA_DIR", &data)
        .env("RUN_DIR", &run_dir)
        .env("CONFIG", repo.join("configs/cpu-quick.toml"))
        .current_dir(root)
        .output()
        .expect("bash runs scripts/main.sh");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/main.sh failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("50000 images"), "{stdout}");
    assert!(
        stdout.contains(&format!("done: the run (metrics, plots, evaluation) is in {}/", run_dir.display())),
        "the final message: {stdout}"
    );
    // The compiled model classified every sample image: one line each, with a label.
    let classified: Vec<&str> =
        stdout.lines().filter(|l| l.contains("fixtures/images/") && l.contains(".png: ")).collect();
    assert_eq!(classified.len(), 10, "{stdout}");
    assert!(classified.iter().all(|l| CLASSES.iter().any(|c| l.split(": ").nth(1).is_some_and(|t| t.starts_with(c)))));
    assert!(run_dir.join("model.cifar").exists() && run_dir.join("eval-validation-fliptranslate.json").exists());

    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["digest"], "e28327edb1744c3d71abac309f07c63e1ed39f5e57846af468f34ede99a43b7a", "dataset version");
    assert_eq!(m["validation"]["size"], 5000);
    let s = summary(&run_dir);
    let acc = s["val_accuracy"].as_f64().unwrap();
    eprintln!("real data, 10000 images, 2 epochs: validation accuracy {acc}");
    assert!(acc > 0.4, "two short epochs on real CIFAR-10 should beat 40% (chance is 10%): {s}");

    // The compiled f32 file reproduces the trainer on the 1,000 validation images.
    let model = root.join("model-f32.cifar");
    ok(run(
        root,
        &["compile", "--run", run_dir.to_str().unwrap(), "--precision", "f32", "-o", model.to_str().unwrap()],
    ));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("compile-f32.json")).unwrap()).unwrap();
    assert_eq!(r["checked_images"], 1000, "{r}");
    assert!(r["f32_max_relative_error"].as_f64().unwrap() < 1e-4, "{r}");
    assert_eq!(r["f32_accuracy"], r["checkpoint_accuracy"], "{r}");

    // `eval --model` scores the committed configs/cpu.toml int8 file exactly as its
    // compile report did, on the same dataset and validation split.
    let fixture = repo.join("fixtures/models/cpu-int8.cifar");
    let e = ok(run(root, &["eval", "--model", fixture.to_str().unwrap(), "--data", data.to_str().unwrap()]));
    let reported = cifar_sdk::Model::open(&fixture, &Default::default()).unwrap().metadata().quality.clone();
    assert_eq!(reported.validation_images, 5000);
    assert!(
        e.contains(&format!("accuracy: {:.2}% on 5000 images", 100.0 * reported.compiled_accuracy)),
        "eval --model must match the compile report ({:.4}):\n{e}",
        reported.compiled_accuracy
    );
    let line = e.lines().find(|l| l.starts_with("accuracy: ")).unwrap();
    let pct: f64 = line["accuracy: ".len()..].split('%').next().unwrap().parse().unwrap();
    assert!((pct / 100.0 - reported.compiled_accuracy).abs() < 0.5e-4, "{line} vs {}", reported.compiled_accuracy);
}

#[test]
fn trace_records_the_steps_fit_takes() {
    let tmp = tempdir();
    let root = tmp.path();
    let data = synthetic_dataset(root, 40, 50);
    let cfg = tiny_config(root, &data, "");
    let fit_run = root.join("runs/fit");
    ok(run_fit(root, &cfg, &fit_run, &[]));
    let out = root.join("trace");
    let args = ["trace", "--config", cfg.to_str().unwrap(), "--steps", "3", "--out", out.to_str().unwrap()];
    ok(run(root, &args));
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trace.json")).unwrap()).unwrap();
    assert_eq!(trace["steps"], 3);
    // The same batches through the same step: the losses fit logged, to the bit.
    let fit_losses: Vec<f64> = std::fs::read_to_string(fit_run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .take(3)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect();
    let traced: Vec<f64> = trace["loss"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(traced, fit_losses);
    let names = |file: &str| -> Vec<String> {
        let bytes = std::fs::read(out.join(file)).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect()
    };
    let steps = names("steps.safetensors");
    for key in ["grad.0.head.weight", "after.2.group1.bn1.running_mean", "momentum.1.head.weight"] {
        assert!(steps.iter().any(|n| n == key), "steps.safetensors lacks {key}");
    }
    assert!(names("batches.safetensors").iter().any(|n| n == "x.2"));
    assert!(names("init.safetensors").iter().any(|n| n == "whiten.weight"));
    fails_with(run(root, &["trace", "--config", cfg.to_str().unwrap(), "--steps", "0", "--out", "t"]), &["--steps"]);
}
