//! `scale`: multiplication by a constant, then the fused activation (int8: one table
//! lookup per code).

use serde::{Deserialize, Serialize};

use super::{first, rows, OpSpec};
use crate::artifact::layers::FloatLayer;
use crate::artifact::validate::Shape;
use crate::artifact::Activation;
use crate::backend::cpu::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::kernels::act::{activate, Requant};
use crate::{Error, Result};

/// Multiplication by a constant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// The factor.
    pub factor: f32,
    /// Fused activation.
    #[serde(default)]
    pub act: Activation,
}

impl OpSpec for Scale {
    fn output_shape(&self, node: &str, inputs: &[Shape]) -> Result<Shape> {
        if !self.factor.is_finite() {
            return Err(Error::graph(node, format!("scale factor {} is not finite", self.factor)));
        }
        Ok(first(inputs))
    }

    fn act(&self) -> Activation {
        self.act
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], _: Option<&FloatLayer>, _: Shape) -> Vec<f32> {
        inputs.first().map(|i| i.0).unwrap_or(&[]).iter().map(|x| activate(self.act, self.factor * x)).collect()
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        let lut = match b.out_quant {
            Some(o) => Requant::new(b.input_quant(0)?, self.factor, self.act, o),
            None => None,
        };
        Ok(Box::new(Cpu { input: b.input(0)?, output: b.output, factor: self.factor, act: self.act, lut }))
    }

    #[cfg(feature = "candle")]
    fn device(&self, _: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        let (factor, act) = (f64::from(self.factor), self.act);
        Ok(crate::backend::device::func(move |args| {
            crate::backend::device::activate(crate::backend::device::arg(args, 0)?.affine(factor, 0.0)?, act)
        }))
    }
}

#[derive(Debug)]
struct Cpu {
    input: ValueLayout,
    output: ValueLayout,
    factor: f32,
    act: Activation,
    lut: Option<Requant>,
}

impl CpuOp for Cpu {
    fn units(&self, images: usize) -> usize {
        rows::units(&self.output, images)
    }

    fn run(&self, io: &Io<'_>, units: std::ops::Range<usize>) -> Result<()> {
        let len = self.output.w * self.output.cs;
        for u in units {
            let (n, y) = rows::unit(&self.output, u);
            let at = self.input.pixel(n, y, 0);
            match self.output.elem {
                Elem::U8 => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let (x, out) = (rows::px(io.input_u8(0)?, at, len)?, unsafe { rows::out_u8(io, n, y)? });
                    match &self.lut {
                        Some(lut) => out.iter_mut().zip(x).for_each(|(o, &v)| *o = lut.map(v)),
                        // The identity map (a factor of 1 between equal encodings).
                        None => out.iter_mut().zip(x).for_each(|(o, &v)| *o = v),
                    }
                }
                Elem::F32 => {
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let (x, out) = (rows::px(io.input_f32(0)?, at, len)?, unsafe { rows::out_f32(io, n, y)? });
                    out.iter_mut().zip(x).for_each(|(o, &v)| *o = activate(self.act, self.factor * v));
                }
            }
        }
        Ok(())
    }
}
