//! `global_avg_pool`: the mean of each channel's plane, `[c, h, w] -> [c, 1, 1]`, then
//! the fused activation; int8 requantizes each mean.

use serde::{Deserialize, Serialize};

use super::{first, rows, OpSpec};
use crate::artifact::layers::FloatLayer;
use crate::artifact::validate::Shape;
use crate::artifact::{Activation, QuantParams};
use crate::backend::cpu::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::kernels::act::activate;
use crate::Result;

/// Mean over each channel's plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalAvgPool {
    /// Fused activation.
    #[serde(default)]
    pub act: Activation,
}

impl OpSpec for GlobalAvgPool {
    fn output_shape(&self, _: &str, inputs: &[Shape]) -> Result<Shape> {
        Ok([first(inputs)[0], 1, 1])
    }

    fn act(&self) -> Activation {
        self.act
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], _: Option<&FloatLayer>, _: Shape) -> Vec<f32> {
        let (x, [c, h, w]) = inputs.first().copied().unwrap_or((&[], [0; 3]));
        x.chunks(h * w).take(c).map(|plane| activate(self.act, plane.iter().sum::<f32>() / (h * w) as f32)).collect()
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        let quant = match b.out_quant {
            Some(o) => Some((b.input_quant(0)?, o)),
            None => None,
        };
        Ok(Box::new(Cpu { input: b.input(0)?, output: b.output, act: self.act, quant }))
    }

    #[cfg(feature = "candle")]
    fn device(&self, _: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        let act = self.act;
        Ok(crate::backend::device::func(move |args| {
            let x = crate::backend::device::arg(args, 0)?;
            crate::backend::device::activate(x.mean_keepdim(3)?.mean_keepdim(2)?, act)
        }))
    }
}

#[derive(Debug)]
struct Cpu {
    input: ValueLayout,
    output: ValueLayout,
    act: Activation,
    quant: Option<(QuantParams, QuantParams)>,
}

/// Channels summed at once (a stack buffer: a run allocates nothing).
const BLOCK: usize = 64;

impl Cpu {
    /// Sums channels `c0..c0 + sum.len()` over image `n`'s plane, through `real`.
    fn plane_sum<T: Copy>(&self, x: &[T], n: usize, c0: usize, real: impl Fn(T) -> f32, sum: &mut [f32]) -> Result<()> {
        let l = &self.input;
        sum.iter_mut().for_each(|s| *s = 0.0);
        for y in 0..l.h {
            for xx in 0..l.w {
                let src = rows::px(x, rows::pixel(l, n, y, xx) + c0, sum.len())?;
                sum.iter_mut().zip(src).for_each(|(s, &v)| *s += real(v));
            }
        }
        Ok(())
    }
}

impl CpuOp for Cpu {
    fn units(&self, images: usize) -> usize {
        rows::units(&self.output, images)
    }

    fn run(&self, io: &Io<'_>, units: std::ops::Range<usize>) -> Result<()> {
        let area = (self.input.h * self.input.w) as f32;
        let mut buf = [0f32; BLOCK];
        for u in units {
            let (n, _) = rows::unit(&self.output, u);
            match (self.output.elem, self.quant) {
                (Elem::U8, Some((qi, qo))) => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let (x, out) = (io.input_u8(0)?, unsafe { rows::out_u8(io, n, 0)? });
                    for (b, part) in out.chunks_mut(BLOCK).enumerate() {
                        let sum = buf.get_mut(..part.len()).unwrap_or(&mut []);
                        self.plane_sum(x, n, b * BLOCK, |v| qi.dequantize(v), sum)?;
                        part.iter_mut()
                            .zip(sum.iter())
                            .for_each(|(o, s)| *o = qo.quantize(activate(self.act, s / area)));
                    }
                }
                _ => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let (x, out) = (io.input_f32(0)?, unsafe { rows::out_f32(io, n, 0)? });
                    self.plane_sum(x, n, 0, |v| v, out)?;
                    out.iter_mut().for_each(|o| *o = activate(self.act, *o / area));
                }
            }
        }
        Ok(())
    }
}
