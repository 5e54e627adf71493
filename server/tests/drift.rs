//! Drift monitoring end to end: validation images keep the drift score under the
//! threshold; the same images darkened, blurred or noised push it over, visible on
//! /metrics and /v1/drift, and logged. And a real Prometheus (Debian's, named in
//! `CIFAR_PROMETHEUS` by scripts/test.sh) with deploy/prometheus/rules.yml, scraping a
//! running server, sees the drift alert go from inactive to firing.

mod common;

use common::*;
use serde_json::{json, Value};

const MODEL: &str = "tiny-int8";

fn serve_all(server: &Server, images: &[Vec<u8>]) {
    for chunk in images.chunks(10) {
        let pixels: Vec<u8> = chunk.concat();
        let (body, len) =
            binary_request(&pixels, chunk.len(), json!([{ "name": "logits", "parameters": { "classification": 1 } }]));
        let (status, v, _) = post_binary(server, MODEL, body, len);
        assert_eq!(status, 200, "{v}");
    }
}

fn darken(img: &[u8]) -> Vec<u8> {
    img.iter().map(|&p| (f32::from(p) * 0.35) as u8).collect()
}

/// Two passes of a 3x3 box blur.
fn blur(img: &[u8]) -> Vec<u8> {
    let mut cur = img.to_vec();
    for _ in 0..2 {
        let mut next = cur.clone();
        for y in 0..32usize {
            for x in 0..32usize {
                for c in 0..3 {
                    let (mut s, mut n) = (0u32, 0u32);
                    for dy in -1i32..=1 {
                        for dx in -1i32..=1 {
                            let (yy, xx) = (y as i32 + dy, x as i32 + dx);
                            if (0..32).contains(&yy) && (0..32).contains(&xx) {
                                s += u32::from(cur[(yy as usize * 32 + xx as usize) * 3 + c]);
                                n += 1;
                            }
                        }
                    }
                    next[(y * 32 + x) * 3 + c] = (s / n) as u8;
                }
            }
        }
        cur = next;
    }
    cur
}

/// Uniform noise of +-60 from a fixed-seed generator.
fn noise(img: &[u8], seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    img.iter()
        .map(|&p| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = ((state >> 33) % 121) as i32 - 60;
            (i32::from(p) + r).clamp(0, 255) as u8
        })
        .collect()
}

fn report(server: &Server) -> Value {
    let (status, v) = server.get_json("/v1/drift");
    assert_eq!(status, 200);
    v
}

#[test]
fn shifted_inputs_raise_the_drift_alarm_and_validation_images_do_not() {
    let server =
        Server::start(&fixture("models/tiny-int8.cifar"), &["--drift-window", "500", "--drift-min-images", "200"]);
    // The sheet is in validation order, which groups classes (the source archive is
    // sorted by class); a real stream is mixed, so shuffle (fixed seed).
    let mut validation = validation_images();
    assert_eq!(validation.len(), 500);
    let mut state = 42u64;
    for i in (1..validation.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        validation.swap(i, (state >> 33) as usize % (i + 1));
    }
    let shifts: [(&str, Vec<Vec<u8>>); 3] = [
        ("darkened", validation.iter().map(|i| darken(i)).collect()),
        ("blurred", validation.iter().map(|i| blur(i)).collect()),
        ("noised", validation.iter().enumerate().map(|(k, i)| noise(i, k as u64)).collect()),
    ];
    for (name, shifted) in &shifts {
        serve_all(&server, &validation);
        let ok = report(&server);
        eprintln!("validation: score {} class_js {}", ok["score"], ok["class_js"]);
        assert_eq!(ok["judged"], true, "{ok}");
        assert_eq!(ok["drifting"], false, "validation images must not look drifted: {ok}");
        assert!(ok["score"].as_f64().unwrap() < ok["threshold"].as_f64().unwrap(), "{ok}");
        assert_eq!(server.metric("cifar_drift_alert{model=\"tiny-int8\"}"), Some(0.0));

        serve_all(&server, shifted);
        let bad = report(&server);
        let worst = bad["features"]
            .as_array()
            .unwrap()
            .iter()
            .max_by(|a, b| a["psi"].as_f64().unwrap().total_cmp(&b["psi"].as_f64().unwrap()))
            .unwrap();
        eprintln!("{name}: score {} class_js {} worst feature {worst}", bad["score"], bad["class_js"]);
        assert_eq!(bad["drifting"], true, "{name} images were not flagged: {bad}");
        assert!(bad["score"].as_f64().unwrap() > bad["threshold"].as_f64().unwrap(), "{bad}");
        assert_eq!(server.metric("cifar_drift_alert{model=\"tiny-int8\"}"), Some(1.0), "{name}");
        let score = server.metric("cifar_drift_score{model=\"tiny-int8\"}").unwrap();
        assert!(score > 0.25, "{name}: cifar_drift_score {score}");
    }
    // The expected feature moved the most for each shift: checked on the last (noise).
    let last = report(&server);
    let psi = |f: &str| {
        last["features"].as_array().unwrap().iter().find(|x| x["name"] == f).unwrap()["psi"].as_f64().unwrap()
    };
    assert!(psi("blur") > 0.25, "noise must raise the blur measure's PSI: {last}");
    let log = server.log_text();
    assert_eq!(log.matches("input drift: a threshold is crossed").count(), 3, "{log}");
    assert_eq!(log.matches("input drift: back under the thresholds").count(), 2, "{log}");
}

