//! Training batches made on the device: the training split is uploaded once (as bytes,
//! normalized and reflect-padded there), and each epoch is shuffled, cropped and
//! flipped with a few gathers on the device instead of a host thread's loops and a
//! 12 MB upload per batch. On a GPU this keeps the step from waiting on the host.
//!
//! The epoch is the host loader's, image for image: the same order
//! ([`super::loader::epoch_order`]) and the same view of each position
//! ([`super::loader::random_view`]), so runs, resumes and tests do not depend on which
//! loader made the batches. Only the host computes those (a few ms per epoch); the
//! pixels never come back.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};

use super::loader::{epoch_order, random_view, Augment};
use super::Split;

/// The training images resident on a device.
pub struct DeviceSet {
    /// `[N, 3, 32 + 2p, 32 + 2p]` normalized f32, reflect-padded by `p`.
    padded: Tensor,
    /// `[N]` class indices.
    labels: Tensor,
    pad: usize,
    len: usize,
    /// The dataset index of each resident image (views are keyed by it).
    indices: Vec<u32>,
    /// `[0, 31]` reversed, for flips.
    reversed: Tensor,
}

/// One epoch's augmented images and labels, in training order.
pub struct DeviceEpoch {
    /// `[steps * batch, 3, 32, 32]`.
    pub x: Tensor,
    /// `[steps * batch]` u32.
    pub y: Tensor,
    pub batch_size: usize,
}

impl DeviceEpoch {
    /// Batch `step` (a view into the epoch's tensors, no copy).
    pub fn batch(&self, step: usize) -> Result<(Tensor, Tensor)> {
        let start = step * self.batch_size;
        Ok((self.x.narrow(0, start, self.batch_size)?, self.y.narrow(0, start, self.batch_size)?))
    }
}

/// The images (set positions) seen through one view, and their slots in the epoch.
type ViewGroup = (Vec<u32>, Vec<u32>);

fn u32_tensor(v: Vec<u32>, dev: &Device) -> candle_core::Result<Tensor> {
    let n = v.len();
    Tensor::from_vec(v, n, dev)
}

