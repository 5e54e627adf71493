//! Input and output features for drift monitoring, and the reference profile stored in
//! the model file. The compiler measures the reference on held-out data; a server
//! computes the same features per request and compares the two distributions. Both sides
//! use [`image_features`], so the numbers are comparable by construction. The window
//! statistics themselves (PSI, Jensen-Shannon, the alarm) live in [`window`], shared by
//! `cifar-serve` and the trainer's offline `drift` and `robustness` commands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod window;
pub use window::{
    histogram_mean, jensen_shannon, top1, DriftConfig, DriftStats, DriftWindow, FeatureDrift, Observation, Transition,
    CLEAR_FRACTION,
};

/// Names of the per-image features, in the order of [`ImageFeatures::values`].
pub const FEATURE_NAMES: [&str; 8] = ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "brightness", "blur"];

/// Summary statistics of one RGB8 image (pixel values in `[0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageFeatures {
    /// Mean of each channel.
    pub mean: [f32; 3],
    /// Standard deviation of each channel.
    pub std: [f32; 3],
    /// Mean luma (Rec. 601 weights).
    pub brightness: f32,
    /// Variance of the Laplacian of the luma: low values mean a blurry image.
    pub blur: f32,
}

impl ImageFeatures {
    /// The features in [`FEATURE_NAMES`] order.
    pub fn values(&self) -> [f32; 8] {
        let [mr, mg, mb] = self.mean;
        let [sr, sg, sb] = self.std;
        [mr, mg, mb, sr, sg, sb, self.brightness, self.blur]
    }
}

/// Features of an interleaved RGB8 image of `width x height` pixels (`pixels.len()` must
/// be `3 * width * height`; shorter input yields the features of the pixels present).
pub fn image_features(pixels: &[u8], width: usize, height: usize) -> ImageFeatures {
    let n = (pixels.len() / 3).min(width * height).max(1) as f64;
    let (mut sum, mut sq) = ([0f64; 3], [0f64; 3]);
    let mut luma = Vec::with_capacity(width * height);
    for px in pixels.chunks_exact(3).take(width * height) {
        let mut y = 0.0f32;
        for (c, (&p, w)) in px.iter().zip([0.299f32, 0.587, 0.114]).enumerate() {
            let v = f64::from(p) / 255.0;
            if let (Some(s), Some(q)) = (sum.get_mut(c), sq.get_mut(c)) {
                *s += v;
                *q += v * v;
            }
            y += w * f32::from(p) / 255.0;
        }
        luma.push(y);
    }
    let mut mean = [0f32; 3];
    let mut std = [0f32; 3];
    for c in 0..3 {
        let (s, q) = (sum.get(c).copied().unwrap_or(0.0), sq.get(c).copied().unwrap_or(0.0));
        let m = s / n;
        if let (Some(mo), Some(so)) = (mean.get_mut(c), std.get_mut(c)) {
            *mo = m as f32;
            *so = (q / n - m * m).max(0.0).sqrt() as f32;
        }
    }
    let brightness = luma.iter().sum::<f32>() / n as f32;
    ImageFeatures { mean, std, brightness, blur: laplacian_variance(&luma, width, height) }
}

/// Variance of the 4-neighbour Laplacian over the interior pixels.
fn laplacian_variance(luma: &[f32], width: usize, height: usize) -> f32 {
    if width < 3 || height < 3 || luma.len() < width * height {
        return 0.0;
    }
    let at = |y: usize, x: usize| luma.get(y * width + x).copied().unwrap_or(0.0);
    let (mut s, mut q, mut n) = (0f64, 0f64, 0f64);
    for y in 1..height - 1 {
        for x in 1..width - 1 {
            let l = f64::from(at(y - 1, x) + at(y + 1, x) + at(y, x - 1) + at(y, x + 1) - 4.0 * at(y, x));
            s += l;
            q += l * l;
            n += 1.0;
        }
    }
    let m = s / n;
    (q / n - m * m).max(0.0) as f32
}

