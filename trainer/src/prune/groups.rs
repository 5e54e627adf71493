//! Channel dependency groups: the sets of channels that must be pruned together.
//!
//! A conv's output channel lives in its own weight (dim 0), in the batch norm after it,
//! and in every weight that reads it (dim 1 of the next convs or of the classifier).
//! Channels joined by a residual add are one channel: in the ResNet family the stem,
//! every block's second conv and the projection shortcut of a stage all write the
//! stage's residual stream, so they are pruned as one group. The airbench whitening stem
//! (frozen) and the classifier's outputs are never pruned; the inputs of the first
//! conv of each block (the residual stream, or the whitening stem's channels) follow
//! their producers' groups.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::model::{ModelConfig, ModelKind};

/// A conv followed by its batch norm: they write a group's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// Parameter prefix of the conv (`layer2.0.conv2`).
    pub conv: String,
    /// Parameter prefix of its batch norm (`layer2.0.bn2`).
    pub bn: String,
}

/// Which width of the config a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `model.widths[stage]`.
    Stage(usize),
    /// `model.inner_widths[block]`.
    Inner(usize),
}

/// Channels pruned together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelGroup {
    /// For messages: the first producer's conv.
    pub name: String,
    pub role: Role,
    pub width: usize,
    pub producers: Vec<Producer>,
    /// Weights that read the channels along dim 1.
    pub consumers: Vec<String>,
}

/// The batch-norm tensors sliced with a producer's channels.
pub const BN_TENSORS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

fn producer(conv: &str, bn: &str) -> Producer {
    Producer { conv: conv.into(), bn: bn.into() }
}

/// The groups of the net that `cfg` describes.
pub fn channel_groups(cfg: &ModelConfig) -> Vec<ChannelGroup> {
    let mut groups = Vec::new();
    match cfg.kind {
        ModelKind::Airbench => {
            for (i, &w) in cfg.widths.iter().enumerate() {
                let g = format!("group{}", i + 1);
                groups.push(ChannelGroup {
                    name: format!("{g}.conv1"),
                    role: Role::Inner(i),
                    width: cfg.inner_width(i, i),
                    producers: vec![producer(&format!("{g}.conv1"), &format!("{g}.bn1"))],
                    consumers: vec![format!("{g}.conv2.weight")],
                });
                let next = if i + 1 < cfg.widths.len() {
                    format!("group{}.conv1.weight", i + 2)
                } else {
                    "head.weight".into()
                };
                groups.push(ChannelGroup {
                    name: format!("{g}.conv2"),
                    role: Role::Stage(i),
                    width: w,
                    producers: vec![producer(&format!("{g}.conv2"), &format!("{g}.bn2"))],
                    consumers: vec![next],
                });
            }
        }
        ModelKind::Resnet => {
            for (s, &w) in cfg.widths.iter().enumerate() {
                let block = |b: usize| format!("layer{}.{b}", s + 1);
                let mut stage = ChannelGroup {
                    name: String::new(),
                    role: Role::Stage(s),
                    width: w,
                    producers: Vec::new(),
                    consumers: Vec::new(),
                };
                // Who starts the stage's stream: the stem, or the projection shortcut.
                if s == 0 {
                    stage.producers.push(producer("stem.conv", "stem.bn"));
                } else {
                    let sc = format!("{}.shortcut", block(0));
                    stage.producers.push(producer(&format!("{sc}.conv"), &format!("{sc}.bn")));
                }
                for b in 0..cfg.blocks {
                    let n = block(b);
                    let inner = s * cfg.blocks + b;
                    groups.push(ChannelGroup {
                        name: format!("{n}.conv1"),
                        role: Role::Inner(inner),
                        width: cfg.inner_width(s, inner),
                        producers: vec![producer(&format!("{n}.conv1"), &format!("{n}.bn1"))],
                        consumers: vec![format!("{n}.conv2.weight")],
                    });
                    stage.producers.push(producer(&format!("{n}.conv2"), &format!("{n}.bn2")));
                    // The first block of stage 1 reads the stem, which is this stream.
                    if b > 0 || s == 0 {
                        stage.consumers.push(format!("{n}.conv1.weight"));
                    }
                }
                if s + 1 < cfg.widths.len() {
                    let next = format!("layer{}.0", s + 2);
                    stage.consumers.push(format!("{next}.conv1.weight"));
                    stage.consumers.push(format!("{next}.shortcut.conv.weight"));
                } else {
                    stage.consumers.push("head.weight".into());
                }
                stage.name = stage.producers[0].conv.clone();
                groups.push(stage);
            }
        }
    }
    groups
}

