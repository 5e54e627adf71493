//! Max pooling with `kernel == stride` (floor mode), remembering where each maximum was
//! so the backward pass is a scatter.
//!
//! candle's own max-pool backward upsamples the gradient with nearest-neighbour
//! interpolation, which assigns rows to the wrong window when the input size is not a
//! multiple of the kernel (31 -> 15 in the airbench net); this op is exact for any size.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, storage_f32, tensor_from_vec};

#[derive(Debug, Clone)]
pub struct MaxPool {
    pub k: usize,
    argmax: Arc<Mutex<Vec<u32>>>,
}

impl MaxPool {
    pub fn new(k: usize) -> Self {
        Self { k, argmax: Arc::new(Mutex::new(Vec::new())) }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let k = self.k;
        if k == 0 || h < k || w < k {
            candle_core::bail!("max pool: kernel {k} does not fit a {h}x{w} input");
        }
        let (oh, ow) = (h / k, w / k);
        let x = cpu_f32(s, l)?;
        let mut out = vec![0f32; n * c * oh * ow];
        let mut arg = vec![0u32; out.len()];
        out.par_chunks_mut(oh * ow).zip(arg.par_chunks_mut(oh * ow)).enumerate().for_each(|(p, (o, a))| {
            let plane = &x[p * h * w..(p + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = (oy * k) * w + ox * k;
                    for i in 0..k {
                        for j in 0..k {
                            let idx = (oy * k + i) * w + ox * k + j;
                            if plane[idx] > best {
                                best = plane[idx];
                                at = idx;
                            }
                        }
                    }
                    o[oy * ow + ox] = best;
                    a[oy * ow + ox] = at as u32;
                }
            }
        });
        if let Ok(mut slot) = self.argmax.lock() {
            *slot = arg;
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (n, c, h, w) = x.dims4()?;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let dy = storage_f32(&gs, gl)?;
        let arg = self.argmax.lock().map_err(|_| candle_core::Error::Msg("max pool state poisoned".into()))?;
        if arg.len() != dy.len() {
            candle_core::bail!("max pool backward does not match its forward");
        }
        let per = dy.len() / (n * c).max(1);
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w).enumerate().for_each(|(p, d)| {
            for (g, &a) in dy[p * per..(p + 1) * per].iter().zip(&arg[p * per..(p + 1) * per]) {
                d[a as usize] += g;
            }
        });
        Ok(Some(tensor_from_vec(dx, x.dims(), x.device())?))
    }
}

/// `k x k` max pooling with stride `k`: the fast op on the CPU, candle's elsewhere.
pub fn max_pool(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    if super::use_fast(x.device(), false) {
        x.contiguous()?.apply_op1(MaxPool::new(k))
    } else {
        max_pool_candle(x, k)
    }
}

/// Max pooling from candle ops with PyTorch's gradient: the input is cropped to a
/// multiple of `k` (the rows and columns floor mode drops), its `k x k` windows laid
/// out along the last axis, and each window's output is its argmax element picked by a
/// one-hot mask, so the whole gradient goes to that one element, ties included (bf16
/// convolutions make ties common on a GPU; `max` would hand the full gradient to every
/// tied element).
///
/// Not candle's `max_pool2d`: its backward scales each gradient by the *fraction* of the
/// window that holds the maximum (1/4 for a 2x2 window, where it should be 1) and maps
/// rows to windows by nearest-neighbour upsampling, exact only for sizes divisible by
/// `k` (31 -> 15 sent most gradients to the wrong window). Every GPU run trained through
/// it until the parity harness (`benches/parity`) showed it.
fn max_pool_candle(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if k == 0 || h < k || w < k {
        candle_core::bail!("max pool: kernel {k} does not fit a {h}x{w} input");
    }
    let (oh, ow) = (h / k, w / k);
    let windows = x
        .narrow(2, 0, oh * k)?
        .narrow(3, 0, ow * k)?
        .contiguous()?
        .reshape((n, c, oh, k, ow, k))?
        .permute((0, 1, 2, 4, 3, 5))?
        .contiguous()?
        .reshape((n, c, oh, ow, k * k))?;
    let first_max = windows.argmax_keepdim(4)?;
    let slots = Tensor::arange(0u32, (k * k) as u32, x.device())?.reshape((1, 1, 1, 1, k * k))?;
    let one_hot = slots.broadcast_eq(&first_max)?.to_dtype(x.dtype())?;
    (windows * one_hot)?.sum(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_a_direct_reference_on_odd_sizes() {
        check_against_reference(|x| x.contiguous().unwrap().apply_op1(MaxPool::new(2)).unwrap());
    }

    #[test]
    fn the_candle_path_matches_the_reference_on_odd_sizes() {
        check_against_reference(|x| max_pool_candle(x, 2).unwrap());
    }

    #[test]
    fn the_candle_path_gives_a_tied_window_one_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((1, 2, 5, 4), candle_core::DType::F32, &dev).unwrap()).unwrap();
        let y = max_pool_candle(&x, 2).unwrap();
        let dx = y.sum_all().unwrap().backward().unwrap().get(&x).unwrap().flatten_all().unwrap();
        let dx = dx.to_vec1::<f32>().unwrap();
        // 2 channels x 2 x 2 windows, each passing a gradient of 1 to exactly one element.
        assert_eq!(dx.iter().sum::<f32>(), 8.0);
        assert!(dx.iter().all(|&g| g == 0.0 || g == 1.0), "{dx:?}");
    }

    /// Values and gradients of a 2x2 pool on a 7x5 input against a direct loop.
    fn check_against_reference(pool: impl Fn(&Tensor) -> Tensor) {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 7, 5), &dev).unwrap();
        let y = pool(x.as_tensor());
        assert_eq!(y.dims(), &[2, 3, 3, 2]);
        let up = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
        let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let uv = up.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut want = vec![0f32; xv.len()];
        for p in 0..6 {
            for oy in 0..3 {
                for ox in 0..2 {
                    let mut best = (f32::NEG_INFINITY, 0);
                    for i in 0..2 {
                        for j in 0..2 {
                            let idx = p * 35 + (oy * 2 + i) * 5 + ox * 2 + j;
                            if xv[idx] > best.0 {
                                best = (xv[idx], idx);
                            }
                        }
                    }
                    let o = p * 6 + oy * 2 + ox;
                    assert_eq!(yv[o], best.0);
                    want[best.1] += uv[o];
                }
            }
        }
        assert_eq!(dx, want);
    }
}
