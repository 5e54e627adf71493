//! `flatten`: `[c, h, w] -> [c * h * w, 1, 1]`, in `(c, h, w)` order (PyTorch's), from
//! the channels-last storage.

use serde::{Deserialize, Serialize};

use super::{first, rows, OpSpec};
use crate::artifact::layers::FloatLayer;
use crate::artifact::validate::Shape;
use crate::artifact::Activation;
use crate::backend::cpu::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::kernels::act::{requant_in_place, Requant};
use crate::Result;

/// `[c, h, w] -> [c * h * w, 1, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flatten {}

impl OpSpec for Flatten {
    fn output_shape(&self, _: &str, inputs: &[Shape]) -> Result<Shape> {
        let [c, h, w] = first(inputs);
        Ok([c.checked_mul(h).and_then(|v| v.checked_mul(w)).unwrap_or(usize::MAX), 1, 1])
    }

    fn act(&self) -> Activation {
        Activation::None
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], _: Option<&FloatLayer>, _: Shape) -> Vec<f32> {
        inputs.first().map(|i| i.0.to_vec()).unwrap_or_default()
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        // int8: the codes move as they are unless the output has another encoding.
        let lut = match (b.in_quant.first().copied().flatten(), b.out_quant) {
            (Some(i), Some(o)) => Requant::new(i, 1.0, Activation::None, o),
            _ => None,
        };
        Ok(Box::new(Cpu { input: b.input(0)?, output: b.output, lut }))
    }

    #[cfg(feature = "candle")]
    fn device(&self, _: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        Ok(crate::backend::device::func(|args| {
            let x = crate::backend::device::arg(args, 0)?;
            let (n, c, h, w) = x.dims4()?;
            x.reshape((n, c * h * w, 1, 1))
        }))
    }
}

#[derive(Debug)]
struct Cpu {
    input: ValueLayout,
    output: ValueLayout,
    lut: Option<Requant>,
}

fn gather<T: Copy>(x: &[T], l: &ValueLayout, n: usize, out: &mut [T]) -> Result<()> {
    let plane = l.h * l.w;
    for y in 0..l.h {
        for xx in 0..l.w {
            let px = rows::px(x, l.pixel(n, y, xx), l.c)?;
            for (c, &v) in px.iter().enumerate() {
                if let Some(o) = out.get_mut(c * plane + y * l.w + xx) {
                    *o = v;
                }
            }
        }
    }
    Ok(())
}

impl CpuOp for Cpu {
    fn units(&self, images: usize) -> usize {
        rows::units(&self.output, images)
    }

    fn run(&self, io: &Io<'_>, units: std::ops::Range<usize>) -> Result<()> {
        for u in units {
            let (n, _) = rows::unit(&self.output, u);
            match self.output.elem {
                Elem::U8 => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let out = unsafe { rows::out_u8(io, n, 0)? };
                    gather(io.input_u8(0)?, &self.input, n, out)?;
                    requant_in_place(self.lut.as_ref(), out);
                }
                // SAFETY: this unit's own output row; units are rows, one thread each.
                Elem::F32 => gather(io.input_f32(0)?, &self.input, n, unsafe { rows::out_f32(io, n, 0)? })?,
            }
        }
        Ok(())
    }
}
