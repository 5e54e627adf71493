//! CIFAR-10-C-style corruptions of 32x32 RGB8 images, five severities each.
//!
//! The parameters follow Hendrycks & Dietterich, "Benchmarking Neural Network Robustness
//! to Common Corruptions and Perturbations" (ICLR 2019), CIFAR variant, where the
//! operation is cheap to reproduce exactly; where theirs needs ImageMagick or a plasma
//! fractal (motion blur, fog), or where it would defeat the drift statistics (pixelate),
//! the operation here is a simpler one of the same kind, and
//! its doc says what it does. Every corruption is deterministic for a given seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

const SIDE: usize = 32;
/// Severities per corruption, 1 (mild) to 5 (strong).
pub const SEVERITIES: usize = 5;

/// One kind of corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Corruption {
    /// Additive Gaussian noise, sigma 0.04..0.10 (of the [0, 1] range).
    GaussianNoise,
    /// Photon (Poisson) noise at 500..50 photons per unit intensity, drawn as a normal of
    /// the same variance.
    ShotNoise,
    /// Salt-and-pepper noise on 1..7% of the values.
    ImpulseNoise,
    /// Gaussian blur, sigma 0.4..1.0 pixels.
    GaussianBlur,
    /// A straight motion streak of 2..6 pixels at a random angle (averaged samples along
    /// the line, edges clamped).
    MotionBlur,
    /// HSV value raised by 0.05..0.3.
    Brightness,
    /// Contrast scaled to 0.75..0.15 around the image mean.
    Contrast,
    /// Haze: a smooth random field of strength 0.2..1.5 blended in and the result
    /// rescaled (a multi-octave value noise in place of the paper's plasma fractal).
    Fog,
    /// Pixelated onto a grid of 95..65% of the side, each block repeating its corner
    /// pixel (sample-and-hold). CIFAR-10-C box-filters down and up instead, which is
    /// mostly a blur: the drift monitor's blur statistic saturates on it at severity 1,
    /// so its drift score would not grow with the severity.
    Pixelate,
    /// JPEG compression at quality 80..40.
    Jpeg,
}

impl Corruption {
    /// Every corruption, in report order.
    pub const ALL: [Corruption; 10] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::GaussianBlur,
        Corruption::MotionBlur,
        Corruption::Brightness,
        Corruption::Contrast,
        Corruption::Fog,
        Corruption::Pixelate,
        Corruption::Jpeg,
    ];

    /// The snake_case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian_noise",
            Corruption::ShotNoise => "shot_noise",
            Corruption::ImpulseNoise => "impulse_noise",
            Corruption::GaussianBlur => "gaussian_blur",
            Corruption::MotionBlur => "motion_blur",
            Corruption::Brightness => "brightness",
            Corruption::Contrast => "contrast",
            Corruption::Fog => "fog",
            Corruption::Pixelate => "pixelate",
            Corruption::Jpeg => "jpeg",
        }
    }

    /// The corrupted copy of one image at `severity` (1..=5); `seed` picks the noise.
    pub fn apply(self, severity: usize, img: &[u8], seed: u64) -> Vec<u8> {
        let s = severity.clamp(1, SEVERITIES) - 1;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<f32> = img.iter().map(|&p| f32::from(p) / 255.0).collect();
        let y = match self {
            Corruption::GaussianNoise => {
                let sigma = [0.04, 0.06, 0.08, 0.09, 0.10][s];
                x.iter().map(|&v| v + sigma * normal(&mut rng)).collect()
            }
            Corruption::ShotNoise => {
                let photons = [500.0, 250.0, 100.0, 75.0, 50.0][s];
                x.iter().map(|&v| v + (v.max(0.0) / photons).sqrt() * normal(&mut rng)).collect()
            }
            Corruption::ImpulseNoise => {
                let amount = [0.01, 0.02, 0.03, 0.05, 0.07][s];
                x.iter()
                    .map(|&v| match rng.gen::<f32>() {
                        r if r < amount / 2.0 => 0.0,
                        r if r < amount => 1.0,
                        _ => v,
                    })
                    .collect()
            }
            Corruption::GaussianBlur => gaussian_blur(&x, [0.4, 0.6, 0.7, 0.8, 1.0][s]),
            Corruption::MotionBlur => {
                motion_blur(&x, [1.0, 1.5, 2.0, 2.5, 3.0][s], rng.gen::<f32>() * std::f32::consts::PI)
            }
            Corruption::Brightness => brightness(&x, [0.05, 0.1, 0.15, 0.2, 0.3][s]),
            Corruption::Contrast => {
                let c = [0.75, 0.5, 0.4, 0.3, 0.15][s];
                let mean = x.iter().sum::<f32>() / x.len().max(1) as f32;
                x.iter().map(|&v| (v - mean) * c + mean).collect()
            }
            Corruption::Fog => {
                let strength = [0.2, 0.5, 0.75, 1.0, 1.5][s];
                let field = haze(&mut rng);
                let max = x.iter().copied().fold(0.0f32, f32::max);
                x.iter().enumerate().map(|(i, &v)| (v + strength * field[i / 3]) * max / (max + strength)).collect()
            }
            Corruption::Pixelate => pixelate(&x, [0.95, 0.9, 0.85, 0.75, 0.65][s]),
            Corruption::Jpeg => return jpeg(img, [80, 65, 58, 50, 40][s]),
        };
        to_rgb8(&y)
    }
}

