//! `add`: the elementwise sum of two values of the same shape (residual connections),
//! then the fused activation; int8 dequantizes both inputs and requantizes the sum.

use serde::{Deserialize, Serialize};

use super::{first, rows, OpSpec};
use crate::artifact::layers::FloatLayer;
use crate::artifact::validate::Shape;
use crate::artifact::{Activation, QuantParams};
use crate::backend::cpu::{CpuBuild, CpuOp, Elem, Io, ValueLayout};
use crate::kernels::act::activate;
use crate::kernels::{AddU8, Kernels};
use crate::{Error, Result};

/// Elementwise sum of two values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Add {
    /// Fused activation.
    #[serde(default)]
    pub act: Activation,
}

impl OpSpec for Add {
    fn arity(&self) -> usize {
        2
    }

    fn output_shape(&self, node: &str, inputs: &[Shape]) -> Result<Shape> {
        let (a, b) = (first(inputs), inputs.get(1).copied().unwrap_or([0; 3]));
        if a != b {
            return Err(Error::graph(node, format!("add of different shapes {a:?} and {b:?}")));
        }
        Ok(a)
    }

    fn act(&self) -> Activation {
        self.act
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], _: Option<&FloatLayer>, _: Shape) -> Vec<f32> {
        let (a, b) = (inputs.first().map(|i| i.0).unwrap_or(&[]), inputs.get(1).map(|i| i.0).unwrap_or(&[]));
        a.iter().zip(b).map(|(x, z)| activate(self.act, x + z)).collect()
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        let quant = match b.out_quant {
            Some(o) => Some((b.input_quant(0)?, b.input_quant(1)?, o)),
            None => None,
        };
        Ok(Box::new(Cpu {
            inputs: [b.input(0)?, b.input(1)?],
            output: b.output,
            act: self.act,
            quant,
            kernels: b.kernels,
        }))
    }

    #[cfg(feature = "candle")]
    fn device(&self, _: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        let act = self.act;
        Ok(crate::backend::device::func(move |args| {
            let (a, b) = (crate::backend::device::arg(args, 0)?, crate::backend::device::arg(args, 1)?);
            crate::backend::device::activate((a + b)?, act)
        }))
    }
}

#[derive(Debug)]
struct Cpu {
    inputs: [ValueLayout; 2],
    output: ValueLayout,
    act: Activation,
    quant: Option<(QuantParams, QuantParams, QuantParams)>,
    kernels: &'static Kernels,
}

impl CpuOp for Cpu {
    fn units(&self, images: usize) -> usize {
        rows::units(&self.output, images)
    }

    fn run(&self, io: &Io<'_>, units: std::ops::Range<usize>) -> Result<()> {
        let [la, lb] = &self.inputs;
        let len = self.output.w * self.output.cs;
        for u in units {
            let (n, y) = rows::unit(&self.output, u);
            let (ra, rb) = (la.pixel(n, y, 0), lb.pixel(n, y, 0));
            match (self.output.elem, self.quant) {
                (Elem::U8, Some((qa, qb, qo))) => {
                    let (a, b) = (io.input_u8(0)?, io.input_u8(1)?);
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let (a, b, out) =
                        (rows::px(a, ra, len)?, rows::px(b, rb, len)?, unsafe { rows::out_u8(io, n, y)? });
                    self.kernels.add_u8(&mut AddU8 { a, b, out, quant: [qa, qb, qo], act: self.act });
                }
                _ => {
                    let (a, b) = (io.input_f32(0)?, io.input_f32(1)?);
                    // SAFETY: this unit's own output row; units are rows, one thread each.
                    let (a, b, out) =
                        (rows::px(a, ra, len)?, rows::px(b, rb, len)?, unsafe { rows::out_f32(io, n, y)? });
                    for ((o, &x), &z) in out.iter_mut().zip(a).zip(b) {
                        *o = activate(self.act, x + z);
                    }
                }
            }
        }
        Ok(())
    }
}