/// Every tensor a group touches, with the dim its channels are on.
pub fn members(g: &ChannelGroup) -> Vec<(String, usize)> {
    let mut m = Vec::new();
    for p in &g.producers {
        m.push((format!("{}.weight", p.conv), 0));
        for t in BN_TENSORS {
            m.push((format!("{}.{t}", p.bn), 0));
        }
    }
    m.extend(g.consumers.iter().map(|c| (c.clone(), 1)));
    m
}

/// Checks that `params` holds every tensor of every group with the group's width.
pub fn check_shapes(groups: &[ChannelGroup], params: &HashMap<String, Tensor>) -> Result<()> {
    for g in groups {
        for (name, dim) in members(g) {
            let t = params
                .get(&name)
                .with_context(|| format!("the weights have no tensor {name}: they do not match their config"))?;
            if t.dims().get(dim) != Some(&g.width) {
                bail!(
                    "tensor {name} has shape {:?} but the config gives its group ({}) {} channels: the weights do \
                     not match their config",
                    t.dims(),
                    g.name,
                    g.width
                );
            }
        }
    }
    Ok(())
}

/// Keeps channels `keep` (ascending) of group `g` in every tensor that holds them.
pub fn slice_group(params: &mut HashMap<String, Tensor>, g: &ChannelGroup, keep: &[u32]) -> Result<()> {
    if keep.is_empty() || keep.windows(2).any(|w| w[0] >= w[1]) || keep.iter().any(|&c| c as usize >= g.width) {
        bail!("internal: channels to keep of {} must be ascending and below {}: {keep:?}", g.name, g.width);
    }
    for (name, dim) in members(g) {
        let t = params.get(&name).with_context(|| format!("no tensor {name}"))?;
        let idx = Tensor::new(keep, t.device())?;
        let sliced = t.index_select(&idx, dim)?;
        params.insert(name, sliced);
    }
    Ok(())
}

