//! Training batches: shuffling, augmentation (random crop with reflect padding,
//! horizontal flip), normalization to NCHW f32, and prefetching on a worker thread.
//!
//! Everything random is derived from `(seed, epoch, position)` with a counter-based
//! hash, never from a running generator: the batch at step `s` of epoch `e` is the same
//! whether the run started at step 0 or resumed at step `s`. That is what lets
//! `--resume` after a `kill -9` reproduce the uninterrupted run.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Split, IMAGE_BYTES};

/// Pixels per channel plane.
const PLANE: usize = 32 * 32;
/// Floats per normalized image.
pub const IMAGE_FLOATS: usize = 3 * PLANE;

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random translation of up to this many pixels, with reflect padding (0 = off).
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2.
    pub flip: bool,
    /// airbench's alternating flip (with `flip`): each image gets a random flip bit once,
    /// and every other epoch all bits are inverted, so consecutive epochs see both
    /// mirror images instead of a fresh coin toss each.
    pub alternate_flip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Self { crop_padding: 2, flip: true, alternate_flip: false }
    }
}

/// A deterministic view of an image: mirrored or not, shifted by `(dy, dx)` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct View {
    pub flip: bool,
    pub dy: i32,
    pub dx: i32,
}

/// SplitMix64: a counter-based hash for deriving independent seeds.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The order of the training images in `epoch`.
pub fn epoch_order(indices: &[u32], seed: u64, epoch: usize) -> Vec<u32> {
    let mut order = indices.to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(epoch as u64 + 1)));
    order.shuffle(&mut rng);
    order
}

#[inline]
fn reflect(i: i32) -> usize {
    let r = if i < 0 {
        -i
    } else if i > 31 {
        62 - i
    } else {
        i
    };
    r.clamp(0, 31) as usize
}

/// Writes one HWC RGB8 image as normalized CHW floats, seen through `view`.
pub fn write_image(src: &[u8], view: View, norm: &[(f32, f32); 3], out: &mut [f32]) {
    let plain = view == View::default();
    for y in 0..32 {
        let sy = if plain { y } else { reflect(y as i32 + view.dy) };
        let row = &src[sy * 96..(sy + 1) * 96];
        for x in 0..32 {
            let fx = if view.flip { 31 - x } else { x };
            let sx = if plain { x } else { reflect(fx as i32 + view.dx) };
            for c in 0..3 {
                out[c * PLANE + y * 32 + x] = row[sx * 3 + c] as f32 * norm[c].0 + norm[c].1;
            }
        }
    }
}

/// The random view of sample `position` of `epoch`, which is dataset image `image`.
pub fn random_view(aug: &Augment, seed: u64, epoch: usize, position: usize, image: u32) -> View {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(seed ^ 0x5eed) ^ mix(((epoch as u64) << 32) | position as u64)));
    let p = aug.crop_padding as i32;
    let (dy, dx) = if p > 0 { (rng.gen_range(-p..=p), rng.gen_range(-p..=p)) } else { (0, 0) };
    let coin = rng.gen_bool(0.5);
    let flip = if aug.alternate_flip {
        let bit = mix(mix(seed ^ 0xf11b) ^ image as u64) & 1 == 1;
        bit ^ (epoch % 2 == 1)
    } else {
        coin
    };
    View { flip: aug.flip && flip, dy, dx }
}

/// One prepared batch.
#[derive(Debug)]
pub struct Batch {
    /// `[B, 3, 32, 32]` normalized floats.
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    /// Index of this batch within its epoch.
    pub step: usize,
    /// Seconds the worker spent preparing it.
    pub prep_secs: f64,
}

/// Fills a batch from `split` with one view per image.
pub fn fill(split: &Split, idx: &[u32], views: impl Fn(usize) -> View, norm: &[(f32, f32); 3]) -> (Vec<f32>, Vec<u32>) {
    let mut x = vec![0f32; idx.len() * IMAGE_FLOATS];
    for (i, (&j, out)) in idx.iter().zip(x.chunks_exact_mut(IMAGE_FLOATS)).enumerate() {
        write_image(&split.images[j as usize * IMAGE_BYTES..(j as usize + 1) * IMAGE_BYTES], views(i), norm, out);
    }
    let y = idx.iter().map(|&j| split.labels[j as usize] as u32).collect();
    (x, y)
}

/// Prepares the batches of one epoch on a background thread, `depth` ahead.
pub struct Prefetcher {
    rx: Receiver<Batch>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// What the prefetcher needs to know about an epoch.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    pub order: Vec<u32>,
    pub batch_size: usize,
    pub first_step: usize,
    pub steps: usize,
    pub seed: u64,
    pub epoch: usize,
    pub augment: Augment,
    pub norm: [(f32, f32); 3],
}

