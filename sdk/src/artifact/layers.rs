//! The tensors of weighted layers (convolutions and linear layers): their names, their
//! packed layout in the file, int8 quantization of their rows, and the way back to the
//! plain layout. The one owner of these facts: the trainer writes layers, the tests
//! build them, the ONNX exporter and the device backend read them back, and the CPU
//! backend reads the packed bytes in place, all through this module.
//!
//! # Layout
//!
//! A layer's *logical* weight is `[out][in / groups][kh][kw]` (PyTorch's OIHW). In the
//! file it is stored packed for the CPU kernels, which keep 16 output channels of a
//! group in the lanes of their registers and walk the reduction in `(ky, kx, channel)`
//! order (channels innermost, as activations are stored, NHWC):
//!
//! - f32: `[groups][panels][kh * kw * cin_g][16]`;
//! - int8: `[groups][panels][kh * kw][quads][16][4]`, where `quads = ceil(cin_g / 4)`:
//!   each lane holds four consecutive input channels, the operand of one `vpmaddubsw`
//!   or `vpdpbusd` step;
//!
//! with `panels = ceil(out_g / 16)` and `cin_g = in / groups`, `out_g = out / groups`;
//! the lanes and channels past the layer's are zero.
//!
//! int8 weights are symmetric per output channel. Layers that run on the tile kernels
//! use 7 bits (`-64..=64`), so that the AVX2 kernel's `vpmaddubsw` (u8 activation x i8
//! weight, pairs summed in i16) can never saturate: `255 * 64 * 2 < 2^15`. Depthwise
//! layers ([`LayerShape::is_depthwise`]) run on their own op, which sums exactly in f32,
//! and use 8 bits (`-127..=127`, format version 3): a filter of 9 weights loses the
//! most to a coarse grid.

use super::{Artifact, DType, TensorData};
use crate::{Error, Result};

/// Output channels per packed panel (the kernels' register width).
pub const PANEL: usize = 16;
/// Input channels per int8 lane (one 32-bit group of bytes).
pub const QUAD: usize = 4;
/// The largest magnitude of a stored int8 weight of a layer on the tile kernels.
pub const WEIGHT_MAX: i8 = 64;
/// The largest magnitude of a stored int8 weight of a depthwise layer.
pub const DEPTHWISE_WEIGHT_MAX: i8 = 127;
/// Bits of the tile kernels' int8 weights (recorded in the graph as `weight_bits`; the
/// depthwise layers' 8 bits follow from their shapes).
pub const WEIGHT_BITS: u8 = 7;
/// The largest window of a depthwise layer: exact f32 sums of u8 codes times 8-bit
/// weights over it, `512 * 255 * 127 < 2^24`. Larger windows are not depthwise layers
/// here (they run on the tile kernels, with 7-bit weights).
pub const MAX_DEPTHWISE_POSITIONS: usize = 512;

/// Tensor names of weighted node `node`: `<node>.weight`, ... (the only place they are
/// spelled).
pub mod names {
    /// The packed weight.
    pub fn weight(node: &str) -> String {
        format!("{node}.weight")
    }
    /// The f32 bias `[out]`.
    pub fn bias(node: &str) -> String {
        format!("{node}.bias")
    }
    /// int8: the f32 per-channel weight scale `[out]`.
    pub fn scale(node: &str) -> String {
        format!("{node}.weight_scale")
    }
    /// int8: the i32 per-channel sum of the weight codes `[out]` (for the input zero point).
    pub fn sum(node: &str) -> String {
        format!("{node}.weight_sum")
    }
    /// Every suffix a weighted node's tensors may have.
    pub const SUFFIXES: [&str; 4] = [".weight", ".bias", ".weight_scale", ".weight_sum"];
}

/// The shape of a weighted layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    /// Output channels.
    pub out: usize,
    /// Input channels.
    pub cin: usize,
    /// `[kh, kw]` (`[1, 1]` for linear layers).
    pub kernel: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

