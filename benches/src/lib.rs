//! Shared pieces of the benchmarks, the regression gate and the comparison runner: the
//! models they run and their inputs.

use std::path::PathBuf;

use cifar_sdk::ModelOptions;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The model families every speed table covers: `cpu` (configs/cpu.toml, airbench
/// 32/64/128, 20 M MACs per image) and `resnet` (configs/resnet.toml, a ResNet-8 with
/// 16/32/64 channels, 12.5 M MACs per image).
pub const FAMILIES: [&str; 2] = ["cpu", "resnet"];

/// A benchmark model: `family` ([`FAMILIES`]) compiled to `precision` (`f32`, `int8`),
/// committed as `fixtures/models/<family>-<precision>.cifar` (rebuilt from the runs in
/// `fixtures/runs/` by scripts/make-fixtures.sh). `CIFAR_BENCH_MODELS=DIR` reads them
/// from another directory (the gate points both builds at the same files).
pub fn bench_model(family: &str, precision: &str) -> PathBuf {
    let dir =
        std::env::var_os("CIFAR_BENCH_MODELS").map(PathBuf::from).unwrap_or_else(|| root().join("fixtures/models"));
    dir.join(format!("{family}-{precision}.cifar"))
}

/// Options the benchmarks open models with: the CPU, `threads` threads, chunks of up to
/// 256 images (so batch 256 runs as one batch).
pub fn options(threads: usize) -> ModelOptions {
    ModelOptions { device: cifar_sdk::DevicePolicy::Cpu, threads, max_batch: 256 }
}

/// Deterministic RGB8 pixels for `n` 32x32 images (varied, not constant, so no kernel
/// takes a shortcut).
pub fn rgb8_input(n: usize) -> Vec<u8> {
    (0..n * 32 * 32 * 3).map(|i| ((i * 7919 + (i / 96) * 31) % 251) as u8).collect()
}

/// The same images normalized, `[N][3][32][32]`, for the f32 entry point.
pub fn nchw_input(n: usize) -> Vec<f32> {
    let norm = cifar_sdk::Normalization::CIFAR10;
    let rgb = rgb8_input(n);
    let mut out = vec![0f32; rgb.len()];
    for (b, img) in rgb.chunks_exact(3072).enumerate() {
        for (p, px) in img.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                out[b * 3072 + c * 1024 + p] = (f32::from(v) / 255.0 - norm.mean[c]) / norm.std[c];
            }
        }
    }
    out
}
