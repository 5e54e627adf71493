//! Batch normalization in training mode, fused with the activation that follows it.
//!
//! One op computes the batch statistics, normalizes, applies `gamma`/`beta` and the
//! activation (none, ReLU or GELU) in two passes over the data; its backward recomputes
//! the normalized values from the input and the saved statistics (three passes), instead
//! of the dozen elementwise ops (each allocating a full tensor) that candle-nn's
//! BatchNorm builds. Statistics are accumulated in f64 per (image, channel) plane.

use std::sync::{Arc, Mutex};

pub use super::act::Activation;
use super::act::{affine_act, affine_act_grad, dot_sums};
use super::{cpu_f32, storage_f32, tensor_from_vec};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Per-channel batch statistics of the last forward pass.
#[derive(Debug, Clone, Default)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased variance (divided by the element count), the one used to normalize.
    pub var: Vec<f32>,
    /// Elements per channel.
    pub count: usize,
}

/// Train-mode batch norm + activation: `act((x - mean) / sqrt(var + eps) * gamma + beta)`.
#[derive(Debug, Clone)]
pub struct BatchNormAct {
    pub eps: f32,
    pub act: Activation,
    /// Filled by the forward pass; read by the caller to update running statistics
    /// and by the backward pass.
    pub stats: Arc<Mutex<Option<BatchStats>>>,
}

impl BatchNormAct {
    pub fn new(eps: f32, act: Activation) -> Self {
        Self { eps, act, stats: Arc::new(Mutex::new(None)) }
    }

    pub fn last_stats(&self) -> Option<BatchStats> {
        self.stats.lock().ok().and_then(|g| g.clone())
    }
}

/// Sums of `f(plane)` per channel over all images, in f64, with planes in parallel.
fn per_channel_sums<F>(n: usize, c: usize, f: F) -> Vec<(f64, f64)>
where
    F: Fn(usize, usize) -> (f64, f64) + Sync,
{
    let planes: Vec<(f64, f64)> = (0..n * c).into_par_iter().map(|p| f(p, p % c)).collect();
    let mut sums = vec![(0f64, 0f64); c];
    for (p, s) in planes.iter().enumerate() {
        sums[p % c].0 += s.0;
        sums[p % c].1 += s.1;
    }
    sums
}

fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let d = l.shape().dims();
    match d {
        [n, c, h, w] => Ok((*n, *c, h * w)),
        [n, c] => Ok((*n, *c, 1)),
        _ => candle_core::bail!("batch norm expects [N,C,H,W] or [N,C], got {d:?}"),
    }
}

