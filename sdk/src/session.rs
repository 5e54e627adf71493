//! [`Session`]: runs a model. All memory is planned and allocated when the session is
//! created; running it allocates nothing on the CPU backend except the convenience
//! results (`Vec`s of logits or predictions) where the caller asks for them.

use std::sync::Arc;

use crate::artifact::Precision;
use crate::backend::{Input, Observer, Runner, Watch};
use crate::model::Model;
use crate::{Error, Result};

/// One class of a top-k answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Class index.
    pub class: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
    /// Raw logit.
    pub logit: f32,
}

/// The answer for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// The `k` most likely classes, most likely first.
    pub top: Vec<Prediction>,
    /// Softmax over all classes.
    pub probabilities: Vec<f32>,
    /// Raw logits.
    pub logits: Vec<f32>,
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// How far `other`'s logits are from `reference`'s: over images (rows of `classes`
/// logits), the worst `max |reference - other| / max |reference|`. The one measure the
/// project uses to compare engines (trainer vs SDK, SDK vs ONNX Runtime, GPU vs CPU).
pub fn max_relative_error(reference: &[f32], other: &[f32], classes: usize) -> f64 {
    reference
        .chunks_exact(classes.max(1))
        .zip(other.chunks_exact(classes.max(1)))
        .map(|(r, s)| {
            let scale = r.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            r.iter().zip(s).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
        })
        .fold(0f32, f32::max) as f64
}

/// How close `other` is to `reference` (logits of the same images, as many values):
/// the signal-to-noise ratio `10 log10(sum reference^2 / sum (other - reference)^2)` in
/// decibels; infinite where they are equal (empty included). Unlike top-1 agreement it
/// moves with every change of the numbers, not only with the few images near a tie.
pub fn signal_to_noise_db(reference: &[f32], other: &[f32]) -> f64 {
    let (signal, noise) = reference.iter().zip(other).fold((0f64, 0f64), |(s, n), (&r, &o)| {
        let d = f64::from(o) - f64::from(r);
        (s + f64::from(r) * f64::from(r), n + d * d)
    });
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// The fraction of images (rows of `classes` logits) on which `a` and `b` have the same
/// top-1 class: how often two engines, or two precisions, give the same answer.
pub fn top1_agreement(a: &[f32], b: &[f32], classes: usize) -> f64 {
    let c = classes.max(1);
    let same =
        a.chunks_exact(c).zip(b.chunks_exact(c)).filter(|(x, y)| top_k_indices(x, 1) == top_k_indices(y, 1)).count();
    same as f64 / (a.len() / c).max(1) as f64
}

/// Indices of the `k` largest values, largest first (ties: the lower index first).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| {
        let (va, vb) = (values.get(a).copied().unwrap_or(0.0), values.get(b).copied().unwrap_or(0.0));
        vb.total_cmp(&va).then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// The top-`k` answer for one image's `logits`, with class names from `labels` (the
/// model's labels; missing names are empty). What `Session::classify_*` return, for
/// callers that run the model themselves (e.g. a server that batches requests).
pub fn classify_logits(logits: &[f32], k: usize, labels: &[String]) -> Classification {
    let probabilities = softmax(logits);
    let top = top_k_indices(&probabilities, k)
        .into_iter()
        .map(|c| Prediction {
            class: c,
            label: labels.get(c).cloned().unwrap_or_default(),
            probability: probabilities.get(c).copied().unwrap_or(0.0),
            logit: logits.get(c).copied().unwrap_or(0.0),
        })
        .collect();
    Classification { top, probabilities, logits: logits.to_vec() }
}

/// Per-caller inference state: the backend's buffers (planned once, when the session is
/// made) and threads. A session is `Send` but used by one thread at a time
/// (`&mut self`); create one per thread.
pub struct Session {
    model: Arc<Model>,
    runner: Box<dyn Runner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("runner", &self.runner).finish()
    }
}

impl Session {
    pub(crate) fn new(model: Arc<Model>, runner: Box<dyn Runner>) -> Result<Self> {
        Ok(Self { model, runner })
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Images the backend runs at once (larger batches run in parts).
    pub fn capacity(&self) -> usize {
        self.runner.capacity()
    }

    /// Threads this session computes with.
    pub fn threads(&self) -> usize {
        self.runner.threads()
    }

    fn image_len(&self) -> usize {
        self.model.input_shape().iter().product()
    }

    /// Writes the logits of `batch` normalized NCHW images into `out`
    /// (`batch x classes`, row-major).
    pub fn run_nchw(&mut self, input: &[f32], batch: usize, out: &mut [f32]) -> Result<()> {
        self.run(Input::Nchw(input), batch, out, &mut Watch::None)
    }

    /// Writes the logits of `batch` 32x32 RGB8 images (`[N][H][W][3]`) into `out`.
    pub fn run_rgb8(&mut self, pixels: &[u8], batch: usize, out: &mut [f32]) -> Result<()> {
        self.run(Input::Rgb8(pixels), batch, out, &mut Watch::None)
    }

    /// Logits of `batch` normalized NCHW images, `batch x classes`.
    pub fn logits_nchw(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; batch.saturating_mul(self.model.classes())];
        self.run_nchw(input, batch, &mut out)?;
        Ok(out)
    }

