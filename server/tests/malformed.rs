//! Malformed requests get a 4xx with `{"error": ...}` that names the problem, and the
//! server keeps serving.

mod common;

use common::*;
use serde_json::{json, Value};

const MODEL: &str = "tiny-int8";

struct Case {
    name: &'static str,
    path: String,
    content_type: &'static str,
    header_len: Option<String>,
    body: Vec<u8>,
    status: u16,
    message: &'static str,
}

fn json_case(name: &'static str, body: Value, status: u16, message: &'static str) -> Case {
    Case {
        name,
        path: format!("/v2/models/{MODEL}/infer"),
        content_type: "application/json",
        header_len: None,
        body: body.to_string().into_bytes(),
        status,
        message,
    }
}

fn binary_case(
    name: &'static str,
    header: Value,
    tail: Vec<u8>,
    header_len: Option<String>,
    message: &'static str,
) -> Case {
    let mut body = header.to_string().into_bytes();
    let len = header_len.unwrap_or_else(|| body.len().to_string());
    body.extend_from_slice(&tail);
    Case {
        name,
        path: format!("/v2/models/{MODEL}/infer"),
        content_type: "application/octet-stream",
        header_len: Some(len),
        body,
        status: 400,
        message,
    }
}

fn uint8_input(n: usize, binary: Option<usize>) -> Value {
    let mut input = json!({ "name": "images", "datatype": "UINT8", "shape": [n, 32, 32, 3] });
    match binary {
        Some(b) => input["parameters"] = json!({ "binary_data_size": b }),
        None => input["data"] = json!(vec![7u8; n * 3072]),
    }
    input
}

