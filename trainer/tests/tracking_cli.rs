//! `fit` mirrored into a real MLflow tracking server (`mlflow server` from PyPI, which
//! scripts/test.sh installs and names in `CIFAR_MLFLOW`), checked through MLflow's REST
//! API: params, metric history with the right steps, artifacts, status; a server that
//! dies mid-run does not stop training, and `trainer track sync` completes the record.
//!
//! Without `CIFAR_MLFLOW` the test says so and passes (a machine without the venv).

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct Mlflow {
    child: Child,
    url: String,
}

impl Drop for Mlflow {
    /// Kills the server's own process group (`mlflow server` serves from gunicorn
    /// workers), after checking that the group is its own.
    fn drop(&mut self) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state, ppid, pgrp, ...
        let pgrp = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<u32>().ok());
        if pgrp == Some(pid) {
            let _ = Command::new("pkill").args(["-KILL", "-g", &pid.to_string()]).status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `mlflow server` on loopback `port`, its store in `dir` (kept across restarts).
fn start_mlflow(exe: &Path, dir: &Path, port: u16) -> Mlflow {
    let child = Command::new(exe)
        .args(["server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
        .arg("--artifacts-destination")
        .arg(dir.join("artifacts"))
        .current_dir(dir)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("server-{port}.log"))).unwrap())
        .spawn()
        .expect("start mlflow server");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while ureq::get(&format!("{url}/health")).call().is_err() {
        assert!(Instant::now() < deadline, "mlflow server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    Mlflow { child, url }
}

fn get(url: &str) -> Value {
    serde_json::from_str(&ureq::get(url).call().unwrap().into_string().unwrap()).unwrap()
}

fn state(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("tracking.json")).unwrap()).unwrap()
}

/// The steps of the metric `key` in the MLflow run.
fn history(url: &str, run_id: &str, key: &str) -> Vec<u64> {
    let v =
        get(&format!("{url}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}&max_results=10000"));
    let mut steps: Vec<u64> =
        v["metrics"].as_array().map(|m| m.iter().map(|p| p["step"].as_u64().unwrap()).collect()).unwrap_or_default();
    steps.sort_unstable();
    steps
}

fn step_records(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "step")
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

/// Checks the MLflow record of `run` against its directory.
fn check_record(url: &str, run: &Path) {
    let run_id = state(run)["run_id"].as_str().unwrap().to_string();
    let r = get(&format!("{url}/api/2.0/mlflow/runs/get?run_id={run_id}"));
    assert_eq!(r["run"]["info"]["status"], "FINISHED", "{r}");
    let params = r["run"]["data"]["params"].as_array().unwrap();
    let param = |k: &str| params.iter().find(|p| p["key"] == k).map(|p| p["value"].as_str().unwrap().to_string());
    assert_eq!(param("train.epochs").as_deref(), Some("4.0"), "{r}");
    assert_eq!(param("model.widths").as_deref(), Some("[8, 16, 16]"), "{r}");
    let tags = r["run"]["data"]["tags"].as_array().unwrap();
    assert!(tags.iter().any(|t| t["key"] == "dataset_digest"), "{r}");
    assert_eq!(history(url, &run_id, "loss"), step_records(run), "loss points at the run's steps");
    assert_eq!(history(url, &run_id, "epoch_train_loss").len(), 4);
    let files = get(&format!("{url}/api/2.0/mlflow/artifacts/list?run_id={run_id}"));
    let names: Vec<&str> = files["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for want in ["config.toml", "summary.json", "loss.png", "metrics.jsonl"] {
        assert!(names.contains(&want), "artifact {want} missing: {names:?}");
    }
    assert_eq!(state(run)["complete"], true);
}

