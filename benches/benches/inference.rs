//! Criterion benchmarks of the SDK on the CPU, for both model families
//! ([`cifar_benches::FAMILIES`]), f32 and int8, 1 and 2 threads.
//!
//! - `latency/<family>/<precision>/t<threads>/b1`: one image (gated).
//! - `throughput/<family>/<precision>/t<threads>/b{64,256}`: batches (b64 at 2 threads is
//!   gated; images/s in the report).
//! - `open/<family>/<precision>`: `Model::open` (mmap + full validation).
//! - `preprocess/...`: decoding and resizing encoded images.
//! - `layers/<family>/<precision>/<node>`: each node's share of one batch-16 run (where
//!   time goes), from `Session::node_times`.
//! - `kernels/<tile>/<build>`: each kernel build's convolution tile on data in L1 (the
//!   kernels' own speed; elements = multiply-adds).
//!
//! A model this build cannot open (a file of another format version, say) is skipped
//! with a note on stderr, so the gate reports "no baseline" for it instead of failing.
//! `cargo bench -p cifar-benches [-- FILTER]`; the gate (`scripts/bench-gate.sh`) runs the
//! gated ones.

use std::hint::black_box;
use std::time::Duration;

use cifar_benches::{bench_model, nchw_input, options, rgb8_input, FAMILIES};
use cifar_sdk::Model;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Opens a benchmark model, or says why it is skipped.
fn open_model(family: &str, precision: &str, threads: usize) -> Option<std::sync::Arc<Model>> {
    let path = bench_model(family, precision);
    match Model::open(&path, &options(threads)) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("skipped {family}/{precision}: cannot open {}: {e}", path.display());
            None
        }
    }
}

fn latency_and_throughput(c: &mut Criterion) {
    for family in FAMILIES {
        for precision in ["f32", "int8"] {
            for threads in [1usize, 2] {
                let Some(model) = open_model(family, precision, threads) else { continue };
                let mut session = model.session().expect("session");
                let classes = model.classes();
                let id =
                    |batch: usize| BenchmarkId::new(format!("{family}/{precision}/t{threads}"), format!("b{batch}"));
                let mut group = c.benchmark_group("latency");
                let x = rgb8_input(1);
                let mut out = vec![0f32; classes];
                group.bench_function(id(1), |b| b.iter(|| session.run_rgb8(black_box(&x), 1, &mut out).expect("run")));
                group.finish();
                let mut group = c.benchmark_group("throughput");
                // Whole batches take milliseconds: a few equal samples are enough.
                group.sample_size(10).sampling_mode(criterion::SamplingMode::Flat);
                for batch in [64usize, 256] {
                    let x = rgb8_input(batch);
                    let mut out = vec![0f32; batch * classes];
                    group.throughput(Throughput::Elements(batch as u64));
                    group.bench_function(id(batch), |b| {
                        b.iter(|| session.run_rgb8(black_box(&x), batch, &mut out).expect("run"))
                    });
                }
                group.finish();
            }
        }
    }
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    for family in FAMILIES {
        for precision in ["f32", "int8"] {
            let path = bench_model(family, precision);
            if open_model(family, precision, 1).is_none() {
                continue;
            }
            group.bench_function(format!("{family}/{precision}"), |b| {
                b.iter(|| Model::open(black_box(&path), &options(1)).expect("open"))
            });
        }
    }
    group.finish();
}

fn preprocess(c: &mut Criterion) {
    let png = std::fs::read(cifar_benches::root().join("fixtures/images/15004-cat.png")).expect("sample image");
    let photo = {
        let small = image::RgbImage::from_raw(32, 32, rgb8_input(1)).expect("image");
        let big = image::imageops::resize(&small, 640, 480, image::imageops::FilterType::Triangle);
        let mut jpeg = Vec::new();
        big.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).expect("jpeg");
        jpeg
    };
    let mut group = c.benchmark_group("preprocess");
    group.bench_function("png_32x32", |b| b.iter(|| cifar_sdk::image::decode_rgb8(black_box(&png), 32, 32)));
    group.bench_function("jpeg_640x480_resized", |b| {
        b.iter(|| cifar_sdk::image::decode_rgb8(black_box(&photo), 32, 32))
    });
    group.bench_function("nchw_input_b64", |b| b.iter(|| nchw_input(black_box(64))));
    group.finish();
}

