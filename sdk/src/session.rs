//! [`Session`]: runs a model. All memory is planned and allocated when the session is
//! created; running it allocates nothing except the convenience results (`Vec`s of
//! logits or predictions) where the caller asks for them.

use std::sync::Arc;

use crate::artifact::Precision;
use crate::engine::exec::{run_f32, run_int8};
use crate::engine::plan::Plan;
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

/// Per-thread inference state: the buffer plan and its buffers. A session is `Send` but
/// used by one thread at a time (`&mut self`); create one per thread.
pub struct Session {
    model: Arc<Model>,
    plan: Plan,
    arena_f32: Vec<f32>,
    arena_u8: Vec<u8>,
    scratch_f32: Vec<f32>,
    scratch_u8: Vec<u8>,
    packed: Vec<i16>,
    wbufs: Vec<i32>,
    logits: Vec<f32>,
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    /// Per channel: RGB8 byte -> normalized f32 and -> quantized input code.
    pixel_f32: [[f32; 256]; 3],
    pixel_u8: [[u8; 256]; 3],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("capacity", &self.plan.capacity)
            .field("threads", &self.threads)
            .field("arena_bytes", &(self.arena_f32.len() * 4 + self.arena_u8.len()))
            .finish()
    }
}

/// A callback that sees each node's output: `(node index, value in [C][N*H*W] layout)`.
pub type Observer<'a> = dyn FnMut(usize, &[f32]) + Send + 'a;

