//! Starts the real `cifar-serve` binary on a free loopback port and talks to it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cifar_sdk::{Model, ModelOptions};
use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fixture file.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// The sample PNGs, sorted.
pub fn sample_images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture("images"))
        .expect("fixtures/images")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v
}

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// `host:port` of the gRPC listener, when started with `--grpc-addr`.
    pub grpc: Option<String>,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Server {
    /// Starts `cifar-serve --model <model> <extra>` and waits until it listens; its log
    /// (stderr) goes to a file.
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let stderr = Stdio::from(std::fs::File::create(&log).expect("log file"));
        Self::start_with(dir, model, extra, Stdio::null(), stderr, &[])
    }

    /// Starts `cifar-serve --model-repository <repo> <extra>`.
    pub fn start_repository(repo: &Path, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let stderr = Stdio::from(std::fs::File::create(&log).expect("log file"));
        Self::spawn(dir, ("--model-repository", repo), extra, Stdio::null(), stderr, &[])
    }

    /// Like [`Server::start`] with the given stdout, stderr and environment.
    pub fn start_with(
        dir: tempfile::TempDir,
        model: &Path,
        extra: &[&str],
        stdout: Stdio,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Server {
        Self::spawn(dir, ("--model", model), extra, stdout, stderr, env)
    }

    fn spawn(
        dir: tempfile::TempDir,
        (flag, source): (&str, &Path),
        extra: &[&str],
        stdout: Stdio,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Server {
        let ready = dir.path().join("addr");
        let log = dir.path().join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_cifar-serve"))
            .arg(flag)
            .arg(source)
            .args(["--addr", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start cifar-serve");
        let mut server = Server { child, url: String::new(), grpc: None, dir, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let mut lines = text.lines();
                server.url = format!("http://{}", lines.next().unwrap_or_default().trim());
                server.grpc = lines.next().map(|l| l.trim().to_string());
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("cifar-serve exited with {status} before listening:\n{}", server.log_text());
            }
            assert!(Instant::now() < deadline, "cifar-serve did not start:\n{}", server.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `url + path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cifar-serve did not exit within {within:?}:\n{}", self.log_text());
    }

    /// GET, parsed as JSON, with the status.
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = client().get(self.at(path)).send().expect("GET");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// The text of /metrics.
    pub fn metrics(&self) -> String {
        client().get(self.at("/metrics")).send().expect("GET /metrics").text().expect("metrics text")
    }

    /// The value of one sample on /metrics (the line starting with `series`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(series) && l.as_bytes().get(series.len()) == Some(&b' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

/// RGB8 32x32 pixels of an image file, decoded as the server decodes it.
pub fn rgb8(path: &Path) -> Vec<u8> {
    cifar_sdk::image::decode_rgb8(&std::fs::read(path).expect("read image"), 32, 32).expect("decode")
}

/// The SDK's logits for RGB8 images (the reference the server must match).
pub fn sdk_logits(model: &Path, pixels: &[u8], n: usize) -> Vec<f32> {
    let m: Arc<Model> = Model::open(model, &ModelOptions::default()).expect("open model");
    m.session().expect("session").logits_rgb8(pixels, n).expect("logits")
}

/// The images of the drift fixture sheet (500 validation images, 20 per row).
pub fn validation_images() -> Vec<Vec<u8>> {
    let sheet = image::open(fixture("drift/validation-500.png")).expect("validation sheet").into_rgb8();
    let (cols, rows) = (sheet.width() / 32, sheet.height() / 32);
    let mut out = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            let tile = image::imageops::crop_imm(&sheet, c * 32, r * 32, 32, 32).to_image();
            out.push(tile.into_raw());
        }
    }
    out
}

/// An OIP binary request of UINT8 images; returns (body, header length).
pub fn binary_request(pixels: &[u8], n: usize, outputs: Value) -> (Vec<u8>, usize) {
    let header = serde_json::json!({
        "inputs": [{ "name": "images", "datatype": "UINT8", "shape": [n, 32, 32, 3],
                     "parameters": { "binary_data_size": pixels.len() } }],
        "outputs": outputs,
    });
    let mut body = serde_json::to_vec(&header).expect("json");
    let len = body.len();
    body.extend_from_slice(pixels);
    (body, len)
}

/// Posts a binary OIP request; returns status, JSON header and binary tail.
pub fn post_binary(server: &Server, model: &str, body: Vec<u8>, header_len: usize) -> (u16, Value, Vec<u8>) {
    let r = client()
        .post(server.at(&format!("/v2/models/{model}/infer")))
        .header("Inference-Header-Content-Length", header_len)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .expect("POST infer");
    let status = r.status().as_u16();
    let json_len: Option<usize> =
        r.headers().get("inference-header-content-length").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
    let bytes = r.bytes().expect("body").to_vec();
    match json_len {
        Some(n) => (status, serde_json::from_slice(&bytes[..n]).expect("json header"), bytes[n..].to_vec()),
        None => (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), Vec::new()),
    }
}

/// Copies a model into the server's temp dir (so tests can replace it) and returns the path.
pub fn copy_model(dir: &Path, from: &str) -> PathBuf {
    let dst = dir.join("served.cifar");
    std::fs::copy(fixture(from), &dst).expect("copy model");
    dst
}

/// Replaces `dst` atomically with `from` (write + rename, as the trainer does).
pub fn replace_model(dst: &Path, from: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, dst).expect("rename");
}

/// Runs `cifar-load` against `server` (errors allowed) and returns its JSON report.
pub fn run_load(server: &Server, model: &str, endpoint: &str, requests: usize, concurrency: usize) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cifar-load"))
        .args(["--url", &server.url, "--model", model, "--endpoint", endpoint, "--json", "--allow-errors"])
        .args(["--requests", &requests.to_string(), "--concurrency", &concurrency.to_string()])
        .arg("--image")
        .args(sample_images())
        .output()
        .expect("run cifar-load");
    assert!(out.status.success(), "cifar-load failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cifar-load output {e}: {}", String::from_utf8_lossy(&out.stdout)))
}
