//! The convolution op for training on a GPU: forward, input gradient and weight
//! gradient through cuDNN (cudarc's bindings, as candle custom ops).
//!
//! Why: candle 0.11 runs the forward conv through cuDNN (feature `cudnn`) but its
//! backward through `conv_transpose2d` and a conv with the batch as channels, on naive
//! kernels; that makes a training step several times slower than its forward pass.
//!
//! Each op also has a CPU implementation (the fast kernels of [`super::conv`]), so the
//! backward wiring is tested on every build; `trainer gpu-check` compares the CUDA
//! results with those CPU ones on a real GPU. f32 runs with exact f32 math (no TF32);
//! f16 and bf16 run on tensor cores with f32 accumulation.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::conv::{conv2d_backward, conv2d_forward, ConvGeom};
use super::cpu_f32;

/// `y = conv2d(x, w)`; inputs `(x, w)`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceConv2d {
    pub stride: usize,
    pub padding: usize,
}

/// `dx` from `(w, dy)`.
#[derive(Debug, Clone, Copy)]
pub struct ConvBackwardData {
    pub geom: ConvGeom,
}

/// `dw` from `(x, dy)`.
#[derive(Debug, Clone, Copy)]
pub struct ConvBackwardFilter {
    pub geom: ConvGeom,
}