/// Prometheus, started on loopback with a config that scrapes `target` every second and
/// evaluates deploy/prometheus/rules.yml; killed on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(exe: &std::path::Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(root().join("deploy/prometheus/rules.yml"), dir.path().join("rules.yml")).expect("rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: cifar-serve\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = std::process::Command::new(exe)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let v: Value = client().get(format!("{}{path}", self.url)).send().ok()?.json().ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// Waits up to `secs` for `check` to hold on the answer of `path`.
    fn wait_for(&self, path: &str, secs: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(v) = self.get(path) {
                if check(&v) {
                    return v;
                }
                assert!(std::time::Instant::now() < deadline, "{what}: not within {secs} s; last answer {v}");
            }
            assert!(std::time::Instant::now() < deadline, "{what}: Prometheus did not answer within {secs} s");
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    /// The state of the alerting rule `name` (`inactive`, `pending`, `firing`).
    fn rule_state(&self, name: &str) -> Option<String> {
        let rules = self.get("/api/v1/rules?type=alert")?;
        rules["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .find(|r| r["name"] == name)
            .and_then(|r| r["state"].as_str().map(str::to_string))
    }
}

/// Metric names (`nv_*`, `cifar_*`) a PromQL-bearing file refers to.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices(['n', 'c']) {
        let rest = &text[i..];
        if !(rest.starts_with("nv_") || rest.starts_with("cifar_")) {
            continue;
        }
        if text[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/')
        {
            continue;
        }
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        // Not a prefix in prose (`nv_*`).
        if !name.ends_with('_') {
            names.insert(name);
        }
    }
    names
}

#[test]
fn prometheus_with_the_deploy_rules_fires_the_drift_alert() {
    let Some(exe) = std::env::var_os("CIFAR_PROMETHEUS").filter(|v| !v.is_empty()).map(std::path::PathBuf::from) else {
        eprintln!("skipped: CIFAR_PROMETHEUS is not set (scripts/test.sh installs Prometheus and sets it)");
        return;
    };
    let server =
        Server::start(&fixture("models/tiny-int8.cifar"), &["--drift-window", "300", "--drift-min-images", "200"]);
    let prometheus = Prometheus::start(&exe, server.url.trim_start_matches("http://"));
    prometheus.wait_for("/api/v1/targets", 60, "the cifar-serve target up", |v| {
        v["activeTargets"].as_array().is_some_and(|t| t.iter().any(|t| t["health"] == "up"))
    });

    // In-distribution traffic: the rule is evaluated and stays inactive.
    let mut validation = validation_images();
    let mut state = 7u64;
    for i in (1..validation.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        validation.swap(i, (state >> 33) as usize % (i + 1));
    }
    serve_all(&server, &validation[..300]);
    assert_eq!(report(&server)["judged"], true);
    // Wait for a scrape and an evaluation that saw the judged window.
    prometheus.wait_for("/api/v1/query?query=cifar_drift_window_images", 30, "the full window scraped", |v| {
        v["result"].as_array().is_some_and(|r| r.iter().any(|s| s["value"][1] == "300"))
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(prometheus.rule_state("CifarInputDrift").as_deref(), Some("inactive"));

    // Drifted traffic: the server's alarm, then the alert.
    let dark: Vec<Vec<u8>> = validation[..300].iter().map(|i| darken(i)).collect();
    serve_all(&server, &dark);
    assert_eq!(report(&server)["drifting"], true);
    let alerts = prometheus.wait_for("/api/v1/alerts", 30, "CifarInputDrift firing", |v| {
        v["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["labels"]["alertname"] == "CifarInputDrift" && a["state"] == "firing"))
    });
    let alert =
        alerts["alerts"].as_array().unwrap().iter().find(|a| a["labels"]["alertname"] == "CifarInputDrift").unwrap();
    assert_eq!(alert["labels"]["model"], MODEL, "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");

    // Every metric the rules and the Grafana dashboard name exists on the server: make
    // the lazily created series appear (a rejected request, a reload), then compare.
    let (status, _, _) = post_binary(&server, MODEL, b"{}".to_vec(), 2);
    assert_eq!(status, 400);
    server.signal("HUP");
    let mut wanted = metric_names(&std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).unwrap());
    wanted.extend(metric_names(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/cifar-serve.json")).unwrap(),
    ));
    assert!(wanted.len() >= 10, "{wanted:?}");
    let missing = |v: &Value| -> Vec<String> {
        let have: Vec<&str> = v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        // A histogram's name (in a description) stands for its `_bucket` series.
        wanted
            .iter()
            .filter(|w| !have.contains(&w.as_str()) && !have.contains(&format!("{w}_bucket").as_str()))
            .cloned()
            .collect()
    };
    let names =
        prometheus.wait_for("/api/v1/label/__name__/values", 30, "every metric of the rules and dashboard", |v| {
            let m = missing(v);
            if !m.is_empty() {
                eprintln!("not yet in Prometheus: {m:?}");
            }
            m.is_empty()
        });
    eprintln!("rules and dashboard use {wanted:?}; Prometheus has {names}");
}