    /// Logits of `batch` RGB8 images, `batch x classes`.
    pub fn logits_rgb8(&mut self, pixels: &[u8], batch: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; batch.saturating_mul(self.model.classes())];
        self.run_rgb8(pixels, batch, &mut out)?;
        Ok(out)
    }

    /// Top-`k` classes of each of `batch` RGB8 images.
    pub fn classify_rgb8(&mut self, pixels: &[u8], batch: usize, k: usize) -> Result<Vec<Classification>> {
        let logits = self.logits_rgb8(pixels, batch)?;
        Ok(logits.chunks_exact(self.model.classes().max(1)).map(|l| self.classification(l, k)).collect())
    }

    /// Top-`k` classes of an encoded image (PNG, JPEG, PPM; any size, resized).
    pub fn classify_image(&mut self, encoded: &[u8], k: usize) -> Result<Classification> {
        let [_, h, w] = self.model.input_shape();
        let px = crate::image::decode_rgb8(encoded, w, h)?;
        let logits = self.logits_rgb8(&px, 1)?;
        Ok(self.classification(&logits, k))
    }

    /// Runs an f32 model on the CPU on normalized NCHW images and calls
    /// `observe(node, value)` with every node's output (`[image][y][x][channel]`) as it
    /// is computed: the compiler calibrates int8 activations with it. Returns the logits.
    pub fn run_observed(&mut self, input: &[f32], batch: usize, observe: &mut Observer<'_>) -> Result<Vec<f32>> {
        if self.model.precision() != Precision::F32 {
            return Err(Error::Input("run_observed needs an f32 model".into()));
        }
        if self.model.device() != crate::Device::Cpu {
            return Err(Error::Input(
                "run_observed runs on the CPU engine: open the model with device policy `cpu`".into(),
            ));
        }
        let mut out = vec![0f32; batch.saturating_mul(self.model.classes())];
        self.run(Input::Nchw(input), batch, &mut out, &mut Watch::Values(observe))?;
        Ok(out)
    }

    /// Seconds spent in each node (graph order) while running `batch` RGB8 images on the
    /// CPU backend: where the time goes.
    pub fn node_times(&mut self, pixels: &[u8], batch: usize) -> Result<Vec<f64>> {
        let mut times = vec![0f64; self.model.metadata().graph.nodes.len()];
        let mut out = vec![0f32; batch.saturating_mul(self.model.classes())];
        self.run(Input::Rgb8(pixels), batch, &mut out, &mut Watch::Times(&mut times))?;
        Ok(times)
    }

    fn classification(&self, logits: &[f32], k: usize) -> Classification {
        classify_logits(logits, k, self.model.labels())
    }

    fn run(&mut self, input: Input<'_>, batch: usize, out: &mut [f32], watch: &mut Watch<'_, '_>) -> Result<()> {
        let per_image = match input {
            Input::Nchw(_) => self.image_len(),
            Input::Rgb8(_) => {
                let [c, h, w] = self.model.input_shape();
                if c != 3 {
                    return Err(Error::Input(format!("RGB8 input needs a 3-channel model, this one has {c}")));
                }
                h * w * 3
            }
        };
        let given = input.len();
        let classes = self.model.classes();
        if batch == 0 {
            return Err(Error::Input("batch size is 0".into()));
        }
        if batch.checked_mul(per_image) != Some(given) {
            return Err(Error::Input(format!(
                "{given} input values for {batch} image(s) of {per_image} each (expected {})",
                batch.saturating_mul(per_image)
            )));
        }
        if batch.checked_mul(classes) != Some(out.len()) {
            return Err(Error::Input(format!(
                "output buffer holds {} values, {batch} image(s) x {classes} classes need {}",
                out.len(),
                batch.saturating_mul(classes)
            )));
        }
        if matches!(watch, Watch::None) && self.runner.run_batch(&self.model, input, batch, out)? {
            return Ok(());
        }
        let cap = self.capacity().max(1);
        let mut start = 0;
        while start < batch {
            let n = cap.min(batch - start);
            let dst = out.get_mut(start * classes..(start + n) * classes).unwrap_or(&mut []);
            self.runner.run(&self.model, input.part(start, n, per_image), n, dst, watch)?;
            start += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_largest_first_with_ties_by_index() {
        assert_eq!(top_k_indices(&[0.1, 0.7, 0.7, -2.0], 3), vec![1, 2, 0]);
        assert_eq!(top_k_indices(&[1.0], 5), vec![0]);
        let labels: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let c = classify_logits(&[0.0, 1.0], 1, &labels);
        assert_eq!((c.top[0].class, c.top[0].label.as_str()), (1, "b"));
        assert!((c.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn signal_to_noise_is_in_decibels_and_infinite_when_equal() {
        let r = [3.0, -4.0];
        assert_eq!(signal_to_noise_db(&r, &r), f64::INFINITY);
        assert_eq!(signal_to_noise_db(&[0.0], &[0.0]), f64::INFINITY);
        assert_eq!(signal_to_noise_db(&[], &[]), f64::INFINITY);
        // Noise power 1 against signal power 25: 10 log10(25) dB.
        let snr = signal_to_noise_db(&r, &[3.0, -3.0]);
        assert!((snr - 10.0 * 25f64.log10()).abs() < 1e-9, "{snr}");
    }
}