impl LayerShape {
    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.cin / self.groups.max(1)
    }
    /// Output channels per group.
    pub fn out_g(&self) -> usize {
        self.out / self.groups.max(1)
    }
    /// Kernel window positions `kh * kw`.
    pub fn positions(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
    /// One filter per channel (`groups == in == out channels`, more than one) over a
    /// window of at most [`MAX_DEPTHWISE_POSITIONS`]: runs on the CPU's depthwise op
    /// and stores 8-bit int8 weights.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1
            && self.groups == self.cin
            && self.out == self.cin
            && self.positions() <= MAX_DEPTHWISE_POSITIONS
    }
    /// The largest magnitude of this layer's int8 weight codes: [`DEPTHWISE_WEIGHT_MAX`]
    /// for depthwise layers, [`WEIGHT_MAX`] otherwise.
    pub fn weight_max(&self) -> i8 {
        if self.is_depthwise() {
            DEPTHWISE_WEIGHT_MAX
        } else {
            WEIGHT_MAX
        }
    }
    /// Reduction length of one output value, `cin_g * kh * kw`.
    pub fn k(&self) -> usize {
        self.cin_g() * self.positions()
    }
    /// Panels of [`PANEL`] output channels per group.
    pub fn panels(&self) -> usize {
        self.out_g().div_ceil(PANEL)
    }
    /// Channel quads per window position (int8).
    pub fn quads(&self) -> usize {
        self.cin_g().div_ceil(QUAD)
    }
    /// Channels an int8 kernel reads at each input pixel: whole quads from each group's
    /// first channel, so the last group of a layer whose groups are not a multiple of
    /// four channels wide reads past the value's channels (into lanes the zero packing
    /// padding of the weights cancels).
    pub fn int8_channels_read(&self) -> usize {
        (self.groups.max(1) - 1) * self.cin_g() + self.quads() * QUAD
    }
    /// Elements of the logical weight `[out][cin_g][kh][kw]`.
    pub fn logical_len(&self) -> usize {
        self.out * self.k()
    }
    /// Shape of the packed f32 weight.
    pub fn packed_f32_shape(&self) -> Vec<usize> {
        vec![self.groups, self.panels(), self.positions() * self.cin_g(), PANEL]
    }
    /// Shape of the packed int8 weight.
    pub fn packed_i8_shape(&self) -> Vec<usize> {
        vec![self.groups, self.panels(), self.positions(), self.quads(), PANEL, QUAD]
    }
    /// Elements of one packed f32 panel.
    pub fn f32_panel_len(&self) -> usize {
        self.positions() * self.cin_g() * PANEL
    }
    /// Elements of one packed int8 panel.
    pub fn i8_panel_len(&self) -> usize {
        self.positions() * self.quads() * PANEL * QUAD
    }

    /// Where output channel `o` lives in the packed layout: `(panel, lane)`, with panels
    /// counted across groups (`group * panels() + panel within the group`).
    pub fn slot(&self, o: usize) -> (usize, usize) {
        let out_g = self.out_g().max(1);
        let (g, og) = (o / out_g, o % out_g);
        (g * self.panels() + og / PANEL, og % PANEL)
    }

    /// Index in the packed f32 weight of logical element (o, c, ky, kx).
    fn f32_index(&self, o: usize, c: usize, ky: usize, kx: usize) -> usize {
        let (panel, lane) = self.slot(o);
        let pos = ky * self.kernel[1] + kx;
        ((panel * self.positions() * self.cin_g()) + pos * self.cin_g() + c) * PANEL + lane
    }

    /// Index in the packed int8 weight of logical element (o, c, ky, kx).
    fn i8_index(&self, o: usize, c: usize, ky: usize, kx: usize) -> usize {
        let (panel, lane) = self.slot(o);
        let pos = ky * self.kernel[1] + kx;
        let (q, r) = (c / QUAD, c % QUAD);
        (((panel * self.positions() + pos) * self.quads() + q) * PANEL + lane) * QUAD + r
    }

    /// Calls `f(logical index, packed f32 index)` for every logical element.
    fn each_f32(&self, mut f: impl FnMut(usize, usize)) {
        self.each(|i, o, c, ky, kx| f(i, self.f32_index(o, c, ky, kx)))
    }

    /// Calls `f(logical index, packed int8 index)` for every logical element.
    fn each_i8(&self, mut f: impl FnMut(usize, usize)) {
        self.each(|i, o, c, ky, kx| f(i, self.i8_index(o, c, ky, kx)))
    }

    fn each(&self, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        let [kh, kw] = self.kernel;
        let mut i = 0;
        for o in 0..self.out {
            for c in 0..self.cin_g() {
                for ky in 0..kh {
                    for kx in 0..kw {
                        f(i, o, c, ky, kx);
                        i += 1;
                    }
                }
            }
        }
    }
}

/// A layer in f32, logical layout.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatLayer {
    /// Its shape.
    pub shape: LayerShape,
    /// `[out][cin_g][kh][kw]`.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// A layer's weights quantized to int8, logical layout.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantLayer {
    /// Its shape.
    pub shape: LayerShape,
    /// Codes `[out][cin_g][kh][kw]` in `-m..=m`, `m = shape.weight_max()`.
    pub codes: Vec<i8>,
    /// Per output channel: real weight = `scale * code`.
    pub scale: Vec<f32>,
    /// Per output channel: the sum of its codes.
    pub sum: Vec<i32>,
    /// `[out]`, f32.
    pub bias: Vec<f32>,
}

