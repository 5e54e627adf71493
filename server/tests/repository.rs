//! `--model-repository`: several models and versions from one directory in Triton's
//! layout, loaded, reloaded and unloaded by name, new versions found by polling, under
//! load without losing a request.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Puts `from` at `repo/<name>/<version>/model.cifar` the way a deployment should: the
/// version directory is made aside and renamed in, so a poll never sees half a file.
fn add_version(repo: &Path, name: &str, version: u64, from: &Path) {
    let staging = repo.join(format!(".staging-{name}-{version}"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(from, staging.join("model.cifar")).unwrap();
    std::fs::create_dir_all(repo.join(name)).unwrap();
    std::fs::rename(&staging, repo.join(name).join(version.to_string())).unwrap();
}

fn post(server: &Server, path: &str) -> (u16, Value) {
    let r = client().post(server.at(path)).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn infer_status(server: &Server, model: &str, version: Option<&str>) -> (u16, Value) {
    let path = match version {
        Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
        None => format!("/v2/models/{model}/infer"),
    };
    let (body, len) = binary_request(&[9u8; 3072], 1, json!([{ "name": "logits" }]));
    let r = client().post(server.at(&path)).header("Inference-Header-Content-Length", len).body(body).send().unwrap();
    let status = r.status().as_u16();
    (status, first_json(&r.bytes().unwrap()))
}

/// The JSON header of a binary response (or the whole body of a JSON one).
fn first_json(bytes: &[u8]) -> Value {
    let mut de = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    de.next().and_then(Result::ok).unwrap_or(Value::Null)
}

#[test]
fn two_models_versions_load_unload_and_poll_under_load() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    add_version(root, "alpha", 1, &fixture("models/tiny-int8.cifar"));
    add_version(root, "beta", 1, &fixture("models/tiny-f32.cifar"));
    add_version(root, "beta", 2, &fixture("models/tiny-int8.cifar"));
    let labels: Vec<String> = (0..10).map(|i| format!("class-{i}")).collect();
    std::fs::write(
        root.join("beta/config.toml"),
        format!("version_policy = \"all\"\nmax_batch = 4\nlabels = {}\n", serde_json::to_string(&labels).unwrap()),
    )
    .unwrap();
    // A directory that is not a loadable model is listed as unavailable, not fatal.
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let server = Server::start_repository(root, &["--repository-poll-secs", "1"]);

    // Both models at once; beta serves both its versions (policy "all"), alpha its latest.
    let index = post(&server, "/v2/repository/index").1;
    let rows: Vec<(String, String, String)> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().into(),
                r["version"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let row = |n: &str, v: &str, s: &str| (n.to_string(), v.to_string(), s.to_string());
    assert_eq!(
        rows,
        vec![
            row("alpha", "1", "READY"),
            row("beta", "1", "READY"),
            row("beta", "2", "READY"),
            row("empty", "", "UNAVAILABLE")
        ],
        "{index}"
    );
    assert_eq!(infer_status(&server, "alpha", None).0, 200);
    let (s, beta) = infer_status(&server, "beta", None);
    assert_eq!((s, beta["model_version"].as_str()), (200, Some("2")), "{beta}");
    let (s, beta1) = infer_status(&server, "beta", Some("1"));
    assert_eq!((s, beta1["model_version"].as_str()), (200, Some("1")), "{beta1}");
    assert_eq!(server.get_json("/v2/models/beta").1["versions"], json!(["1", "2"]));
    assert_eq!(server.get_json("/v2/models/beta").1["parameters"]["labels"][3], "class-3");
    let config = server.get_json("/v2/models/beta/config").1;
    assert_eq!(config["version_policy"], json!({ "all": {} }));
    assert_eq!(
        (config["max_batch_size"].as_u64(), server.get_json("/v2/models/alpha/config").1["max_batch_size"].as_u64()),
        (Some(4), Some(64))
    );
    // beta's own batch size holds under load: its batches never exceed 4 images.
    assert_eq!(run_load(&server, "beta", "infer-binary", 3_000, 32)["failed"], 0);
    let stats = server.get_json("/v2/models/beta/versions/2/stats").1;
    let sizes: Vec<u64> = stats["model_stats"][0]["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap())
        .collect();
    assert!(sizes.iter().all(|&b| b <= 4) && sizes.iter().any(|&b| b > 1), "beta batch sizes {sizes:?}");
    // Classification names the repository's labels.
    let c = client()
        .post(server.at("/v1/classify?model=beta"))
        .body(std::fs::read(&sample_images()[0]).unwrap())
        .send()
        .unwrap();
    let c: Value = c.json().unwrap();
    assert!(c["results"][0]["top"][0]["label"].as_str().unwrap().starts_with("class-"), "{c}");
    // Names are names, never paths.
    let (s, e) = post(&server, "/v2/repository/models/..%2F..%2Fetc/load");
    assert_eq!(s, 404, "{e}");
    assert!(e["error"].as_str().unwrap().contains("not a model name"), "{e}");

    // Under load on alpha (40,000 requests at concurrency 64): reload it through the
    // API, and drop a new version into the repository for the poll to find and switch
    // to while the load runs. No request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let changer = {
        let (stop, url, root) = (stop.clone(), server.url.clone(), root.to_path_buf());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            std::thread::sleep(Duration::from_millis(300));
            statuses.push(
                client().post(format!("{url}/v2/repository/models/alpha/load")).send().unwrap().status().as_u16(),
            );
            add_version(&root, "alpha", 2, &fixture("models/tiny-f32.cifar"));
            // Wait, with the load still running, until the poll serves version 2.
            let mut switched_under_load = false;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let meta: Value = client().get(format!("{url}/v2/models/alpha")).send().unwrap().json().unwrap();
                if meta["versions"] == json!(["2"]) {
                    switched_under_load = !stop.load(Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (statuses, switched_under_load)
        })
    };
    let started = Instant::now();
    let report = run_load(&server, "alpha", "infer-binary", 40_000, 64);
    stop.store(true, Ordering::SeqCst);
    let (statuses, switched_under_load) = changer.join().unwrap();
    eprintln!("{report}\nload statuses {statuses:?} in {:?}", started.elapsed());
    assert_eq!(report["failed"], 0, "requests failed while alpha changed: {report}");
    assert_eq!(report["ok"], 40_000, "{report}");
    assert_eq!(statuses, vec![200]);
    assert!(
        switched_under_load,
        "the poll did not switch alpha to version 2 while the load ran\n{}",
        server.log_text()
    );
    // The poll found version 2 (the policy serves the latest only).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let versions = server.get_json("/v2/models/alpha").1["versions"].clone();
        if versions == json!(["2"]) {
            break;
        }
        assert!(Instant::now() < deadline, "version 2 was not picked up: {versions}\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(infer_status(&server, "alpha", Some("1")).0, 404);
    assert!(server.metrics().contains("nv_inference_request_success{model=\"alpha\",version=\"2\"}"));

    // Unload under load: requests already accepted finish (no 5xx, no dropped
    // connection); later ones get a clear 404; the index says why; load brings it back.
    let unloader = {
        let url = server.url.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            client().post(format!("{url}/v2/repository/models/beta/unload")).send().unwrap().status().as_u16()
        })
    };
    let report = run_load(&server, "beta", "infer-binary", 20_000, 64);
    assert_eq!(unloader.join().unwrap(), 200);
    let errors = report["errors"].as_object().unwrap();
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(errors.keys().all(|e| e.starts_with("HTTP 404") && e.contains("not available")), "{report}");
    assert_eq!(report["ok"].as_u64().unwrap() + report["failed"].as_u64().unwrap(), 20_000, "{report}");
    assert_eq!(post(&server, "/v2/repository/models/beta/unload").0, 200, "unloading twice is not an error");
    assert_eq!(post(&server, "/v2/repository/models/nope/unload").0, 400);
    let (s, e) = infer_status(&server, "beta", None);
    assert_eq!(s, 404);
    assert!(e["error"].as_str().unwrap_or("").contains("not available: unloaded"), "{e}");
    let index = post(&server, "/v2/repository/index").1;
    assert!(index.as_array().unwrap().iter().any(|r| r["name"] == "beta" && r["state"] == "UNAVAILABLE"), "{index}");
    let ready = client().post(server.at("/v2/repository/index")).body(r#"{"ready": true}"#).send().unwrap();
    let ready: Value = ready.json().unwrap();
    assert!(ready.as_array().unwrap().iter().all(|r| r["state"] == "READY" && r["name"] != "beta"), "{ready}");
    // A poll does not bring an unloaded model back.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(infer_status(&server, "beta", None).0, 404);
    assert_eq!(post(&server, "/v2/repository/models/beta/load").0, 200);
    assert_eq!(infer_status(&server, "beta", Some("1")).0, 200);
    // A model whose file is bad is refused; what was served keeps serving.
    add_version(root, "beta", 3, &fixture("malformed/truncated-to-100-bytes.cifar"));
    let (s, e) = post(&server, "/v2/repository/models/beta/load");
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("version 3"), "{e}");
    assert_eq!(infer_status(&server, "beta", Some("2")).0, 200);
    // Drift is watched per model.
    let (s, d) = server.get_json("/v1/drift?model=alpha");
    assert_eq!((s, d["model"].as_str()), (200, Some("alpha")), "{d}");
    assert!(server.metrics().contains("cifar_drift_window_images{model=\"beta\"}"));
}

#[test]
fn a_repository_with_nothing_loadable_is_refused() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("m/1")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cifar-serve"))
        .args(["--addr", "127.0.0.1:0", "--model-repository"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no model in") && err.contains("model.cifar"), "{err}");
}
