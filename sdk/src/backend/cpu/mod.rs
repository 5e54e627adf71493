//! The CPU backend: the graph resolved once per model into one [`CpuOp`] per node (each
//! op module builds its own, [`crate::ops`]), a buffer [`plan::Plan`] per session, the
//! loop that runs a chunk of images ([`exec`]) and the thread pool ([`threads`]).
//!
//! Values are stored NHWC per image, `[image][y][x][channel]`, with a border of padding
//! around each plane where a consumer convolution pads its input (the producer fills
//! the border with the encoding of 0.0 when it runs), so convolution kernels never test
//! for the image edge. int8 values keep their channel count rounded up to a multiple
//! of four (the kernels read channels four at a time; the extra channels meet zero
//! weights).

pub(crate) mod conv;
pub(crate) mod depthwise;
pub(crate) mod exec;
pub(crate) mod plan;
pub(crate) mod runner;
pub(crate) mod threads;

use std::ops::Range;

use crate::artifact::layers::QUAD;
use crate::artifact::{Artifact, Node, Precision, QuantParams};
use crate::kernels::Kernels;
use crate::{Error, Result};

/// Element type of a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    U8,
}

/// How one image of a value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ValueLayout {
    pub h: usize,
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Channels as stored (u8: rounded up to a multiple of 4, and at least what every
    /// consumer layer reads, [`LayerShape::int8_channels_read`]).
    pub cs: usize,
    /// Padding pixels around the plane.
    pub border: usize,
    pub elem: Elem,
    /// u8 values: the code of 0.0 (what the border holds).
    pub zero_code: u8,
}

impl ValueLayout {
    /// Elements of one stored row, border included.
    pub fn row_len(&self) -> usize {
        (self.w + 2 * self.border) * self.cs
    }
    /// Elements of one image.
    pub fn image_len(&self) -> usize {
        (self.h + 2 * self.border) * self.row_len()
    }
    /// Bytes of one image.
    pub fn image_bytes(&self) -> usize {
        self.image_len() * if self.elem == Elem::F32 { 4 } else { 1 }
    }
    /// Element offset of interior pixel (y, x) in an image.
    pub fn at(&self, y: usize, x: usize) -> usize {
        ((y + self.border) * (self.w + 2 * self.border) + x + self.border) * self.cs
    }
    /// Element offset of interior pixel (y, x) of image `n` of a chunk.
    pub fn pixel(&self, n: usize, y: usize, x: usize) -> usize {
        n * self.image_len() + self.at(y, x)
    }
    /// The elements of interior row `y` of image `n` of a chunk (`w * cs`, no border).
    pub fn row(&self, n: usize, y: usize) -> std::ops::Range<usize> {
        let start = self.pixel(n, y, 0);
        start..start + self.w * self.cs
    }
}

/// A value of the chunk being run: its bytes in the arena.
#[derive(Debug, Clone, Copy)]
struct ValueRef {
    ptr: *mut u8,
    bytes: usize,
    layout: ValueLayout,
}

/// What an op sees when it runs over a chunk of images.
#[derive(Debug)]
pub(crate) struct Io<'a> {
    /// Images in the chunk.
    pub images: usize,
    /// The model file's bytes (packed weights are read in place).
    pub file: &'a [u8],
    inputs: [Option<ValueRef>; 2],
    output: ValueRef,
}

// SAFETY: an `Io` points into the session's arena, which the session keeps borrowed
// mutably for the whole run. Ops read their inputs, which no op of the same step
// writes (the plan never overlaps a node's output with its live inputs), and every op
// splits its output into units that write disjoint elements, so the threads of one
// step never race.
unsafe impl Sync for Io<'_> {}

impl<'a> Io<'a> {
    fn value(&self, k: usize) -> Result<ValueRef> {
        self.inputs.get(k).copied().flatten().ok_or_else(|| Error::Internal(format!("op input {k} is missing")))
    }

    /// The layout of input `k`.
    pub fn input_layout(&self, k: usize) -> Result<ValueLayout> {
        Ok(self.value(k)?.layout)
    }

    /// The layout of the output.
    pub fn output_layout(&self) -> ValueLayout {
        self.output.layout
    }