impl FloatLayer {
    fn check(&self) -> Result<()> {
        if self.weight.len() != self.shape.logical_len() || self.bias.len() != self.shape.out {
            return Err(Error::Options(format!(
                "layer {:?}: weight of {} and bias of {} values",
                self.shape,
                self.weight.len(),
                self.bias.len()
            )));
        }
        Ok(())
    }

    /// Symmetric per-output-channel quantization: each row's largest magnitude maps to
    /// the shape's [`LayerShape::weight_max`]; an all-zero row gets scale 1.
    pub fn quantize(&self) -> QuantLayer {
        let k = self.shape.k().max(1);
        let mut codes = Vec::with_capacity(self.weight.len());
        let (mut scale, mut sum) = (Vec::new(), Vec::new());
        let m = f32::from(self.shape.weight_max());
        for row in self.weight.chunks(k) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 && max.is_finite() { max / m } else { 1.0 };
            let q: Vec<i8> = row.iter().map(|v| (v / s).round().clamp(-m, m) as i8).collect();
            sum.push(q.iter().map(|&v| i32::from(v)).sum());
            codes.extend(q);
            scale.push(s);
        }
        QuantLayer { shape: self.shape, codes, scale, sum, bias: self.bias.clone() }
    }

    /// Adds the layer's f32 tensors (packed weight, bias) for node `node`.
    pub fn write(&self, node: &str, w: &mut super::ArtifactWriter) -> Result<()> {
        self.check()?;
        let mut packed = vec![0f32; self.shape.packed_f32_shape().iter().product()];
        self.shape.each_f32(|i, p| {
            if let (Some(d), Some(&v)) = (packed.get_mut(p), self.weight.get(i)) {
                *d = v;
            }
        });
        w.insert(names::weight(node), TensorData::f32(&packed, &self.shape.packed_f32_shape()));
        w.insert(names::bias(node), TensorData::f32(&self.bias, &[self.shape.out]));
        Ok(())
    }
}

impl QuantLayer {
    /// The f32 layer these codes stand for (`scale * code`).
    pub fn dequantize(&self) -> FloatLayer {
        let k = self.shape.k().max(1);
        let weight = self
            .codes
            .chunks(k)
            .zip(&self.scale)
            .flat_map(|(row, &s)| row.iter().map(move |&q| s * f32::from(q)))
            .collect();
        FloatLayer { shape: self.shape, weight, bias: self.bias.clone() }
    }

    /// Adds the layer's int8 tensors (packed codes, bias, scale, row sums) for `node`.
    pub fn write(&self, node: &str, w: &mut super::ArtifactWriter) -> Result<()> {
        let mut packed = vec![0i8; self.shape.packed_i8_shape().iter().product()];
        self.shape.each_i8(|i, p| {
            if let (Some(d), Some(&v)) = (packed.get_mut(p), self.codes.get(i)) {
                *d = v;
            }
        });
        let out = [self.shape.out];
        w.insert(names::weight(node), TensorData::i8(&packed, &self.shape.packed_i8_shape()));
        w.insert(names::bias(node), TensorData::f32(&self.bias, &out));
        w.insert(names::scale(node), TensorData::f32(&self.scale, &out));
        w.insert(names::sum(node), TensorData::i32(&self.sum, &out));
        Ok(())
    }
}

/// A weighted layer as stored in an open file: the packed tensors, read in place.
#[derive(Debug, Clone, Copy)]
pub struct StoredLayer<'a> {
    /// Its shape.
    pub shape: LayerShape,
    /// The packed weight: f32 or i8.
    pub weight: Packed<'a>,
    /// `[out]`.
    pub bias: &'a [f32],
    /// int8: `[out]` scales and code sums.
    pub quant: Option<(&'a [f32], &'a [i32])>,
}

