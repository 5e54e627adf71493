//! Convolutions (and linear layers, 1x1 convolutions of a 1x1 plane) on the CPU: the
//! geometry resolved once per model (where each output pixel's window starts, where each
//! window position lies, where each result goes), then tiles of [`MR`] pixels x
//! [`PANEL`] output channels handed to the kernel table's tile functions. Every address
//! a tile touches is checked against the value layouts when the op is built; a run only
//! checks that the chunk's buffers have the planned sizes.

use std::ops::Range;

use super::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::artifact::layers::{names, LayerShape, StoredLayer, PANEL, QUAD};
use crate::artifact::Activation;
use crate::kernels::{ConvTileF32, ConvTileU8, Kernels, StoreU8, MR};
use crate::{Error, Result};

/// How a convolution reads its window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub out_hw: [usize; 2],
}

/// Where a convolution's windows read and its results go, for one image.
#[derive(Debug)]
pub(crate) struct WindowPlan {
    /// Per output pixel: element offset of its window's first input value.
    pub in_pix: Vec<usize>,
    /// Per output pixel: element offset of its channel 0.
    pub out_pix: Vec<usize>,
    /// Per window position: element offset from the window's first value.
    pub offsets: Vec<usize>,
}

impl WindowPlan {
    /// The plan of a `kernel` window over `input` (whose border must cover the padding)
    /// writing `output`; an error names what does not fit.
    pub fn new(
        input: &ValueLayout,
        output: &ValueLayout,
        kernel: [usize; 2],
        win: &Window,
    ) -> std::result::Result<Self, String> {
        let [oh, ow] = win.out_hw;
        let [kh, kw] = kernel;
        let (bd, irow) = (input.border, input.w + 2 * input.border);
        if win.padding[0] > bd || win.padding[1] > bd {
            return Err(format!("padding {:?} exceeds the input border {bd}", win.padding));
        }
        if [output.h, output.w] != win.out_hw {
            return Err(format!("an output of {}x{} for {oh}x{ow} windows", output.h, output.w));
        }
        let mut in_pix = Vec::with_capacity(oh * ow);
        let mut out_pix = Vec::with_capacity(oh * ow);
        for oy in 0..oh {
            for ox in 0..ow {
                let y = oy * win.stride[0] + bd - win.padding[0];
                let x = ox * win.stride[1] + bd - win.padding[1];
                in_pix.push((y * irow + x) * input.cs);
                out_pix.push(output.at(oy, ox));
            }
        }
        let offsets = (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky * irow + kx) * input.cs)).collect();
        Ok(Self { in_pix, out_pix, offsets })
    }

    /// One past the farthest element a window reads, `read` channels from its start.
    pub fn far_in(&self, read: usize) -> usize {
        self.in_pix.iter().max().copied().unwrap_or(0) + self.offsets.last().copied().unwrap_or(0) + read
    }

    /// One past the farthest element written, `channels` from a pixel's start.
    pub fn far_out(&self, channels: usize) -> usize {
        self.out_pix.iter().max().copied().unwrap_or(0) + channels
    }
}

/// An int8 layer's per-output-channel requantization: the real output is `mult *
/// sum(code * weight code) + offset` (the input zero point folded into `offset` through
/// the weight row sums); `out` is the output encoding (`None`: f32 logits).
pub(crate) fn requantization(b: &CpuBuild<'_>, bias: &[f32], scale: &[f32], sum: &[i32]) -> Result<Requant> {
    let qi = b.input_quant(0)?;
    let mult: Vec<f32> = scale.iter().map(|s| s * qi.scale).collect();
    let offset = bias
        .iter()
        .zip(sum)
        .zip(&mult)
        .map(|((bias, &s), m)| bias - m * (f32::from(qi.zero_point) * s as f32))
        .collect();
    Ok(Requant { mult, offset, out: b.out_quant.map(|q| (1.0 / q.scale, f32::from(q.zero_point))) })
}

/// A per-output-channel epilogue `mult * sum + offset`, stored as f32 or, where `out` is
/// `Some((1 / scale, zero point))`, as u8 codes.
#[derive(Debug)]
pub(crate) struct Requant {
    pub mult: Vec<f32>,
    pub offset: Vec<f32>,
    pub out: Option<(f32, f32)>,
}