fn layers(c: &mut Criterion) {
    let batch = 16;
    let x = rgb8_input(batch);
    let mut group = c.benchmark_group("layers");
    group.sample_size(10).measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300));
    for family in FAMILIES {
        for precision in ["f32", "int8"] {
            let Some(model) = open_model(family, precision, 1) else { continue };
            let mut session = model.session().expect("session");
            let nodes = &model.metadata().graph.nodes;
            for (index, node) in nodes.iter().enumerate() {
                let name = format!("{family}/{precision}/{}_{}", node.name, node.op.kind());
                group.bench_function(name, |b| {
                    b.iter_custom(|iters| {
                        let mut mine = 0f64;
                        for _ in 0..iters {
                            mine += session.node_times(&x, batch).expect("run").get(index).copied().unwrap_or(0.0);
                        }
                        Duration::from_secs_f64(mine)
                    })
                });
            }
        }
    }
    group.finish();
}

/// The convolution tiles of every kernel build this CPU runs, on a hot tile (inputs and
/// weights in L1): the kernels' own speed, without the memory system.
fn kernels(c: &mut Criterion) {
    use cifar_sdk::artifact::Activation;
    use cifar_sdk::kernels::{available, ConvTileF32, ConvTileU8, StoreU8, MR, PANEL};
    let k = 288; // 3x3 over 32 channels
    let koffs: Vec<usize> = (0..k).collect();
    let input = vec![0.5f32; MR * 64 + k];
    let weights = vec![0.25f32; k * PANEL];
    let bias = [0.1f32; PANEL];
    let mut out = vec![0f32; MR * PANEL];
    let bytes = vec![7u8; MR * 64 + 4 * k];
    let codes = vec![3i8; k * PANEL * 4];
    let q_offs: Vec<usize> = (0..k).map(|i| 4 * i).collect();
    let mut group = c.benchmark_group("kernels");
    group.throughput(Throughput::Elements((MR * PANEL * k) as u64));
    for table in available() {
        for act in [Activation::Relu, Activation::Gelu] {
            let out_ptr = out.as_mut_ptr();
            let tile = ConvTileF32 {
                input: std::array::from_fn(|i| input[i * 64..].as_ptr()),
                koffs: &koffs,
                weights: weights.as_ptr(),
                bias: &bias,
                act,
                output: std::array::from_fn(|i| out_ptr.wrapping_add(i * PANEL)),
                pixels: MR,
                lanes: PANEL,
            };
            group.bench_function(format!("conv_f32_k288_{act:?}/{}", table.name).to_lowercase(), |b| {
                // SAFETY: the buffers above hold every window, the panel and MR x PANEL outputs.
                b.iter(|| unsafe { (table.conv_f32)(black_box(&tile)) })
            });
            let out_ptr = out.as_mut_ptr();
            let tile = ConvTileU8 {
                input: std::array::from_fn(|i| bytes[i * 64..].as_ptr()),
                koffs: &q_offs[..k / 4],
                weights: codes.as_ptr(),
                mult: &bias,
                offset: &bias,
                act,
                store: StoreU8::Real { output: std::array::from_fn(|i| out_ptr.wrapping_add(i * PANEL)) },
                pixels: MR,
                lanes: PANEL,
            };
            group.bench_function(format!("conv_u8_k288_{act:?}/{}", table.name).to_lowercase(), |b| {
                // SAFETY: as above (k / 4 steps of 4 bytes).
                b.iter(|| unsafe { (table.conv_u8)(black_box(&tile)) })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = gated;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = latency_and_throughput
}
criterion_group! {
    name = other;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = open, preprocess, layers, kernels
}
criterion_main!(gated, other);
