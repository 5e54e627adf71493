//! Threads: results do not depend on the thread count (`idle.rs`: an idle session's
//! threads park).

mod common;

use cifar_sdk::{DevicePolicy, Model, ModelOptions};
use common::*;

fn opts(threads: usize, max_batch: usize) -> ModelOptions {
    ModelOptions { device: DevicePolicy::Cpu, threads, max_batch }
}

#[test]
fn any_thread_count_gives_the_same_logits() {
    let g = zoo_graph();
    let w = random_weights(&g, 41);
    let calib = random_images(8, 42);
    let px = random_rgb8(23, 43);
    for (precision, bytes) in
        [("f32", f32_writer(&g, &w).to_bytes().unwrap()), ("int8", int8_writer(&g, &w, &calib, 8).to_bytes().unwrap())]
    {
        let one = Model::from_bytes(&bytes, &opts(1, 64)).unwrap().session().unwrap().logits_rgb8(&px, 23).unwrap();
        for threads in [2, 3, 4] {
            for batch in [1, 23] {
                let model = Model::from_bytes(&bytes, &opts(threads, 64)).unwrap();
                let mut s = model.session().unwrap();
                assert_eq!(s.threads(), threads);
                let got = s.logits_rgb8(&px[..batch * 3072], batch).unwrap();
                let want = &one[..batch * CLASSES];
                // Bit for bit, f32 too (the issue asked for 1e-6): every pixel is computed
                // the same way whichever thread or chunk holds it.
                assert_eq!(got, want, "{precision}, {threads} threads, batch {batch}: not bit-identical");
            }
        }
    }
}