#[derive(Debug)]
enum Epilogue {
    /// f32: per (group, panel) biases.
    F32 { bias: Vec<[f32; PANEL]> },
    /// int8: per (group, panel) requantization; the output encoding (`None`: f32 logits).
    U8 { mult: Vec<[f32; PANEL]>, offset: Vec<[f32; PANEL]>, out: Option<(f32, f32)> },
}

/// A convolution ready to run.
#[derive(Debug)]
pub(crate) struct Conv {
    name: String,
    shape: LayerShape,
    act: Activation,
    input: ValueLayout,
    output: ValueLayout,
    /// Where each output pixel's window starts and its result goes.
    plan: WindowPlan,
    /// Element offset of each reduction step from a window's first value: per window
    /// position, its channels (f32) or quads of channels (int8).
    koffs: Vec<usize>,
    /// The packed weight's bytes in the file.
    weight: Range<usize>,
    /// Elements of one packed panel.
    panel_len: usize,
    epilogue: Epilogue,
    /// Units run tile by tile, each through every (group, panel), rather than (group,
    /// panel) by (group, panel) ([`TILE_MAJOR_MAX_WEIGHT_BYTES`]).
    tile_major: bool,
    kernels: &'static Kernels,
}

/// The largest packed weight whose convolution runs tile by tile ([`Conv`]), a quarter
/// of a 1 MiB L2, so that the panels stay there while the tiles go by. Threads then
/// split a layer mostly by pixels: split by panels, two threads writing different
/// channels of the same pixels share their cache lines, and at batch 1 (where each
/// panel has few tiles, so the threads work on neighbouring panels at once)
/// MobileNetV2's pointwise convolutions ran slower on 2 threads than on 1.
const TILE_MAJOR_MAX_WEIGHT_BYTES: usize = 256 * 1024;

/// Per-output-channel `values` in the packed panels' order (lanes past the layer's: 0).
fn per_panel(shape: &LayerShape, values: &[f32]) -> Vec<[f32; PANEL]> {
    let mut v = vec![[0f32; PANEL]; shape.groups * shape.panels()];
    for (o, &x) in values.iter().enumerate().take(shape.out) {
        let (panel, lane) = shape.slot(o);
        if let Some(lane) = v.get_mut(panel).and_then(|p| p.get_mut(lane)) {
            *lane = x;
        }
    }
    v
}

impl Conv {
    /// Builds node `b.node`'s convolution of shape `shape` over window `win`.
    pub fn new(b: &CpuBuild<'_>, shape: LayerShape, win: Window, act: Activation) -> Result<Self> {
        let name = b.node.name.clone();
        let bad = |what: String| Error::Internal(format!("{name}: {what}"));
        let (input, output) = (b.input(0)?, b.output);
        let layer = StoredLayer::read(b.artifact, &name, shape)?;
        let t = b.artifact.tensors.get(&names::weight(&name)).ok_or_else(|| bad("no weight".into()))?;
        let weight = t.offset..t.offset + t.len;
        let plan = WindowPlan::new(&input, &output, shape.kernel, &win).map_err(bad)?;
        let int8 = input.elem == Elem::U8;
        let cg = shape.cin_g();
        let (steps, width) = if int8 { (shape.quads(), QUAD) } else { (cg, 1) };
        let koffs: Vec<usize> = plan.offsets.iter().flat_map(|&o| (0..steps).map(move |j| o + j * width)).collect();
        // Every address a tile touches, checked once: the farthest window read and the
        // farthest result written stay inside one image.
        let read = if int8 { shape.int8_channels_read() } else { shape.groups * cg };
        let far_in = plan.far_in(read);
        if far_in > input.image_len() {
            return Err(bad(format!("window reads {far_in} of {} elements", input.image_len())));
        }
        let far_out = plan.far_out(shape.out);
        if far_out > output.image_len() {
            return Err(bad(format!("writes {far_out} of {} elements", output.image_len())));
        }
        let panel_len = if int8 { shape.i8_panel_len() } else { shape.f32_panel_len() };
        let packed_len = shape.groups * shape.panels() * panel_len;
        if weight.len() != packed_len * if int8 { 1 } else { 4 } {
            return Err(bad(format!("packed weight of {} bytes", weight.len())));
        }
        let epilogue = match layer.quant {
            None => Epilogue::F32 { bias: per_panel(&shape, layer.bias) },
            Some((scale, sum)) => {
                let r = requantization(b, layer.bias, scale, sum)?;
                Epilogue::U8 { mult: per_panel(&shape, &r.mult), offset: per_panel(&shape, &r.offset), out: r.out }
            }
        };
        let tile_major = shape.groups * shape.panels() > 1 && weight.len() <= TILE_MAJOR_MAX_WEIGHT_BYTES;
        Ok(Self {
            name,
            shape,
            act,
            input,
            output,
            plan,
            koffs,
            weight,
            panel_len,
            epilogue,
            tile_major,
            kernels: b.kernels,
        })
    }

