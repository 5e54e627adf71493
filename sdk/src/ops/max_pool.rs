//! `max_pool`: the largest value of each window (padded cells are ignored), then the
//! fused activation. int8: the max of the codes is the code of the max (quantization is
//! monotonic), then one table lookup requantizes and applies the activation.

use serde::{Deserialize, Serialize};

use super::{pool_reference, pool_shape, rows, OpSpec};
use crate::artifact::layers::FloatLayer;
use crate::artifact::validate::Shape;
use crate::artifact::Activation;
use crate::backend::cpu::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::kernels::act::{requant_in_place, Requant};
use crate::kernels::Kernels;
use crate::Result;

/// Max pooling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPool {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[ph, pw]` (padded cells are ignored).
    #[serde(default)]
    pub padding: [usize; 2],
    /// Fused activation, applied after pooling.
    #[serde(default)]
    pub act: Activation,
}

impl OpSpec for MaxPool {
    fn output_shape(&self, node: &str, inputs: &[Shape]) -> Result<Shape> {
        pool_shape(node, inputs, self.kernel, self.stride, self.padding)
    }

    fn act(&self) -> Activation {
        self.act
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], _: Option<&FloatLayer>, out: Shape) -> Vec<f32> {
        pool_reference(inputs, out, self.kernel, self.stride, self.padding, self.act, true)
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        let lut = match b.out_quant {
            Some(o) => Requant::new(b.input_quant(0)?, 1.0, self.act, o),
            None => None,
        };
        Ok(Box::new(Cpu {
            window: WindowMax { kernel: self.kernel, stride: self.stride, padding: self.padding },
            input: b.input(0)?,
            output: b.output,
            act: self.act,
            lut,
            kernels: b.kernels,
        }))
    }

    #[cfg(feature = "candle")]
    fn device(&self, _: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        let (k, s, p, act) = (self.kernel, self.stride, self.padding, self.act);
        Ok(crate::backend::device::func(move |args| {
            let x = crate::backend::device::pad_hw(crate::backend::device::arg(args, 0)?, p, f32::NEG_INFINITY)?;
            crate::backend::device::activate(x.max_pool2d_with_stride((k[0], k[1]), (s[0], s[1]))?, act)
        }))
    }
}

/// A max-pooling window over NHWC planes.
#[derive(Debug, Clone, Copy)]
struct WindowMax {
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
}

impl WindowMax {
    /// Writes the channel-wise max of output row `oy` of image `n` into `row` (the
    /// output row's interior, `cs` values per pixel).
    fn row<T: Copy + PartialOrd>(&self, x: &[T], l: &ValueLayout, n: usize, oy: usize, row: &mut [T]) -> Result<()> {
        let cs = l.cs.max(1);
        // An unconditional store of the larger value: vectorizes to `pmaxub`/`maxps`
        // (a store only when larger does not).
        let max = |o: &mut [T], src: &[T]| o.iter_mut().zip(src).for_each(|(o, &v)| *o = if v > *o { v } else { *o });
        if self.padding == [0, 0] && self.kernel == self.stride {
            // Windows side by side: every window lies inside the plane.
            let [kh, kw] = self.kernel;
            for ky in 0..kh {
                let start = l.pixel(n, oy * kh + ky, 0);
                let r = rows::px(x, start, l.w * cs)?;
                for (ox, out) in row.chunks_exact_mut(cs).enumerate() {
                    for kx in 0..kw {
                        let src = rows::px(r, (ox * kw + kx) * cs, cs)?;
                        if ky == 0 && kx == 0 {
                            out.copy_from_slice(src);
                        } else {
                            max(out, src);
                        }
                    }
                }
            }
            return Ok(());
        }
        for (ox, out) in row.chunks_exact_mut(cs).enumerate() {
            let mut first = true;
            for ky in 0..self.kernel[0] {
                let Some(iy) = (oy * self.stride[0] + ky).checked_sub(self.padding[0]).filter(|&y| y < l.h) else {
                    continue;
                };
                for kx in 0..self.kernel[1] {
                    let Some(ix) = (ox * self.stride[1] + kx).checked_sub(self.padding[1]).filter(|&x| x < l.w) else {
                        continue;
                    };
                    let src = rows::px(x, l.pixel(n, iy, ix), cs)?;
                    if first {
                        out.copy_from_slice(src);
                        first = false;
                    } else {
                        max(out, src);
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Cpu {
    window: WindowMax,
    input: ValueLayout,
    output: ValueLayout,
    act: Activation,
    lut: Option<Requant>,
    kernels: &'static Kernels,
}

impl CpuOp for Cpu {
    fn units(&self, images: usize) -> usize {
        rows::units(&self.output, images)
    }

    fn run(&self, io: &Io<'_>, units: std::ops::Range<usize>) -> Result<()> {
        for u in units {
            let (n, oy) = rows::unit(&self.output, u);
            match self.output.elem {
                Elem::F32 => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let row = unsafe { rows::out_f32(io, n, oy)? };
                    self.window.row(io.input_f32(0)?, &self.input, n, oy, row)?;
                    self.kernels.activate(self.act, row);
                }
                Elem::U8 => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let row = unsafe { rows::out_u8(io, n, oy)? };
                    self.window.row(io.input_u8(0)?, &self.input, n, oy, row)?;
                    requant_in_place(self.lut.as_ref(), row);
                }
            }
        }
        Ok(())
    }
}
