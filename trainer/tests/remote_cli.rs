//! Datasets and models in a real S3 API (`moto_server` from PyPI; scripts/test.sh
//! installs it and names it in `CIFAR_MOTO`): push, pull into another directory with the
//! same digest, a corrupted object caught on pull with nothing half-written, training
//! from `data.path = "s3://...@<digest>"`, model push and pull, and the errors for a
//! missing digest, missing or wrong credentials, a missing bucket and an unreachable server.
//!
//! Without `CIFAR_MOTO` the test says so and passes (a machine without the venv).

mod common;
#[path = "../../remote/testing/moto.rs"]
mod moto;

use std::path::Path;
use std::process::Output;

use common::*;
use moto::Moto;

/// Runs the trainer in `dir` with the server's environment (and `CIFAR_CACHE_DIR`).
fn run_s3(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = trainer();
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"] {
        cmd.env_remove(k);
    }
    cmd.current_dir(dir)
        .env("CIFAR_CACHE_DIR", dir.join("cache"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .expect("the trainer binary runs")
}

fn digest(dataset: &Path) -> String {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dataset.join("manifest.json")).unwrap()).unwrap();
    m["digest"].as_str().unwrap().to_string()
}

#[test]
fn datasets_and_models_round_trip_through_s3() {
    let Some(exe) = moto::moto_exe() else {
        eprintln!("skipped: CIFAR_MOTO is not set (scripts/test.sh installs moto and sets it)");
        return;
    };
    let tmp = tempdir();
    let root = tmp.path();
    let server = Moto::start(&exe, root);
    server.create_bucket("team");
    let env = server.env();
    let data = synthetic_dataset(root, 30, 50);

    // Push, then pull into another directory: the same dataset.
    let out = ok(run_s3(root, &env, &["data", "push", data.to_str().unwrap(), "s3://team/cifar"]));
    let at = format!("s3://team/cifar@{}", digest(&data));
    assert!(out.contains(&format!("pushed: {at}")), "{out}");
    let pulled = root.join("pulled");
    let out = ok(run_s3(root, &env, &["data", "pull", "s3://team/cifar", pulled.to_str().unwrap()]));
    assert!(out.contains("verified"), "{out}");
    assert_eq!(digest(&pulled), digest(&data));
    ok(run_s3(root, &env, &["data", "verify", pulled.to_str().unwrap()]));

    // Training from the remote dataset: fetched into the cache, digest recorded.
    let cfg = tiny_config(root, Path::new(&at), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("epochs = 3", "epochs = 1");
    std::fs::write(&cfg, text).unwrap();
    let run_dir = root.join("runs/remote");
    ok(run_s3(root, &env, &["fit", "--config", cfg.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()]));
    let used: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(used["digest"].as_str().unwrap(), digest(&data));
    assert!(root.join("cache/datasets").join(digest(&data)).join("manifest.json").exists());

    // A model: push prints its content address; pull gives the same bytes.
    let model = root.join("model.cifar");
    ok(run_s3(root, &env, &["compile", "--run", run_dir.to_str().unwrap(), "-o", model.to_str().unwrap()]));
    let out = ok(run_s3(root, &env, &["model", "push", model.to_str().unwrap(), "s3://team/cifar"]));
    let url = out.lines().find_map(|l| l.strip_prefix("pushed: ")).unwrap().trim().to_string();
    assert!(url.starts_with("s3://team/cifar/models/") && url.ends_with(".cifar"), "{url}");
    let back = root.join("back.cifar");
    ok(run_s3(root, &env, &["model", "pull", &url, "-o", back.to_str().unwrap()]));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&model).unwrap());

    // A corrupted object: caught on pull, with nothing half-written.
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    let remote = cifar_remote::Remote::open("s3://team/cifar").unwrap();
    let index: cifar_remote::DatasetIndex =
        serde_json::from_slice(&remote.get(&format!("datasets/{}.json", digest(&data))).unwrap()).unwrap();
    let train = index.files.iter().find(|f| f.name == "train.safetensors").unwrap();
    let mut bytes = std::fs::read(data.join("train.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    remote.put(&format!("objects/{}", train.sha256), bytes).unwrap();
    let bad = root.join("pulled-bad");
    let said = fails_with(
        run_s3(root, &env, &["data", "pull", &at, bad.to_str().unwrap()]),
        &["corrupt", &train.sha256, "push --force"],
    );
    assert!(!bad.exists());
    assert!(!entries(root).iter().any(|e| e.starts_with(".dataset-pull")), "{:?}", entries(root));
    // `push --force` repairs it; the next pull also clears what a killed one left.
    ok(run_s3(root, &env, &["data", "push", "--force", data.to_str().unwrap(), "s3://team/cifar"]));
    let stale = root.join(".dataset-pull-999999999-0");
    std::fs::create_dir(&stale).unwrap();
    ok(run_s3(root, &env, &["data", "pull", &at, bad.to_str().unwrap()]));
    assert_eq!(digest(&bad), digest(&data));
    assert!(!stale.exists(), "a dead pull's leftovers stay");

    // Bad input, each a clear error.
    let no_digest = tiny_config(root, Path::new("s3://team/cifar"), "");
    fails_with(
        run_s3(root, &env, &["fit", "--config", no_digest.to_str().unwrap(), "--run-dir", "runs/x"]),
        &["names no dataset digest", "@<digest>"],
    );
    assert!(!root.join("runs/x").exists());
    let no_keys: Vec<(&str, String)> = env.iter().filter(|(k, _)| !k.starts_with("AWS_ACCESS")).cloned().collect();
    fails_with(
        run_s3(root, &no_keys, &["data", "pull", &at, root.join("p2").to_str().unwrap()]),
        &["no S3 credentials", "AWS_ACCESS_KEY_ID"],
    );
    fails_with(
        run_s3(root, &env, &["data", "pull", "s3://no-such-bucket/x@abc", root.join("p3").to_str().unwrap()]),
        &["no-such-bucket"],
    );
    let mut closed = env.clone();
    closed.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    closed.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9".into()));
    let unreachable = fails_with(
        run_s3(root, &closed, &["data", "push", data.to_str().unwrap(), "s3://team/cifar"]),
        &["cannot reach s3://team/cifar"],
    );
    let mut wrong = env.clone();
    wrong.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY", "not-the-secret".into()));
    let refused = fails_with(
        run_s3(root, &wrong, &["data", "pull", &at, root.join("p5").to_str().unwrap()]),
        &["was refused", "AWS_SECRET_ACCESS_KEY"],
    );
    assert!(!root.join("p5").exists());
    // Credentials are never printed.
    for out in [said, unreachable, refused] {
        assert!(!out.contains(&server.secret) && !out.contains(&server.key_id), "{out}");
    }
}
