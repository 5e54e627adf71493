//! The web page in headless Chromium (Debian's `chromium`, installed by scripts/setup.sh),
//! driven over the DevTools protocol: choose an image in the page's file input, then read
//! the predicted label from the page and compare it with the SDK's.
//!
//! Set `CIFAR_SKIP_BROWSER_TEST=1` to skip on a machine without Chromium.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| PathBuf::from(dir).join(name)).find(|p| p.is_file())
    })
}

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol connection to one page.
struct Page {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws.send(Message::text(json!({ "id": id, "method": method, "params": params }).to_string())).unwrap();
        loop {
            let msg = self.ws.read().expect("DevTools connection closed");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it returns a non-empty string.
    fn wait_for_text(&mut self, expression: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.eval(expression).as_str().filter(|s| !s.is_empty()) {
                return s.to_string();
            }
            assert!(Instant::now() < deadline, "timed out waiting for `{expression}`");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn open_page(url: &str) -> (Browser, Page) {
    let exe = chromium().expect(
        "Chromium is not installed: scripts/setup.sh installs Debian's `chromium` (or set CIFAR_SKIP_BROWSER_TEST=1)",
    );
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(exe)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg("--window-size=900,760")
        .args(["--remote-debugging-port=0", "--remote-allow-origins=*"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let browser = Browser { child, _profile: profile };
    // Chromium writes the DevTools port into the profile once it listens.
    let port_file = browser._profile.path().join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let Some(p) =
            std::fs::read_to_string(&port_file).ok().and_then(|s| s.lines().next()?.trim().parse::<u16>().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "Chromium did not open its DevTools port");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ws_url = loop {
        let targets: Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/json/list"))
            .and_then(|r| r.json())
            .unwrap_or(Value::Null);
        let page = targets.as_array().and_then(|t| {
            t.iter().find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)))
        });
        if let Some(ws) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
            break ws.to_string();
        }
        assert!(Instant::now() < deadline, "the page never appeared in Chromium: {targets}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("connect to the page");
    (browser, Page { ws, next_id: 0 })
}

#[test]
fn the_web_page_classifies_an_uploaded_image() {
    if std::env::var_os("CIFAR_SKIP_BROWSER_TEST").is_some() {
        eprintln!("skipped: CIFAR_SKIP_BROWSER_TEST is set");
        return;
    }
    let model = fixture("models/tiny-f32.cifar");
    let server = Server::start(&model, &[]);
    let url = server.at("/");
    let (_browser, mut page) = open_page(&url);
    // The page fetched the model description from the server.
    let info = page.wait_for_text(
        "(() => { const t = document.getElementById('model').textContent; return t.startsWith('model ') ? t : ''; })()",
        Duration::from_secs(30),
    );
    assert!(info.contains("tiny-f32") && info.contains("f32"), "{info}");
    // The served models are listed, and the drift status is shown.
    assert_eq!(page.eval("document.getElementById('model-select').value"), json!("tiny-f32"));
    let listed = page.wait_for_text("document.getElementById('model-list').textContent", Duration::from_secs(10));
    assert!(listed.contains("tiny-f32 v1"), "{listed}");
    let drift = page.wait_for_text(
        "(() => { const t = document.getElementById('drift').textContent; return t.includes('images') ? t : ''; })()",
        Duration::from_secs(10),
    );
    assert!(drift.starts_with("drift: "), "{drift}");
    // Layout: nothing overlaps the drop box (the model line used to be crossed by its border).
    let overlaps = page.eval(
        "(() => { const d = document.getElementById('drop').getBoundingClientRect();
                  return ['model', 'models', 'drift'].filter((id) => {
                    const r = document.getElementById(id).getBoundingClientRect();
                    return r.bottom > d.top && r.top < d.bottom; }); })()",
    );
    assert_eq!(overlaps, json!([]), "elements overlapping the drop box");

    for image in sample_images().iter().take(3) {
        // Choose the file in the page's <input type=file>, as a user would.
        let doc = page.call("DOM.getDocument", json!({}));
        let input = page.call("DOM.querySelector", json!({ "nodeId": doc["root"]["nodeId"], "selector": "#file" }));
        page.eval("document.getElementById('top-label').textContent = ''");
        page.call(
            "DOM.setFileInputFiles",
            json!({ "nodeId": input["nodeId"], "files": [image.canonicalize().unwrap().to_string_lossy()] }),
        );
        let label = page.wait_for_text("document.getElementById('top-label').textContent", Duration::from_secs(30));
        let logits = sdk_logits(&model, &rgb8(image), 1);
        let best = (0..10).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
        assert_eq!(label, cifar_sdk::CIFAR10_CLASSES[best], "page label for {}", image.display());
        let bars = page.eval("document.querySelectorAll('#result .row').length");
        assert_eq!(bars, json!(5), "the page shows the top-5 bars");
        let status = page.eval("document.getElementById('status').textContent");
        assert!(status.as_str().unwrap().contains("ms compute"), "{status}");
        // The chosen image is shown, left of its top-5 bars.
        let placed = page.eval(
            "(() => { const p = document.getElementById('preview');
                      const r = p.getBoundingClientRect(), b = document.getElementById('result').getBoundingClientRect();
                      return p.complete && p.naturalWidth > 0 && r.width >= 100 && r.height >= 100 && r.right <= b.left; })()",
        );
        assert_eq!(placed, json!(true), "the preview is not shown beside the bars");
    }
    // A screenshot, as a person would look at it (kept for a human to open).
    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "screenshot of {} bytes", png.len());
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cifar-serve-page.png");
    std::fs::write(&out, png).unwrap();
    eprintln!("screenshot: {}", out.display());
}

/// Standard base64 (the DevTools protocol's encoding of binary data).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | u32::from(value(c)) << (18 - 6 * i));
        out.extend_from_slice(&v.to_be_bytes()[1..chunk.len()]);
    }
    out
}
