//! The airbench whitening stem: 2x2 filters that decorrelate the pixels of each 2x2
//! patch, computed from training images instead of learned.
//!
//! The 12-dimensional patch vectors (3 channels x 2 x 2) of the training images have a
//! second-moment matrix `C = E[p p^T] = V diag(l) V^T` (not centered, as airbench: the
//! normalized pixels are near zero-mean anyway); the filters `v_i / sqrt(l_i + eps)` map
//! patches to unit-variance, uncorrelated features. Each filter is used with both signs (24 outputs)
//! so that the GELU after it loses no information.

use anyhow::{ensure, Result};
use nalgebra::{DMatrix, SymmetricEigen};

use crate::data::loader::{write_image, View, IMAGE_FLOATS};
use crate::data::Split;

/// Output channels of the stem.
pub const WHITEN_WIDTH: usize = 24;
const PATCH: usize = 12;
const EPS: f64 = 5e-4;

/// Computes the `[24, 3, 2, 2]` filter bank from up to `max_images` images.
pub fn whitening_filters(
    split: &Split,
    indices: &[u32],
    max_images: usize,
    norm: &[(f32, f32); 3],
) -> Result<Vec<f32>> {
    let n = indices.len().min(max_images);
    ensure!(n > 0, "the whitening stem needs training images");
    let mut outer = vec![0f64; PATCH * PATCH];
    let mut img = vec![0f32; IMAGE_FLOATS];
    let mut count = 0f64;
    for &i in &indices[..n] {
        write_image(split.image(i as usize), View::default(), norm, &mut img);
        for y in 0..31 {
            for x in 0..31 {
                let mut v = [0f64; PATCH];
                for c in 0..3 {
                    for dy in 0..2 {
                        for dx in 0..2 {
                            v[c * 4 + dy * 2 + dx] = img[c * 1024 + (y + dy) * 32 + x + dx] as f64;
                        }
                    }
                }
                for a in 0..PATCH {
                    for b in a..PATCH {
                        outer[a * PATCH + b] += v[a] * v[b];
                    }
                }
                count += 1.0;
            }
        }
    }
    let cov = DMatrix::from_fn(PATCH, PATCH, |a, b| {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        outer[a * PATCH + b] / count
    });
    let eig = SymmetricEigen::new(cov);
    let mut filters = vec![0f32; WHITEN_WIDTH * PATCH];
    for i in 0..PATCH {
        let scale = 1.0 / (eig.eigenvalues[i].max(0.0) + EPS).sqrt();
        for a in 0..PATCH {
            let w = (eig.eigenvectors[(a, i)] * scale) as f32;
            filters[i * PATCH + a] = w;
            filters[(i + PATCH) * PATCH + a] = -w;
        }
    }
    Ok(filters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitened_patches_have_near_identity_covariance() {
        // Smooth random images: strongly correlated neighbouring pixels.
        let n = 64;
        let mut images = vec![0u8; n * 3072];
        let mut s = 1u64;
        for img in images.chunks_mut(3072) {
            s = crate::data::loader::mix(s);
            for (p, px) in img.iter_mut().enumerate() {
                let (y, x, c) = (p / 96, (p / 3) % 32, p % 3);
                let v =
                    128.0 + 60.0 * ((x as f64 * 0.2 + (s % 7) as f64).sin() + (y as f64 * 0.3 + c as f64).cos()) / 2.0;
                *px = v.clamp(0.0, 255.0) as u8;
            }
        }
        let split = Split { images, labels: vec![0; n] };
        let idx: Vec<u32> = (0..n as u32).collect();
        let norm = cifar_sdk::Normalization::CIFAR10.affine();
        let f = whitening_filters(&split, &idx, n, &norm).unwrap();
        // Apply the first 12 filters to all patches and check the output covariance.
        let mut feats: Vec<[f64; PATCH]> = Vec::new();
        let mut img = vec![0f32; IMAGE_FLOATS];
        for i in 0..n {
            write_image(split.image(i), View::default(), &norm, &mut img);
            for y in (0..31).step_by(3) {
                for x in (0..31).step_by(3) {
                    let mut out = [0f64; PATCH];
                    for (o, slot) in out.iter_mut().enumerate() {
                        for c in 0..3 {
                            for dy in 0..2 {
                                for dx in 0..2 {
                                    *slot += f[o * PATCH + c * 4 + dy * 2 + dx] as f64
                                        * img[c * 1024 + (y + dy) * 32 + x + dx] as f64;
                                }
                            }
                        }
                    }
                    feats.push(out);
                }
            }
        }
        let m = feats.len() as f64;
        for a in 0..PATCH {
            let mean_a: f64 = feats.iter().map(|v| v[a]).sum::<f64>() / m;
            let var: f64 = feats.iter().map(|v| (v[a] - mean_a).powi(2)).sum::<f64>() / m;
            // Unit variance up to the eps regularizer and the subsampling.
            assert!(var < 1.3, "feature {a} variance {var}");
        }
    }
}