    /// Input `k` as f32, every image of the chunk.
    pub fn input_f32(&self, k: usize) -> Result<&[f32]> {
        let v = self.value(k)?;
        if v.layout.elem != Elem::F32 || v.ptr.align_offset(4) != 0 {
            return Err(Error::Internal(format!("op input {k} is not an f32 value")));
        }
        // SAFETY: the arena range [ptr, ptr + bytes) is initialized, aligned for f32 (the
        // arena is u64 words and value offsets are multiples of 64 bytes from its start;
        // checked above), not written during this step (see the `Sync` impl), and
        // borrowed for the run.
        Ok(unsafe { std::slice::from_raw_parts(v.ptr.cast::<f32>(), v.bytes / 4) })
    }

    /// Input `k` as u8 codes.
    pub fn input_u8(&self, k: usize) -> Result<&[u8]> {
        let v = self.value(k)?;
        if v.layout.elem != Elem::U8 {
            return Err(Error::Internal(format!("op input {k} is not a u8 value")));
        }
        // SAFETY: as in `input_f32`.
        Ok(unsafe { std::slice::from_raw_parts(v.ptr, v.bytes) })
    }

    /// The output's elements `range` as f32.
    ///
    /// # Safety
    /// Threads running the same step must ask for disjoint ranges and must not write
    /// what another thread reads through [`Io::output_ptr`].
    #[allow(clippy::mut_from_ref)] // disjoint parts of the arena, by the contract above
    pub unsafe fn output_f32(&self, range: Range<usize>) -> Result<&mut [f32]> {
        let o = self.output;
        if o.layout.elem != Elem::F32 || range.start > range.end || range.end > o.bytes / 4 {
            return Err(Error::Internal(format!("output range {range:?} outside the f32 value")));
        }
        // SAFETY: in bounds and aligned (checked above, arena alignment); exclusive by
        // the caller's contract.
        Ok(unsafe { std::slice::from_raw_parts_mut(o.ptr.cast::<f32>().add(range.start), range.len()) })
    }

    /// The output's elements `range` as u8.
    ///
    /// # Safety
    /// As for [`Io::output_f32`].
    #[allow(clippy::mut_from_ref)] // disjoint parts of the arena, by the contract above
    pub unsafe fn output_u8(&self, range: Range<usize>) -> Result<&mut [u8]> {
        let o = self.output;
        if o.layout.elem != Elem::U8 || range.start > range.end || range.end > o.bytes {
            return Err(Error::Internal(format!("output range {range:?} outside the u8 value")));
        }
        // SAFETY: as in `output_f32`.
        Ok(unsafe { std::slice::from_raw_parts_mut(o.ptr.add(range.start), range.len()) })
    }

    /// The output's first byte and its length in bytes, for kernels that write strided
    /// tiles (their callers check every address against this length).
    pub fn output_ptr(&self) -> (*mut u8, usize) {
        (self.output.ptr, self.output.bytes)
    }
}

/// One node's CPU implementation.
pub(crate) trait CpuOp: Send + Sync + std::fmt::Debug {
    /// Work units for a chunk of `images` images: the executor gives each thread a
    /// contiguous range of them. Units must write disjoint parts of the output.
    fn units(&self, images: usize) -> usize;
    /// Runs units `units` of the chunk.
    fn run(&self, io: &Io<'_>, units: Range<usize>) -> Result<()>;
}

/// What an op module gets to build its [`CpuOp`].
#[derive(Debug)]
pub(crate) struct CpuBuild<'a> {
    pub artifact: &'a Artifact,
    pub node: &'a Node,
    pub inputs: Vec<ValueLayout>,
    pub output: ValueLayout,
    /// int8 graphs: the encodings of the inputs (`None` for an f32 value) and the output
    /// (`None` for an f32 output: the logits of a final layer).
    pub in_quant: Vec<Option<QuantParams>>,
    pub out_quant: Option<QuantParams>,
    pub kernels: &'static Kernels,
}

impl CpuBuild<'_> {
    /// Input `k`'s layout.
    pub fn input(&self, k: usize) -> Result<ValueLayout> {
        self.inputs.get(k).copied().ok_or_else(|| Error::Internal(format!("{}: input {k} missing", self.node.name)))
    }
    /// Input `k`'s encoding (int8 graphs).
    pub fn input_quant(&self, k: usize) -> Result<QuantParams> {
        self.in_quant.get(k).copied().flatten().ok_or_else(|| Error::Graph {
            node: self.node.name.clone(),
            problem: format!("input {k} has no int8 encoding (an int8 op reads an f32 value)"),
        })
    }
}

