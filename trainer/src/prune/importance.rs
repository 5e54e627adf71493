//! How much each channel matters: the criteria `trainer prune --method` offers.
//!
//! - `taylor` (data-driven, after Molchanov et al. 2019): removing a channel sets its
//!   batch-norm output `y = gamma * x_hat + beta` to zero; to first order that changes
//!   the loss by `-sum(dL/dy * y) = -(gamma * dL/dgamma + beta * dL/dbeta)`. For a group
//!   the members' terms add (their outputs are one channel); the score is the square of
//!   that change averaged over batches of training images.
//! - `l1`: the L1 norm of each filter after batch-norm folding,
//!   `|gamma| / sqrt(var + eps) * sum |w|`, summed over a group's producers (Li et al.'s
//!   criterion, made scale-aware: batch norm undoes a filter's raw scale).
//! - `bn-scale`: `|gamma|` (network slimming); needs `model.bn_scale = true`, since
//!   otherwise every scale is 1.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};

use super::groups::ChannelGroup;
use crate::config::Config;
use crate::data::loader::{fill, View};
use crate::model::Network;
use crate::train::RunData;

/// A channel importance criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// First-order Taylor estimate of the loss change (training images).
    Taylor,
    /// L1 norm of the BN-folded filters.
    L1,
    /// |batch-norm scale|.
    BnScale,
}

impl Method {
    /// The name on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            Method::Taylor => "taylor",
            Method::L1 => "l1",
            Method::BnScale => "bn-scale",
        }
    }

    /// The criterion named `name` (as recorded in `prune.json`).
    pub fn from_name(name: &str) -> Result<Self> {
        [Method::Taylor, Method::L1, Method::BnScale]
            .into_iter()
            .find(|m| m.name() == name)
            .with_context(|| format!("unknown pruning method {name:?} (taylor, l1, bn-scale)"))
    }
}

fn vec_of(params: &HashMap<String, Tensor>, name: &str) -> Result<Vec<f32>> {
    let t = params.get(name).with_context(|| format!("the weights have no tensor {name}"))?;
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
}

/// Per group, one score per channel (higher: keep).
pub fn scores(
    method: Method,
    cfg: &Config,
    groups: &[ChannelGroup],
    params: &HashMap<String, Tensor>,
    taylor: Option<(&dyn Network, &RunData, usize, &Device)>,
) -> Result<Vec<Vec<f32>>> {
    match method {
        Method::BnScale => {
            if !cfg.model.bn_scale {
                bail!(
                    "--method bn-scale ranks channels by their batch-norm scale, but this net was trained with \
                     model.bn_scale = false (every scale is 1): use --method taylor or l1"
                );
            }
            groups
                .iter()
                .map(|g| {
                    let mut s = vec![0f32; g.width];
                    for p in &g.producers {
                        for (acc, v) in s.iter_mut().zip(vec_of(params, &format!("{}.weight", p.bn))?) {
                            *acc += v.abs();
                        }
                    }
                    Ok(s)
                })
                .collect()
        }
        Method::L1 => groups
            .iter()
            .map(|g| {
                let mut s = vec![0f32; g.width];
                for p in &g.producers {
                    let w = vec_of(params, &format!("{}.weight", p.conv))?;
                    let gamma = vec_of(params, &format!("{}.weight", p.bn))?;
                    let var = vec_of(params, &format!("{}.running_var", p.bn))?;
                    let per = w.len() / g.width.max(1);
                    for (c, acc) in s.iter_mut().enumerate() {
                        let norm: f32 = w.get(c * per..(c + 1) * per).unwrap_or(&[]).iter().map(|v| v.abs()).sum();
                        let scale = gamma.get(c).copied().unwrap_or(0.0).abs()
                            / (var.get(c).copied().unwrap_or(1.0) + cfg.model.bn_eps as f32).sqrt();
                        *acc += scale * norm;
                    }
                }
                Ok(s)
            })
            .collect(),
        Method::Taylor => {
            let (net, data, images, dev) = taylor.context("internal: the taylor criterion needs the net and data")?;
            taylor_scores(net, groups, data, images, dev)
        }
    }
}

fn taylor_scores(
    net: &dyn Network,
    groups: &[ChannelGroup],
    data: &RunData,
    images: usize,
    dev: &Device,
) -> Result<Vec<Vec<f32>>> {
    let var = |name: &str| -> Result<Var> {
        net.params()
            .list
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.var.clone())
            .with_context(|| format!("the net has no parameter {name}"))
    };
    let bns: Vec<Vec<(Var, Var)>> = groups
        .iter()
        .map(|g| {
            g.producers
                .iter()
                .map(|p| Ok((var(&format!("{}.weight", p.bn))?, var(&format!("{}.bias", p.bn))?)))
                .collect()
        })
        .collect::<Result<_>>()?;
    let mut acc: Vec<Vec<f64>> = groups.iter().map(|g| vec![0f64; g.width]).collect();
    let norm = cifar_sdk::Normalization::CIFAR10.affine();
    // Images spread over the training split (all classes), in batches of 256.
    let n = images.clamp(1, data.train_idx.len());
    let stride = (data.train_idx.len() / n).max(1);
    let chosen: Vec<u32> = data.train_idx.iter().step_by(stride).take(n).copied().collect();
    let mut batches = 0usize;
    for idx in chosen.chunks(256) {
        let (x, y) = fill(&data.split, idx, |_| View::default(), &norm);
        let x = Tensor::from_vec(x, (idx.len(), 3, 32, 32), dev)?;
        let y = Tensor::from_vec(y, idx.len(), dev)?;
        let logits = net.forward(&x, true)?;
        let loss = crate::step::smoothed_cross_entropy(&logits, &y, 0.0)?;
        let grads = loss.backward()?;
        for (a, members) in acc.iter_mut().zip(&bns) {
            let mut change = vec![0f32; a.len()];
            for (gamma, beta) in members {
                for (v, t) in [(gamma, gamma.as_tensor()), (beta, beta.as_tensor())] {
                    let Some(g) = grads.get(t) else { continue };
                    let term = (g * v.as_tensor())?.to_vec1::<f32>()?;
                    for (c, d) in change.iter_mut().zip(term) {
                        *c += d;
                    }
                }
            }
            for (s, c) in a.iter_mut().zip(change) {
                *s += f64::from(c) * f64::from(c);
            }
        }
        batches += 1;
    }
    Ok(acc.into_iter().map(|a| a.into_iter().map(|v| (v / batches.max(1) as f64) as f32).collect()).collect())
}

/// The `n` highest-scoring channels, ascending (ties: the lower index).
pub fn top_channels(scores: &[f32], n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
    order.truncate(n);
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_channels_keeps_the_best_in_index_order() {
        assert_eq!(top_channels(&[0.1, 3.0, 2.0, 3.0, 0.0], 3), vec![1, 2, 3]);
        assert_eq!(top_channels(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }
}
