//! The airbench-style net (after Keller Jordan's CIFAR-10 speedruns):
//!
//! ```text
//! whiten 2x2 conv (3 -> 24, frozen, trainable bias) -> GELU
//! 3 x group: conv3x3 -> maxpool2 -> BN -> act -> conv3x3 -> BN -> act
//! global max pool (3x3) -> linear (no bias) -> x output_scale
//! ```
//!
//! Spatial sizes: 32 -> 31 (stem) -> 15 -> 7 -> 3 -> 1.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::layers::{BatchNorm, Conv, Head};
use super::whiten::{whitening_filters, WHITEN_WIDTH};
use super::{Group, ModelConfig, Network, Params};
use crate::data::Split;
use crate::ops::{act::Activation, bias_act, conv, pool};

/// The stem bias's parameter name (frozen after `train.whiten_bias_epochs`).
pub const WHITEN_BIAS: &str = "whiten.bias";

struct ConvGroup {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
}

pub struct Airbench {
    params: Params,
    whiten_w: Var,
    whiten_b: Var,
    groups: Vec<ConvGroup>,
    head: Head,
    flops: u64,
}

impl Airbench {
    pub fn new(
        cfg: &ModelConfig,
        classes: usize,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        data: Option<&Split>,
    ) -> Result<Self> {
        let mut params = Params::default();
        let norm = cifar_sdk::Normalization::CIFAR10.affine();
        let (whiten_w, frozen) = match (cfg.whiten, data) {
            (true, Some(split)) => {
                let idx: Vec<u32> = (0..split.len() as u32).collect();
                let f = whitening_filters(split, &idx, 5000, &norm)?;
                (Tensor::from_vec(f, (WHITEN_WIDTH, 3, 2, 2), dev)?, true)
            }
            _ => (super::uniform(rng, &[WHITEN_WIDTH, 3, 2, 2], (6.0f64 / 12.0).sqrt(), dev)?, false),
        };
        let whiten_w = params.add("whiten.weight", whiten_w, if frozen { Group::Fixed } else { Group::Weight })?;
        // The stem bias trains with the conv weights' learning rate (not the 64x of the
        // batch-norm biases), as in airbench.
        let whiten_b =
            params.add(WHITEN_BIAS, Tensor::zeros(WHITEN_WIDTH, candle_core::DType::F32, dev)?, Group::Weight)?;
        let mut flops = 2 * (WHITEN_WIDTH * 12 * 31 * 31) as u64;
        let mut groups = Vec::new();
        let (mut cin, mut hw) = (WHITEN_WIDTH, 31);
        for (i, &w) in cfg.widths.iter().enumerate() {
            let name = format!("group{}", i + 1);
            let init = |c: Conv| if cfg.dirac_init { c.dirac() } else { Ok(c) };
            let inner = cfg.inner_width(i, i);
            let conv1 = init(Conv::new(&mut params, &format!("{name}.conv1"), rng, dev, (cin, inner, 3), 1, 1, hw)?)?;
            hw /= 2;
            let bn1 = BatchNorm::new(&mut params, &format!("{name}.bn1"), inner, cfg, cfg.act, dev)?;
            let conv2 = init(Conv::new(&mut params, &format!("{name}.conv2"), rng, dev, (inner, w, 3), 1, 1, hw)?)?;
            let bn2 = BatchNorm::new(&mut params, &format!("{name}.bn2"), w, cfg, cfg.act, dev)?;
            flops += conv1.flops_per_image + conv2.flops_per_image;
            groups.push(ConvGroup { conv1, bn1, conv2, bn2 });
            cin = w;
        }
        let head = Head::new(&mut params, rng, dev, cin, classes, false, cfg.output_scale)?;
        flops += 2 * (cin * classes) as u64;
        Ok(Self { params, whiten_w, whiten_b, groups, head, flops })
    }
}

impl Network for Airbench {
    fn params(&self) -> &Params {
        &self.params
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = conv::conv2d(x, &self.whiten_w, 1, 0)?;
        x = bias_act::bias_act(&x, &self.whiten_b, Activation::Gelu)?;
        for g in &self.groups {
            x = g.conv1.forward(&x)?;
            x = pool::max_pool(&x, 2)?;
            x = g.bn1.forward(&x, train)?;
            x = g.conv2.forward(&x)?;
            x = g.bn2.forward(&x, train)?;
        }
        let k = x.dim(2)?;
        x = pool::max_pool(&x, k)?.flatten_from(1)?;
        self.head.forward(&x)
    }

    fn flops_per_image(&self) -> u64 {
        self.flops
    }
}