/// `cfg` with the groups' new widths.
pub fn with_widths(cfg: &ModelConfig, groups: &[ChannelGroup], widths: &[usize]) -> ModelConfig {
    let mut out = cfg.clone();
    let per_stage = if cfg.kind == ModelKind::Airbench { 1 } else { cfg.blocks.max(1) };
    out.inner_widths = (0..cfg.blocks_total()).map(|b| cfg.inner_width(b / per_stage, b)).collect();
    for (g, &w) in groups.iter().zip(widths) {
        match g.role {
            Role::Stage(s) => out.widths[s] = w,
            Role::Inner(b) => out.inner_widths[b] = w,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::build;
    use candle_core::Device;

    fn resnet(blocks: usize, widths: Vec<usize>) -> ModelConfig {
        ModelConfig {
            kind: ModelKind::Resnet,
            widths,
            blocks,
            whiten: false,
            act: crate::ops::batchnorm::Activation::Relu,
            ..Default::default()
        }
    }

    /// Every tensor of the net belongs to the groups as the net builds it, and the
    /// residual stream of a stage is one group.
    #[test]
    fn resnet_groups_tie_the_residual_stream() {
        let cfg = resnet(2, vec![8, 12, 16]);
        let groups = channel_groups(&cfg);
        let net = build(&cfg, 10, 0, &Device::Cpu, None).unwrap();
        check_shapes(&groups, &net.params().snapshot()).unwrap();
        let stage2 = groups.iter().find(|g| g.role == Role::Stage(1)).unwrap();
        let convs: Vec<&str> = stage2.producers.iter().map(|p| p.conv.as_str()).collect();
        assert_eq!(convs, ["layer2.0.shortcut.conv", "layer2.0.conv2", "layer2.1.conv2"]);
        assert_eq!(
            stage2.consumers,
            ["layer2.1.conv1.weight", "layer3.0.conv1.weight", "layer3.0.shortcut.conv.weight"]
        );
        let stage1 = groups.iter().find(|g| g.role == Role::Stage(0)).unwrap();
        assert_eq!(stage1.producers[0].conv, "stem.conv");
        assert_eq!(stage1.consumers[0], "layer1.0.conv1.weight");
        assert_eq!(groups.len(), 3 + 6);
    }

    /// Each tensor holds its channel index as its value along the group's dim: after
    /// pruning, every tensor that shares a group holds exactly the kept channels, and
    /// the pruned tensors build a net of the new widths that runs.
    #[test]
    fn a_pruned_channel_disappears_from_every_tensor_that_shares_it() {
        let cfg = resnet(2, vec![8, 12, 16]);
        let groups = channel_groups(&cfg);
        let net = build(&cfg, 10, 0, &Device::Cpu, None).unwrap();
        let mut params = net.params().snapshot();
        // Tags: for each (tensor, dim) of a group, a tensor of the weight's shape whose
        // value is 1000 * (group + 1) + channel along that dim.
        let mut tags: HashMap<(String, usize), Tensor> = HashMap::new();
        for (gi, g) in groups.iter().enumerate() {
            for (name, dim) in members(g) {
                let dims = params[&name].dims().to_vec();
                let mut shape = vec![1usize; dims.len()];
                shape[dim] = g.width;
                let tag: Vec<f32> = (0..g.width).map(|c| (1000 * (gi + 1) + c) as f32).collect();
                let tag = Tensor::from_vec(tag, shape, &Device::Cpu).unwrap();
                tags.insert((name, dim), tag.broadcast_as(dims).unwrap().contiguous().unwrap());
            }
        }
        // Keep channels 1, 3, ... of every group; slice the tags of a tensor wherever
        // the tensor itself is sliced.
        let kept: Vec<Vec<u32>> = groups.iter().map(|g| (1..g.width as u32).step_by(2).collect()).collect();
        for (g, k) in groups.iter().zip(&kept) {
            slice_group(&mut params, g, k).unwrap();
            let idx = Tensor::new(k.as_slice(), &Device::Cpu).unwrap();
            for (name, dim) in members(g) {
                for ((tag_name, _), t) in tags.iter_mut() {
                    if *tag_name == name {
                        *t = t.index_select(&idx, dim).unwrap();
                    }
                }
            }
        }
        for (gi, g) in groups.iter().enumerate() {
            for (name, dim) in members(g) {
                let t = &tags[&(name.clone(), dim)];
                assert_eq!(t.dims(), params[&name].dims(), "{name}: tag and tensor agree in shape");
                let mut seen: Vec<u32> =
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| *v as u32).collect();
                seen.sort_unstable();
                seen.dedup();
                let want: Vec<u32> = kept[gi].iter().map(|c| 1000 * (gi as u32 + 1) + c).collect();
                assert_eq!(seen, want, "{name} dim {dim} holds exactly the kept channels of {}", g.name);
            }
        }
        let widths: Vec<usize> = kept.iter().map(Vec::len).collect();
        let small = with_widths(&cfg, &groups, &widths);
        assert_eq!(small.widths, vec![4, 6, 8]);
        let net = build(&small, 10, 0, &Device::Cpu, None).unwrap();
        net.params().load(&params, "").unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x, false).unwrap().dims(), [2, 10]);
        check_shapes(&channel_groups(&small), &params).unwrap();
    }
}
