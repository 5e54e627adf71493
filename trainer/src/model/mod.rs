//! Convolutional classifiers built on candle tensors, configured from TOML.
//!
//! Two families: [`airbench`] (the fast CIFAR-10 speedrun net: a frozen 2x2 whitening
//! stem, three conv-pool-BN groups) and [`resnet`] (a small pre-activation-free residual
//! net). Parameter names are stable (`group1.conv1.weight`, `layer2.0.bn1.bias`, ...):
//! the compiler in `trainer compile` finds weights by these names.

pub mod airbench;
pub mod layers;
pub mod resnet;
pub mod whiten;

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Split;
use crate::ops::batchnorm::Activation;

/// Which network family.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Airbench,
    Resnet,
}

/// Model hyper-parameters (the `[model]` section of a config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Output channels of the three stages (airbench: each group's second conv; resnet:
    /// the residual stream of each stage, which the stem, the shortcuts and every
    /// block's second conv share).
    pub widths: Vec<usize>,
    /// Output channels of the first conv of each block, which nothing else shares:
    /// airbench, one per group (`group{i}.conv1`); resnet, one per block, stage by stage
    /// (`layer{s}.{b}.conv1`). Empty: the stage's width (an unpruned net). `trainer
    /// prune` writes it.
    pub inner_widths: Vec<usize>,
    /// Activation after each batch norm.
    pub act: Activation,
    /// Weight of the new batch in the running statistics (PyTorch's `momentum`).
    pub bn_momentum: f64,
    pub bn_eps: f64,
    /// Train the batch-norm scale (`gamma`); airbench keeps it at 1.
    pub bn_scale: bool,
    /// Logits are multiplied by this (airbench uses 1/9).
    pub output_scale: f64,
    /// airbench: initialize the 2x2 stem from the eigenvectors of the patch covariance
    /// and freeze it. When false the stem is a trained conv.
    pub whiten: bool,
    /// airbench: the first `cin` filters of each 3x3 conv start as the identity
    /// (airbench's partial Dirac init); the rest keep PyTorch's uniform init.
    pub dirac_init: bool,
    /// resnet: residual blocks per stage.
    pub blocks: usize,
    /// Number of classes (taken from the dataset when 0).
    pub classes: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Airbench,
            widths: vec![32, 64, 128],
            inner_widths: Vec::new(),
            act: Activation::Gelu,
            bn_momentum: 0.4,
            bn_eps: 1e-5,
            bn_scale: false,
            output_scale: 1.0 / 9.0,
            whiten: true,
            dirac_init: false,
            blocks: 1,
            classes: 0,
        }
    }
}

impl ModelConfig {
    pub fn check(&self) -> Result<()> {
        if self.widths.len() != 3 || self.widths.contains(&0) {
            bail!("model.widths must be three positive channel counts, got {:?}", self.widths);
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            bail!("model.bn_momentum must be in [0, 1], got {}", self.bn_momentum);
        }
        if self.kind == ModelKind::Resnet && self.blocks == 0 {
            bail!("model.blocks must be at least 1");
        }
        let blocks = self.blocks_total();
        if !self.inner_widths.is_empty() && (self.inner_widths.len() != blocks || self.inner_widths.contains(&0)) {
            bail!(
                "model.inner_widths must be empty or {blocks} positive channel counts (one per {}), got {:?}",
                if self.kind == ModelKind::Airbench { "group" } else { "residual block" },
                self.inner_widths
            );
        }
        Ok(())
    }

    /// Blocks (airbench: conv groups) in the whole net.
    pub fn blocks_total(&self) -> usize {
        match self.kind {
            ModelKind::Airbench => self.widths.len(),
            ModelKind::Resnet => self.widths.len() * self.blocks,
        }
    }

    /// Output channels of the first conv of block `b` (counted over the whole net) in
    /// stage `stage`.
    pub fn inner_width(&self, stage: usize, b: usize) -> usize {
        self.inner_widths.get(b).or(self.widths.get(stage)).copied().unwrap_or(0)
    }
}

/// How the optimizer treats a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Conv and linear weights: learning rate and weight decay.
    Weight,
    /// Biases and batch-norm parameters: their own multipliers.
    Bias,
    /// Saved and loaded but not trained (frozen weights, running statistics).
    Fixed,
}

/// A named parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub group: Group,
}

/// Every tensor a model owns, by stable name.
#[derive(Debug, Default)]
pub struct Params {
    pub list: Vec<Param>,
}

impl Params {
    pub fn add(&mut self, name: &str, t: Tensor, group: Group) -> Result<Var> {
        if self.list.iter().any(|p| p.name == name) {
            bail!("duplicate parameter name {name}");
        }
        let var = Var::from_tensor(&t)?;
        self.list.push(Param { name: name.into(), var: var.clone(), group });
        Ok(var)
    }

    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.list.iter().filter(|p| p.group != Group::Fixed)
    }

    /// Current values by name.
    pub fn snapshot(&self) -> HashMap<String, Tensor> {
        self.list
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().copy().unwrap_or_else(|_| p.var.as_tensor().clone())))
            .collect()
    }

    /// Sets every parameter from `values`; all names must be present with their shapes.
    pub fn load(&self, values: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for p in &self.list {
            let key = format!("{prefix}{}", p.name);
            let t = values.get(&key).with_context(|| format!("checkpoint has no tensor {key}"))?;
            if t.dims() != p.var.dims() {
                bail!("checkpoint tensor {key} has shape {:?}, the model expects {:?}", t.dims(), p.var.dims());
            }
            p.var.set(&t.to_device(p.var.device())?.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    pub fn count_trainable(&self) -> usize {
        self.trainable().map(|p| p.var.elem_count()).sum()
    }
}

/// Uniform init in `[-bound, bound]` from a seeded generator (candle's own random
/// tensors are not seedable on the CPU, and runs must be reproducible).
pub fn uniform(rng: &mut ChaCha8Rng, dims: &[usize], bound: f64, dev: &Device) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-bound..=bound) as f32).collect();
    Ok(Tensor::from_vec(v, dims, dev)?)
}

/// A network: its parameters and a forward function.
pub trait Network: Send {
    fn params(&self) -> &Params;
    /// Logits `[N, classes]` for normalized images `[N, 3, 32, 32]`. In training mode
    /// batch norm uses batch statistics and updates its running statistics.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// FLOPs of one forward pass for one image.
    fn flops_per_image(&self) -> u64;
}

/// Builds the configured network. `whiten_data` supplies the images for the airbench
/// whitening stem (ignored otherwise).
pub fn build(
    cfg: &ModelConfig,
    classes: usize,
    seed: u64,
    dev: &Device,
    whiten_data: Option<&Split>,
) -> Result<Box<dyn Network>> {
    cfg.check()?;
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(crate::data::loader::mix(seed ^ 0x1417));
    Ok(match cfg.kind {
        ModelKind::Airbench => Box::new(airbench::Airbench::new(cfg, classes, &mut rng, dev, whiten_data)?),
        ModelKind::Resnet => Box::new(resnet::ResNet::new(cfg, classes, &mut rng, dev)?),
    })
}
