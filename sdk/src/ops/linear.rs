//! `linear`: a fully connected layer over a `[features, 1, 1]` input, run as a 1x1
//! convolution of a 1x1 plane. Tensors as for [`super::conv2d`] with a 1x1 kernel.

use serde::{Deserialize, Serialize};

use super::{first, OpSpec};
use crate::artifact::layers::{FloatLayer, LayerShape};
use crate::artifact::validate::{Shape, MAX_REDUCTION};
use crate::artifact::Activation;
use crate::backend::cpu::conv::{Conv, Window};
use crate::backend::cpu::{CpuBuild, CpuOp};
use crate::kernels::act::activate;
use crate::{Error, Result};

/// A fully connected layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    /// Output features.
    pub out_features: usize,
    /// Fused activation.
    #[serde(default)]
    pub act: Activation,
}

impl OpSpec for Linear {
    fn output_shape(&self, node: &str, inputs: &[Shape]) -> Result<Shape> {
        let [c, h, w] = first(inputs);
        if h != 1 || w != 1 {
            return Err(Error::graph(node, format!("linear needs a [features, 1, 1] input, got {:?}", [c, h, w])));
        }
        if c > MAX_REDUCTION {
            return Err(Error::graph(node, format!("{c} input features is too many")));
        }
        Ok([self.out_features, 1, 1])
    }

    fn layer(&self, inputs: &[Shape]) -> Option<LayerShape> {
        Some(LayerShape { out: self.out_features, cin: first(inputs)[0], kernel: [1, 1], groups: 1 })
    }

    fn act(&self) -> Activation {
        self.act
    }

    fn reference(&self, inputs: &[(&[f32], Shape)], layer: Option<&FloatLayer>, out: Shape) -> Vec<f32> {
        let x = inputs.first().map(|i| i.0).unwrap_or(&[]);
        let Some(l) = layer else { return vec![f32::NAN; out[0]] };
        let k = l.shape.cin;
        (0..self.out_features)
            .map(|o| {
                let row = l.weight.get(o * k..(o + 1) * k).unwrap_or(&[]);
                let dot: f32 = row.iter().zip(x).map(|(w, v)| w * v).sum();
                activate(self.act, l.bias.get(o).copied().unwrap_or(0.0) + dot)
            })
            .collect()
    }

    fn cpu(&self, b: &CpuBuild<'_>) -> Result<Box<dyn CpuOp>> {
        let shape = self.layer(&[[b.input(0)?.c, 1, 1]]).ok_or_else(|| Error::Internal("linear layer".into()))?;
        let win = Window { stride: [1, 1], padding: [0, 0], out_hw: [1, 1] };
        Ok(Box::new(Conv::new(b, shape, win, self.act)?))
    }

    #[cfg(feature = "candle")]
    fn device(&self, b: &crate::backend::device::DeviceBuild<'_>) -> Result<Box<dyn crate::backend::device::DeviceOp>> {
        crate::backend::device::linear(
            b,
            self.layer(&b.inputs).ok_or_else(|| Error::Internal("linear layer".into()))?,
            self.act,
        )
    }
}
