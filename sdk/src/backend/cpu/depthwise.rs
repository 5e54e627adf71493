//! Depthwise convolutions (one filter per channel: `groups == in == out channels`, as in
//! MobileNet's inverted residuals and the per-channel affine maps an importer leaves
//! standalone). The dense tile kernels would spend one of
//! [`PANEL`](crate::kernels::PANEL) lanes per group on them; here each output pixel is a multiply-add over the window, vectorized across
//! channels (values are NHWC, so a pixel's channels are contiguous).
//!
//! The filters are repacked once, when the op is built, from the file's packed panels
//! into `[window position][channel]` (f32 weights, or int8 codes as f32), and each
//! output row runs on the kernel table's [`depthwise`](crate::kernels::Kernels::depthwise)
//! row, on f32 values or u8 codes (whose sums are exact integers, in f32 or, with VNNI,
//! in i32: [`DepthwiseRow`]).

use std::ops::Range;

use super::conv::{requantization, Requant, Window, WindowPlan};
use super::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::artifact::layers::{LayerShape, StoredLayer};
use crate::artifact::Activation;
use crate::kernels::act::fold_ahead;
use crate::kernels::{weight_pair, DepthwiseRow, Kernels, RowInput, RowStore};
use crate::{Error, Result};

/// The input of a row: one image's values.
enum RowIn<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

