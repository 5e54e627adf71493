//! Every endpoint of the real binary; predictions must equal the SDK's for the same images.

mod common;

use common::*;
use serde_json::{json, Value};

const MODEL: &str = "tiny-int8";

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

#[test]
fn health_metadata_and_page() {
    let server = Server::start(&fixture("models/tiny-int8.cifar"), &[]);
    let (s, v) = server.get_json("/v2");
    assert_eq!(s, 200);
    assert_eq!(v["name"], "cifar-serve");
    assert!(v["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    assert_eq!(server.get_json("/v2/health/live").0, 200);
    assert_eq!(server.get_json("/v2/health/ready").0, 200);
    let (s, meta) = server.get_json(&format!("/v2/models/{MODEL}"));
    assert_eq!(s, 200);
    assert_eq!(meta["name"], MODEL);
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 32, 32, 3]));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 10]));
    assert_eq!(meta["parameters"]["precision"], "int8");
    assert_eq!(meta["parameters"]["labels"][3], "cat");
    assert_eq!(server.get_json(&format!("/v2/models/{MODEL}/versions/1")).0, 200);
    let (s, r) = server.get_json(&format!("/v2/models/{MODEL}/ready"));
    assert_eq!((s, &r["ready"]), (200, &json!(true)));
    assert_eq!(server.get_json(&format!("/v2/models/{MODEL}/versions/1/ready")).0, 200);
    // Unknown model and version: 404 with a message naming what is served.
    let (s, e) = server.get_json("/v2/models/resnet50");
    assert_eq!(s, 404);
    assert!(e["error"].as_str().unwrap().contains(MODEL), "{e}");
    let (s, e) = server.get_json(&format!("/v2/models/{MODEL}/versions/7"));
    assert_eq!(s, 404);
    assert!(e["error"].as_str().unwrap().contains("version"), "{e}");
    let (s, e) = server.get_json("/no/such/path");
    assert_eq!(s, 404);
    assert!(e["error"].is_string());
    // The web page: self-contained, no external assets.
    let page = client().get(server.at("/")).send().unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    assert!(html.contains("id=\"file\"") && html.contains("/v1/classify"));
    assert!(!html.contains("http://") && !html.contains("https://"), "the page must not load external assets");
    // Repository index.
    let idx: Value = client().post(server.at("/v2/repository/index")).send().unwrap().json().unwrap();
    assert_eq!(idx[0]["name"], MODEL);
    assert_eq!(idx[0]["state"], "READY");
}