fn to_rgb8(x: &[f32]) -> Vec<u8> {
    x.iter().map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect()
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = rng.gen::<f32>().max(f32::MIN_POSITIVE);
    let u2 = rng.gen::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn at(x: &[f32], y: isize, xx: isize, c: usize) -> f32 {
    let clamp = |v: isize| v.clamp(0, SIDE as isize - 1) as usize;
    x[(clamp(y) * SIDE + clamp(xx)) * 3 + c]
}

/// Separable Gaussian blur, edges clamped.
fn gaussian_blur(x: &[f32], sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let weights: Vec<f32> = (-r..=r).map(|d| (-((d * d) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = weights.iter().sum();
    let pass = |src: &[f32], horizontal: bool| {
        let mut out = vec![0f32; src.len()];
        for y in 0..SIDE as isize {
            for xx in 0..SIDE as isize {
                for c in 0..3 {
                    let mut s = 0.0;
                    for (k, w) in (-r..=r).zip(&weights) {
                        s += w * if horizontal { at(src, y, xx + k, c) } else { at(src, y + k, xx, c) };
                    }
                    out[(y as usize * SIDE + xx as usize) * 3 + c] = s / total;
                }
            }
        }
        out
    };
    pass(&pass(x, true), false)
}

/// The mean of samples along a line of half-length `radius` at `angle`, bilinear.
fn motion_blur(x: &[f32], radius: f32, angle: f32) -> Vec<f32> {
    let (dy, dx) = (angle.sin(), angle.cos());
    let steps = (radius * 4.0).ceil() as i32;
    let bilinear = |y: f32, xx: f32, c: usize| {
        let (y0, x0) = (y.floor(), xx.floor());
        let (fy, fx) = (y - y0, xx - x0);
        let (y0, x0) = (y0 as isize, x0 as isize);
        let top = at(x, y0, x0, c) * (1.0 - fx) + at(x, y0, x0 + 1, c) * fx;
        let bottom = at(x, y0 + 1, x0, c) * (1.0 - fx) + at(x, y0 + 1, x0 + 1, c) * fx;
        top * (1.0 - fy) + bottom * fy
    };
    let mut out = vec![0f32; x.len()];
    for y in 0..SIDE {
        for xx in 0..SIDE {
            for c in 0..3 {
                let mut s = 0.0;
                for k in -steps..=steps {
                    let t = radius * k as f32 / steps as f32;
                    s += bilinear(y as f32 + t * dy, xx as f32 + t * dx, c);
                }
                out[(y * SIDE + xx) * 3 + c] = s / (2 * steps + 1) as f32;
            }
        }
    }
    out
}

/// Raises the HSV value (the largest channel) by `delta`, keeping hue and saturation.
fn brightness(x: &[f32], delta: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    for px in out.chunks_exact_mut(3) {
        let v = px.iter().copied().fold(0.0f32, f32::max);
        if v <= 0.0 {
            px.iter_mut().for_each(|p| *p = delta);
        } else {
            let scale = (v + delta).min(1.0) / v;
            px.iter_mut().for_each(|p| *p *= scale);
        }
    }
    out
}

/// A smooth random field in `[0, 1]` over the 32x32 grid: octaves of bilinear value
/// noise on 2x2 to 16x16 lattices, each half the amplitude of the one before.
fn haze(rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut field = vec![0f32; SIDE * SIDE];
    let mut amplitude = 1.0;
    for cells in [2usize, 4, 8, 16] {
        let lattice: Vec<f32> = (0..(cells + 1) * (cells + 1)).map(|_| rng.gen::<f32>()).collect();
        let node = |i: usize, j: usize| lattice[i.min(cells) * (cells + 1) + j.min(cells)];
        for (p, f) in field.iter_mut().enumerate() {
            let (y, x) =
                ((p / SIDE) as f32 * cells as f32 / SIDE as f32, (p % SIDE) as f32 * cells as f32 / SIDE as f32);
            let (i, j) = (y as usize, x as usize);
            let (fy, fx) = (y - i as f32, x - j as f32);
            let v = (node(i, j) * (1.0 - fx) + node(i, j + 1) * fx) * (1.0 - fy)
                + (node(i + 1, j) * (1.0 - fx) + node(i + 1, j + 1) * fx) * fy;
            *f += amplitude * v;
        }
        amplitude *= 0.5;
    }
    let (lo, hi) = field.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    field.iter().map(|&v| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }).collect()
}

fn pixelate(x: &[f32], scale: f32) -> Vec<f32> {
    let side = ((SIDE as f32 * scale) as usize).max(1);
    // Sample-and-hold: every output pixel repeats the input pixel at the corner of its
    // block of the smaller grid (nearest neighbour down, then up).
    let mut out = vec![0f32; x.len()];
    for y in 0..SIDE {
        for xx in 0..SIDE {
            let corner = |v: usize| (v * side / SIDE) * SIDE / side;
            let (sy, sx) = (corner(y).min(SIDE - 1), corner(xx).min(SIDE - 1));
            for c in 0..3 {
                out[(y * SIDE + xx) * 3 + c] = x[(sy * SIDE + sx) * 3 + c];
            }
        }
    }
    out
}

fn jpeg(img: &[u8], quality: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    let encoded = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality).encode(
        img,
        SIDE as u32,
        SIDE as u32,
        image::ExtendedColorType::Rgb8,
    );
    match encoded.ok().and_then(|()| image::load_from_memory(&bytes).ok()) {
        Some(decoded) => decoded.to_rgb8().into_raw(),
        None => img.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IMAGE_BYTES;

    /// A real photo: the first validation image of the deer class.
    fn sample_image() -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images/20000-deer.png");
        image::open(path).expect("fixture image").into_rgb8().into_raw()
    }

    /// Mean absolute change, in 0..255 units.
    fn change(a: &[u8], b: &[u8]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs()).sum::<f64>() / a.len() as f64
    }

    #[test]
    fn every_corruption_changes_the_image_more_at_higher_severity_and_is_deterministic() {
        let img = sample_image();
        for c in Corruption::ALL {
            let d: Vec<f64> = (1..=SEVERITIES).map(|s| change(&img, &c.apply(s, &img, 7))).collect();
            assert!(d[0] > 0.0, "{}: severity 1 changes nothing", c.name());
            assert!(d[4] > d[0], "{}: severity 5 ({}) not stronger than 1 ({})", c.name(), d[4], d[0]);
            assert_eq!(c.apply(3, &img, 7), c.apply(3, &img, 7), "{}", c.name());
            assert_eq!(c.apply(3, &img, 7).len(), IMAGE_BYTES);
        }
    }

    #[test]
    fn blur_keeps_a_flat_image_and_contrast_keeps_the_mean() {
        let flat = vec![100u8; IMAGE_BYTES];
        assert_eq!(Corruption::GaussianBlur.apply(5, &flat, 1), flat);
        assert_eq!(Corruption::MotionBlur.apply(5, &flat, 1), flat);
        let img = sample_image();
        let mean = |v: &[u8]| v.iter().map(|&p| f64::from(p)).sum::<f64>() / v.len() as f64;
        assert!((mean(&Corruption::Contrast.apply(5, &img, 1)) - mean(&img)).abs() < 1.0);
    }
}