impl CustomOp2 for DeviceConv2d {
    fn name(&self) -> &'static str {
        "device-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(l1.shape().dims4()?, l2.shape().dims4()?, self.stride, self.padding)?;
        let y = conv2d_forward(&g, cpu_f32(s1, l1)?, cpu_f32(s2, l2)?);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.k, g.oh, g.ow))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let g = ConvGeom::new(l1.shape().dims4()?, l2.shape().dims4()?, self.stride, self.padding)?;
        let y = cudnn::run(cudnn::Pass::Forward, &g, (s1, l1), (s2, l2))?;
        Ok((y, Shape::from((g.n, g.k, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let geom = ConvGeom::new(x.dims4()?, w.dims4()?, self.stride, self.padding)?;
        let dx = if x.track_op() { Some(w.apply_op2_no_bwd(&grad, &ConvBackwardData { geom })?) } else { None };
        let dw = x.apply_op2_no_bwd(&grad, &ConvBackwardFilter { geom })?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp2 for ConvBackwardData {
    fn name(&self) -> &'static str {
        "conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        w: &CpuStorage,
        wl: &Layout,
        dy: &CpuStorage,
        dyl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        // The CPU kernel computes both gradients from x; dx does not depend on x.
        let zeros = vec![0f32; g.n * g.c * g.h * g.w];
        let (dx, _) = conv2d_backward(g, &zeros, cpu_f32(w, wl)?, cpu_f32(dy, dyl)?, true);
        let Some(dx) = dx else { candle_core::bail!("conv backward: no input gradient") };
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        dy: &candle_core::CudaStorage,
        dyl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.geom;
        let dx = cudnn::run(cudnn::Pass::BackwardData, g, (w, wl), (dy, dyl))?;
        Ok((dx, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for ConvBackwardFilter {
    fn name(&self) -> &'static str {
        "conv2d-backward-filter"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        dy: &CpuStorage,
        dyl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let zeros = vec![0f32; g.k * g.c * g.kh * g.kw];
        let (_, dw) = conv2d_backward(g, cpu_f32(x, xl)?, &zeros, cpu_f32(dy, dyl)?, false);
        Ok((CpuStorage::F32(dw), Shape::from((g.k, g.c, g.kh, g.kw))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        dy: &candle_core::CudaStorage,
        dyl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.geom;
        let dw = cudnn::run(cudnn::Pass::BackwardFilter, g, (x, xl), (dy, dyl))?;
        Ok((dw, Shape::from((g.k, g.c, g.kh, g.kw))))
    }
}

/// Relative errors of this device's conv (forward, dx, dw) against the CPU kernels on
/// random data, per shape: `(label, forward, dx, dw)`. `trainer gpu-check` runs it on CUDA.
pub fn compare_with_cpu(
    dev: &candle_core::Device,
    shapes: &[(usize, usize, usize, usize, usize)],
) -> candle_core::Result<Vec<(String, f32, f32, f32)>> {
    use candle_core::Var;
    let mut rows = Vec::new();
    for &(n, c, hw, k, ks) in shapes {
        let pad = ks / 2;
        let cpu = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (n, c, hw, hw), &cpu)?;
        let w = Tensor::randn(0f32, (1.0 / (c * ks * ks) as f64).sqrt() as f32, (k, c, ks, ks), &cpu)?;
        let g = ConvGeom::new((n, c, hw, hw), (k, c, ks, ks), 1, pad)?;
        let dy = Tensor::randn(0f32, 1.0, (n, k, g.oh, g.ow), &cpu)?;
        let (xv, wv, dyv) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
            dy.flatten_all()?.to_vec1::<f32>()?,
        );
        let y_cpu = conv2d_forward(&g, &xv, &wv);
        let (dx_cpu, dw_cpu) = conv2d_backward(&g, &xv, &wv, &dyv, true);
        let xd = Var::from_tensor(&x.to_device(dev)?)?;
        let wd = Var::from_tensor(&w.to_device(dev)?)?;
        let y = xd.as_tensor().apply_op2(wd.as_tensor(), DeviceConv2d { stride: 1, padding: pad })?;
        let grads = (y.clone() * dy.to_device(dev)?)?.sum_all()?.backward()?;
        let dx = grads.get(xd.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no dx".into()))?;
        let dw = grads.get(wd.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no dw".into()))?;
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> { t.to_device(&cpu)?.flatten_all()?.to_vec1::<f32>() };
        rows.push((
            format!("{c}x{hw}x{hw} -> {k} k{ks} (batch {n})"),
            rel_err(&host(&y)?, &y_cpu),
            rel_err(&host(dx)?, dx_cpu.as_deref().unwrap_or(&[])),
            rel_err(&host(dw)?, &dw_cpu),
        ));
    }
    Ok(rows)
}

/// Largest |a - b| over the largest |b| (infinite when the lengths differ).
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[cfg(feature = "cuda")]
mod cudnn {
    //! cuDNN calls. Descriptors are made per call (microseconds); the algorithm choice,
    //! cuDNN's heuristic, is cached per pass, shape and dtype.

    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::{
        self as cu, sys, ConvDescriptor, Cudnn, CudnnDataType, FilterDescriptor, TensorDescriptor,
    };
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits};
    use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
    use candle_core::{CudaStorage, DType, Layout, WithDType};
    use half::{bf16, f16};

    use super::ConvGeom;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Pass {
        Forward,
        BackwardData,
        BackwardFilter,
    }

    type Cache<A> = RefCell<HashMap<(ConvGeom, DType), A>>;

    thread_local! {
        static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
        static FWD: Cache<sys::cudnnConvolutionFwdAlgo_t> = RefCell::new(HashMap::new());
        static BWD_DATA: Cache<sys::cudnnConvolutionBwdDataAlgo_t> = RefCell::new(HashMap::new());
        static BWD_FILTER: Cache<sys::cudnnConvolutionBwdFilterAlgo_t> = RefCell::new(HashMap::new());
    }

    fn wrap<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> candle_core::Error {
        move |e| candle_core::Error::Msg(format!("cuDNN {what}: {e:?}"))
    }

    fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
        HANDLES.with(|h| {
            if let Some(c) = h.borrow().get(&dev.id()) {
                return Ok(c.clone());
            }
            let c = Cudnn::new(dev.cuda_stream()).map_err(wrap("handle"))?;
            h.borrow_mut().insert(dev.id(), c.clone());
            Ok(c)
        })
    }

    struct Descs<T: CudnnDataType> {
        conv: ConvDescriptor<f32>,
        x: TensorDescriptor<T>,
        w: FilterDescriptor<T>,
        y: TensorDescriptor<T>,
    }

    fn descs<T: CudnnDataType + WithDType>(c: &Arc<Cudnn>, g: &ConvGeom) -> candle_core::Result<Descs<T>> {
        let i = |v: usize| v as i32;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let mut conv = c
            .create_conv2d::<f32>(
                [i(g.pad); 2],
                [i(g.stride); 2],
                [1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(wrap("conv descriptor"))?;
        // f32: exact f32 FMA math (no TF32), so gradients match the CPU's; half types:
        // tensor cores, f32 accumulation (the compute type above).
        let math = if T::DTYPE == DType::F32 {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
        };
        conv.set_math_type(math).map_err(wrap("math type"))?;
        Ok(Descs {
            conv,
            x: c.create_4d_tensor::<T>(nchw, [i(g.n), i(g.c), i(g.h), i(g.w)]).map_err(wrap("x descriptor"))?,
            w: c.create_4d_filter::<T>(nchw, [i(g.k), i(g.c), i(g.kh), i(g.kw)]).map_err(wrap("w descriptor"))?,
            y: c.create_4d_tensor::<T>(nchw, [i(g.n), i(g.k), i(g.oh), i(g.ow)]).map_err(wrap("y descriptor"))?,
        })
    }

    fn view<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
        match l.contiguous_offsets() {
            Some((start, end)) => Ok(s.as_cuda_slice::<T>()?.slice(start..end)),
            None => candle_core::bail!("cuDNN conv: expected a contiguous tensor"),
        }
    }

    /// The algorithm for `key`, chosen once by cuDNN's heuristic.
    fn algo<A: Copy + 'static, E: std::fmt::Debug>(
        cache: &'static std::thread::LocalKey<Cache<A>>,
        key: (ConvGeom, DType),
        pick: impl FnOnce() -> Result<A, E>,
    ) -> candle_core::Result<A> {
        if let Some(a) = cache.with(|m| m.borrow().get(&key).copied()) {
            return Ok(a);
        }
        let a = pick().map_err(wrap("algorithm choice"))?;
        cache.with(|m| m.borrow_mut().insert(key, a));
        Ok(a)
    }

    /// Runs one pass; `a` and `b` are `(x, w)`, `(w, dy)` or `(x, dy)` by pass.
    pub fn run(
        pass: Pass,
        g: &ConvGeom,
        a: (&CudaStorage, &Layout),
        b: (&CudaStorage, &Layout),
    ) -> candle_core::Result<CudaStorage> {
        match a.0.dtype() {
            DType::F32 => run_typed::<f32>(pass, g, a, b),
            DType::F16 => run_typed::<f16>(pass, g, a, b),
            DType::BF16 => run_typed::<bf16>(pass, g, a, b),
            d => candle_core::bail!("cuDNN conv: unsupported dtype {d:?}"),
        }
    }

    fn run_typed<T>(
        pass: Pass,
        g: &ConvGeom,
        (sa, la): (&CudaStorage, &Layout),
        (sb, lb): (&CudaStorage, &Layout),
    ) -> candle_core::Result<CudaStorage>
    where
        T: CudnnDataType + CudaDType + DeviceRepr + ValidAsZeroBits + WithDType,
    {
        let dev = &sa.device;
        let c = handle(dev)?;
        let d = descs::<T>(&c, g)?;
        let (va, vb) = (view::<T>(sa, la)?, view::<T>(sb, lb)?);
        let one_zero = (T::from_f64(1.0), T::from_f64(0.0));
        let key = (*g, T::DTYPE);
        let out_len = match pass {
            Pass::Forward => g.n * g.k * g.oh * g.ow,
            Pass::BackwardData => g.n * g.c * g.h * g.w,
            Pass::BackwardFilter => g.k * g.c * g.kh * g.kw,
        };
        let mut out: CudaSlice<T> = dev.alloc_zeros::<T>(out_len)?;
        match pass {
            Pass::Forward => {
                let op = cu::ConvForward { conv: &d.conv, x: &d.x, w: &d.w, y: &d.y };
                let a = algo(&FWD, key, || op.pick_algorithm())?;
                let size = op.get_workspace_size(a).map_err(wrap("forward workspace"))?;
                let mut work = dev.alloc_zeros::<u8>(size.max(1))?;
                // SAFETY: the views and `out` have exactly the element counts and dtype the
                // descriptors were made with (from the same geometry), all on this stream.
                unsafe { op.launch(a, Some(&mut work), one_zero, &va, &vb, &mut out) }.map_err(wrap("forward"))?;
            }
            Pass::BackwardData => {
                let op = cu::ConvBackwardData { conv: &d.conv, dx: &d.x, w: &d.w, dy: &d.y };
                let a = algo(&BWD_DATA, key, || op.pick_algorithm())?;
                let size = op.get_workspace_size(a).map_err(wrap("backward-data workspace"))?;
                let mut work = dev.alloc_zeros::<u8>(size.max(1))?;
                // SAFETY: `out` is dx (n*c*h*w), `va` the filter, `vb` dy, as described.
                unsafe { op.launch(a, Some(&mut work), one_zero, &mut out, &va, &vb) }
                    .map_err(wrap("backward data"))?;
            }
            Pass::BackwardFilter => {
                let op = cu::ConvBackwardFilter { conv: &d.conv, x: &d.x, dw: &d.w, dy: &d.y };
                let a = algo(&BWD_FILTER, key, || op.pick_algorithm())?;
                let size = op.get_workspace_size(a).map_err(wrap("backward-filter workspace"))?;
                let mut work = dev.alloc_zeros::<u8>(size.max(1))?;
                // SAFETY: `va` is x, `out` dw (k*c*kh*kw), `vb` dy, as described.
                unsafe { op.launch(a, Some(&mut work), one_zero, &va, &mut out, &vb) }
                    .map_err(wrap("backward filter"))?;
            }
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_op_gradients_match_the_cpu_kernels_on_the_cpu() {
        // On the CPU the op runs our CPU kernels, so this checks the backward wiring
        // (which input each gradient goes to, dx skipped when untracked).
        let rows = compare_with_cpu(&candle_core::Device::Cpu, &[(3, 5, 9, 7, 3), (2, 4, 6, 3, 1)]).unwrap();
        for (label, f, dx, dw) in rows {
            assert!(f < 1e-6 && dx < 1e-6 && dw < 1e-6, "{label}: {f} {dx} {dw}");
        }
    }

    #[test]
    fn device_op_matches_candle_conv_and_its_gradients() {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (5, 3, 3, 3), &dev).unwrap()).unwrap();
        let ours = x.as_tensor().apply_op2(w.as_tensor(), DeviceConv2d { stride: 1, padding: 1 }).unwrap();
        let theirs = x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(rel_err(&flat(&ours), &flat(&theirs)) < 1e-5);
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let (a, b) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(rel_err(&flat(a), &flat(b)) < 1e-4);
        }
    }
}
