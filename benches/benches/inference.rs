//! Criterion benchmarks of the SDK on the CPU.
//!
//! - `latency/{f32,int8}/b1`: one image (gated).
//! - `throughput/{f32,int8}/b{64,256}`: batches (gated; images/s in the report).
//! - `open/{f32,int8}`: `Model::open` (mmap + full validation).
//! - `preprocess/...`: decoding and resizing encoded images.
//! - `layers/<node>`: the time of each node of the f32 model at batch 16 (where time goes),
//!   from the observer callbacks (the whole model runs; each entry reports its share).
//!
//! `cargo bench -p cifar-benches [-- FILTER]`; the gate (`scripts/bench-gate.sh`) runs the
//! gated ones.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cifar_benches::{bench_model, nchw_input, options, rgb8_input};
use cifar_sdk::Model;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn latency_and_throughput(c: &mut Criterion) {
    for precision in ["f32", "int8"] {
        let model = Model::open(bench_model(precision), &options(1)).expect("open the benchmark model");
        let mut session = model.session().expect("session");
        let classes = model.classes();
        let mut group = c.benchmark_group("latency");
        let x = rgb8_input(1);
        let mut out = vec![0f32; classes];
        group.bench_function(BenchmarkId::new(precision, "b1"), |b| {
            b.iter(|| session.run_rgb8(black_box(&x), 1, &mut out).expect("run"))
        });
        group.finish();
        let mut group = c.benchmark_group("throughput");
        // Whole batches take tens of milliseconds: a few equal samples are enough.
        group.sample_size(10).sampling_mode(criterion::SamplingMode::Flat);
        for batch in [64usize, 256] {
            let x = rgb8_input(batch);
            let mut out = vec![0f32; batch * classes];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new(precision, format!("b{batch}")), |b| {
                b.iter(|| session.run_rgb8(black_box(&x), batch, &mut out).expect("run"))
            });
        }
        group.finish();
    }
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    for precision in ["f32", "int8"] {
        let path = bench_model(precision);
        group.bench_function(precision, |b| b.iter(|| Model::open(black_box(&path), &options(1)).expect("open")));
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
    group.finish();
}

fn layers(c: &mut Criterion) {
    let model = Model::open(bench_model("f32"), &options(1)).expect("open");
    let mut session = model.session().expect("session");
    let batch = 16;
    let x = nchw_input(batch);
    let names: Vec<String> =
        model.metadata().graph.nodes.iter().map(|n| format!("{}_{}", n.name, n.op.kind())).collect();
    let mut group = c.benchmark_group("layers");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (index, name) in names.iter().enumerate() {
        group.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| {
                let mut mine = Duration::ZERO;
                for _ in 0..iters {
                    let mut last = Instant::now();
                    session
                        .run_observed(&x, batch, &mut |i, _| {
                            let now = Instant::now();
                            if i == index {
                                mine += now - last;
                            }
                            last = now;
                        })
                        .expect("run");
                }
                mine
            })
        });
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
    targets = open, preprocess, layers
}
criterion_main!(gated, other);
