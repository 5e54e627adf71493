//! Drift monitoring end to end: validation images keep the drift score under the
//! threshold; the same images darkened, blurred or noised push it over, visible on
//! /metrics and /v1/drift, and logged.

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
