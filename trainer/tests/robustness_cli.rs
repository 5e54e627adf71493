//! `trainer robustness` and `trainer drift` on real images: the 500 validation images of
//! fixtures/drift/validation-500.png (50 per class, grouped by class in label order),
//! written out as a labelled ImageFolder, and the configs/cpu.toml model
//! (fixtures/models/cpu-int8.cifar).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(rel)
}

/// The sheet's tiles, as `<dir>/<class>/<i>.png`, transformed by `f`; returns `dir`.
fn write_folder(dir: &Path, f: impl Fn(&[u8]) -> Vec<u8>) -> PathBuf {
    let labels =
        cifar_sdk::Model::open(fixture("models/cpu-int8.cifar"), &Default::default()).expect("model").labels().to_vec();
    let sheet = image::open(fixture("drift/validation-500.png")).expect("sheet").into_rgb8();
    let cols = sheet.width() / 32;
    for i in 0..500u32 {
        let tile = image::imageops::crop_imm(&sheet, (i % cols) * 32, (i / cols) * 32, 32, 32).to_image();
        let class = &labels[(i / 50) as usize];
        let out = dir.join(class);
        std::fs::create_dir_all(&out).unwrap();
        let px = f(tile.as_raw());
        image::RgbImage::from_raw(32, 32, px).unwrap().save(out.join(format!("{i:03}.png"))).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn robustness_report_gets_worse_with_severity_for_every_corruption() {
    let tmp = tempdir();
    let folder = write_folder(&tmp.path().join("val"), |p| p.to_vec());
    let out = tmp.path().join("report");
    let model = fixture("models/cpu-int8.cifar");
    let out_text = ok(run(
        tmp.path(),
        &[
            "robustness",
            "--model",
            model.to_str().unwrap(),
            "--data",
            folder.to_str().unwrap(),
            "--limit",
            "0",
            "-o",
            out.to_str().unwrap(),
            "--min-accuracy",
            "20",
            "--max-clean-drift",
            "0.25",
        ],
    ));
    eprintln!("{out_text}");
    assert!(out_text.contains("gate --min-accuracy 20") && out_text.contains("passed"), "{out_text}");
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["images"], 500);
    let clean = report["clean"]["accuracy"].as_f64().unwrap();
    assert!(clean > 0.75, "the cpu model must classify its own validation images: {clean}");
    assert!(!report["clean"]["drifting"].as_bool().unwrap(), "{}", report["clean"]);
    let corruptions = report["corruptions"].as_array().unwrap();
    assert_eq!(corruptions.len(), 10);
    for c in corruptions {
        let cells = c["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 5);
        let (a1, a5) = (cells[0]["accuracy"].as_f64().unwrap(), cells[4]["accuracy"].as_f64().unwrap());
        let (d1, d5) = (cells[0]["drift_score"].as_f64().unwrap(), cells[4]["drift_score"].as_f64().unwrap());
        assert!(a5 < a1, "{}: accuracy at severity 5 ({a5}) not under severity 1 ({a1})", c["name"]);
        assert!(d5 > d1, "{}: drift at severity 5 ({d5}) not over severity 1 ({d1})", c["name"]);
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 3, "three embedded plots");
    for f in ["accuracy.png", "drift.png", "examples.png"] {
        assert!(image::open(out.join(f)).is_ok(), "{f}");
    }

    // A gate the model cannot pass: status 3 and the gate named; the report is written.
    let gated = tmp.path().join("gated");
    let o = run(
        tmp.path(),
        &[
            "robustness",
            "--model",
            model.to_str().unwrap(),
            "--data",
            folder.to_str().unwrap(),
            "--limit",
            "100",
            "--corruptions",
            "contrast,gaussian_blur",
            "-o",
            gated.to_str().unwrap(),
            "--min-accuracy",
            "99.5",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("--min-accuracy 99.5"), "{}", text(&o));
    assert!(gated.join("report.html").is_file());

    // Class names the model does not know: a clear error, status 1.
    let odd = tmp.path().join("odd");
    std::fs::create_dir_all(odd.join("zebra")).unwrap();
    std::fs::copy(fixture("images/00029-airplane.png"), odd.join("zebra/a.png")).unwrap();
    let o = run(tmp.path(), &["robustness", "--model", model.to_str().unwrap(), "--data", odd.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    fails_with(o, &["class \"zebra\"", "does not know"]);
}

#[test]
fn drift_command_passes_validation_images_and_flags_darkened_ones() {
    let tmp = tempdir();
    let model = fixture("models/cpu-int8.cifar");
    let clean = write_folder(&tmp.path().join("clean"), |p| p.to_vec());
    let dark = write_folder(&tmp.path().join("dark"), |p| p.iter().map(|&v| (f32::from(v) * 0.35) as u8).collect());
    let out_text =
        ok(run(tmp.path(), &["drift", "--model", model.to_str().unwrap(), "--images", clean.to_str().unwrap()]));
    assert!(out_text.contains("verdict: stable"), "{out_text}");
    for name in ["mean_r", "std_b", "brightness", "blur", "confidence"] {
        assert!(out_text.contains(name), "{name} missing:\n{out_text}");
    }
    let o = run(
        tmp.path(),
        &["drift", "--model", model.to_str().unwrap(), "--images", dark.to_str().unwrap(), "--json", "--fail-on-drift"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "drifting");
    let brightness = v["tests"].as_array().unwrap().iter().find(|t| t["name"] == "brightness").unwrap();
    assert_eq!(brightness["shift"], "significant", "{brightness}");
    assert!(brightness["p_value"].as_f64().unwrap() < 1e-6, "{brightness}");
    assert!(brightness["mean"].as_f64().unwrap() < brightness["reference_mean"].as_f64().unwrap());
    assert_eq!(v["stats"]["window_images"], 500);

    // The same statistics as the server: its /v1/drift on the same traffic is checked in
    // server/tests/drift.rs; here, a tarball of the folder gives the same report.
    let tar = tmp.path().join("dark.tar.gz");
    tar_gz(&dark, &tar);
    let o2 =
        run(tmp.path(), &["drift", "--model", model.to_str().unwrap(), "--images", tar.to_str().unwrap(), "--json"]);
    assert!(o2.status.success(), "{}", text(&o2));
    let v2: Value = serde_json::from_slice(&o2.stdout).unwrap();
    assert_eq!(v2["stats"], v["stats"]);

    // Too few images to judge: said so, and --fail-on-drift refuses to decide.
    let few = tmp.path().join("few");
    std::fs::create_dir_all(&few).unwrap();
    for (i, f) in std::fs::read_dir(clean.join("cat")).unwrap().take(20).enumerate() {
        std::fs::copy(f.unwrap().path(), few.join(format!("{i}.png"))).unwrap();
    }
    let t = ok(run(tmp.path(), &["drift", "--model", model.to_str().unwrap(), "--images", few.to_str().unwrap()]));
    assert!(t.contains("verdict: not judged") && t.contains("too few images"), "{t}");
    let o = run(
        tmp.path(),
        &["drift", "--model", model.to_str().unwrap(), "--images", few.to_str().unwrap(), "--fail-on-drift"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    fails_with(o, &["only 20 images", "--min-images"]);

    // Not images: a clear error.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "hello").unwrap();
    fails_with(
        run(tmp.path(), &["drift", "--model", model.to_str().unwrap(), "--images", empty.to_str().unwrap()]),
        &["contains no images"],
    );
}