impl DeviceSet {
    /// Uploads the images `idx` of `split` to `dev`, normalized with `norm`.
    pub fn upload(split: &Split, idx: &[u32], pad: usize, norm: &[(f32, f32); 3], dev: &Device) -> Result<Self> {
        ensure!(pad <= 16, "crop padding {pad} is larger than half an image");
        let mut bytes = Vec::with_capacity(idx.len() * 3072);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            bytes.extend_from_slice(split.image(i as usize));
            labels.push(u32::from(split.labels[i as usize]));
        }
        let n = idx.len();
        let scale = Tensor::from_vec(norm.iter().map(|p| p.0).collect::<Vec<f32>>(), (1, 3, 1, 1), dev)?;
        let shift = Tensor::from_vec(norm.iter().map(|p| p.1).collect::<Vec<f32>>(), (1, 3, 1, 1), dev)?;
        let images = Tensor::from_vec(bytes, (n, 32, 32, 3), dev)?
            .to_dtype(DType::F32)?
            .permute((0, 3, 1, 2))?
            .broadcast_mul(&scale)?
            .broadcast_add(&shift)?;
        // Reflect padding (no edge repeat), as the host loader's `reflect`.
        let reflect: Vec<u32> = (0..32 + 2 * pad as i64)
            .map(|j| {
                let i = j - pad as i64;
                (if i < 0 {
                    -i
                } else if i > 31 {
                    62 - i
                } else {
                    i
                }) as u32
            })
            .collect();
        let reflect = u32_tensor(reflect, dev)?;
        let padded = images.index_select(&reflect, 2)?.index_select(&reflect, 3)?.contiguous()?;
        Ok(Self {
            padded,
            labels: u32_tensor(labels, dev)?,
            pad,
            len: n,
            indices: idx.to_vec(),
            reversed: u32_tensor((0..32).rev().collect(), dev)?,
        })
    }

    /// Images on the device.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no image is on the device.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `steps` batches of `epoch`, augmented as `aug` says.
    pub fn epoch(
        &self,
        seed: u64,
        epoch: usize,
        batch_size: usize,
        steps: usize,
        aug: &Augment,
    ) -> Result<DeviceEpoch> {
        ensure!(
            aug.crop_padding <= self.pad,
            "crop padding {} exceeds the uploaded padding {}",
            aug.crop_padding,
            self.pad
        );
        let positions: Vec<u32> = (0..self.len as u32).collect();
        let order = epoch_order(&positions, seed, epoch);
        let used = (steps * batch_size).min(order.len());
        // Group the epoch's slots by view, so each group is one gather + crop (+ flip).
        let mut groups: BTreeMap<(bool, i32, i32), ViewGroup> = BTreeMap::new();
        for (slot, &image) in order.iter().take(used).enumerate() {
            let v = random_view(aug, seed, epoch, slot, self.indices[image as usize]);
            let g = groups.entry((v.flip, v.dy, v.dx)).or_default();
            g.0.push(image);
            g.1.push(slot as u32);
        }
        let dev = self.padded.device();
        let p = self.pad as i32;
        let mut parts = Vec::with_capacity(groups.len());
        let mut slots = Vec::with_capacity(used);
        for ((flip, dy, dx), (images, group_slots)) in groups {
            let idx = u32_tensor(images, dev)?;
            let mut part = self.padded.index_select(&idx, 0)?.narrow(2, (p + dy) as usize, 32)?.narrow(
                3,
                (p + dx) as usize,
                32,
            )?;
            part = part.contiguous()?;
            if flip {
                part = part.index_select(&self.reversed, 3)?;
            }
            parts.push(part);
            slots.extend(group_slots);
        }
        // `slots[r]` is the epoch slot of row r of the concatenation; invert it.
        let mut row_of_slot = vec![0u32; used];
        for (row, &slot) in slots.iter().enumerate() {
            row_of_slot[slot as usize] = row as u32;
        }
        let rows = u32_tensor(row_of_slot, dev)?;
        let x = Tensor::cat(&parts, 0)?.index_select(&rows, 0)?;
        let order_t = u32_tensor(order.into_iter().take(used).collect(), dev)?;
        let y = self.labels.index_select(&order_t, 0)?;
        Ok(DeviceEpoch { x, y, batch_size })
    }
}

#[cfg(test)]
mod tests {
    use super::super::loader::{fill, IMAGE_FLOATS};
    use super::*;

    #[test]
    fn device_batches_equal_the_host_loaders() {
        let n = 50;
        let split = Split {
            images: (0..n * 3072).map(|i| ((i * 37 + i / 3072 * 11) % 256) as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        };
        // A subset, as the training indices are after the validation split.
        let idx: Vec<u32> = (0..n as u32).filter(|i| i % 5 != 2).collect();
        let norm = cifar_sdk::Normalization::CIFAR10.affine();
        let set = DeviceSet::upload(&split, &idx, 2, &norm, &Device::Cpu).unwrap();
        let (batch, steps, seed) = (8, 4, 7);
        for (alternate_flip, epoch) in [(false, 3), (true, 3), (true, 4)] {
            let aug = Augment { crop_padding: 2, flip: true, alternate_flip };
            let ep = set.epoch(seed, epoch, batch, steps, &aug).unwrap();
            let order = epoch_order(&idx, seed, epoch);
            for step in 0..steps {
                let (x, y) = ep.batch(step).unwrap();
                let start = step * batch;
                let part = &order[start..start + batch];
                let (hx, hy) = fill(&split, part, |i| random_view(&aug, seed, epoch, start + i, part[i]), &norm);
                assert_eq!(y.to_vec1::<u32>().unwrap(), hy, "labels of batch {step}");
                let dx = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(dx.len(), batch * IMAGE_FLOATS);
                let err = dx.iter().zip(&hx).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err < 1e-5, "pixels of batch {step} differ by {err}");
            }
        }
    }
}
