//! Depthwise convolutions (one filter per channel: `groups == in == out channels`, as in
//! MobileNet's inverted residuals and the per-channel affine maps an importer leaves
//! standalone). The dense tile kernels would spend one of [`PANEL`] lanes per group on
//! them; here each output pixel is a multiply-add over the window, vectorized across
//! channels (values are NHWC, so a pixel's channels are contiguous).
//!
//! The filters are repacked once, when the op is built, from the file's packed panels
//! into `[window position][channel]` (f32 weights, or int8 codes as f32: products of a
//! u8 code and an 8-bit weight summed over a window of up to
//! [`MAX_DEPTHWISE_POSITIONS`](crate::artifact::layers::MAX_DEPTHWISE_POSITIONS)
//! positions stay exact in f32). One generic body ([`pixel`]) is compiled twice: portable, and on x86
//! with AVX2 and FMA enabled where the kernel table says the CPU has them.

use std::ops::Range;

use super::conv::{requantization, Requant, Window, WindowPlan};
use super::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::artifact::layers::{LayerShape, StoredLayer};
use crate::artifact::Activation;
use crate::kernels::act::{activate, code};
use crate::{Error, Result};

/// Channels accumulated at once (a stack buffer: runs never allocate).
const CHUNK: usize = 64;

/// One output row of a unit, as the op writes it.
enum RowOut<'a> {
    F32(&'a mut [f32]),
    U8(&'a mut [u8], f32, f32),
}

/// Whether a convolution of `shape` runs as a [`Depthwise`] (the layer module owns the
/// rule: it also sets these layers' weight precision).
pub(crate) fn is_depthwise(shape: &LayerShape) -> bool {
    shape.is_depthwise()
}

/// A depthwise convolution ready to run.
#[derive(Debug)]
pub(crate) struct Depthwise {
    name: String,
    channels: usize,
    act: Activation,
    input: ValueLayout,
    output: ValueLayout,
    /// Where each output pixel's window starts, its positions, where its result goes.
    plan: WindowPlan,
    /// `[position][channel]`: f32 weights, or int8 codes.
    weights: Vec<f32>,
    /// `act(mult * acc + offset)` per channel (f32 layers: `mult` is 1 and `offset` the
    /// bias).
    epilogue: Requant,
    /// AVX2 and FMA are available (the kernel table is not the portable one).
    wide: bool,
}

impl Depthwise {
    /// Builds node `b.node`'s depthwise convolution of shape `shape` over window `win`.
    pub fn new(b: &CpuBuild<'_>, shape: LayerShape, win: Window, act: Activation) -> Result<Self> {
        let name = b.node.name.clone();
        let bad = |what: String| Error::Internal(format!("{name}: {what}"));
        if !is_depthwise(&shape) {
            return Err(bad(format!("{shape:?} is not depthwise")));
        }
        let (input, output) = (b.input(0)?, b.output);
        let c = shape.out;
        let plan = WindowPlan::new(&input, &output, shape.kernel, &win).map_err(bad)?;
        let far_in = plan.far_in(c);
        if far_in > input.image_len() || input.c != c {
            return Err(bad(format!("window reads {far_in} of {} elements", input.image_len())));
        }
        let far_out = plan.far_out(c);
        if far_out > output.image_len() || output.c != c {
            return Err(bad(format!("writes {far_out} of {} elements", output.image_len())));
        }
        let layer = StoredLayer::read(b.artifact, &name, shape)?;
        let positions = shape.positions();
        // Logical weights are [channel][position]; the op reads [position][channel].
        let logical: Vec<f32> = match layer.quant {
            None => layer.to_float()?.weight,
            Some(_) => layer.codes().ok_or_else(|| bad("no int8 codes".into()))?.into_iter().map(f32::from).collect(),
        };
        if logical.len() != c * positions || layer.bias.len() != c {
            return Err(bad("weights of the wrong size".into()));
        }
        let weights: Vec<f32> = (0..positions)
            .flat_map(|k| (0..c).map(move |ch| (ch, k)))
            .map(|(ch, k)| logical.get(ch * positions + k).copied().unwrap_or(0.0))
            .collect();
        let elem_ok = match layer.quant {
            None => input.elem == Elem::F32 && output.elem == Elem::F32,
            Some(_) => input.elem == Elem::U8 && (output.elem == Elem::U8) == b.out_quant.is_some(),
        };
        if !elem_ok {
            return Err(bad("value types do not match the layer's precision".into()));
        }
        let epilogue = match layer.quant {
            None => Requant { mult: vec![1.0; c], offset: layer.bias.to_vec(), out: None },
            Some((scale, sum)) => requantization(b, layer.bias, scale, sum)?,
        };
        Ok(Self {
            name,
            channels: c,
            act,
            input,
            output,
            plan,
            weights,
            epilogue,
            wide: b.kernels.name != "portable" && has_avx2_fma(),
        })
    }

    fn rows(&self) -> usize {
        self.output.h.max(1)
    }
}

/// Whether this CPU has AVX2 and FMA.
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The window sum of channels `c0..c0 + acc.len()` of one output pixel: `acc[i] +=
/// x[base + koff + c0 + i] * w[k * channels + c0 + i]` over the window positions `k`.
/// `false` where a read falls outside `x` or `w` (the op's checks rule it out).
#[inline(always)]
fn pixel<T: Copy + Into<f32>>(
    x: &[T],
    base: usize,
    koffs: &[usize],
    w: &[f32],
    channels: usize,
    c0: usize,
    acc: &mut [f32],
) -> bool {
    let n = acc.len();
    for (k, &koff) in koffs.iter().enumerate() {
        let (Some(xs), Some(ws)) =
            (x.get(base + koff + c0..base + koff + c0 + n), w.get(k * channels + c0..k * channels + c0 + n))
        else {
            return false;
        };
        for ((a, &xv), &wv) in acc.iter_mut().zip(xs).zip(ws) {
            *a += xv.into() * wv;
        }
    }
    true
}

/// `v[i] = act(v[i])`, with the activation chosen once per slice (so each loop is one
/// straight vectorizable body).
#[inline(always)]
fn activate_all(act: Activation, v: &mut [f32]) {
    #[inline(always)]
    fn each(v: &mut [f32], f: impl Fn(f32) -> f32) {
        v.iter_mut().for_each(|x| *x = f(*x));
    }
    match act {
        Activation::None => {}
        Activation::Relu => each(v, |x| activate(Activation::Relu, x)),
        Activation::Relu6 => each(v, |x| activate(Activation::Relu6, x)),
        Activation::Hardswish => each(v, |x| activate(Activation::Hardswish, x)),
        Activation::Sigmoid => each(v, |x| activate(Activation::Sigmoid, x)),
        Activation::Gelu => each(v, |x| activate(Activation::Gelu, x)),
    }
}

/// One output row (`ow` pixels from input offsets `in_pix` of image offset `image_in`,
/// written at `out_pix - row_start` of `out`): window sums, epilogue, store.
#[inline(always)]
fn row<T: Copy + Into<f32>>(
    op: &Depthwise,
    x: &[T],
    image_in: usize,
    pixels: Range<usize>,
    row_start: usize,
    out: RowOut<'_>,
) -> bool {
    let c = op.channels;
    let e = &op.epilogue;
    let mut acc = [0f32; CHUNK];
    let mut out = out;
    for p in pixels {
        let (Some(&ip), Some(&o)) = (op.plan.in_pix.get(p), op.plan.out_pix.get(p)) else { return false };
        let Some(yo) = o.checked_sub(row_start) else { return false };
        for c0 in (0..c).step_by(CHUNK) {
            let len = CHUNK.min(c - c0);
            let (Some(acc), Some(m), Some(b)) =
                (acc.get_mut(..len), e.mult.get(c0..c0 + len), e.offset.get(c0..c0 + len))
            else {
                return false;
            };
            acc.fill(0.0);
            if !pixel(x, image_in + ip, &op.plan.offsets, &op.weights, c, c0, acc) {
                return false;
            }
            for ((a, &m), &b) in acc.iter_mut().zip(m).zip(b) {
                *a = m * *a + b;
            }
            activate_all(op.act, acc);
            match &mut out {
                RowOut::F32(y) => match y.get_mut(yo + c0..yo + c0 + len) {
                    Some(y) => y.copy_from_slice(acc),
                    None => return false,
                },
                RowOut::U8(y, inv, zp) => match y.get_mut(yo + c0..yo + c0 + len) {
                    Some(y) => y.iter_mut().zip(acc.iter()).for_each(|(y, &v)| *y = code(v * *inv + *zp)),
                    None => return false,
                },
            }
        }
    }
    true
}

/// [`row`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2<T: Copy + Into<f32>>(
    op: &Depthwise,
    x: &[T],
    image_in: usize,
    pixels: Range<usize>,
    row_start: usize,
    out: RowOut<'_>,
) -> bool {
    row(op, x, image_in, pixels, row_start, out)
}