    fn tiles(&self, images: usize) -> usize {
        (images * self.plan.in_pix.len()).div_ceil(MR)
    }

    /// Image-relative input and output offsets of a tile's pixels and how many are
    /// valid (the rest repeat the last valid pixel), from the tile's first pixel as
    /// `(image, pixel)`: the pixels run on across images, with no division per pixel.
    fn tile_pixels(&self, first: (usize, usize), images: usize) -> ([usize; MR], [usize; MR], usize) {
        let plane = self.plan.in_pix.len();
        let (mut n, mut p) = first;
        let (mut ins, mut outs) = ([0usize; MR], [0usize; MR]);
        let mut valid = 0;
        let (mut last_in, mut last_out) = (0, 0);
        for (i, o) in ins.iter_mut().zip(outs.iter_mut()) {
            if n < images {
                valid += 1;
                last_in = n * self.input.image_len() + self.plan.in_pix.get(p).copied().unwrap_or(0);
                last_out = n * self.output.image_len() + self.plan.out_pix.get(p).copied().unwrap_or(0);
                p += 1;
                if p == plane {
                    (n, p) = (n + 1, 0);
                }
            }
            // Past the last pixel: repeat the last valid one (computed, not stored).
            (*i, *o) = (last_in, last_out);
        }
        (ins, outs, valid.max(1))
    }

    /// Checks the chunk's buffers against the plan; returns the layer's packed weights.
    fn check_io<'a>(&self, io: &Io<'a>) -> Result<&'a [u8]> {
        let bad = |what: &str| Error::Internal(format!("{}: {what}", self.name));
        if io.input_layout(0)? != self.input || io.output_layout() != self.output {
            return Err(bad("the chunk's layouts differ from the planned ones"));
        }
        if io.output_ptr().1 < io.images * self.output.image_bytes() {
            return Err(bad("output buffer too small"));
        }
        let input_len = match self.input.elem {
            Elem::F32 => io.input_f32(0)?.len(),
            Elem::U8 => io.input_u8(0)?.len(),
        };
        if input_len < io.images * self.input.image_len() {
            return Err(bad("input buffer too small"));
        }
        io.file.get(self.weight.clone()).ok_or_else(|| bad("weights outside the file"))
    }
}

impl CpuOp for Conv {
    fn units(&self, images: usize) -> usize {
        self.shape.groups * self.shape.panels() * self.tiles(images)
    }

    fn run(&self, io: &Io<'_>, units: Range<usize>) -> Result<()> {
        let weights = self.check_io(io)?;
        if units.end > self.units(io.images) {
            return Err(Error::Internal(format!("{}: units {units:?} of {}", self.name, self.units(io.images))));
        }
        let tiles = self.tiles(io.images).max(1);
        let gps = (self.shape.groups * self.shape.panels()).max(1);
        let plane = self.plan.in_pix.len().max(1);
        let start = |tile: usize| ((tile * MR) / plane, (tile * MR) % plane);
        let mut u = units.start;
        while u < units.end {
            if self.tile_major {
                // One tile through every (group, panel): threads share out pixels (a
                // tile's panels go to two threads only where a claimed range ends in it).
                let tile = u / gps;
                let last = units.end.min((tile + 1) * gps);
                let pixels = self.tile_pixels(start(tile), io.images);
                for unit in u..last {
                    self.run_tile(io, weights, unit % gps, pixels)?;
                }
                u = last;
            } else {
                // One (group, panel) at a time: its weights stay in cache across its tiles.
                let gp = u / tiles;
                let last = units.end.min((gp + 1) * tiles);
                let mut at = start(u % tiles);
                for _ in u..last {
                    self.run_tile(io, weights, gp, self.tile_pixels(at, io.images))?;
                    at = advance(at, plane);
                }
                u = last;
            }
        }
        Ok(())
    }
}

