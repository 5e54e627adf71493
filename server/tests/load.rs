//! Load on loopback through `cifar-load`: zero errors at concurrency 64, also while the
//! model is reloaded every second (including a rejected bad file), and a graceful
//! shutdown that finishes every request in flight.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn twenty_thousand_requests_at_concurrency_64_without_errors() {
    let server = Server::start(&fixture("models/tiny-int8.cifar"), &[]);
    let report = run_load(&server, "tiny-int8", "infer-binary", 20_000, 64);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["ok"], 20_000, "{report}");
    let m = server.metrics();
    assert!(m.contains("nv_inference_request_success{model=\"tiny-int8\",version=\"1\"} 20000"), "{m}");
    // Under this load requests are merged into batches.
    let batches = server.metric("nv_inference_exec_count{model=\"tiny-int8\",version=\"1\"}").unwrap();
    eprintln!("{report}\n20000 requests in {batches} batches");
    assert!(batches < 20_000.0, "no request was ever batched with another");
}

#[test]
fn reload_every_second_under_load_loses_no_request() {
    let server = Server::start(&fixture("models/tiny-int8.cifar"), &[]);
    // Serve a copy the test can replace.
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("live.cifar");
    std::fs::copy(fixture("models/tiny-int8.cifar"), &served).unwrap();
    drop(server);
    let server = Server::start(&served, &["--model-name", "live"]);
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (stop, served, url, pid) = (stop.clone(), served.clone(), server.url.clone(), server.child.id());
        std::thread::spawn(move || {
            let files = [
                fixture("models/tiny-f32.cifar"),
                fixture("malformed/truncated-to-100-bytes.cifar"),
                fixture("models/tiny-int8.cifar"),
            ];
            let mut outcomes = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                let file = &files[i % files.len()];
                replace_model(&served, file);
                // Alternate the two triggers: the repository API and SIGHUP.
                if i.is_multiple_of(2) {
                    let r = client().post(format!("{url}/v2/repository/models/live/load")).send().unwrap();
                    outcomes.push((file.clone(), r.status().as_u16()));
                } else {
                    Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
                    outcomes.push((file.clone(), 0));
                }
                i += 1;
            }
            outcomes
        })
    };
    let started = Instant::now();
    let report = run_load(&server, "live", "infer-binary", 20_000, 64);
    stop.store(true, Ordering::SeqCst);
    let outcomes = reloader.join().unwrap();
    eprintln!("{report}\nreloads: {outcomes:?} in {:?}", started.elapsed());
    assert_eq!(report["failed"], 0, "requests failed during reloads: {report}");
    assert!(outcomes.len() >= 3, "fewer than 3 reloads happened during the load: {outcomes:?}");
    for (file, status) in &outcomes {
        if *status != 0 {
            let bad = file.to_string_lossy().contains("malformed");
            assert_eq!(*status, if bad { 400 } else { 200 }, "{file:?}");
        }
    }
    // Give the last SIGHUP reload time to land, then check the counters.
    std::thread::sleep(Duration::from_millis(500));
    let ok = server.metric("cifar_model_reloads_total{outcome=\"success\"}").unwrap_or(0.0);
    let rejected = server.metric("cifar_model_reloads_total{outcome=\"failure\"}").unwrap_or(0.0);
    assert!(ok >= 2.0 && rejected >= 1.0, "reloads: {ok} ok, {rejected} rejected\n{}", server.log_text());
    assert!(server.log_text().contains("model load rejected; what was served keeps serving"));
    // Still serving after it all, with the version advanced.
    let (status, meta) = server.get_json("/v2/models/live");
    assert_eq!(status, 200);
    assert_eq!(meta["versions"][0], json!((ok as u64 + 1).to_string()));
}

#[test]
fn sigterm_finishes_requests_in_flight() {
    // The configs/cpu.toml model on one worker and one thread: batches of 64 take tens of
    // milliseconds, so all 16 requests are in the server together when SIGTERM comes.
    let mut server = Server::start(&fixture("models/cpu-f32.cifar"), &["--workers", "1", "--threads", "1"]);
    let url = server.at("/v2/models/cpu-f32/infer");
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (body, len) = binary_request(&vec![77u8; 64 * 3072], 64, json!([{ "name": "logits" }]));
                let r = client().post(url).header("Inference-Header-Content-Length", len).body(body).send();
                r.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
            })
        })
        .collect();
    // Wait until all 16 are in the server (the /metrics request itself is the 17th).
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("cifar_requests_in_flight").unwrap_or(0.0) < 17.0 {
        assert!(Instant::now() < deadline, "the requests never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.signal("TERM");
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(results.iter().all(|r| r == &Ok(200)), "requests in flight at SIGTERM failed: {results:?}");
    assert!(server.wait_exit(Duration::from_secs(30)), "exit status not 0:\n{}", server.log_text());
    let log = server.log_text();
    assert!(log.contains("shutting down") && log.contains("stopped"), "{log}");
    // After shutdown nothing listens.
    assert!(client().get(server.at("/v2/health/live")).send().is_err());
}