/// The layout of the input a caller hands over.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// `[N][C][H][W]` normalized f32.
    Nchw(&'a [f32]),
    /// `[N][H][W][3]` RGB8.
    Rgb8(&'a [u8]),
}

/// `n` NCHW images (`image` values each, planes of `hw`) into the CNHW arena, each value
/// through `convert`.
fn load_nchw<T>(x: &[f32], image: usize, hw: usize, n: usize, dst: &mut [T], convert: impl Fn(f32) -> T) {
    for (b, img) in x.chunks_exact(image.max(1)).enumerate() {
        for (ch, plane) in img.chunks_exact(hw.max(1)).enumerate() {
            if let Some(d) = dst.get_mut((ch * n + b) * hw..(ch * n + b + 1) * hw) {
                d.iter_mut().zip(plane).for_each(|(d, &v)| *d = convert(v));
            }
        }
    }
}

/// `n` RGB8 images (`[H*W][3]` bytes each) into the CNHW arena through per-channel tables.
fn load_rgb8<T: Copy>(x: &[u8], hw: usize, n: usize, luts: &[[T; 256]; 3], dst: &mut [T]) {
    for (b, img) in x.chunks_exact((hw * 3).max(1)).enumerate() {
        for (p, px) in img.chunks_exact(3).enumerate() {
            for (ch, (&v, lut)) in px.iter().zip(luts).enumerate() {
                if let (Some(d), Some(&q)) = (dst.get_mut((ch * n + b) * hw + p), lut.get(usize::from(v))) {
                    *d = q;
                }
            }
        }
    }
}

impl Session {
    pub(crate) fn new(model: Arc<Model>) -> Result<Self> {
        let opts = model.options().clone();
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("cifar-sdk-{i}"))
                    .build()
                    .map_err(|e| Error::Options(format!("cannot start {threads} threads: {e}")))?,
            )
        } else {
            None
        };
        let input_elems: usize = model.input_shape().iter().product();
        let output = model.artifact.info.output;
        let plan = Plan::new(&model.steps, input_elems, output, opts.max_batch)?;
        let int8 = model.precision() == Precision::Int8;
        let norm = model.metadata().preprocessing.normalization;
        let iq = model.metadata().graph.input_quant;
        let mut pixel_f32 = [[0f32; 256]; 3];
        let mut pixel_u8 = [[0u8; 256]; 3];
        for ((lf, lq), (scale, shift)) in pixel_f32.iter_mut().zip(pixel_u8.iter_mut()).zip(norm.affine()) {
            for p in 0..256usize {
                let v = p as f32 * scale + shift;
                if let (Some(f), Some(q)) = (lf.get_mut(p), lq.get_mut(p)) {
                    *f = v;
                    *q = iq.map(|iq| iq.quantize(v)).unwrap_or(0);
                }
            }
        }
        let classes = model.classes();
        let cap = opts.max_batch;
        let on_cpu = model.device() == crate::Device::Cpu;
        let wbufs = if int8 && on_cpu { vec![0i32; plan.wbuf_len * threads] } else { Vec::new() };
        let (arena_f32, arena_u8, scratch_f32, scratch_u8, packed) = if !on_cpu {
            // The GPU holds the activations; the CPU engine's buffers stay unallocated.
            Default::default()
        } else if int8 {
            (
                Vec::new(),
                vec![0u8; plan.arena_len],
                Vec::new(),
                vec![0u8; plan.scratch_len],
                vec![0i16; plan.packed_len],
            )
        } else {
            (vec![0f32; plan.arena_len], Vec::new(), vec![0f32; plan.scratch_len], Vec::new(), Vec::new())
        };
        Ok(Self {
            logits: vec![0f32; classes * cap],
            model,
            plan,
            arena_f32,
            arena_u8,
            scratch_f32,
            scratch_u8,
            packed,
            wbufs,
            threads,
            pool,
            pixel_f32,
            pixel_u8,
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Images per internal batch.
    pub fn capacity(&self) -> usize {
        self.plan.capacity
    }

    /// Threads this session computes with.
    pub fn threads(&self) -> usize {
        self.threads
    }

    fn image_len(&self) -> usize {
        self.model.input_shape().iter().product()
    }

    /// Writes the logits of `batch` normalized NCHW images into `out`
    /// (`batch x classes`, row-major).
    pub fn run_nchw(&mut self, input: &[f32], batch: usize, out: &mut [f32]) -> Result<()> {
        self.run(Input::Nchw(input), batch, out, None)
    }

    /// Writes the logits of `batch` 32x32 RGB8 images (`[N][H][W][3]`) into `out`.
    pub fn run_rgb8(&mut self, pixels: &[u8], batch: usize, out: &mut [f32]) -> Result<()> {
        self.run(Input::Rgb8(pixels), batch, out, None)
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

    /// Runs the f32 model on normalized NCHW images and calls `observe(node, value)`
    /// with every node's output (layout `[C][N*H*W]`) as it is computed: the compiler
    /// calibrates int8 activations with it. Returns the logits.
    pub fn run_observed(&mut self, input: &[f32], batch: usize, observe: &mut Observer<'_>) -> Result<Vec<f32>> {
        if self.model.precision() != Precision::F32 {
            return Err(Error::Input("run_observed needs an f32 model".into()));
        }
        if self.model.device() != crate::Device::Cpu {
            return Err(Error::Input(
                "run_observed runs on the CPU engine: open the model with device policy `cpu`".into(),
            ));
        }
        if batch > self.capacity() {
            return Err(Error::Input(format!("run_observed takes at most {} images", self.capacity())));
        }
        let mut out = vec![0f32; batch * self.model.classes()];
        self.run(Input::Nchw(input), batch, &mut out, Some(observe))?;
        Ok(out)
    }

    fn classification(&self, logits: &[f32], k: usize) -> Classification {
        classify_logits(logits, k, self.model.labels())
    }

    fn run(
        &mut self,
        input: Input<'_>,
        batch: usize,
        out: &mut [f32],
        observe: Option<&mut Observer<'_>>,
    ) -> Result<()> {
        let mut noop = |_: usize, _: &[f32]| {};
        let observe: &mut Observer<'_> = match observe {
            Some(o) => o,
            None => &mut noop,
        };
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
        let given = match input {
            Input::Nchw(x) => x.len(),
            Input::Rgb8(x) => x.len(),
        };
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
        let cap = self.capacity();
        let mut start = 0;
        while start < batch {
            let n = cap.min(batch - start);
            let chunk = match input {
                Input::Nchw(x) => Input::Nchw(x.get(start * per_image..(start + n) * per_image).unwrap_or(&[])),
                Input::Rgb8(x) => Input::Rgb8(x.get(start * per_image..(start + n) * per_image).unwrap_or(&[])),
            };
            let dst = out.get_mut(start * classes..(start + n) * classes).unwrap_or(&mut []);
            self.run_chunk(chunk, n, dst, &mut *observe)?;
            start += n;
        }
        Ok(())
    }

    /// Loads the input into value 0 of the arena (CNHW), runs, and transposes the
    /// `[classes][n]` output into `out` (`[n][classes]`).
    fn run_chunk(&mut self, input: Input<'_>, n: usize, out: &mut [f32], observe: &mut Observer<'_>) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.model.gpu {
            let logits = match input {
                Input::Nchw(x) => gpu.logits_nchw(x, n)?,
                Input::Rgb8(x) => gpu.logits_rgb8(x, n)?,
            };
            if logits.len() != out.len() {
                return Err(Error::Device(format!("the GPU returned {} logits, expected {}", logits.len(), out.len())));
            }
            out.copy_from_slice(&logits);
            return Ok(());
        }
        let [c, h, w] = self.model.input_shape();
        let hw = h * w;
        let int8 = self.model.precision() == Precision::Int8;
        let iq = self.model.metadata().graph.input_quant;
        let in_range = self.plan.range(0, n);
        match (input, int8) {
            (Input::Nchw(x), false) => {
                load_nchw(x, c * hw, hw, n, self.arena_f32.get_mut(in_range).unwrap_or(&mut []), |v| v)
            }
            (Input::Nchw(x), true) => {
                let q = iq.ok_or_else(|| Error::Input("int8 model without input quantization".into()))?;
                load_nchw(x, c * hw, hw, n, self.arena_u8.get_mut(in_range).unwrap_or(&mut []), |v| q.quantize(v))
            }
            (Input::Rgb8(x), false) => {
                load_rgb8(x, hw, n, &self.pixel_f32, self.arena_f32.get_mut(in_range).unwrap_or(&mut []))
            }
            (Input::Rgb8(x), true) => {
                load_rgb8(x, hw, n, &self.pixel_u8, self.arena_u8.get_mut(in_range).unwrap_or(&mut []))
            }
        }
        let model = &self.model;
        let bytes = model.artifact.bytes();
        let (plan, threads) = (&self.plan, self.threads);
        let output = model.artifact.info.output;
        let classes = model.classes();
        let (arena_f32, scratch_f32) = (&mut self.arena_f32, &mut self.scratch_f32);
        let (arena_u8, scratch_u8, logits) = (&mut self.arena_u8, &mut self.scratch_u8, &mut self.logits);
        let (packed, wbufs) = (&mut self.packed, &mut self.wbufs);
        let mut work = || -> Result<()> {
            if int8 {
                run_int8(bytes, &model.steps, plan, output, arena_u8, scratch_u8, packed, wbufs, logits, n, threads)
            } else {
                run_f32(bytes, &model.steps, plan, arena_f32, scratch_f32, n, threads, observe)
            }
        };
        match &self.pool {
            Some(pool) => pool.install(work)?,
            None => work()?,
        }
        // The output value, `[classes][n]`.
        let out_node = model.metadata().graph.nodes.get(output);
        let range = self.plan.range(output + 1, n);
        let write = |out: &mut [f32], get: &dyn Fn(usize) -> f32| {
            for (b, row) in out.chunks_exact_mut(classes.max(1)).enumerate() {
                for (k, o) in row.iter_mut().enumerate() {
                    *o = get(k * n + b);
                }
            }
        };
        if !int8 {
            let v = self.arena_f32.get(range).unwrap_or(&[]);
            write(out, &|i| v.get(i).copied().unwrap_or(f32::NAN));
        } else if let Some(q) = out_node.and_then(|nd| nd.quant) {
            let v = self.arena_u8.get(range).unwrap_or(&[]);
            write(out, &|i| v.get(i).map(|&c| q.dequantize(c)).unwrap_or(f32::NAN));
        } else {
            let v = &self.logits;
            write(out, &|i| v.get(i).copied().unwrap_or(f32::NAN));
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
}
