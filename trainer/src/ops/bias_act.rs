//! Per-channel affine + activation in one pass: `act(x + bias)` for the whitening
//! stem's bias and GELU (with backward), and `act(x * scale + shift)` for batch norm in
//! inference mode (forward only), instead of broadcast ops and a separate activation,
//! each a full-size tensor.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::act::{affine_act, affine_act_grad, dot_sums, Activation};
use super::{cpu_f32, storage_f32, tensor_from_vec};

#[derive(Debug, Clone, Copy)]
pub struct BiasAct {
    pub act: Activation,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let (x, b) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?);
        if b.len() != c {
            candle_core::bail!("bias-act: {c} channels but {} biases", b.len());
        }
        let hw = h * w;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .enumerate()
            .for_each(|(p, out)| affine_act(self.act, &x[p * hw..(p + 1) * hw], 1.0, b[p % c], out));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, c, h, w) = x.dims4()?;
        let hw = h * w;
        let (xc, gc, bc) = (x.contiguous()?, grad.contiguous()?, b.contiguous()?);
        let (xs, xl) = xc.storage_and_layout();
        let (gs, gl) = gc.storage_and_layout();
        let (bs, bl) = bc.storage_and_layout();
        let (xv, dy, bv) = (storage_f32(&xs, xl)?, storage_f32(&gs, gl)?, storage_f32(&bs, bl)?);
        let mut dz = vec![0f32; xv.len()];
        dz.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
            affine_act_grad(self.act, &xv[p * hw..(p + 1) * hw], 1.0, bv[p % c], &dy[p * hw..(p + 1) * hw], out)
        });
        let planes: Vec<f64> = dz.par_chunks(hw).map(|d| dot_sums(d, d, 0.0).0).collect();
        let mut db = vec![0f32; c];
        for (p, s) in planes.iter().enumerate() {
            db[p % c] += *s as f32;
        }
        let db = b.track_op().then(|| tensor_from_vec(db, b.dims(), b.device())).transpose()?;
        let dx = x.track_op().then(|| tensor_from_vec(dz, x.dims(), x.device())).transpose()?;
        Ok((dx, db))
    }
}

/// Inference-only `act(x * scale[c] + shift[c])` (batch norm with running statistics).
#[derive(Debug, Clone)]
pub struct ChannelAffineAct {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub act: Activation,
}

impl candle_core::CustomOp1 for ChannelAffineAct {
    fn name(&self) -> &'static str {
        "channel-affine-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let (c, hw) = match dims {
            [_, c, h, w] => (*c, h * w),
            [_, c] => (*c, 1),
            _ => candle_core::bail!("channel affine expects [N,C,H,W] or [N,C], got {dims:?}"),
        };
        if self.scale.len() != c || self.shift.len() != c {
            candle_core::bail!("channel affine: {c} channels but {} scales", self.scale.len());
        }
        let x = cpu_f32(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw.max(1)).enumerate().for_each(|(p, out)| {
            affine_act(self.act, &x[p * hw..(p + 1) * hw], self.scale[p % c], self.shift[p % c], out)
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

/// `act(x + bias[c])` for `x [N, C, H, W]`: fused on the CPU, candle ops elsewhere.
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    if super::use_fast(x.device(), false) {
        x.contiguous()?.apply_op2(bias, BiasAct { act })
    } else {
        let c = bias.dim(0)?;
        act.apply_tensor(&x.broadcast_add(&bias.reshape((1, c, 1, 1))?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_ops_and_gradients() {
        let dev = Device::Cpu;
        for act in [Activation::None, Activation::Relu, Activation::Gelu] {
            let x = Var::randn(0f32, 1.5, (3, 4, 5, 6), &dev).unwrap();
            let b = Var::randn(0f32, 1.0, 4, &dev).unwrap();
            let ours = x.apply_op2(&b, BiasAct { act }).unwrap();
            let theirs = act.apply_tensor(&x.broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap()).unwrap()).unwrap();
            let diff = |a: &Tensor, b: &Tensor| -> f32 {
                (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
            };
            assert!(diff(&ours, &theirs) < 1e-5, "{act:?} forward");
            let up = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let ga = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-4, "{act:?} dx");
            assert!(diff(ga.get(&b).unwrap(), gb.get(&b).unwrap()) < 1e-3, "{act:?} dbias");
        }
    }

    #[test]
    fn channel_affine_matches_broadcast_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (2, 3, 4, 5), &dev).unwrap();
        let (scale, shift) = (vec![0.5f32, -1.0, 2.0], vec![0.1f32, 0.0, -0.3]);
        for act in [Activation::None, Activation::Relu, Activation::Gelu] {
            let op = ChannelAffineAct { scale: scale.clone(), shift: shift.clone(), act };
            let ours = x.apply_op1_no_bwd(&op).unwrap();
            let s = Tensor::new(scale.as_slice(), &dev).unwrap().reshape((1, 3, 1, 1)).unwrap();
            let b = Tensor::new(shift.as_slice(), &dev).unwrap().reshape((1, 3, 1, 1)).unwrap();
            let theirs = act.apply_tensor(&x.broadcast_mul(&s).unwrap().broadcast_add(&b).unwrap()).unwrap();
            let d = (ours - theirs).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{act:?}");
        }
    }
}