/// A histogram with explicit bin edges (`edges.len() == counts.len() + 1`); values outside
/// the edges count in the first or last bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Increasing bin edges.
    pub edges: Vec<f32>,
    /// Count per bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// `bins` equal-width bins over `[lo, hi]`.
    pub fn uniform(lo: f32, hi: f32, bins: usize) -> Self {
        let bins = bins.max(1);
        let edges = (0..=bins).map(|i| lo + (hi - lo) * i as f32 / bins as f32).collect();
        Self { edges, counts: vec![0; bins] }
    }

    /// The bin a value falls in (clamped to the first and last bin).
    pub fn bin(&self, v: f32) -> usize {
        let inner = self.edges.get(1..self.edges.len().saturating_sub(1)).unwrap_or(&[]);
        inner.partition_point(|&e| e <= v)
    }

    /// Counts one value.
    pub fn add(&mut self, v: f32) {
        let b = self.bin(v);
        if let Some(c) = self.counts.get_mut(b) {
            *c += 1;
        }
    }

    /// Bin frequencies (summing to 1; uniform when empty).
    pub fn frequencies(&self) -> Vec<f64> {
        let total: u64 = self.counts.iter().sum();
        let k = self.counts.len().max(1) as f64;
        self.counts.iter().map(|&c| if total == 0 { 1.0 / k } else { c as f64 / total as f64 }).collect()
    }
}

/// The reference distributions a deployed model's inputs and outputs are compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReference {
    /// Images the profile was measured on.
    pub images: u64,
    /// Where they came from (e.g. `validation split of <digest>`).
    pub source: String,
    /// One histogram per name in [`FEATURE_NAMES`].
    pub features: BTreeMap<String, Histogram>,
    /// Predicted-class counts, by class index.
    pub predicted_classes: Vec<u64>,
    /// Histogram of the top-1 probability.
    pub confidence: Histogram,
}

/// Histogram ranges for each feature (pixel statistics live in `[0, 1]`; the blur
/// measure of natural 32x32 images rarely exceeds 0.1).
pub fn feature_histogram(name: &str) -> Histogram {
    match name {
        n if n.starts_with("std") => Histogram::uniform(0.0, 0.5, 20),
        "blur" => Histogram::uniform(0.0, 0.1, 20),
        _ => Histogram::uniform(0.0, 1.0, 20),
    }
}

/// Population stability index between a reference and an observed histogram over the
/// same bins (`sum (o - r) ln(o / r)`, with a floor of 1e-4 on each frequency). Below 0.1
/// is usually read as stable, above 0.25 as a significant shift.
pub fn psi(reference: &[f64], observed: &[f64]) -> f64 {
    reference
        .iter()
        .zip(observed)
        .map(|(&r, &o)| {
            let (r, o) = (r.max(1e-4), o.max(1e-4));
            (o - r) * (o / r).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_of_a_flat_image() {
        let px = vec![128u8; 32 * 32 * 3];
        let f = image_features(&px, 32, 32);
        assert!((f.mean[0] - 128.0 / 255.0).abs() < 1e-6);
        assert_eq!(f.std, [0.0; 3]);
        assert!(f.blur.abs() < 1e-9);
        let mut noisy = px.clone();
        for (i, p) in noisy.iter_mut().enumerate() {
            *p = if (i / 3) % 2 == 0 { 0 } else { 255 };
        }
        assert!(image_features(&noisy, 32, 32).blur > 1.0);
    }

    #[test]
    fn histogram_bins_and_psi() {
        let mut h = Histogram::uniform(0.0, 1.0, 4);
        for v in [-1.0, 0.1, 0.3, 0.3, 0.99, 7.0] {
            h.add(v);
        }
        assert_eq!(h.counts, vec![2, 2, 0, 2]);
        let f = h.frequencies();
        assert!(psi(&f, &f).abs() < 1e-12);
        assert!(psi(&f, &[0.25; 4]) > 0.0);
    }
}