impl CustomOp3 for BatchNormAct {
    fn name(&self) -> &'static str {
        "batch-norm-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(l1)?;
        let (x, gamma, beta) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!("batch norm: {c} channels but gamma/beta have {}/{}", gamma.len(), beta.len());
        }
        let count = n * hw;
        let sums = per_channel_sums(n, c, |p, _| {
            let plane = &x[p * hw..(p + 1) * hw];
            dot_sums(plane, plane, 0.0)
        });
        let mut mean = vec![0f32; c];
        let mut var = vec![0f32; c];
        for ch in 0..c {
            let m = sums[ch].0 / count as f64;
            mean[ch] = m as f32;
            var[ch] = (sums[ch].1 / count as f64 - m * m).max(0.0) as f32;
        }
        let mut y = vec![0f32; x.len()];
        let act = self.act;
        y.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
            let ch = p % c;
            let scale = gamma[ch] / (var[ch] + self.eps).sqrt();
            let shift = beta[ch] - mean[ch] * scale;
            affine_act(act, &x[p * hw..(p + 1) * hw], scale, shift, out);
        });
        if let Ok(mut slot) = self.stats.lock() {
            *slot = Some(BatchStats { mean, var, count });
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats =
            self.last_stats().ok_or_else(|| candle_core::Error::Msg("batch norm backward before forward".into()))?;
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let (gamma_c, beta_c) = (gamma.contiguous()?, beta.contiguous()?);
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (gms, gml) = gamma_c.storage_and_layout();
        let (bs, bl) = beta_c.storage_and_layout();
        let (xv, dy) = (storage_f32(&xs, xl)?, storage_f32(&gs, gl)?);
        let (gv, bv) = (storage_f32(&gms, gml)?, storage_f32(&bs, bl)?);
        let (n, c, hw) = dims(xl)?;
        let act = self.act;
        let invstd: Vec<f32> = stats.var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let mean = &stats.mean;
        // dz = dy * act'(z) with z recomputed; sums of dz and dz * xhat per channel.
        let mut dz = vec![0f32; xv.len()];
        dz.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
            let ch = p % c;
            let (scale, shift) = (gv[ch] * invstd[ch], bv[ch] - mean[ch] * gv[ch] * invstd[ch]);
            affine_act_grad(act, &xv[p * hw..(p + 1) * hw], scale, shift, &dy[p * hw..(p + 1) * hw], out);
        });
        let sums =
            per_channel_sums(n, c, |p, ch| dot_sums(&dz[p * hw..(p + 1) * hw], &xv[p * hw..(p + 1) * hw], mean[ch]));
        let count = stats.count as f32;
        let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        let dgamma: Vec<f32> = sums.iter().zip(&invstd).map(|(s, is)| s.1 as f32 * is).collect();
        let dx = if x.track_op() {
            let mut dx = dz;
            dx.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
                let ch = p % c;
                // dx = k (dz - mean(dz) - xhat mean(dz xhat)), xhat = (x - mean) invstd
                let k = gv[ch] * invstd[ch];
                let mean_dz = dbeta[ch] / count;
                let b = -k * invstd[ch] * dgamma[ch] / count;
                super::act::bn_input_grad(out, &xv[p * hw..(p + 1) * hw], k, b, mean[ch], -k * mean_dz);
            });
            Some(tensor_from_vec(dx, x.dims(), x.device())?)
        } else {
            None
        };
        let dgamma = gamma.track_op().then(|| tensor_from_vec(dgamma, gamma.dims(), gamma.device())).transpose()?;
        let dbeta = beta.track_op().then(|| tensor_from_vec(dbeta, beta.dims(), beta.device())).transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Reference built from plain candle ops.
    fn reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64, act: Activation) -> Tensor {
        let c = x.dim(1).unwrap();
        let xt = x.transpose(0, 1).unwrap().reshape((c, ())).unwrap();
        let mean = xt.mean_keepdim(D::Minus1).unwrap();
        let var = xt.broadcast_sub(&mean).unwrap().sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let shape = [1, c, 1, 1];
        let mean = mean.reshape(&shape[..]).unwrap();
        let inv = (var + eps).unwrap().sqrt().unwrap().recip().unwrap().reshape(&shape[..]).unwrap();
        let z = x
            .broadcast_sub(&mean)
            .unwrap()
            .broadcast_mul(&inv)
            .unwrap()
            .broadcast_mul(&g.reshape(&shape[..]).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape(&shape[..]).unwrap())
            .unwrap();
        act.apply_tensor(&z).unwrap()
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        d.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_reference_values_and_gradients() {
        let dev = Device::Cpu;
        for act in [Activation::None, Activation::Relu, Activation::Gelu] {
            let x = Var::randn(0.5f32, 2.0, (6, 5, 4, 3), &dev).unwrap();
            let g = Var::randn(1f32, 0.3, 5, &dev).unwrap();
            let b = Var::randn(0f32, 0.3, 5, &dev).unwrap();
            let ours = x.apply_op3(&g, &b, BatchNormAct::new(1e-5, act)).unwrap();
            let theirs = reference(&x, &g, &b, 1e-5, act);
            assert!(max_abs(&ours, &theirs) < 1e-4, "{act:?} forward");
            let up = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let ga = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("dx", &x), ("dgamma", &g), ("dbeta", &b)] {
                let e = max_abs(ga.get(v).unwrap(), gb.get(v).unwrap());
                assert!(e < 1e-3, "{act:?} {name}: {e}");
            }
        }
    }

    #[test]
    fn reports_batch_statistics() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 16.0, &dev).unwrap().reshape((2, 2, 2, 2)).unwrap();
        let op = BatchNormAct::new(1e-5, Activation::None);
        let ones = Tensor::ones(2, candle_core::DType::F32, &dev).unwrap();
        let zeros = Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap();
        x.apply_op3(&ones, &zeros, op.clone()).unwrap();
        let s = op.last_stats().unwrap();
        // channel 0 holds 0..4 and 8..12: mean 5.5, channel 1 holds 4..8 and 12..16: mean 9.5
        assert_eq!(s.mean, vec![5.5, 9.5]);
        assert_eq!(s.count, 8);
        assert!((s.var[0] - 17.25).abs() < 1e-4);
    }
}