impl Conv {
    /// Runs (group, panel) `gp` of one tile whose pixels are `(ins, outs, valid)`
    /// ([`Conv::tile_pixels`]).
    fn run_tile(
        &self,
        io: &Io<'_>,
        weights: &[u8],
        gp: usize,
        (ins, outs, valid): ([usize; MR], [usize; MR], usize),
    ) -> Result<()> {
        let panels = self.shape.panels().max(1);
        let (g, panel) = (gp / panels, gp % panels);
        let (cg, og) = (self.shape.cin_g(), self.shape.out_g());
        let lanes = PANEL.min(og - panel * PANEL);
        let (channel0, out0) = (g * cg, g * og + panel * PANEL);
        let (out_ptr, _) = io.output_ptr();
        let no_panel = || Error::Internal(format!("{}: a weight panel outside the layer", self.name));
        let zero = [0f32; PANEL];
        match &self.epilogue {
            Epilogue::F32 { bias } => {
                let x = io.input_f32(0)?;
                let w: &[f32] = bytemuck::try_cast_slice(weights).map_err(|_| Error::Internal("weights".into()))?;
                let w = w.get(gp * self.panel_len..(gp + 1) * self.panel_len).ok_or_else(no_panel)?;
                let tile = ConvTileF32 {
                    input: ins.map(|i| x.as_ptr().wrapping_add(i + channel0)),
                    koffs: &self.koffs,
                    weights: w.as_ptr(),
                    bias: bias.get(gp).unwrap_or(&zero),
                    act: self.act,
                    output: outs.map(|o| out_ptr.cast::<f32>().wrapping_add(o + out0)),
                    pixels: valid,
                    lanes,
                };
                for _ in 0..crate::kernels::REPEAT {
                    // SAFETY: `Conv::new` checked that every window of every pixel of an
                    // image, at this group's channels, lies inside an input image and
                    // every result inside an output image; `check_io` that the chunk's
                    // buffers hold `images` images and the panel lies in the file. The
                    // units of concurrent threads write disjoint (pixel, channel) sets.
                    unsafe { (self.kernels.conv_f32)(&tile) };
                }
            }
            Epilogue::U8 { mult, offset, out } => {
                let x = io.input_u8(0)?;
                let w: &[i8] = bytemuck::cast_slice(weights);
                let w = w.get(gp * self.panel_len..(gp + 1) * self.panel_len).ok_or_else(no_panel)?;
                let store = match out {
                    Some((inv_scale, zero_point)) => StoreU8::Codes {
                        output: outs.map(|o| out_ptr.wrapping_add(o + out0)),
                        inv_scale: *inv_scale,
                        zero_point: *zero_point,
                    },
                    None => StoreU8::Real { output: outs.map(|o| out_ptr.cast::<f32>().wrapping_add(o + out0)) },
                };
                let tile = ConvTileU8 {
                    input: ins.map(|i| x.as_ptr().wrapping_add(i + channel0)),
                    koffs: &self.koffs,
                    weights: w.as_ptr(),
                    mult: mult.get(gp).unwrap_or(&zero),
                    offset: offset.get(gp).unwrap_or(&zero),
                    act: self.act,
                    store,
                    pixels: valid,
                    lanes,
                };
                for _ in 0..crate::kernels::REPEAT {
                    // SAFETY: as for f32 above, with 4 * quads bytes per window position
                    // from the group's first channel (checked in `Conv::new`).
                    unsafe { (self.kernels.conv_u8)(&tile) };
                }
            }
        }
        Ok(())
    }
}

/// `(image, pixel)` moved on by one tile of [`MR`] pixels.
fn advance((n, p): (usize, usize), plane: usize) -> (usize, usize) {
    let p = p + MR;
    (n + p / plane, p % plane)
}
