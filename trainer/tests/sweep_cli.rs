//! `trainer sweep` end to end on a small synthetic dataset: a grid whose trials finish,
//! stop early (Hyperband's halving on the per-epoch metric) and fail (a diverging
//! learning rate), killed with SIGKILL midway and resumed
//! without rerunning finished trials; and the sweep file's errors.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::Value;

fn state(dir: &Path) -> Value {
    std::fs::read(dir.join("state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
}

fn status(s: &Value, i: usize) -> String {
    s["trials"][i]["status"].as_str().unwrap_or("").to_string()
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p).and_then(|m| m.modified()).unwrap()
}

fn write_sweep(root: &Path, lrs: &str, extra: &str) -> std::path::PathBuf {
    let p = root.join("sweep.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"grid\"\nconfig = \"tiny.toml\"\nmethod = \"grid\"\n[metric]\nname = \"train_loss\"\n\
             [parameters.\"train.lr\"]\nvalues = {lrs}\n{extra}"
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_grid_sweep_halves_records_failures_and_resumes_after_kill_9() {
    let tmp = tempdir();
    let root = tmp.path();
    let data = synthetic_dataset(root, 60, 100);
    tiny_config(root, &data, "");
    // t000 learns; t001 barely moves (lr 1e-5) and is stopped at epoch 1 by the halving
    // rule (its train loss is not among the best half); t002 diverges and fails.
    let sweep = write_sweep(
        root,
        "[0.2, 1e-5, 1e9]",
        "[parameters.\"train.batch_size\"]\nvalue = 50\n[early_terminate]\ntype = \"hyperband\"\nmin_iter = 1\neta = 2\n",
    );
    let dir = root.join("sweeps/grid");
    let mut child = trainer()
        .current_dir(root)
        // Eight epochs: long enough that t001 is still training when the sweep dies (a
        // trial that finishes while the sweep is down is recorded as finished).
        .args(["sweep", "--config", sweep.to_str().unwrap(), "--sweep-dir", dir.to_str().unwrap(), "train.epochs=8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL the sweep once t000 has finished (t001 is starting or running).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = state(&dir);
        if status(&s, 0) == "finished" {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended before it could be killed: {s:#}");
        assert!(Instant::now() < deadline, "the sweep made no progress: {s:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = dir.join("trials/t000/summary.json");
    let first_time = modified(&first);

    let out = ok(run(root, &["sweep", "--resume", dir.to_str().unwrap()]));
    assert_eq!(modified(&first), first_time, "a finished trial ran again:\n{out}");
    assert!(!out.contains("t000: starts") && !out.contains("t000: continues"), "{out}");
    let s = state(&dir);
    assert_eq!(status(&s, 0), "finished", "{s:#}");
    assert_eq!(status(&s, 1), "stopped", "{s:#}");
    assert_eq!(s["trials"][1]["stopped_at"], 1, "{s:#}");
    assert_eq!(status(&s, 2), "failed", "{s:#}");
    assert!(s["trials"][2]["error"].as_str().unwrap().contains("train.lr"), "{s:#}");
    let table = std::fs::read_to_string(dir.join("trials.md")).unwrap();
    assert!(table.contains("stopped at epoch 1") && table.contains("**finished, best**"), "{table}");
    let best = std::fs::read_to_string(dir.join("best.toml")).unwrap();
    assert!(best.contains("lr = 0.2"), "{best}");
    assert!(std::fs::metadata(dir.join("sweep.png")).unwrap().len() > 10_000);
    assert!(out.contains("best: t000"), "{out}");

    // Resuming a finished sweep does nothing and says what it has.
    let again = ok(run(root, &["sweep", "--resume", dir.to_str().unwrap()]));
    assert!(again.contains("3 of 3 trials done") && again.contains("best: t000"), "{again}");

    // A listed value the recipe refuses is an error before any trial runs.
    let sweep = write_sweep(root, "[0.2]", "[parameters.\"train.batch_size\"]\nvalues = [0, 50]\n");
    let dir2 = root.join("sweeps/refused");
    fails_with(
        run(root, &["sweep", "-c", sweep.to_str().unwrap(), "--sweep-dir", dir2.to_str().unwrap()]),
        &["parameters.\"train.batch_size\"", "at least 1"],
    );
    assert!(!dir2.exists());
}

#[test]
fn bad_sweep_files_are_refused_before_anything_runs() {
    let tmp = tempdir();
    let root = tmp.path();
    let data = synthetic_dataset(root, 2, 10);
    tiny_config(root, &data, "");
    let cases: [(&str, &[&str]); 5] = [
        ("[parameters.\"train.lr\"]\nvalues = [0.1]\nearly_stop = 1\n", &["early_stop"]),
        ("[parameters.\"train.lrate\"]\nvalues = [0.1]\n", &["train.lrate", "train.lr"]),
        ("[parameters.\"train.lr\"]\ndistribution = \"uniform\"\n", &["train.lr", "needs `min`"]),
        ("[parameters.\"train.lr\"]\ndistribution = \"log_uniform_values\"\nmin = -1.0\nmax = 1.0\n", &["positive"]),
        (
            "[parameters.\"train.lr\"]\nvalues = [0.1]\n[early_terminate]\ntype = \"median\"\nmin_iter = 1\n",
            &["hyperband"],
        ),
    ];
    for (i, (body, needles)) in cases.iter().enumerate() {
        let p = root.join(format!("bad{i}.toml"));
        std::fs::write(
            &p,
            format!("config = \"tiny.toml\"\nmethod = \"random\"\nrun_cap = 2\n[metric]\nname = \"val_acc\"\n{body}"),
        )
        .unwrap();
        let d = root.join(format!("sweeps/bad{i}"));
        fails_with(run(root, &["sweep", "-c", p.to_str().unwrap(), "--sweep-dir", d.to_str().unwrap()]), needles);
        assert!(!d.exists(), "case {i} left a sweep directory");
    }
    fails_with(run(root, &["sweep", "--resume", "nowhere"]), &["nowhere", "not a sweep directory"]);
}
