//! `global_max_pool`: the max of each channel's plane, `[c, h, w] -> [c, 1, 1]`, then the
//! fused activation (int8: a table lookup, as for [`super::max_pool`]).

use serde::{Deserialize, Serialize};

use super::max_pool::WindowMax;
use super::{first, rows, OpSpec};
use crate::artifact::layers::FloatLayer;
use crate::artifact::validate::Shape;
use crate::artifact::Activation;
use crate::backend::cpu::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::kernels::act::{activate, requant_in_place, Requant};
use crate::Result;

/// Max over each channel's plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalMaxPool {
    /// Fused activation.
    #[serde(default)]
    pub act: Activation,
}

impl OpSpec for GlobalMaxPool {
    fn output_shape(&self, _: &str, inputs: &[Shape]) -> Result<Shape> {
        Ok([first(inputs)[0], 1, 1])
    }

    fn act(&self) -> Activation {
        self.act
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], _: Option<&FloatLayer>, _: Shape) -> Vec<f32> {
        let (x, [c, h, w]) = inputs.first().copied().unwrap_or((&[], [0; 3]));
        x.chunks(h * w)
            .take(c)
            .map(|plane| activate(self.act, plane.iter().copied().fold(f32::NEG_INFINITY, f32::max)))
            .collect()
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        let input = b.input(0)?;
        let lut = match b.out_quant {
            Some(o) => Requant::new(b.input_quant(0)?, 1.0, self.act, o),
            None => None,
        };
        let window = WindowMax { kernel: [input.h, input.w], stride: [1, 1], padding: [0, 0] };
        Ok(Box::new(Cpu { window, input, output: b.output, act: self.act, lut }))
    }

    #[cfg(feature = "candle")]
    fn device(&self, _: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        let act = self.act;
        Ok(crate::backend::device::func(move |args| {
            let x = crate::backend::device::arg(args, 0)?;
            crate::backend::device::activate(x.max_keepdim(3)?.max_keepdim(2)?, act)
        }))
    }
}

#[derive(Debug)]
struct Cpu {
    window: WindowMax,
    input: ValueLayout,
    output: ValueLayout,
    act: Activation,
    lut: Option<Requant>,
}

impl CpuOp for Cpu {
    fn units(&self, images: usize) -> usize {
        rows::units(&self.output, images)
    }

    fn run(&self, io: &Io<'_>, units: std::ops::Range<usize>) -> Result<()> {
        for u in units {
            let (n, _) = rows::unit(&self.output, u);
            match self.output.elem {
                Elem::F32 => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let out = unsafe { rows::out_f32(io, n, 0)? };
                    self.window.row(io.input_f32(0)?, &self.input, n, 0, out)?;
                    out.iter_mut().for_each(|v| *v = activate(self.act, *v));
                }
                Elem::U8 => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let out = unsafe { rows::out_u8(io, n, 0)? };
                    self.window.row(io.input_u8(0)?, &self.input, n, 0, out)?;
                    requant_in_place(self.lut.as_ref(), out);
                }
            }
        }
        Ok(())
    }
}
