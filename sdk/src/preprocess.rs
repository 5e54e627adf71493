//! Input conventions shared by the trainer (which normalizes training batches) and the
//! inference engines (which must normalize images exactly the same way).

/// Side length of the square input images, in pixels.
pub const INPUT_SIZE: usize = 32;
/// Number of colour channels (RGB).
pub const INPUT_CHANNELS: usize = 3;

/// The CIFAR-10 class names, in the official `batches.meta.txt` order: the class index
/// of a label is its position in this list.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Per-channel normalization applied to RGB8 pixels: `(p / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Per-channel mean of pixel values scaled to `[0, 1]`, in RGB order.
    pub mean: [f32; 3],
    /// Per-channel standard deviation of pixel values scaled to `[0, 1]`, in RGB order.
    pub std: [f32; 3],
}

impl Normalization {
    /// The statistics of the CIFAR-10 training set, the default for every model.
    pub const CIFAR10: Normalization = Normalization { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] };

    /// Returns `(scale, shift)` per channel so that `normalized = p * scale + shift` for a
    /// raw byte `p`. One multiply-add per pixel instead of a divide.
    pub fn affine(&self) -> [(f32, f32); 3] {
        let mut out = [(0.0, 0.0); 3];
        for ((slot, mean), std) in out.iter_mut().zip(self.mean).zip(self.std) {
            *slot = (1.0 / (255.0 * std), -mean / std);
        }
        out
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Self::CIFAR10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_matches_the_formula() {
        let n = Normalization::CIFAR10;
        let a = n.affine();
        for (c, (scale, shift)) in a.iter().enumerate() {
            for p in [0u8, 17, 128, 255] {
                let direct = (p as f32 / 255.0 - n.mean[c]) / n.std[c];
                let fused = p as f32 * scale + shift;
                assert!((direct - fused).abs() < 1e-5, "channel {c} pixel {p}");
            }
        }
    }
}