/// A model resolved for the CPU.
#[derive(Debug)]
pub(crate) struct Program {
    /// Value layouts: 0 is the input, `i + 1` node `i`'s output.
    pub layouts: Vec<ValueLayout>,
    /// One op per node the output needs (`None` for the others).
    pub ops: Vec<Option<Box<dyn CpuOp>>>,
    /// Value indices each node reads.
    pub inputs: Vec<Vec<usize>>,
    /// The nodes the output needs, in order.
    pub order: Vec<usize>,
    /// The output node.
    pub output: usize,
}

impl Program {
    /// Resolves a validated artifact.
    pub fn build(a: &Artifact, kernels: &'static Kernels) -> Result<Self> {
        let g = &a.metadata.graph;
        let info = &a.info;
        let int8 = g.precision == Precision::Int8;
        let quant_of = |v: usize| if v == 0 { g.input_quant } else { g.nodes.get(v - 1).and_then(|n| n.quant) };
        // Borders: the largest padding any consumer convolution applies.
        let mut border = vec![0usize; g.nodes.len() + 1];
        for (node, ni) in g.nodes.iter().zip(&info.nodes) {
            let b = node.op.spec().input_border();
            for &v in &ni.inputs {
                if let Some(slot) = border.get_mut(v) {
                    *slot = (*slot).max(b);
                }
            }
        }
        // u8 channels stored: whole quads, and as many as any consumer layer reads.
        let mut int8_read = vec![0usize; g.nodes.len() + 1];
        for (node, ni) in g.nodes.iter().zip(&info.nodes) {
            let (Some(&v), Some(shape)) = (ni.inputs.first(), node.op.spec().layer(&ni.input_shapes)) else { continue };
            if let Some(slot) = int8_read.get_mut(v) {
                *slot = (*slot).max(shape.int8_channels_read());
            }
        }
        let layout = |v: usize, shape: [usize; 3]| -> ValueLayout {
            let q = quant_of(v);
            let elem = if int8 && q.is_some() { Elem::U8 } else { Elem::F32 };
            let [c, h, w] = shape;
            let read = int8_read.get(v).copied().unwrap_or(0);
            ValueLayout {
                h,
                w,
                c,
                cs: if elem == Elem::U8 { c.max(read).next_multiple_of(QUAD) } else { c },
                border: border.get(v).copied().unwrap_or(0),
                elem,
                zero_code: q.map_or(0, |q| q.zero_point),
            }
        };
        let mut layouts = vec![layout(0, g.input)];
        for (i, ni) in info.nodes.iter().enumerate() {
            layouts.push(layout(i + 1, ni.shape));
        }
        // The nodes the output depends on, found backwards.
        let mut needed = vec![false; g.nodes.len() + 1];
        if let Some(n) = needed.get_mut(info.output + 1) {
            *n = true;
        }
        for (i, ni) in info.nodes.iter().enumerate().rev() {
            if needed.get(i + 1).copied().unwrap_or(false) {
                for &v in &ni.inputs {
                    if let Some(n) = needed.get_mut(v) {
                        *n = true;
                    }
                }
            }
        }
        let order: Vec<usize> = (0..g.nodes.len()).filter(|i| needed.get(i + 1).copied().unwrap_or(false)).collect();
        let mut ops = Vec::with_capacity(g.nodes.len());
        for (i, (node, ni)) in g.nodes.iter().zip(&info.nodes).enumerate() {
            if !needed.get(i + 1).copied().unwrap_or(false) {
                ops.push(None); // the output does not depend on it: never built, never run
                continue;
            }
            let missing = || Error::Internal(format!("{}: a value has no layout", node.name));
            let b = CpuBuild {
                artifact: a,
                node,
                inputs: ni
                    .inputs
                    .iter()
                    .map(|&v| layouts.get(v).copied().ok_or_else(missing))
                    .collect::<Result<_>>()?,
                output: layouts.get(i + 1).copied().ok_or_else(missing)?,
                in_quant: if int8 { ni.inputs.iter().map(|&v| quant_of(v)).collect() } else { Vec::new() },
                out_quant: node.quant,
                kernels,
            };
            ops.push(Some(node.op.spec().cpu(&b)?));
        }
        let inputs = info.nodes.iter().map(|n| n.inputs.clone()).collect();
        Ok(Self { layouts, ops, inputs, order, output: info.output })
    }
}
