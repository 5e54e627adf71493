//! The CPU engine against the naive reference, int8 against f32, threads, zero copy,
//! device policy and input errors.

mod common;

use std::sync::Arc;

use cifar_sdk::{DevicePolicy, Error, Model, ModelOptions};
use common::*;

fn opts(threads: usize, max_batch: usize) -> ModelOptions {
    ModelOptions { device: DevicePolicy::Cpu, threads, max_batch }
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    a.chunks(CLASSES)
        .zip(b.chunks(CLASSES))
        .map(|(x, y)| {
            let s = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / s
        })
        .fold(0f32, f32::max)
}

/// The int8 `model`'s fake quantization: the f32 reference of graph `g` with the input
/// and each node's output rounded to their codes and the weights `w` replaced by their
/// int8 values.
fn fake_quantized(model: &Model, g: &cifar_sdk::artifact::Graph, w: &Weights, imgs: &[f32]) -> Vec<f32> {
    let g8 = &model.metadata().graph;
    let wq = dequantized_weights(model.artifact(), w);
    let iq = g8.input_quant.unwrap();
    imgs.chunks(3072)
        .flat_map(|im| {
            let im: Vec<f32> = im.iter().map(|&v| iq.dequantize(iq.quantize(v))).collect();
            reference(g, &wq, &im, &mut |i, v| {
                if let Some(q) = g8.nodes[i].quant {
                    v.iter_mut().for_each(|x| *x = q.dequantize(q.quantize(*x)));
                }
            })
        })
        .collect()
}

#[test]
fn f32_engine_matches_the_reference_for_any_batch_and_thread_count() {
    let g = zoo_graph();
    let w = random_weights(&g, 1);
    let bytes = f32_writer(&g, &w).to_bytes().unwrap();
    let n = 37;
    let imgs = random_images(n, 2);
    let want: Vec<f32> = imgs.chunks(3072).flat_map(|im| reference(&g, &w, im, &mut |_, _| {})).collect();
    for (threads, cap) in [(1, 1), (1, 16), (2, 64), (2, 5)] {
        let model = Model::from_bytes(&bytes, &opts(threads, cap)).unwrap();
        let got = model.session().unwrap().logits_nchw(&imgs, n).unwrap();
        let err = max_rel(&got, &want);
        assert!(err < 1e-5, "threads {threads} capacity {cap}: max relative error {err}");
    }
}

#[test]
fn int8_engine_tracks_f32_and_the_fake_quantized_reference() {
    let g = zoo_graph();
    let w = random_weights(&g, 3);
    let calib = random_images(16, 4);
    let bytes = int8_writer(&g, &w, &calib, 16).to_bytes().unwrap();
    let model = Model::from_bytes(&bytes, &opts(2, 8)).unwrap();
    assert_eq!(model.precision(), cifar_sdk::Precision::Int8);
    let imgs = random_images(20, 5);
    let got = model.session().unwrap().logits_nchw(&imgs, 20).unwrap();
    let fake = fake_quantized(&model, &g, &w, &imgs);
    let err = max_rel(&got, &fake);
    assert!(err < 0.02, "int8 vs fake-quantized reference: {err}");
    let exact: Vec<f32> = imgs.chunks(3072).flat_map(|im| reference(&g, &w, im, &mut |_, _| {})).collect();
    let err = max_rel(&got, &exact);
    assert!(err < 0.15, "int8 vs f32: {err}");
}