impl Depthwise {
    fn run_row<T: Copy + Into<f32>>(
        &self,
        x: &[T],
        image_in: usize,
        pixels: Range<usize>,
        row_start: usize,
        out: RowOut<'_>,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.wide {
            // SAFETY: `wide` is set only where this CPU has AVX2 and FMA (`has_avx2_fma`).
            return unsafe { row_avx2(self, x, image_in, pixels, row_start, out) };
        }
        row(self, x, image_in, pixels, row_start, out)
    }

    /// Checks the chunk's buffers against the plan.
    fn check_io(&self, io: &Io<'_>) -> Result<()> {
        let bad = |what: &str| Error::Internal(format!("{}: {what}", self.name));
        if io.input_layout(0)? != self.input || io.output_layout() != self.output {
            return Err(bad("the chunk's layouts differ from the planned ones"));
        }
        Ok(())
    }
}

impl CpuOp for Depthwise {
    fn units(&self, images: usize) -> usize {
        images * self.rows()
    }

    fn run(&self, io: &Io<'_>, units: Range<usize>) -> Result<()> {
        self.check_io(io)?;
        let bad = || Error::Internal(format!("{}: a read or write outside its values", self.name));
        let (c, ow, rows) = (self.channels, self.output.w, self.rows());
        for u in units {
            let (n, oy) = (u / rows, u % rows);
            let pixels = oy * ow..(oy + 1) * ow;
            let (Some(&first), Some(&last)) =
                (self.plan.out_pix.get(pixels.start), self.plan.out_pix.get(pixels.end.wrapping_sub(1)))
            else {
                return Err(bad());
            };
            let out_image = n * self.output.image_len();
            let range = out_image + first..out_image + last + c;
            let image_in = n * self.input.image_len();
            let ok = match (self.input.elem, self.epilogue.out) {
                (Elem::F32, None) => {
                    // SAFETY: units write disjoint output rows (one (image, row) each);
                    // `output_f32` checks the range lies in the output.
                    let y = unsafe { io.output_f32(range)? };
                    self.run_row(io.input_f32(0)?, image_in, pixels, first, RowOut::F32(y))
                }
                (Elem::U8, None) => {
                    // SAFETY: as above.
                    let y = unsafe { io.output_f32(range)? };
                    self.run_row(io.input_u8(0)?, image_in, pixels, first, RowOut::F32(y))
                }
                (Elem::U8, Some((inv, zp))) => {
                    // SAFETY: as above.
                    let y = unsafe { io.output_u8(range)? };
                    self.run_row(io.input_u8(0)?, image_in, pixels, first, RowOut::U8(y, inv, zp))
                }
                (Elem::F32, Some(_)) => false,
            };
            if !ok {
                return Err(bad());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(h: usize, w: usize, c: usize, border: usize, elem: Elem) -> ValueLayout {
        ValueLayout { h, w, c, cs: c + 3, border, elem, zero_code: 0 }
    }

    /// Both builds of [`row`] against plain loops over the window, f32 and u8 inputs,
    /// stride 1 and 2, on random values and channel counts around the chunk size.
    #[test]
    fn rows_match_plain_loops_in_both_builds() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        };
        for (c, stride, act) in
            [(5, 1, Activation::Relu6), (64, 2, Activation::Hardswish), (70, 1, Activation::Sigmoid)]
        {
            let (h, w, k) = (6, 5, 3);
            let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let input = layout(h, w, c, 1, Elem::F32);
            let output = layout(oh, ow, c, 0, Elem::F32);
            let win = Window { stride: [stride; 2], padding: [1, 1], out_hw: [oh, ow] };
            let weights: Vec<f32> = (0..k * k * c).map(|_| rnd()).collect();
            let (mult, offset): (Vec<f32>, Vec<f32>) = (0..c).map(|_| (1.0 + rnd() * 0.5, rnd())).unzip();
            let mut op = Depthwise {
                name: "dw".into(),
                channels: c,
                act,
                input,
                output,
                plan: WindowPlan::new(&input, &output, [k, k], &win).unwrap(),
                weights,
                epilogue: Requant { mult, offset, out: None },
                wide: false,
            };
            // Interior values random, border 0 (f32) or code 0 (u8: any code is a value).
            let mut x = vec![0f32; input.image_len()];
            for y in 0..h {
                for xx in 0..w {
                    for ch in 0..c {
                        x[input.at(y, xx) + ch] = rnd();
                    }
                }
            }
            let xu: Vec<u8> = x.iter().map(|v| ((v + 1.0) * 127.0) as u8).collect();
            let want = |xs: &dyn Fn(usize) -> f32| -> Vec<f32> {
                let mut y = vec![0f32; output.image_len()];
                for p in 0..oh * ow {
                    for ch in 0..c {
                        let a: f32 = (0..k * k)
                            .map(|kk| xs(op.plan.in_pix[p] + op.plan.offsets[kk] + ch) * op.weights[kk * c + ch])
                            .sum();
                        y[op.plan.out_pix[p] + ch] = activate(act, op.epilogue.mult[ch] * a + op.epilogue.offset[ch]);
                    }
                }
                y
            };
            let (want_f, want_u) = (want(&|i| x[i]), want(&|i| f32::from(xu[i])));
            let builds: &[bool] = if cfg!(target_arch = "x86_64")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
            {
                &[false, true]
            } else {
                &[false]
            };
            for &wide in builds {
                op.wide = wide;
                for (input_u8, want) in [(false, &want_f), (true, &want_u)] {
                    let mut y = vec![0f32; output.image_len()];
                    for oy in 0..oh {
                        let first = op.plan.out_pix[oy * ow];
                        let end = op.plan.out_pix[oy * ow + ow - 1] + c;
                        let out = RowOut::F32(&mut y[first..end]);
                        let ok = if input_u8 {
                            op.run_row(&xu, 0, oy * ow..(oy + 1) * ow, first, out)
                        } else {
                            op.run_row(&x, 0, oy * ow..(oy + 1) * ow, first, out)
                        };
                        assert!(ok);
                    }
                    for (i, (g, w)) in y.iter().zip(want.iter()).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                            "c {c} wide {wide} u8 {input_u8} at {i}: {g} {w}"
                        );
                    }
                }
                // A row past the input is refused, not a panic.
                let mut y = vec![0f32; output.image_len()];
                assert!(!op.run_row(&x, x.len(), 0..ow, 0, RowOut::F32(&mut y)));
            }
        }
    }
}