#[test]
fn infer_json_and_binary_equal_the_sdk() {
    let model = fixture("models/tiny-int8.cifar");
    let server = Server::start(&model, &[]);
    let images = sample_images();
    let n = images.len();
    let pixels: Vec<u8> = images.iter().flat_map(|p| rgb8(p)).collect();
    let expected = sdk_logits(&model, &pixels, n);

    // JSON tensor data, nested as [N][H][W][C] (the protocol allows nested or flat).
    let nested: Vec<Value> = pixels
        .chunks(32 * 32 * 3)
        .map(|img| json!(img.chunks(32 * 3).map(|row| row.chunks(3).collect::<Vec<_>>()).collect::<Vec<_>>()))
        .collect();
    let request = json!({
        "id": "req-42",
        "inputs": [{ "name": "images", "datatype": "UINT8", "shape": [n, 32, 32, 3], "data": nested }],
    });
    let r = client().post(server.at(&format!("/v2/models/{MODEL}/infer"))).json(&request).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["id"], "req-42");
    assert_eq!(v["model_name"], MODEL);
    assert_eq!(v["model_version"], "1");
    let logits = v["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "logits").unwrap();
    assert_eq!(logits["shape"], json!([n, 10]));
    assert_eq!(f32s(&logits["data"]), expected, "int8 logits through the server differ from the SDK's");
    let probs = v["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap();
    let p = f32s(&probs["data"]);
    for row in p.chunks(10) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    // Binary input, binary FP32 output and binary classification output.
    let outputs = json!([
        { "name": "logits", "parameters": { "binary_data": true } },
        { "name": "probabilities", "parameters": { "classification": 3, "binary_data": true } },
    ]);
    let (body, len) = binary_request(&pixels, n, outputs);
    let (status, header, tail) = post_binary(&server, MODEL, body, len);
    assert_eq!(status, 200, "{header}");
    let o = header["outputs"].as_array().unwrap();
    let logit_bytes = o[0]["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(logit_bytes, n * 10 * 4);
    let got: Vec<f32> =
        tail[..logit_bytes].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(got, expected);
    assert_eq!(o[1]["datatype"], "BYTES");
    assert_eq!(o[1]["shape"], json!([n, 3]));
    // BYTES elements: 4-byte little-endian length, then the string.
    let mut rest = &tail[logit_bytes..];
    let mut strings = Vec::new();
    while !rest.is_empty() {
        let l = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        strings.push(String::from_utf8(rest[4..4 + l].to_vec()).unwrap());
        rest = &rest[4 + l..];
    }
    assert_eq!(strings.len(), n * 3);
    let labels = cifar_sdk::CIFAR10_CLASSES;
    for (i, row) in expected.chunks(10).enumerate() {
        let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        let parts: Vec<&str> = strings[i * 3].splitn(3, ':').collect();
        assert_eq!(parts[1].parse::<usize>().unwrap(), best, "{}", strings[i * 3]);
        assert_eq!(parts[2], labels[best]);
        let score: f32 = parts[0].parse().unwrap();
        assert!(score > 0.0 && score <= 1.0);
    }

    // FP32 NCHW input (the model's own layout) through the versioned endpoint.
    let norm = cifar_sdk::Normalization::CIFAR10;
    let mut nchw = vec![0f32; n * 3072];
    for (b, img) in pixels.chunks(3072).enumerate() {
        for (p, px) in img.chunks(3).enumerate() {
            for c in 0..3 {
                nchw[b * 3072 + c * 1024 + p] = (f32::from(px[c]) / 255.0 - norm.mean[c]) / norm.std[c];
            }
        }
    }
    let request = json!({
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [n, 3, 32, 32], "data": nchw }],
        "outputs": [{ "name": "logits", "parameters": { "classification": 1 } }],
    });
    let v: Value = client()
        .post(server.at(&format!("/v2/models/{MODEL}/versions/1/infer")))
        .json(&request)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let top1 = v["outputs"][0]["data"].as_array().unwrap();
    for (i, row) in expected.chunks(10).enumerate() {
        let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert!(top1[i].as_str().unwrap().ends_with(&format!(":{best}:{}", labels[best])), "{}", top1[i]);
    }
}

#[test]
fn classify_raw_and_multipart_equal_the_sdk() {
    let model = fixture("models/tiny-f32.cifar");
    let server = Server::start(&model, &[]);
    let images = sample_images();
    let pixels: Vec<u8> = images.iter().flat_map(|p| rgb8(p)).collect();
    let expected = sdk_logits(&model, &pixels, images.len());

    // One raw body.
    let v: Value = client()
        .post(server.at("/v1/classify?top_k=3"))
        .body(std::fs::read(&images[0]).unwrap())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let top = v["results"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let best = (0..10).max_by(|&a, &b| expected[a].total_cmp(&expected[b])).unwrap();
    assert_eq!(top[0]["class"], best);
    assert!((top[0]["logit"].as_f64().unwrap() as f32 - expected[best]).abs() <= 1e-5 * expected[best].abs().max(1.0));

    // All images as multipart, plus one large JPEG that the server resizes.
    let mut form = reqwest::blocking::multipart::Form::new();
    for p in &images {
        let part = reqwest::blocking::multipart::Part::bytes(std::fs::read(p).unwrap())
            .file_name(p.file_name().unwrap().to_string_lossy().into_owned());
        form = form.part("image", part);
    }
    let big = image::imageops::resize(
        &image::RgbImage::from_raw(32, 32, rgb8(&images[3])).unwrap(),
        640,
        480,
        image::imageops::FilterType::Nearest,
    );
    let mut jpeg = Vec::new();
    big.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
    form = form.part("image", reqwest::blocking::multipart::Part::bytes(jpeg).file_name("big.jpg"));
    let r = client().post(server.at("/v1/classify")).multipart(form).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), images.len() + 1);
    for (i, (res, row)) in results.iter().zip(expected.chunks(10)).enumerate() {
        assert_eq!(res["file"], images[i].file_name().unwrap().to_string_lossy().as_ref());
        let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(res["top"][0]["class"], best, "image {i}");
        assert_eq!(res["top"].as_array().unwrap().len(), 5);
    }
    assert_eq!(results[images.len()]["file"], "big.jpg");
    assert_eq!(results[images.len()]["top"][0]["label"].as_str().map(|s| !s.is_empty()), Some(true));
}

