//! `avg_pool`: the mean of each window, padded cells counting as 0 (PyTorch's
//! `count_include_pad`), then the fused activation; int8 requantizes each mean.

use serde::{Deserialize, Serialize};

use super::{pool_reference, pool_shape, rows, OpSpec};
use crate::artifact::layers::FloatLayer;
use crate::artifact::validate::Shape;
use crate::artifact::{Activation, QuantParams};
use crate::backend::cpu::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::kernels::act::activate;
use crate::Result;

/// Average pooling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvgPool {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[ph, pw]` (padded cells count as 0).
    #[serde(default)]
    pub padding: [usize; 2],
    /// Fused activation, applied after pooling.
    #[serde(default)]
    pub act: Activation,
}

impl OpSpec for AvgPool {
    fn output_shape(&self, node: &str, inputs: &[Shape]) -> Result<Shape> {
        pool_shape(node, inputs, self.kernel, self.stride, self.padding)
    }

    fn act(&self) -> Activation {
        self.act
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], _: Option<&FloatLayer>, out: Shape) -> Vec<f32> {
        pool_reference(inputs, out, self.kernel, self.stride, self.padding, self.act, false)
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        let quant = match b.out_quant {
            Some(o) => Some((b.input_quant(0)?, o)),
            None => None,
        };
        Ok(Box::new(Cpu { pool: self.clone(), input: b.input(0)?, output: b.output, quant }))
    }

    #[cfg(feature = "candle")]
    fn device(&self, _: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        let (k, s, p, act) = (self.kernel, self.stride, self.padding, self.act);
        Ok(crate::backend::device::func(move |args| {
            let x = crate::backend::device::pad_hw(crate::backend::device::arg(args, 0)?, p, 0.0)?;
            crate::backend::device::activate(x.avg_pool2d_with_stride((k[0], k[1]), (s[0], s[1]))?, act)
        }))
    }
}

#[derive(Debug)]
struct Cpu {
    pool: AvgPool,
    input: ValueLayout,
    output: ValueLayout,
    /// int8: input and output encodings.
    quant: Option<(QuantParams, QuantParams)>,
}

/// Channels summed at once (a stack buffer: a run allocates nothing).
const BLOCK: usize = 64;

impl Cpu {
    /// The sum over the window of output pixel (oy, ox) of image `n` of channels
    /// `c0..c0 + sum.len()`, each value through `real`; returns the window's area.
    #[allow(clippy::too_many_arguments)]
    fn window_sum<T: Copy>(
        &self,
        x: &[T],
        n: usize,
        oy: usize,
        ox: usize,
        c0: usize,
        real: impl Fn(T) -> f32,
        sum: &mut [f32],
    ) -> Result<f32> {
        let (p, l) = (&self.pool, &self.input);
        sum.iter_mut().for_each(|s| *s = 0.0);
        for ky in 0..p.kernel[0] {
            let Some(iy) = (oy * p.stride[0] + ky).checked_sub(p.padding[0]).filter(|&y| y < l.h) else { continue };
            for kx in 0..p.kernel[1] {
                let Some(ix) = (ox * p.stride[1] + kx).checked_sub(p.padding[1]).filter(|&x| x < l.w) else {
                    continue;
                };
                let src = rows::px(x, l.pixel(n, iy, ix) + c0, sum.len())?;
                sum.iter_mut().zip(src).for_each(|(s, &v)| *s += real(v));
            }
        }
        Ok((p.kernel[0] * p.kernel[1]) as f32)
    }
}

impl CpuOp for Cpu {
    fn units(&self, images: usize) -> usize {
        rows::units(&self.output, images)
    }

    fn run(&self, io: &Io<'_>, units: std::ops::Range<usize>) -> Result<()> {
        let cs = self.output.cs;
        let mut buf = [0f32; BLOCK];
        let act = self.pool.act;
        for u in units {
            let (n, oy) = rows::unit(&self.output, u);
            match (self.output.elem, self.quant) {
                (Elem::U8, Some((qi, qo))) => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let (x, row) = (io.input_u8(0)?, unsafe { rows::out_u8(io, n, oy)? });
                    for (ox, out) in row.chunks_exact_mut(cs.max(1)).enumerate() {
                        for (b, part) in out.chunks_mut(BLOCK).enumerate() {
                            let sum = buf.get_mut(..part.len()).unwrap_or(&mut []);
                            let area = self.window_sum(x, n, oy, ox, b * BLOCK, |v| qi.dequantize(v), sum)?;
                            part.iter_mut()
                                .zip(sum.iter())
                                .for_each(|(o, s)| *o = qo.quantize(activate(act, s / area)));
                        }
                    }
                }
                _ => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let (x, row) = (io.input_f32(0)?, unsafe { rows::out_f32(io, n, oy)? });
                    for (ox, out) in row.chunks_exact_mut(cs.max(1)).enumerate() {
                        let area = self.window_sum(x, n, oy, ox, 0, |v| v, out)?;
                        out.iter_mut().for_each(|o| *o = activate(act, *o / area));
                    }
                }
            }
        }
        Ok(())
    }
}