impl Prefetcher {
    pub fn start(split: Arc<Split>, plan: EpochPlan, depth: usize) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("batch-loader".into())
            .spawn(move || {
                for step in plan.first_step..plan.steps {
                    let t = Instant::now();
                    let start = step * plan.batch_size;
                    let idx = &plan.order[start..start + plan.batch_size];
                    let (x, y) = fill(
                        &split,
                        idx,
                        |i| random_view(&plan.augment, plan.seed, plan.epoch, start + i, idx[i]),
                        &plan.norm,
                    );
                    let batch = Batch { x, y, step, prep_secs: t.elapsed().as_secs_f64() };
                    if tx.send(batch).is_err() {
                        return; // the trainer stopped early
                    }
                }
            })
            .ok();
        Self { rx, handle }
    }

    /// The next batch, or `None` at the end of the epoch.
    pub fn next_batch(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Drain so a blocked sender can finish, then join.
        while self.rx.try_recv().is_ok() {}
        let (_tx, rx) = sync_channel(0);
        let old = std::mem::replace(&mut self.rx, rx);
        drop(old);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_of(n: usize) -> Split {
        let images = (0..n * IMAGE_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        Split { images, labels: (0..n).map(|i| (i % 10) as u8).collect() }
    }

    #[test]
    fn alternating_flip_mirrors_each_image_every_other_epoch() {
        let aug = Augment { crop_padding: 2, flip: true, alternate_flip: true };
        let flips = |epoch: usize| -> Vec<bool> {
            // Positions differ by epoch (the order is shuffled); the flip follows the image.
            (0..400u32).map(|img| random_view(&aug, 9, epoch, (img as usize * 7 + epoch) % 400, img).flip).collect()
        };
        let (e0, e1, e2) = (flips(0), flips(1), flips(2));
        assert!(e0.iter().zip(&e1).all(|(a, b)| a != b), "odd epochs invert every image's flip");
        assert_eq!(e0, e2, "even epochs repeat it");
        let flipped = e0.iter().filter(|&&f| f).count();
        assert!((150..250).contains(&flipped), "about half the images start flipped: {flipped}");
        let plain = Augment { alternate_flip: false, ..aug };
        let coin: Vec<bool> = (0..400u32).map(|i| random_view(&plain, 9, 1, i as usize, i).flip).collect();
        assert!(coin.iter().zip(&e0).any(|(a, b)| a == b) && coin.iter().zip(&e0).any(|(a, b)| a != b));
    }

    #[test]
    fn views_flip_and_shift_pixels() {
        let s = split_of(1);
        let norm = [(1.0, 0.0); 3];
        let mut plain = vec![0f32; IMAGE_FLOATS];
        let mut flipped = vec![0f32; IMAGE_FLOATS];
        let mut shifted = vec![0f32; IMAGE_FLOATS];
        write_image(s.image(0), View::default(), &norm, &mut plain);
        write_image(s.image(0), View { flip: true, dy: 0, dx: 0 }, &norm, &mut flipped);
        write_image(s.image(0), View { flip: false, dy: 1, dx: -2 }, &norm, &mut shifted);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let at = |v: &Vec<f32>, yy: usize, xx: usize| v[c * PLANE + yy * 32 + xx];
                    assert_eq!(at(&plain, y, x), s.image(0)[(y * 32 + x) * 3 + c] as f32);
                    assert_eq!(at(&flipped, y, x), at(&plain, y, 31 - x));
                    assert_eq!(at(&shifted, y, x), at(&plain, reflect(y as i32 + 1), reflect(x as i32 - 2)));
                }
            }
        }
        assert_eq!(reflect(-2), 2);
        assert_eq!(reflect(33), 29);
    }

    #[test]
    fn batches_are_a_pure_function_of_seed_epoch_and_step() {
        let s = Arc::new(split_of(40));
        let indices: Vec<u32> = (0..40).collect();
        let plan = |first_step| EpochPlan {
            order: epoch_order(&indices, 3, 2),
            batch_size: 8,
            first_step,
            steps: 5,
            seed: 3,
            epoch: 2,
            augment: Augment::default(),
            norm: cifar_sdk::Normalization::CIFAR10.affine(),
        };
        let mut full = Prefetcher::start(s.clone(), plan(0), 2);
        let all: Vec<Batch> = std::iter::from_fn(|| full.next_batch()).collect();
        assert_eq!(all.len(), 5);
        let mut resumed = Prefetcher::start(s, plan(3), 2);
        let b = resumed.next_batch().unwrap();
        assert_eq!(b.step, 3);
        assert_eq!(b.x, all[3].x);
        assert_eq!(b.y, all[3].y);
        assert_ne!(epoch_order(&indices, 3, 2), epoch_order(&indices, 3, 3));
    }
}