/// A two-trial sweep with tracking: a parent run (settings, best metric, report files)
/// and two trial runs tagged `mlflow.parentRunId`.
fn check_sweep(root: &Path, url: &str) {
    let sweep = root.join("sweep.toml");
    std::fs::write(
        &sweep,
        "name = \"tracked-sweep\"\nconfig = \"tiny.toml\"\nmethod = \"grid\"\n[metric]\nname = \"val_acc\"\n\
         [parameters.\"train.lr\"]\nvalues = [0.2, 0.1]\n",
    )
    .unwrap();
    let dir = root.join("sweeps/tracked");
    let args = ["sweep", "-c", sweep.to_str().unwrap(), "--sweep-dir", dir.to_str().unwrap(), "--tracking-uri", url];
    let out = ok(run(root, &[&args[..], &["train.epochs=1"]].concat()));
    assert!(out.contains("its trials are nested under it"), "{out}");
    let exp = get(&format!("{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tracked-sweep"));
    let exp_id = exp["experiment"]["experiment_id"].as_str().unwrap().to_string();
    let found: Value = serde_json::from_str(
        &ureq::post(&format!("{url}/api/2.0/mlflow/runs/search"))
            .set("Content-Type", "application/json")
            .send_string(&serde_json::json!({ "experiment_ids": [exp_id] }).to_string())
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    let runs = found["runs"].as_array().unwrap();
    let tag = |r: &Value, k: &str| {
        r["data"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == k)
            .map(|t| t["value"].as_str().unwrap().to_string())
    };
    let parent = runs.iter().find(|r| tag(r, "mlflow.source.name").as_deref() == Some("cifar-edge trainer sweep"));
    let parent = parent.unwrap_or_else(|| panic!("no parent run: {found}"));
    let parent_id = parent["info"]["run_id"].as_str().unwrap();
    assert_eq!(parent["info"]["status"], "FINISHED", "{parent}");
    assert!(parent["data"]["metrics"].to_string().contains("best_val_acc"), "{parent}");
    let children = runs.iter().filter(|r| tag(r, "mlflow.parentRunId").as_deref() == Some(parent_id)).count();
    assert_eq!(children, 2, "{found}");
    let files = get(&format!("{url}/api/2.0/mlflow/artifacts/list?run_id={parent_id}"));
    assert!(files.to_string().contains("trials.md") && files.to_string().contains("sweep.png"), "{files}");
}

#[test]
fn fit_is_mirrored_and_survives_the_server_dying() {
    let Some(exe) = std::env::var_os("CIFAR_MLFLOW").map(PathBuf::from) else {
        eprintln!("skipped: CIFAR_MLFLOW is not set (scripts/test.sh installs mlflow and sets it)");
        return;
    };
    let tmp = tempdir();
    let root = tmp.path();
    let data = synthetic_dataset(root, 60, 100);
    let cfg = tiny_config(root, &data, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("epochs = 3", "epochs = 4");
    std::fs::write(&cfg, text).unwrap();
    let store = root.join("mlflow");
    std::fs::create_dir_all(&store).unwrap();
    let port = free_port();
    let server = start_mlflow(&exe, &store, port);

    // 1. With the server up: params, metrics at their steps, artifacts, FINISHED.
    let live = root.join("runs/live");
    let out = ok(run(
        root,
        &["fit", "--config", cfg.to_str().unwrap(), "--run-dir", live.to_str().unwrap(), "--tracking-uri", &server.url],
    ));
    assert!(out.contains("tracking: mirroring this run"), "{out}");
    check_record(&server.url, &live);
    // The compiled model joins the run through `track sync`.
    ok(run(
        root,
        &[
            "compile",
            "--run",
            live.to_str().unwrap(),
            "--precision",
            "int8",
            "-o",
            live.join("model-int8.cifar").to_str().unwrap(),
        ],
    ));
    let synced = ok(run(root, &["track", "sync", live.to_str().unwrap()]));
    assert!(synced.contains("0 new metric points"), "{synced}");
    let run_id = state(&live)["run_id"].as_str().unwrap().to_string();
    let files = get(&format!("{}/api/2.0/mlflow/artifacts/list?run_id={run_id}", server.url));
    assert!(files.to_string().contains("model-int8.cifar"), "{files}");

    // A sweep is a parent run; its trials' runs are nested under it.
    check_sweep(root, &server.url);

    // 2. The server dies after the run has started: training finishes, says the record
    // is incomplete; after a restart `track sync` completes it.
    let cut = root.join("runs/cut");
    let mut child = trainer()
        .current_dir(root)
        .args([
            "fit",
            "--config",
            cfg.to_str().unwrap(),
            "--run-dir",
            cut.to_str().unwrap(),
            "--tracking-uri",
            &server.url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cut.join("tracking.json").exists() || last_step(&cut) < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the server could be stopped");
        assert!(Instant::now() < deadline, "the run made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "training stopped with the tracking server:\n{text}");
    assert!(text.contains("track sync"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(state(&cut)["complete"], false);
    // Nothing to sync to while it is down: a clear error.
    fails_with(run(root, &["track", "sync", cut.to_str().unwrap()]), &["cannot reach the tracking server"]);
    let server = start_mlflow(&exe, &store, port);
    ok(run(root, &["track", "sync", cut.to_str().unwrap()]));
    check_record(&server.url, &cut);

    // 3. Bad input: not an MLflow URI is refused before anything is written.
    fails_with(
        run(
            root,
            &[
                "fit",
                "--config",
                cfg.to_str().unwrap(),
                "--run-dir",
                root.join("runs/bad").to_str().unwrap(),
                "--tracking-uri",
                "ftp://x",
            ],
        ),
        &["http:// or https://"],
    );
    assert!(!root.join("runs/bad").exists());
}
