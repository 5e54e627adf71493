//! The device backend (`cifar_sdk::backend::device`, candle tensors) against the naive reference and
//! the CPU engine, run on candle's CPU device so that every build with the `candle`
//! feature checks it; scripts/gpu-measure.sh repeats the comparison on a real GPU.
#![cfg(feature = "candle")]

mod common;

use candle_core::Device as CandleDevice;
use cifar_sdk::backend::device::DeviceGraph;
use cifar_sdk::{DevicePolicy, Model, ModelOptions};
use common::*;

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let s = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / s
}

fn cpu_model(bytes: &[u8]) -> std::sync::Arc<Model> {
    Model::from_bytes(bytes, &ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 64 }).unwrap()
}

#[test]
fn every_op_matches_the_reference_in_f32() {
    let g = zoo_graph();
    let w = random_weights(&g, 21);
    let model = cpu_model(&f32_writer(&g, &w).to_bytes().unwrap());
    let graph = DeviceGraph::new(model.artifact(), &CandleDevice::Cpu).unwrap();
    let n = 13;
    let imgs = random_images(n, 22);
    let want: Vec<f32> = imgs.chunks(3072).flat_map(|im| reference(&g, &w, im, &mut |_, _| {})).collect();
    let got = graph.logits_nchw(&imgs, n).unwrap();
    let err = max_rel(&got, &want);
    assert!(err < 1e-4, "device engine vs reference: {err}");
}

#[test]
fn int8_files_run_with_their_dequantized_weights() {
    let g = zoo_graph();
    let w = random_weights(&g, 23);
    let calib = random_images(16, 24);
    let model = cpu_model(&int8_writer(&g, &w, &calib, 16).to_bytes().unwrap());
    let graph = DeviceGraph::new(model.artifact(), &CandleDevice::Cpu).unwrap();
    let wq = dequantized_weights(model.artifact(), &w);
    let imgs = random_images(9, 25);
    let want: Vec<f32> = imgs.chunks(3072).flat_map(|im| reference(&g, &wq, im, &mut |_, _| {})).collect();
    let err = max_rel(&graph.logits_nchw(&imgs, 9).unwrap(), &want);
    assert!(err < 1e-4, "int8 file on the device engine vs f32 reference with int8 weights: {err}");
}

#[test]
fn rgb8_is_normalized_on_the_device_like_the_cpu_engine() {
    let g = zoo_graph();
    let model = cpu_model(&f32_writer(&g, &random_weights(&g, 26)).to_bytes().unwrap());
    let graph = DeviceGraph::new(model.artifact(), &CandleDevice::Cpu).unwrap();
    let px = random_rgb8(5, 27);
    let cpu = model.session().unwrap().logits_rgb8(&px, 5).unwrap();
    let err = max_rel(&graph.logits_rgb8(&px, 5).unwrap(), &cpu);
    assert!(err < 1e-4, "rgb8 on the device engine vs the CPU engine: {err}");
}

#[test]
fn trained_model_agrees_with_the_cpu_engine_on_real_images() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let model = Model::open(
        dir.join("models/cpu-f32.cifar"),
        &ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 16 },
    )
    .unwrap();
    let mut px = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir.join("images")).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in &names {
        px.extend(cifar_sdk::image::decode_rgb8(&std::fs::read(p).unwrap(), 32, 32).unwrap());
    }
    let n = names.len();
    let cpu = model.session().unwrap().logits_rgb8(&px, n).unwrap();
    let graph = DeviceGraph::new(model.artifact(), &CandleDevice::Cpu).unwrap();
    let dev = graph.logits_rgb8(&px, n).unwrap();
    let err = max_rel(&dev, &cpu);
    assert!(err < 1e-4, "cpu-f32.cifar: device engine vs CPU engine: {err}");
    for (a, b) in dev.chunks(10).zip(cpu.chunks(10)) {
        assert_eq!(cifar_sdk::top_k_indices(a, 1), cifar_sdk::top_k_indices(b, 1));
    }
}

#[test]
fn wrong_input_sizes_are_errors_not_panics() {
    let g = zoo_graph();
    let model = cpu_model(&f32_writer(&g, &random_weights(&g, 28)).to_bytes().unwrap());
    let graph = DeviceGraph::new(model.artifact(), &CandleDevice::Cpu).unwrap();
    assert!(graph.logits_nchw(&[0.0; 100], 1).is_err());
    assert!(graph.logits_rgb8(&[0; 3072], 2).is_err());
}