fn cases() -> Vec<Case> {
    let one = 3072;
    vec![
        Case {
            name: "bad JSON",
            path: format!("/v2/models/{MODEL}/infer"),
            content_type: "application/json",
            header_len: None,
            body: b"{\"inputs\": [".to_vec(),
            status: 400,
            message: "invalid inference request JSON",
        },
        json_case("no inputs key", json!({ "outputs": [] }), 400, "missing field `inputs`"),
        json_case(
            "two inputs",
            json!({ "inputs": [uint8_input(1, None), uint8_input(1, None)] }),
            400,
            "exactly one input",
        ),
        json_case(
            "wrong dtype",
            json!({ "inputs": [{ "name": "x", "datatype": "INT64", "shape": [1, 32, 32, 3], "data": [1] }] }),
            400,
            "datatype INT64 is not supported",
        ),
        json_case(
            "wrong shape",
            json!({ "inputs": [{ "name": "x", "datatype": "UINT8", "shape": [1, 3, 32, 32], "data": vec![0; 3072] }] }),
            400,
            "does not fit the model",
        ),
        json_case(
            "FP32 with an image layout",
            json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 32, 32, 3], "data": vec![0.0; 3072] }] }),
            400,
            "does not fit the model",
        ),
        json_case(
            "too few values",
            json!({ "inputs": [{ "name": "x", "datatype": "UINT8", "shape": [2, 32, 32, 3], "data": vec![0; 3072] }] }),
            400,
            "6144 expected",
        ),
        json_case(
            "value out of UINT8 range",
            json!({ "inputs": [{ "name": "x", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                  "data": (0..3072).map(|i| if i == 5 { 300 } else { 1 }).collect::<Vec<_>>() }] }),
            400,
            "value 300 at 5 is not a UINT8",
        ),
        json_case(
            "strings as data",
            json!({ "inputs": [{ "name": "x", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": ["a"] }] }),
            400,
            "a number or a (nested) array of numbers",
        ),
        json_case(
            "batch of zero",
            json!({ "inputs": [{ "name": "x", "datatype": "UINT8", "shape": [0, 32, 32, 3], "data": [] }] }),
            400,
            "batch size 0",
        ),
        json_case(
            "no data",
            json!({ "inputs": [{ "name": "x", "datatype": "UINT8", "shape": [1, 32, 32, 3] }] }),
            400,
            "neither `data` nor a binary_data_size",
        ),
        json_case(
            "unknown output",
            json!({ "inputs": [uint8_input(1, None)], "outputs": [{ "name": "embeddings" }] }),
            400,
            "unknown output `embeddings`",
        ),
        json_case(
            "classification too large",
            json!({ "inputs": [uint8_input(1, None)], "outputs": [{ "name": "logits", "parameters": { "classification": 11 } }] }),
            400,
            "classification must be an integer in 1..=10",
        ),
        binary_case(
            "truncated binary payload",
            json!({ "inputs": [uint8_input(1, Some(one))] }),
            vec![1; one - 100],
            None,
            "binary data is truncated",
        ),
        binary_case(
            "extra binary bytes",
            json!({ "inputs": [uint8_input(1, Some(one))] }),
            vec![1; one + 5],
            None,
            "5 bytes of binary data follow",
        ),
        binary_case(
            "header length past the body",
            json!({ "inputs": [uint8_input(1, Some(one))] }),
            vec![1; one],
            Some("999999".into()),
            "but the body has only",
        ),
        binary_case(
            "header length not a number",
            json!({ "inputs": [uint8_input(1, Some(one))] }),
            vec![1; one],
            Some("lots".into()),
            "must be a byte count",
        ),
        binary_case(
            "header length cuts the JSON",
            json!({ "inputs": [uint8_input(1, Some(one))] }),
            vec![1; one],
            Some("20".into()),
            "invalid inference request JSON",
        ),
        binary_case(
            "binary size disagrees with the shape",
            json!({ "inputs": [uint8_input(1, Some(100))] }),
            vec![1; 100],
            None,
            "(3072 expected)",
        ),
        Case {
            name: "binary size without the header",
            path: format!("/v2/models/{MODEL}/infer"),
            content_type: "application/json",
            header_len: None,
            body: json!({ "inputs": [uint8_input(1, Some(one))] }).to_string().into_bytes(),
            status: 400,
            message: "Inference-Header-Content-Length header is missing",
        },
        Case {
            name: "unknown model",
            path: "/v2/models/resnet50/infer".into(),
            content_type: "application/json",
            header_len: None,
            body: json!({ "inputs": [uint8_input(1, None)] }).to_string().into_bytes(),
            status: 404,
            message: "unknown model `resnet50`",
        },
        Case {
            name: "oversized body",
            path: format!("/v2/models/{MODEL}/infer"),
            content_type: "application/json",
            header_len: None,
            body: vec![b' '; 3 << 20],
            status: 413,
            message: "too large",
        },
        Case {
            name: "non-image upload",
            path: "/v1/classify".into(),
            content_type: "application/octet-stream",
            header_len: None,
            body: b"this is a text file, not a picture".to_vec(),
            status: 415,
            message: "file `body`: cannot decode image",
        },
        Case {
            name: "truncated PNG upload",
            path: "/v1/classify".into(),
            content_type: "image/png",
            header_len: None,
            body: std::fs::read(&sample_images()[0]).unwrap()[..200].to_vec(),
            status: 415,
            message: "cannot decode image",
        },
        Case {
            name: "empty upload",
            path: "/v1/classify".into(),
            content_type: "image/png",
            header_len: None,
            body: Vec::new(),
            status: 400,
            message: "empty body",
        },
        Case {
            name: "broken multipart",
            path: "/v1/classify".into(),
            content_type: "multipart/form-data; boundary=XYZ",
            header_len: None,
            body: b"--XYZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nabc".to_vec(),
            status: 400,
            message: "multipart",
        },
        Case {
            name: "bad top_k",
            path: "/v1/classify?top_k=0".into(),
            content_type: "image/png",
            header_len: None,
            body: std::fs::read(&sample_images()[0]).unwrap(),
            status: 400,
            message: "top_k must be in 1..=10",
        },
        Case {
            name: "unload",
            path: format!("/v2/repository/models/{MODEL}/unload"),
            content_type: "application/json",
            header_len: None,
            body: Vec::new(),
            status: 400,
            message: "serves one model file",
        },
        Case {
            name: "load of another model",
            path: "/v2/repository/models/other/load".into(),
            content_type: "application/json",
            header_len: None,
            body: Vec::new(),
            status: 404,
            message: "unknown model `other`",
        },
        Case {
            name: "wrong method",
            path: format!("/v2/models/{MODEL}/ready"),
            content_type: "application/json",
            header_len: None,
            body: Vec::new(),
            status: 405,
            message: "method not allowed",
        },
    ]
}

#[test]
fn malformed_requests_get_4xx_and_the_server_keeps_serving() {
    let server =
        Server::start(&fixture("models/tiny-int8.cifar"), &["--max-body-bytes", "2000000", "--max-images", "64"]);
    let good_png = std::fs::read(&sample_images()[0]).unwrap();
    let c = client();
    let mut failures = Vec::new();
    for case in cases() {
        let mut r = c.post(server.at(&case.path)).header("Content-Type", case.content_type).body(case.body.clone());
        if let Some(l) = &case.header_len {
            r = r.header("Inference-Header-Content-Length", l);
        }
        let r = r.send().unwrap_or_else(|e| panic!("{}: the request failed: {e}", case.name));
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap_or(Value::Null);
        let message = body["error"].as_str().unwrap_or("");
        if status != case.status || !message.contains(case.message) {
            failures.push(format!(
                "{}: got {status} {body}, expected {} containing {:?}",
                case.name, case.status, case.message
            ));
        }
        // Still serving after each one.
        let ok = c.post(server.at("/v1/classify")).body(good_png.clone()).send().unwrap();
        assert_eq!(ok.status(), 200, "not serving after `{}`", case.name);
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    // Too many images for --max-images.
    let (body, len) = binary_request(&vec![0u8; 65 * 3072], 65, json!([]));
    let (status, v, _) = post_binary(&server, MODEL, body, len);
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("outside 1..=64"), "{v}");
    let m = server.metrics();
    assert!(m.contains("reason=\"rejected\""), "{m}");
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    // One worker on one thread, a queue of one and batches of one: a burst must overflow
    // (the configs/cpu.toml model: a 64-image request takes tens of milliseconds).
    let server = Server::start(
        &fixture("models/cpu-f32.cifar"),
        &["--workers", "1", "--threads", "1", "--max-queue", "1", "--max-batch", "1"],
    );
    let px = vec![9u8; 64 * 3072];
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let url = server.at("/v2/models/cpu-f32/infer");
            let px = px.clone();
            std::thread::spawn(move || {
                let (body, len) = binary_request(&px, 64, json!([]));
                let r = client().post(url).header("Inference-Header-Content-Length", len).body(body).send().unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let status = r.status().as_u16();
                let v: Value = r.json().unwrap_or(Value::Null);
                (status, retry, v)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(results.iter().all(|r| r.0 == 200 || r.0 == 503), "{results:?}");
    assert!(!busy.is_empty(), "32 concurrent 64-image requests never overflowed a queue of 1");
    assert!(results.iter().any(|r| r.0 == 200));
    for (_, retry, v) in busy {
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(v["error"].as_str().unwrap().contains("queue is full"), "{v}");
    }
    assert!(server.metrics().contains("reason=\"queue_full\""));
}

#[test]
fn slow_inference_times_out_with_503() {
    let server = Server::start(
        &fixture("models/cpu-f32.cifar"),
        &["--workers", "1", "--threads", "1", "--request-timeout-ms", "5"],
    );
    let (body, len) = binary_request(&vec![3u8; 1024 * 3072], 1024, json!([]));
    let (status, v, _) = post_binary(&server, "cpu-f32", body, len);
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("did not finish within 5 ms"), "{v}");
    assert!(server.metrics().contains("reason=\"timeout\""));
    // The server still answers.
    assert_eq!(server.get_json("/v2/health/ready").0, 200);
}

#[test]
fn a_bad_model_file_or_flag_stops_the_server_with_a_clear_error() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cifar-serve")).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let bad = fixture("malformed/truncated-to-100-bytes.cifar");
    let (code, err) = run(&["--model", bad.to_str().unwrap(), "--addr", "127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot serve") && err.contains("truncated-to-100-bytes.cifar"), "{err}");
    let (code, err) = run(&["--model", "/no/such/model.cifar"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/no/such/model.cifar"), "{err}");
    let good = fixture("models/tiny-int8.cifar");
    let (code, err) = run(&["--model", good.to_str().unwrap(), "--max-batch", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--max-batch"), "{err}");
    let (code, err) = run(&["--model", good.to_str().unwrap(), "--addr", "not-an-address"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--addr"), "{err}");
}
