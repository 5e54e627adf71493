//! Running a session allocates nothing of ours: all buffers are planned when it is
//! created. (The f32 path calls the `gemm` crate, which allocates its own packing scratch
//! per call; it is measured here and reported, the int8 path must be allocation-free.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cifar_sdk::{DevicePolicy, Model, ModelOptions};
use common::*;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// const-initialized thread-locals (no allocation when touched).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn inference_allocates_nothing() {
    let g = zoo_graph();
    let w = random_weights(&g, 31);
    let calib = random_images(4, 32);
    for bytes in [f32_writer(&g, &w).to_bytes().unwrap(), int8_writer(&g, &w, &calib, 4).to_bytes().unwrap()] {
        let model =
            Model::from_bytes(&bytes, &ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 16 }).unwrap();
        let mut session = model.session().unwrap();
        // 20 images: one full internal batch and a partial one.
        let px = random_rgb8(20, 33);
        let x = random_images(20, 34);
        let mut out = vec![0f32; 20 * CLASSES];
        session.run_rgb8(&px, 20, &mut out).unwrap();
        let n = allocations_during(|| {
            for _ in 0..3 {
                session.run_rgb8(&px, 20, &mut out).unwrap();
                session.run_nchw(&x, 20, &mut out).unwrap();
                session.run_rgb8(&px[..3072], 1, &mut out[..CLASSES]).unwrap();
            }
        });
        if model.precision() == cifar_sdk::Precision::Int8 {
            assert_eq!(n, 0, "int8 inference allocated {n} times");
        } else {
            // Our f32 code allocates nothing; what remains is the gemm crate's scratch,
            // at most a few per GEMM call (5 weighted nodes, 15 internal batches here).
            eprintln!("f32 inference: {n} allocations, all inside the gemm crate");
            assert!(n <= 15 * 5 * 4, "f32 inference allocated {n} times");
        }
    }
}
