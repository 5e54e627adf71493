//! A small residual net (ResNet-8/14/20 style, three stages):
//!
//! ```text
//! conv3x3 -> BN -> act
//! 3 stages x `blocks` x [conv3x3 (stride 2 on entering stages 2 and 3) -> BN -> act
//!                        -> conv3x3 -> BN, + shortcut (1x1 conv + BN when shapes change)]
//!                        -> act
//! global average pool -> linear
//! ```

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;

use super::layers::{BatchNorm, Conv, Head};
use super::{ModelConfig, Network, Params};
use crate::ops::batchnorm::Activation;

struct Block {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    shortcut: Option<(Conv, BatchNorm)>,
    act: Activation,
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward(&self.conv1.forward(x)?, train)?;
        let y = self.bn2.forward(&self.conv2.forward(&y)?, train)?;
        let s = match &self.shortcut {
            Some((c, bn)) => bn.forward(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        Ok(self.act.apply_tensor(&(y + s)?)?)
    }
}

pub struct ResNet {
    params: Params,
    stem: (Conv, BatchNorm),
    blocks: Vec<Block>,
    head: Head,
    flops: u64,
}

impl ResNet {
    pub fn new(cfg: &ModelConfig, classes: usize, rng: &mut ChaCha8Rng, dev: &Device) -> Result<Self> {
        let mut params = Params::default();
        let w0 = cfg.widths[0];
        let conv = Conv::new(&mut params, "stem.conv", rng, dev, (3, w0, 3), 1, 1, 32)?;
        let mut flops = conv.flops_per_image;
        let stem = (conv, BatchNorm::new(&mut params, "stem.bn", w0, cfg, cfg.act, dev)?);
        let (mut cin, mut hw) = (w0, 32usize);
        let mut blocks = Vec::new();
        for (s, &w) in cfg.widths.iter().enumerate() {
            for b in 0..cfg.blocks {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                hw = hw.div_ceil(stride);
                let name = format!("layer{}.{b}", s + 1);
                let inner = cfg.inner_width(s, s * cfg.blocks + b);
                let conv1 = Conv::new(&mut params, &format!("{name}.conv1"), rng, dev, (cin, inner, 3), stride, 1, hw)?;
                let bn1 = BatchNorm::new(&mut params, &format!("{name}.bn1"), inner, cfg, cfg.act, dev)?;
                let conv2 = Conv::new(&mut params, &format!("{name}.conv2"), rng, dev, (inner, w, 3), 1, 1, hw)?;
                let bn2 = BatchNorm::new(&mut params, &format!("{name}.bn2"), w, cfg, Activation::None, dev)?;
                flops += conv1.flops_per_image + conv2.flops_per_image;
                let shortcut = if stride != 1 || cin != w {
                    let c =
                        Conv::new(&mut params, &format!("{name}.shortcut.conv"), rng, dev, (cin, w, 1), stride, 0, hw)?;
                    flops += c.flops_per_image;
                    let bn =
                        BatchNorm::new(&mut params, &format!("{name}.shortcut.bn"), w, cfg, Activation::None, dev)?;
                    Some((c, bn))
                } else {
                    None
                };
                blocks.push(Block { conv1, bn1, conv2, bn2, shortcut, act: cfg.act });
                cin = w;
            }
        }
        let head = Head::new(&mut params, rng, dev, cin, classes, true, cfg.output_scale)?;
        flops += 2 * (cin * classes) as u64;
        Ok(Self { params, stem, blocks, head, flops })
    }
}

impl Network for ResNet {
    fn params(&self) -> &Params {
        &self.params
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.stem.1.forward(&self.stem.0.forward(x)?, train)?;
        for b in &self.blocks {
            x = b.forward(&x, train)?;
        }
        let pooled = x.mean((2, 3))?;
        self.head.forward(&pooled)
    }

    fn flops_per_image(&self) -> u64 {
        self.flops
    }
}
