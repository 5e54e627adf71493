//! `conv2d`: a 2-D convolution with a fused activation. Tensors: the layer's packed
//! weight, bias and (int8) scales and sums ([`crate::artifact::layers`]).

use serde::{Deserialize, Serialize};

use super::{first, window, OpSpec};
use crate::artifact::layers::{FloatLayer, LayerShape};
use crate::artifact::validate::{Shape, MAX_REDUCTION};
use crate::artifact::Activation;
use crate::backend::cpu::conv::{Conv, Window};
use crate::backend::cpu::{CpuBuild, CpuOp};
use crate::kernels::act::activate;
use crate::{Error, Result};

/// A 2-D convolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2d {
    /// Output channels.
    pub out_channels: usize,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zero padding `[ph, pw]` on each side.
    pub padding: [usize; 2],
    /// Channel groups (1 = dense; `in_channels` = depthwise).
    pub groups: usize,
    /// Fused activation.
    #[serde(default)]
    pub act: Activation,
}

impl OpSpec for Conv2d {
    fn output_shape(&self, node: &str, inputs: &[Shape]) -> Result<Shape> {
        let [c, h, w] = first(inputs);
        if self.groups == 0 || !c.is_multiple_of(self.groups) || !self.out_channels.is_multiple_of(self.groups.max(1)) {
            return Err(Error::graph(
                node,
                format!(
                    "groups {} must divide the input channels {c} and the output channels {}",
                    self.groups, self.out_channels
                ),
            ));
        }
        let [kh, kw] = self.kernel;
        let k = (c / self.groups).checked_mul(kh).and_then(|v| v.checked_mul(kw));
        if k.is_none_or(|k| k > MAX_REDUCTION) {
            return Err(Error::graph(node, format!("kernel {kh}x{kw} over {c} channels is too large")));
        }
        let oh = window(node, h, kh, self.stride[0], self.padding[0])?;
        let ow = window(node, w, kw, self.stride[1], self.padding[1])?;
        Ok([self.out_channels, oh, ow])
    }

    fn layer(&self, inputs: &[Shape]) -> Option<LayerShape> {
        Some(LayerShape { out: self.out_channels, cin: first(inputs)[0], kernel: self.kernel, groups: self.groups })
    }

    fn input_border(&self) -> usize {
        self.padding[0].max(self.padding[1])
    }

    fn act(&self) -> Activation {
        self.act
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], layer: Option<&FloatLayer>, out: Shape) -> Vec<f32> {
        let (x, s) = inputs.first().copied().unwrap_or((&[], [0; 3]));
        let [oc, oh, ow] = out;
        let (Some(l), [kh, kw]) = (layer, self.kernel) else { return vec![f32::NAN; oc * oh * ow] };
        let (cg, og) = (l.shape.cin_g(), l.shape.out_g().max(1));
        let mut y = Vec::with_capacity(oc * oh * ow);
        for o in 0..oc {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = l.bias.get(o).copied().unwrap_or(0.0);
                    for c in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * self.stride[0] + ky) as isize - self.padding[0] as isize;
                                let ix = (ox * self.stride[1] + kx) as isize - self.padding[1] as isize;
                                let v = super::nchw(x, s, o / og * cg + c, iy, ix).unwrap_or(0.0);
                                acc += l.weight.get(((o * cg + c) * kh + ky) * kw + kx).copied().unwrap_or(0.0) * v;
                            }
                        }
                    }
                    y.push(activate(self.act, acc));
                }
            }
        }
        y
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        let shape = self.layer(&[[b.input(0)?.c, 0, 0]]).ok_or_else(|| Error::Internal("conv2d layer".into()))?;
        let out = b.output;
        let win = Window { stride: self.stride, padding: self.padding, out_hw: [out.h, out.w] };
        if shape.is_depthwise() {
            return Ok(Box::new(crate::backend::cpu::depthwise::Depthwise::new(b, shape, win, self.act)?));
        }
        Ok(Box::new(Conv::new(b, shape, win, self.act)?))
    }

    #[cfg(feature = "candle")]
    fn device(&self, b: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        crate::backend::device::conv(
            b,
            self.layer(&b.inputs).ok_or_else(|| Error::Internal("conv2d layer".into()))?,
            self.stride,
            self.padding,
            self.act,
        )
    }
}