/// A packed weight in the file.
#[derive(Debug, Clone, Copy)]
pub enum Packed<'a> {
    /// f32 panels.
    F32(&'a [f32]),
    /// int8 panels.
    I8(&'a [i8]),
}

impl<'a> StoredLayer<'a> {
    /// Reads node `node`'s tensors from a validated file.
    pub fn read(a: &'a Artifact, node: &str, shape: LayerShape) -> Result<Self> {
        let bias = a.f32s(&names::bias(node))?;
        let w = names::weight(node);
        let (weight, quant) = match a.tensors.get(&w).map(|t| t.dtype) {
            Some(DType::I8) => {
                (Packed::I8(a.i8s(&w)?), Some((a.f32s(&names::scale(node))?, a.i32s(&names::sum(node))?)))
            }
            _ => (Packed::F32(a.f32s(&w)?), None),
        };
        Ok(Self { shape, weight, bias, quant })
    }

    /// The layer in f32, logical layout: int8 layers dequantized (`scale * code`).
    pub fn to_float(&self) -> Result<FloatLayer> {
        let bad = || Error::Internal(format!("layer {:?}: packed weight of the wrong size", self.shape));
        let mut weight = vec![0f32; self.shape.logical_len()];
        match self.weight {
            Packed::F32(p) => {
                let mut ok = true;
                self.shape.each_f32(|i, j| match (weight.get_mut(i), p.get(j)) {
                    (Some(d), Some(&v)) => *d = v,
                    _ => ok = false,
                });
                ok.then_some(()).ok_or_else(bad)?;
            }
            Packed::I8(p) => {
                let (scale, _) = self.quant.ok_or_else(bad)?;
                let k = self.shape.k().max(1);
                let mut ok = true;
                self.shape.each_i8(|i, j| match (weight.get_mut(i), p.get(j), scale.get(i / k)) {
                    (Some(d), Some(&q), Some(&s)) => *d = s * f32::from(q),
                    _ => ok = false,
                });
                ok.then_some(()).ok_or_else(bad)?;
            }
        }
        Ok(FloatLayer { shape: self.shape, weight, bias: self.bias.to_vec() })
    }

    /// Whether every packed slot outside the layer (lanes past its output channels,
    /// channels past its input channels) holds zero: the kernels read those slots.
    pub fn padding_is_zero(&self) -> bool {
        let len = match self.weight {
            Packed::F32(p) => p.len(),
            Packed::I8(p) => p.len(),
        };
        let mut used = vec![false; len];
        let mut mark = |_: usize, j: usize| {
            if let Some(u) = used.get_mut(j) {
                *u = true;
            }
        };
        match self.weight {
            Packed::F32(_) => self.shape.each_f32(&mut mark),
            Packed::I8(_) => self.shape.each_i8(&mut mark),
        }
        match self.weight {
            Packed::F32(p) => p.iter().zip(&used).all(|(&v, &u)| u || v == 0.0),
            Packed::I8(p) => p.iter().zip(&used).all(|(&v, &u)| u || v == 0),
        }
    }

    /// int8 layers: the codes in logical layout (for checks against the row sums).
    pub fn codes(&self) -> Option<Vec<i8>> {
        let Packed::I8(p) = self.weight else { return None };
        let mut codes = vec![0i8; self.shape.logical_len()];
        self.shape.each_i8(|i, j| {
            if let (Some(d), Some(&q)) = (codes.get_mut(i), p.get(j)) {
                *d = q;
            }
        });
        Some(codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(out: usize, cin: usize, k: usize, groups: usize) -> LayerShape {
        LayerShape { out, cin, kernel: [k, k], groups }
    }

    #[test]
    fn packing_is_a_bijection_onto_the_used_slots() {
        for s in [shape(24, 3, 2, 1), shape(10, 128, 1, 1), shape(8, 8, 3, 2), shape(33, 5, 3, 1)] {
            let mut seen = vec![0u8; s.packed_f32_shape().iter().product()];
            s.each_f32(|_, p| seen[p] += 1);
            assert_eq!(seen.iter().filter(|&&n| n == 1).count(), s.logical_len(), "{s:?}");
            assert!(seen.iter().all(|&n| n <= 1));
            let mut seen = vec![0u8; s.packed_i8_shape().iter().product()];
            s.each_i8(|_, p| seen[p] += 1);
            assert_eq!(seen.iter().filter(|&&n| n == 1).count(), s.logical_len(), "{s:?}");
            assert!(seen.iter().all(|&n| n <= 1));
        }
    }

    #[test]
    fn quantization_is_symmetric_per_row_and_handles_zero_rows() {
        let s = shape(3, 2, 1, 1);
        let l = FloatLayer { shape: s, weight: vec![0.5, -1.0, 0.0, 0.0, 2.0, 1.0], bias: vec![0.0; 3] };
        let q = l.quantize();
        assert_eq!(q.codes, vec![32, -64, 0, 0, 64, 32]);
        assert_eq!(q.scale, vec![1.0 / 64.0, 1.0, 2.0 / 64.0]);
        assert_eq!(q.sum, vec![-32, 0, 96]);
        assert_eq!(q.dequantize().weight, vec![0.5, -1.0, 0.0, 0.0, 2.0, 1.0]);
    }
}
