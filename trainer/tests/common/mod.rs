//! Helpers for the CLI tests: synthetic datasets and running the `trainer` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.arg("--quiet");
    c
}

/// Runs the trainer with `args` in `dir`; returns the output.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    trainer().current_dir(dir).args(args).output().expect("the trainer binary runs")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Asserts success and returns the combined output.
pub fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(o.status.success(), "trainer failed:\n{t}");
    t
}

/// Asserts failure with a message containing every one of `needles`.
pub fn fails_with(o: Output, needles: &[&str]) -> String {
    let t = text(&o);
    assert!(!o.status.success(), "expected a failure, got success:\n{t}");
    for n in needles {
        assert!(t.contains(n), "error message lacks {n:?}:\n{t}");
    }
    assert!(!t.contains("panicked"), "the trainer panicked:\n{t}");
    t
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// A learnable 32x32 image of class `c`: a class colour and a class-dependent stripe
/// pattern, plus per-image noise.
pub fn synthetic_image(c: usize, i: usize) -> image::RgbImage {
    let mut s = (c as u64 * 7919 + i as u64 * 104_729) | 1;
    image::RgbImage::from_fn(32, 32, |x, y| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let noise = (s % 40) as i32 - 20;
        let stripe = if ((x as usize + y as usize * (c % 3)) / (2 + c % 4)).is_multiple_of(2) { 60 } else { -60 };
        let base = [(c * 25) as i32, (250 - c * 23) as i32, ((c * 97) % 255) as i32];
        let px = |b: i32| (b + stripe + noise).clamp(0, 255) as u8;
        image::Rgb([px(base[0]), px(base[1]), px(base[2])])
    })
}

pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Writes `<root>/<split>/<class>/<i>.<ext>` (or `<root>/<class>/..` when split is None).
pub fn write_image_folder(root: &Path, split: Option<&str>, classes: usize, per_class: usize, ext: &str) {
    for (c, name) in CLASSES.iter().enumerate().take(classes) {
        let dir = match split {
            Some(s) => root.join(s).join(name),
            None => root.join(name),
        };
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            synthetic_image(c, i).save(dir.join(format!("{i:04}.{ext}"))).unwrap();
        }
    }
}

/// Packs a directory into a `.tar.gz`.
pub fn tar_gz(src: &Path, dest: &Path) {
    let f = std::fs::File::create(dest).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    t.append_dir_all(".", src).unwrap();
    t.into_inner().unwrap().finish().unwrap();
}

/// Imports a synthetic learnable dataset into `<dir>/data/synth` and returns its path.
pub fn synthetic_dataset(dir: &Path, per_class: usize, val: usize) -> PathBuf {
    let src = dir.join("images");
    write_image_folder(&src, None, 10, per_class, "png");
    let out = dir.join("data/synth");
    ok(run(
        dir,
        &["data", "import", src.to_str().unwrap(), "--out", out.to_str().unwrap(), "--val-size", &val.to_string()],
    ));
    out
}

/// A config for fast training on the synthetic data.
pub fn tiny_config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"tiny\"\nthreads = 1\n[data]\npath = \"{}\"\n[model]\nwidths = [8, 16, 16]\n\
             [train]\nepochs = 3\nbatch_size = 50\nlr = 0.2\nwarmup_epochs = 0.5\n[eval]\nevery_epochs = 1\ntta = \"flip\"\n{extra}",
            data.display()
        ),
    )
    .unwrap();
    p
}

/// Entries of a directory, for checking that nothing was left behind.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The highest step recorded in a run's `metrics.jsonl` (0 before the first).
pub fn last_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| r["step"].as_u64())
        .max()
        .unwrap_or(0)
}