#[test]
fn rgb8_input_equals_normalized_nchw_input() {
    let g = zoo_graph();
    let w = random_weights(&g, 6);
    let model = Model::from_bytes(&f32_writer(&g, &w).to_bytes().unwrap(), &opts(1, 4)).unwrap();
    let px = random_rgb8(3, 7);
    let norm = cifar_sdk::Normalization::CIFAR10.affine();
    let mut nchw = vec![0f32; 3 * 3072];
    for b in 0..3 {
        for p in 0..1024 {
            for c in 0..3 {
                nchw[b * 3072 + c * 1024 + p] = px[b * 3072 + p * 3 + c] as f32 * norm[c].0 + norm[c].1;
            }
        }
    }
    let mut s = model.session().unwrap();
    assert_eq!(s.logits_rgb8(&px, 3).unwrap(), s.logits_nchw(&nchw, 3).unwrap());
    let c = s.classify_rgb8(&px, 3, 3).unwrap();
    assert_eq!(c.len(), 3);
    assert!(c[0].top[0].probability >= c[0].top[1].probability);
    assert!((c[0].probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn eight_threads_sharing_a_model_agree_with_one_thread() {
    let g = zoo_graph();
    let w = random_weights(&g, 8);
    let calib = random_images(8, 9);
    for bytes in [f32_writer(&g, &w).to_bytes().unwrap(), int8_writer(&g, &w, &calib, 8).to_bytes().unwrap()] {
        let model = Model::from_bytes(&bytes, &opts(1, 16)).unwrap();
        let px = random_rgb8(40, 10);
        let single = model.session().unwrap().logits_rgb8(&px, 40).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (m, px) = (Arc::clone(&model), px.clone());
                std::thread::spawn(move || {
                    let mut s = m.session().unwrap();
                    (0..5).map(|_| s.logits_rgb8(&px, 40).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for r in h.join().unwrap() {
                assert_eq!(r, single);
            }
        }
    }
}

#[test]
fn weights_are_read_in_place_from_the_mapping() {
    let g = zoo_graph();
    let w = random_weights(&g, 11);
    let calib = random_images(4, 12);
    let dir = tempfile::tempdir().unwrap();
    for (name, writer) in [("f32", f32_writer(&g, &w)), ("int8", int8_writer(&g, &w, &calib, 4))] {
        let path = dir.path().join(format!("{name}.cifar"));
        writer.write(&path).unwrap();
        let model = Model::open(&path, &opts(1, 2)).unwrap();
        let a = model.artifact();
        assert!(a.is_mapped(), "opened from a path, the model must be a mapping");
        let file = a.bytes().as_ptr_range();
        for t in a.tensors.keys() {
            let p = match a.tensors[t].dtype {
                cifar_sdk::artifact::DType::F32 => a.f32s(t).unwrap().as_ptr() as *const u8,
                cifar_sdk::artifact::DType::I32 => a.i32s(t).unwrap().as_ptr() as *const u8,
                cifar_sdk::artifact::DType::I8 => a.i8s(t).unwrap().as_ptr() as *const u8,
            };
            assert!(file.contains(&p), "{t} is not inside the mapping");
            assert_eq!(p as usize % a.tensors[t].dtype.size(), 0, "{t} is misaligned");
        }
        // And the mapping is what runs: results equal the in-memory copy's.
        let copy = Model::from_bytes(&std::fs::read(&path).unwrap(), &opts(1, 2)).unwrap();
        assert!(!copy.artifact().is_mapped());
        let px = random_rgb8(2, 13);
        assert_eq!(
            model.session().unwrap().logits_rgb8(&px, 2).unwrap(),
            copy.session().unwrap().logits_rgb8(&px, 2).unwrap()
        );
    }
}

#[test]
fn device_policy_is_explicit() {
    let g = zoo_graph();
    let bytes = f32_writer(&g, &random_weights(&g, 14)).to_bytes().unwrap();
    let gpu = ModelOptions { device: DevicePolicy::Gpu, ..Default::default() };
    match Model::from_bytes(&bytes, &gpu) {
        Err(Error::Device(m)) => assert!(m.to_lowercase().contains("cuda"), "{m}"),
        // A `cuda` build on a machine with a GPU (scripts/gpu-measure.sh runs this there).
        Ok(m) if cfg!(feature = "cuda") => assert_eq!(m.device(), cifar_sdk::Device::Cuda(0)),
        other => panic!("policy gpu without CUDA must fail, got {other:?}"),
    }
    let gpu_works = Model::from_bytes(&bytes, &gpu).is_ok();
    for p in ["auto", "gpu-or-cpu"] {
        let m = Model::from_bytes(&bytes, &ModelOptions { device: p.parse().unwrap(), ..Default::default() }).unwrap();
        if gpu_works {
            assert_eq!(m.device(), cifar_sdk::Device::Cuda(0));
        } else {
            assert_eq!(m.device(), cifar_sdk::Device::Cpu);
            assert!(m.device_reason().contains("fell back to the CPU"), "{}", m.device_reason());
        }
    }
    assert!(matches!("tpu".parse::<DevicePolicy>(), Err(Error::Options(_))));
    assert!(matches!(Model::from_bytes(&bytes, &opts(1, 0)), Err(Error::Options(_))));
}

#[test]
fn bad_inputs_are_errors() {
    let g = zoo_graph();
    let model = Model::from_bytes(&f32_writer(&g, &random_weights(&g, 15)).to_bytes().unwrap(), &opts(1, 4)).unwrap();
    let mut s = model.session().unwrap();
    assert!(matches!(s.logits_rgb8(&[0u8; 100], 1), Err(Error::Input(_))));
    assert!(matches!(s.logits_rgb8(&[], 0), Err(Error::Input(_))));
    assert!(matches!(s.run_rgb8(&[0u8; 3072], 1, &mut [0f32; 3]), Err(Error::Input(_))));
    assert!(matches!(s.logits_nchw(&[0f32; 3072], 2), Err(Error::Input(_))));
    assert!(matches!(s.classify_image(b"GIF89a....", 3), Err(Error::Image(_))));
    // An encoded image of another size is resized.
    let img = image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let c = s.classify_image(&png, 20).unwrap();
    assert_eq!(c.top.len(), CLASSES);
}

/// Grouped convolutions whose groups are not a multiple of four channels wide (int8
/// kernels read whole quads from each group's first channel, past the value's
/// channels for the last group): depthwise 3 -> 6, then 6 -> 8 in two groups of 3.
#[test]
fn odd_channel_groups_match_the_reference() {
    use cifar_sdk::artifact::*;
    let conv = |out, groups, act| {
        Op::Conv2d(Conv2d { out_channels: out, kernel: [3, 3], stride: [1, 1], padding: [1, 1], groups, act })
    };
    let node = |name: &str, input: &str, op| Node { name: name.into(), inputs: vec![input.into()], op, quant: None };
    let mut g = zoo_graph();
    g.nodes = vec![
        node("dw", "input", conv(6, 3, Activation::Relu)),
        node("gc", "dw", conv(8, 2, Activation::Gelu)),
        node("gp", "gc", Op::GlobalAvgPool(GlobalAvgPool { act: Activation::None })),
        node("head", "gp", Op::Linear(Linear { out_features: CLASSES, act: Activation::None })),
    ];
    let w = random_weights(&g, 51);
    let imgs = random_images(7, 52);
    let want: Vec<f32> = imgs.chunks(3072).flat_map(|im| reference(&g, &w, im, &mut |_, _| {})).collect();
    let f32_model = Model::from_bytes(&f32_writer(&g, &w).to_bytes().unwrap(), &opts(2, 4)).unwrap();
    let err = max_rel(&f32_model.session().unwrap().logits_nchw(&imgs, 7).unwrap(), &want);
    assert!(err < 1e-5, "f32: {err}");
    let int8 = Model::from_bytes(&int8_writer(&g, &w, &imgs, 7).to_bytes().unwrap(), &opts(2, 4)).unwrap();
    let err = max_rel(&int8.session().unwrap().logits_nchw(&imgs, 7).unwrap(), &want);
    assert!(err < 0.1, "int8 vs f32 reference: {err}");
}

/// Depthwise convolutions (their own CPU op): 3x3 at stride 1 and 2, 5x5, and a 1x1
/// per-channel affine map, on channel counts that are not multiples of the op's chunk,
/// with the activations an ONNX import brings; f32 against the reference, int8 against
/// the fake-quantized reference.
#[test]
fn depthwise_convolutions_match_the_reference() {
    use cifar_sdk::artifact::*;
    let conv = |out, k: usize, s: usize, groups, act| {
        Op::Conv2d(Conv2d { out_channels: out, kernel: [k; 2], stride: [s; 2], padding: [k / 2; 2], groups, act })
    };
    let node = |name: &str, input: &str, op| Node { name: name.into(), inputs: vec![input.into()], op, quant: None };
    let mut g = zoo_graph();
    g.nodes = vec![
        node("pw", "input", conv(70, 1, 1, 1, Activation::Relu6)),
        node("dw1", "pw", conv(70, 3, 1, 70, Activation::Relu6)),
        node("dw2", "dw1", conv(70, 3, 2, 70, Activation::Hardswish)),
        node("dw3", "dw2", conv(70, 5, 1, 70, Activation::None)),
        node("aff", "dw3", conv(70, 1, 1, 70, Activation::Sigmoid)),
        node("gp", "aff", Op::GlobalAvgPool(GlobalAvgPool { act: Activation::None })),
        node("head", "gp", Op::Linear(Linear { out_features: CLASSES, act: Activation::None })),
    ];
    let w = random_weights(&g, 61);
    let n = 5;
    let imgs = random_images(n, 62);
    let want: Vec<f32> = imgs.chunks(3072).flat_map(|im| reference(&g, &w, im, &mut |_, _| {})).collect();
    for threads in [1, 2] {
        let f32_model = Model::from_bytes(&f32_writer(&g, &w).to_bytes().unwrap(), &opts(threads, 4)).unwrap();
        let err = max_rel(&f32_model.session().unwrap().logits_nchw(&imgs, n).unwrap(), &want);
        assert!(err < 1e-5, "f32, {threads} threads: {err}");
    }
    let model = Model::from_bytes(&int8_writer(&g, &w, &imgs, n).to_bytes().unwrap(), &opts(2, 4)).unwrap();
    let got = model.session().unwrap().logits_nchw(&imgs, n).unwrap();
    let fake = fake_quantized(&model, &g, &w, &imgs);
    let err = max_rel(&got, &fake);
    assert!(err < 0.02, "int8 vs fake-quantized reference: {err}");
}

/// Convolutions run in both unit orders: panel by panel where the packed weights are
/// large (c2: 3x3, 128 -> 256, 295 KB in int8), tile by tile where they are small (c1,
/// c3); f32 against the reference, int8 against the fake-quantized reference, and batch
/// 1 (every layer shared among the threads) the same bits on 1 and 2 threads.
#[test]
fn large_and_small_convolutions_match_the_reference_on_any_thread_count() {
    use cifar_sdk::artifact::*;
    let conv = |out, k: usize, s: usize, act| {
        Op::Conv2d(Conv2d { out_channels: out, kernel: [k; 2], stride: [s; 2], padding: [k / 2; 2], groups: 1, act })
    };
    let node = |name: &str, input: &str, op| Node { name: name.into(), inputs: vec![input.into()], op, quant: None };
    let mut g = zoo_graph();
    g.nodes = vec![
        node("c1", "input", conv(128, 3, 4, Activation::Relu)),
        node("c2", "c1", conv(256, 3, 1, Activation::Relu6)),
        node("c3", "c2", conv(40, 1, 1, Activation::None)),
        node("gp", "c3", Op::GlobalAvgPool(GlobalAvgPool { act: Activation::None })),
        node("head", "gp", Op::Linear(Linear { out_features: CLASSES, act: Activation::None })),
    ];
    let w = random_weights(&g, 71);
    let n = 3;
    let imgs = random_images(n, 72);
    let want: Vec<f32> = imgs.chunks(3072).flat_map(|im| reference(&g, &w, im, &mut |_, _| {})).collect();
    let f32_bytes = f32_writer(&g, &w).to_bytes().unwrap();
    let int8_bytes = int8_writer(&g, &w, &imgs, n).to_bytes().unwrap();
    let logits = |bytes: &[u8], threads: usize, batch: usize| {
        let model = Model::from_bytes(bytes, &opts(threads, 4)).unwrap();
        let got = model.session().unwrap().logits_nchw(&imgs[..batch * 3072], batch).unwrap();
        (model, got)
    };
    let (_, f32_logits) = logits(&f32_bytes, 2, n);
    let err = max_rel(&f32_logits, &want);
    assert!(err < 1e-5, "f32: {err}");
    let (model, int8_logits) = logits(&int8_bytes, 2, n);
    let err = max_rel(&int8_logits, &fake_quantized(&model, &g, &w, &imgs));
    assert!(err < 0.02, "int8 vs fake-quantized reference: {err}");
    for (precision, bytes) in [("f32", &f32_bytes), ("int8", &int8_bytes)] {
        assert_eq!(logits(bytes, 1, 1).1, logits(bytes, 2, 1).1, "{precision}: batch 1, 1 and 2 threads differ");
    }
}
