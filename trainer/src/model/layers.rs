//! Building blocks: convolution and batch norm over [`Params`].

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use rand_chacha::ChaCha8Rng;

use super::{uniform, Group, Params};
use crate::ops::batchnorm::{Activation, BatchNormAct};
use crate::ops::bias_act::ChannelAffineAct;
use crate::ops::conv;

/// A bias-free convolution (the batch norm after it has the bias).
#[derive(Debug)]
pub struct Conv {
    pub weight: Var,
    pub stride: usize,
    pub padding: usize,
    pub flops_per_image: u64,
}

impl Conv {
    /// PyTorch's default conv init, `U(±1/sqrt(fan_in))`: the recipes' learning rates
    /// (taken from airbench) assume this weight scale; batch norm makes the net itself
    /// indifferent to it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        params: &mut Params,
        name: &str,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        (cin, cout, k): (usize, usize, usize),
        stride: usize,
        padding: usize,
        out_hw: usize,
    ) -> Result<Self> {
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        let w = uniform(rng, &[cout, cin, k, k], bound, dev)?;
        let weight = params.add(&format!("{name}.weight"), w, Group::Weight)?;
        let flops_per_image = 2 * (cout * cin * k * k * out_hw * out_hw) as u64;
        Ok(Self { weight, stride, padding, flops_per_image })
    }

    /// Sets the first `min(cin, cout)` filters to the identity (PyTorch's `dirac_` on
    /// `w[:cin]`, airbench's init): each conv starts by passing its input channels
    /// through, and the other filters keep their random init.
    pub fn dirac(self) -> Result<Self> {
        let (cout, cin, kh, kw) = self.weight.dims4()?;
        let mut v = self.weight.flatten_all()?.to_vec1::<f32>()?;
        let per = cin * kh * kw;
        for (o, f) in v.chunks_exact_mut(per).take(cout.min(cin)).enumerate() {
            f.fill(0.0);
            f[o * kh * kw + (kh / 2) * kw + kw / 2] = 1.0;
        }
        self.weight.set(&Tensor::from_vec(v, (cout, cin, kh, kw), self.weight.device())?)?;
        Ok(self)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv::conv2d(&x.contiguous()?, &self.weight, self.stride, self.padding)?)
    }
}

/// Batch norm with a fused activation.
#[derive(Debug)]
pub struct BatchNorm {
    pub gamma: Var,
    pub beta: Var,
    pub running_mean: Var,
    pub running_var: Var,
    pub momentum: f64,
    pub eps: f64,
    pub act: Activation,
}

impl BatchNorm {
    pub fn new(
        params: &mut Params,
        name: &str,
        c: usize,
        cfg: &super::ModelConfig,
        act: Activation,
        dev: &Device,
    ) -> Result<Self> {
        let gamma_group = if cfg.bn_scale { Group::Bias } else { Group::Fixed };
        Ok(Self {
            gamma: params.add(&format!("{name}.weight"), Tensor::ones(c, DType::F32, dev)?, gamma_group)?,
            beta: params.add(&format!("{name}.bias"), Tensor::zeros(c, DType::F32, dev)?, Group::Bias)?,
            running_mean: params.add(
                &format!("{name}.running_mean"),
                Tensor::zeros(c, DType::F32, dev)?,
                Group::Fixed,
            )?,
            running_var: params.add(&format!("{name}.running_var"), Tensor::ones(c, DType::F32, dev)?, Group::Fixed)?,
            momentum: cfg.bn_momentum,
            eps: cfg.bn_eps,
            act,
        })
    }

    fn update_running(&self, mean: &Tensor, var_unbiased: &Tensor) -> Result<()> {
        let m = self.momentum;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (var_unbiased * m)?)?;
        self.running_mean.set(&rm.detach())?;
        self.running_var.set(&rv.detach())?;
        Ok(())
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        let bshape = [1, c, 1, 1];
        if !train {
            let inv = (self.running_var.as_tensor() + self.eps)?.sqrt()?.recip()?;
            let scale = (self.gamma.as_tensor() * inv)?;
            let shift = (self.beta.as_tensor() - (self.running_mean.as_tensor() * &scale)?)?;
            if crate::ops::use_fast(x.device(), false) {
                let op = ChannelAffineAct { scale: scale.to_vec1()?, shift: shift.to_vec1()?, act: self.act };
                return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
            }
            let y = x.broadcast_mul(&scale.reshape(&bshape[..])?)?.broadcast_add(&shift.reshape(&bshape[..])?)?;
            return Ok(self.act.apply_tensor(&y)?);
        }
        if crate::ops::use_fast(x.device(), false) {
            let op = BatchNormAct::new(self.eps as f32, self.act);
            let y = x.contiguous()?.apply_op3(&self.gamma, &self.beta, op.clone())?;
            if let Some(s) = op.last_stats() {
                let n = s.count as f32;
                let unbiased: Vec<f32> = s.var.iter().map(|v| v * n / (n - 1.0).max(1.0)).collect();
                let dev = x.device();
                self.update_running(&Tensor::new(s.mean, dev)?, &Tensor::new(unbiased, dev)?)?;
            }
            return Ok(y);
        }
        // Generic path (GPU): the same math from candle ops.
        let xt = x.transpose(0, 1)?.reshape((c, ()))?;
        let count = xt.dim(1)? as f64;
        let mean = xt.mean_keepdim(D::Minus1)?;
        let centered = xt.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        self.update_running(
            &mean.flatten_all()?.detach(),
            &(var.flatten_all()? * (count / (count - 1.0).max(1.0)))?.detach(),
        )?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        let y = x
            .broadcast_sub(&mean.reshape(&bshape[..])?)?
            .broadcast_mul(&inv.reshape(&bshape[..])?)?
            .broadcast_mul(&self.gamma.reshape(&bshape[..])?)?
            .broadcast_add(&self.beta.reshape(&bshape[..])?)?;
        Ok(self.act.apply_tensor(&y)?)
    }
}

/// A linear classifier head `[N, C] -> [N, classes]`.
#[derive(Debug)]
pub struct Head {
    pub weight: Var,
    pub bias: Option<Var>,
    pub scale: f64,
}

impl Head {
    pub fn new(
        params: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        cin: usize,
        classes: usize,
        bias: bool,
        scale: f64,
    ) -> Result<Self> {
        let bound = 1.0 / (cin as f64).sqrt();
        let weight = params.add("head.weight", uniform(rng, &[classes, cin], bound, dev)?, Group::Weight)?;
        let bias = if bias {
            Some(params.add("head.bias", Tensor::zeros(classes, DType::F32, dev)?, Group::Bias)?)
        } else {
            None
        };
        Ok(Self { weight, bias, scale })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if self.scale != 1.0 {
            y = (y * self.scale)?;
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn dirac_init_makes_the_first_filters_pass_their_channel_through() {
        let dev = Device::Cpu;
        let mut params = Params::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // More outputs than inputs: filters 0..4 become identities, 4..6 stay random.
        let conv = Conv::new(&mut params, "c", &mut rng, &dev, (4, 6, 3), 1, 1, 5).unwrap().dirac().unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 4, 5, 5), &dev).unwrap();
        let y = conv.forward(&x).unwrap();
        let same = y.narrow(1, 0, 4).unwrap().sub(&x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(same.to_scalar::<f32>().unwrap() < 1e-6);
        let w = conv.weight.as_tensor().narrow(0, 4, 2).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(w.to_scalar::<f32>().unwrap() > 0.1, "the other filters keep their random init");
    }
}