/// The output of a row: u8 codes (with `1 / scale` and the zero point) or reals.
enum RowOut<'a> {
    Codes(&'a mut [u8], f32, f32),
    Real(&'a mut [f32]),
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
    /// int8: the codes as 16-bit pairs ([`weight_pair`]); empty for f32 layers.
    weight_pairs: Vec<u32>,
    /// `act(mult * acc + offset)` per channel (f32 layers: `mult` is 1 and `offset` the
    /// bias).
    epilogue: Requant,
    /// Where the output is codes after a clamp activation: the clamp's bounds on the code
    /// grid, and `epilogue` holds the folded constants ([`RowStore::FoldedCodes`]).
    folded: Option<(f32, f32)>,
    /// The farthest value a window reads from its first, plus one: the largest window
    /// offset plus the channels.
    far: usize,
    /// The rows' kernel.
    kernels: &'static Kernels,
}

impl Depthwise {
    /// Builds node `b.node`'s depthwise convolution of shape `shape` over window `win`.
    pub fn new(b: &CpuBuild<'_>, shape: LayerShape, win: Window, act: Activation) -> Result<Self> {
        let name = b.node.name.clone();
        let bad = |what: String| Error::Internal(format!("{name}: {what}"));
        if !shape.is_depthwise() {
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
        let mut epilogue = match layer.quant {
            None => Requant { mult: vec![1.0; c], offset: layer.bias.to_vec(), out: None },
            Some((scale, sum)) => requantization(b, layer.bias, scale, sum)?,
        };
        // Codes after a clamp activation: the epilogue's constants folded once, here.
        let folded =
            epilogue.out.and_then(|(inv, zp)| fold_ahead(&mut epilogue.mult, &mut epilogue.offset, act, inv, zp));
        let far = plan.offsets.iter().max().copied().unwrap_or(0) + c;
        Ok(Self {
            name,
            channels: c,
            act,
            input,
            output,
            plan,
            weight_pairs: if layer.quant.is_some() {
                weights.iter().map(|&w| weight_pair(w)).collect()
            } else {
                Vec::new()
            },
            weights,
            epilogue,
            folded,
            far,
            kernels: b.kernels,
        })
    }

    fn rows(&self) -> usize {
        self.output.h.max(1)
    }
}

impl Depthwise {
    /// One row on the kernel table, after checking that every read lies in `x` (one
    /// image) and every write in the row's output (which starts at `row_start`).
    fn run_row(&self, x: RowIn<'_>, pixels: Range<usize>, row_start: usize, out: RowOut<'_>) -> bool {
        let c = self.channels;
        let (Some(in_pix), Some(out_pix)) = (self.plan.in_pix.get(pixels.clone()), self.plan.out_pix.get(pixels))
        else {
            return false;
        };
        let far = self.far;
        let (in_len, input) = match x {
            RowIn::F32(x) => (x.len(), RowInput::F32(x.as_ptr())),
            RowIn::U8(x) => (x.len(), RowInput::U8(x.as_ptr())),
        };
        let out_len = match &out {
            RowOut::Codes(y, ..) => y.len(),
            RowOut::Real(y) => y.len(),
        };
        let reads_inside = in_pix.iter().all(|&p| p + far <= in_len);
        let writes_inside = out_pix.iter().all(|&o| o >= row_start && o - row_start + c <= out_len);
        if !reads_inside || !writes_inside {
            return false;
        }
        let store = match out {
            RowOut::Codes(y, inv_scale, zero_point) => match self.folded {
                Some((lo, hi)) => RowStore::FoldedCodes { output: y.as_mut_ptr(), lo, hi },
                None => RowStore::Codes { output: y.as_mut_ptr(), inv_scale, zero_point },
            },
            RowOut::Real(y) => RowStore::Real { output: y.as_mut_ptr() },
        };
        let job = DepthwiseRow {
            input,
            in_pix,
            in_origin: 0,
            koffs: &self.plan.offsets,
            weights: &self.weights,
            weight_pairs: &self.weight_pairs,
            channels: c,
            mult: &self.epilogue.mult,
            offset: &self.epilogue.offset,
            act: self.act,
            out_pix,
            out_origin: row_start,
            store,
        };
        if !job.consistent() {
            return false;
        }
        // SAFETY: checked above: `c` values at every window position of every pixel lie
        // in `x`, and `c` outputs at every pixel's place lie in the row's output; the
        // table was chosen for this CPU.
        unsafe { (self.kernels.depthwise)(&job) };
        true
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
            let image = n * self.input.image_len()..(n + 1) * self.input.image_len();
            let ok = match (self.input.elem, self.epilogue.out) {
                (Elem::F32, None) => {
                    let x = io.input_f32(0)?.get(image).ok_or_else(bad)?;
                    // SAFETY: units write disjoint output rows (one (image, row) each);
                    // `output_f32` checks the range lies in the output.
                    let y = unsafe { io.output_f32(range)? };
                    self.run_row(RowIn::F32(x), pixels, first, RowOut::Real(y))
                }
                (Elem::U8, None) => {
                    let x = io.input_u8(0)?.get(image).ok_or_else(bad)?;
                    // SAFETY: as above.
                    let y = unsafe { io.output_f32(range)? };
                    self.run_row(RowIn::U8(x), pixels, first, RowOut::Real(y))
                }
                (Elem::U8, Some((inv, zp))) => {
                    let x = io.input_u8(0)?.get(image).ok_or_else(bad)?;
                    // SAFETY: as above.
                    let y = unsafe { io.output_u8(range)? };
                    self.run_row(RowIn::U8(x), pixels, first, RowOut::Codes(y, inv, zp))
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
    use crate::kernels::act::activate;

    fn layout(h: usize, w: usize, c: usize, border: usize, elem: Elem) -> ValueLayout {
        ValueLayout { h, w, c, cs: c + 3, border, elem, zero_code: 0 }
    }

    /// f32 and int8 rows on every kernel table against plain loops over the window,
    /// stride 1 and 2, on random values and channel counts around the kernels' blocks.
    #[test]
    fn rows_match_plain_loops_on_every_kernel_table() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        };
        for (c, stride, act) in [
            (5, 1, Activation::Relu6),
            (64, 2, Activation::Hardswish),
            (70, 1, Activation::Sigmoid),
            (45, 1, Activation::Gelu),
            (16, 2, Activation::None),
        ] {
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
                weight_pairs: Vec::new(),
                weights,
                epilogue: Requant { mult, offset, out: None },
                folded: None,
                far: 0,
                kernels: &crate::kernels::portable::KERNELS,
            };
            op.far = op.plan.offsets.iter().max().unwrap() + c;
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
            let row_range = |oy: usize| (op.plan.out_pix[oy * ow], op.plan.out_pix[oy * ow + ow - 1] + c);
            let close = |got: &[f32], want: &[f32], what: &str| {
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "c {c} {what} at {i}: {g} {w}");
                }
            };
            // Every kernel table of this CPU: f32 rows, int8 rows with real outputs and
            // with codes.
            let (inv, zp) = (20.0, 100.0);
            let want_codes: Vec<u8> = want_u.iter().map(|&v| crate::kernels::act::quantize_code(v, inv, zp)).collect();
            for kernels in crate::kernels::available() {
                op.kernels = kernels;
                let name = kernels.name;
                let mut y = vec![0f32; output.image_len()];
                for oy in 0..oh {
                    let (first, end) = row_range(oy);
                    assert!(op.run_row(
                        RowIn::F32(&x),
                        oy * ow..(oy + 1) * ow,
                        first,
                        RowOut::Real(&mut y[first..end])
                    ));
                }
                close(&y, &want_f, &format!("f32 on {name}"));
                let mut y = vec![0f32; output.image_len()];
                let mut codes = vec![0u8; output.image_len()];
                for oy in 0..oh {
                    let (first, end) = row_range(oy);
                    let pixels = oy * ow..(oy + 1) * ow;
                    assert!(op.run_row(RowIn::U8(&xu), pixels.clone(), first, RowOut::Real(&mut y[first..end])));
                    assert!(op.run_row(RowIn::U8(&xu), pixels, first, RowOut::Codes(&mut codes[first..end], inv, zp)));
                }
                close(&y, &want_u, &format!("u8 on {name}"));
                for i in op.plan.out_pix.iter().flat_map(|&o| o..o + c) {
                    let (g, w) = (codes[i], want_codes[i]);
                    assert!(g.abs_diff(w) <= 1, "c {c} u8 on {name}: code at {i}: {g} {w}");
                }
                // Codes after a clamp activation, with the constants folded ahead (as
                // `Depthwise::new` does): the same codes.
                let plain = (op.epilogue.mult.clone(), op.epilogue.offset.clone());
                op.folded = fold_ahead(&mut op.epilogue.mult, &mut op.epilogue.offset, act, inv, zp);
                if op.folded.is_some() {
                    let mut folded = vec![0u8; output.image_len()];
                    for oy in 0..oh {
                        let (first, end) = row_range(oy);
                        let out = RowOut::Codes(&mut folded[first..end], inv, zp);
                        assert!(op.run_row(RowIn::U8(&xu), oy * ow..(oy + 1) * ow, first, out));
                    }
                    assert_eq!(folded, codes, "c {c} on {name}: folded ahead");
                    (op.epilogue.mult, op.epilogue.offset) = plain;
                    op.folded = None;
                }
                // Reads past the input or writes past the row are refused, not a panic.
                let need = op.plan.in_pix.iter().max().unwrap() + op.plan.offsets.iter().max().unwrap() + c;
                let last = (oh - 1) * ow..oh * ow;
                assert!(!op.run_row(RowIn::F32(&x[..need - 1]), last.clone(), 0, RowOut::Real(&mut y)));
                assert!(!op.run_row(RowIn::U8(&xu[..need - 1]), last, 0, RowOut::Real(&mut y)));
                let (first, end) = row_range(0);
                assert!(!op.run_row(RowIn::U8(&xu), 0..ow, first, RowOut::Real(&mut y[first..end - 1])));
            }
        }
    }
}