#[test]
fn metrics_and_drift_endpoints() {
    let server = Server::start(&fixture("models/tiny-int8.cifar"), &["--drift-min-images", "10"]);
    let images = sample_images();
    for p in &images {
        let r = client().post(server.at("/v1/classify")).body(std::fs::read(p).unwrap()).send().unwrap();
        assert_eq!(r.status(), 200);
    }
    let _ = client().post(server.at("/v1/classify")).body("not an image").send().unwrap();
    let m = server.metrics();
    // Triton's names exactly: the text format 0.0.4, no `_total` on Triton's counters,
    // even when the client asks for OpenMetrics first (as Prometheus does).
    let r = client()
        .get(server.at("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = r.text().unwrap();
    assert!(!text.contains("nv_inference_request_success_total") && !text.contains("# EOF"), "{text}");
    let open = client().get(server.at("/metrics?format=openmetrics")).send().unwrap().text().unwrap();
    assert!(open.contains("nv_inference_request_success_total{model=\"tiny-int8\",version=\"1\"} 10"), "{open}");
    assert!(open.ends_with("# EOF\n"), "{open}");
    // The same counts in Triton's statistics and the configuration in Triton's shape.
    let (s, stats) = server.get_json("/v2/models/tiny-int8/stats");
    assert_eq!(s, 200, "{stats}");
    let st = &stats["model_stats"][0];
    assert_eq!((st["name"].as_str(), st["version"].as_str()), (Some("tiny-int8"), Some("1")));
    assert_eq!(st["inference_count"], 10);
    assert_eq!(st["inference_stats"]["success"]["count"], 10);
    assert_eq!(st["inference_stats"]["fail"]["count"], 1);
    assert!(st["inference_stats"]["compute_infer"]["ns"].as_u64().unwrap() > 0, "{st}");
    let batched: u64 = st["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap() * b["compute_infer"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(batched, 10, "{st}");
    assert_eq!(server.get_json("/v2/models/stats").1["model_stats"][0]["inference_count"], 10);
    assert_eq!(server.get_json("/v2/models/nope/stats").0, 404);
    let (s, cfg) = server.get_json("/v2/models/tiny-int8/config");
    assert_eq!(s, 200, "{cfg}");
    assert_eq!(cfg["max_batch_size"], 64);
    assert_eq!(cfg["input"][0]["data_type"], "TYPE_UINT8");
    assert_eq!(cfg["input"][0]["dims"], serde_json::json!([32, 32, 3]));
    assert_eq!(cfg["output"][0]["dims"], serde_json::json!([10]));
    assert_eq!(cfg["instance_group"][0]["kind"], "KIND_CPU");
    assert_eq!(server.get_json("/v2/models/tiny-int8/versions/1/config").0, 200);
    assert_eq!(server.get_json("/v2/models/tiny-int8/versions/7/config").0, 404);
    for name in [
        "nv_inference_request_success{model=\"tiny-int8\",version=\"1\"} 10",
        "nv_inference_count{model=\"tiny-int8\",version=\"1\"} 10",
        "nv_inference_request_failure{model=\"tiny-int8\",version=\"1\",reason=\"rejected\"} 1",
        "cifar_http_requests_total{endpoint=\"/v1/classify\",code=\"200\"} 10",
        "cifar_http_requests_total{endpoint=\"/v1/classify\",code=\"415\"} 1",
        "cifar_request_duration_seconds_count{endpoint=\"/v1/classify\"} 11",
        "cifar_queue_duration_seconds_count 10",
        "cifar_batch_size_sum 10",
        "cifar_drift_window_images{model=\"tiny-int8\"} 10",
        "cifar_model_info{model=\"tiny-int8\",version=\"1\",digest=\"sha256:",
        "cifar_requests_in_flight 1",
        "# TYPE cifar_compute_duration_seconds histogram",
        "# TYPE nv_inference_pending_request_count gauge",
        "cifar_drift_psi{model=\"tiny-int8\",feature=\"blur\"}",
    ] {
        assert!(m.contains(name), "/metrics lacks `{name}`:\n{m}");
    }
    let (s, d) = server.get_json("/v1/drift");
    assert_eq!(s, 200);
    assert_eq!(d["window_images"], 10);
    assert_eq!(d["has_reference"], true);
    assert_eq!(d["judged"], true);
    assert_eq!(d["features"].as_array().unwrap().len(), 8);
    assert!(d["reference_source"].as_str().unwrap().contains("validation"), "{d}");
}
