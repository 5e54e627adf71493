//! `global_max_pool`: the max of each channel's plane, `[c, h, w] -> [c, 1, 1]`, then the
//! fused activation. It runs as a [`MaxPool`] whose window is the whole plane.

use serde::{Deserialize, Serialize};

use super::{first, MaxPool, OpSpec};
use crate::artifact::layers::FloatLayer;
use crate::artifact::validate::Shape;
use crate::artifact::Activation;
use crate::backend::cpu::{CpuBuild, CpuOp};
use crate::kernels::act::activate;
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
        // The max pool whose window is the whole plane.
        let i = b.input(0)?;
        MaxPool { kernel: [i.h, i.w], stride: [1, 1], padding: [0, 0], act: self.act }.cpu(b)
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
