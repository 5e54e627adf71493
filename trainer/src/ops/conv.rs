//! A fast 2-D convolution for candle's CPU backend: forward, input gradient and weight
//! gradient, all as im2col/col2im + one GEMM per chunk of images.
//!
//! Why: candle 0.11's CPU conv2d is fine for inference but its backward uses a naive
//! conv_transpose2d loop, which made one training step of a small ResNet take ~4 s.
//! Here every pass is a single large GEMM (the `gemm` crate, the same one candle's
//! matmul uses), so the three passes cost about the same and reach GEMM speed.
//!
//! Layout: NCHW input, KCRS weights (candle's). Images are processed in chunks so that
//! every GEMM has at least a few thousand columns even on 3x3 feature maps; chunks run in
//! parallel on rayon's pool. The chunk partition depends only on the shapes and the
//! thread count, and per-chunk weight-gradient partials are summed in chunk order, so the
//! result is bit-for-bit reproducible (which `--resume` relies on).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{cpu_f32, tensor_from_vec};

/// Shapes of one convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Columns per GEMM that we aim for: enough to amortize packing the weights.
const TARGET_COLS: usize = 2048;

impl ConvGeom {
    /// Checks the shapes and computes the output size.
    pub fn new(
        x: (usize, usize, usize, usize),
        w: (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Self> {
        let (n, c, h, wd) = x;
        let (k, wc, kh, kw) = w;
        if wc != c {
            candle_core::bail!("conv2d: input has {c} channels but the weight expects {wc}");
        }
        if stride == 0 {
            candle_core::bail!("conv2d: stride must be at least 1");
        }
        if h + 2 * pad < kh || wd + 2 * pad < kw {
            candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd}");
        }
        let oh = (h + 2 * pad - kh) / stride + 1;
        let ow = (wd + 2 * pad - kw) / stride + 1;
        Ok(Self { n, c, h, w: wd, k, kh, kw, stride, pad, oh, ow })
    }

    /// A label for timing tables, e.g. `conv bwd 64x15x15 -> 128 k3 s1`.
    pub fn label(&self, pass: &str) -> String {
        if !super::timing::enabled() {
            return String::new();
        }
        format!("conv {pass} {}x{}x{} -> {} k{} s{}", self.c, self.h, self.w, self.k, self.kh, self.stride)
    }

    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    pub fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn ohw(&self) -> usize {
        self.oh * self.ow
    }

    fn in_image(&self) -> usize {
        self.c * self.h * self.w
    }

    fn out_image(&self) -> usize {
        self.k * self.ohw()
    }

    /// Images per chunk: balanced so that the chunk count is a multiple of the thread
    /// count and each GEMM has about [`TARGET_COLS`] columns.
    fn chunk_images(&self, threads: usize) -> usize {
        let threads = threads.max(1);
        let by_cols = (TARGET_COLS / self.ohw().max(1)).max(1);
        let mut chunks = self.n.div_ceil(by_cols);
        chunks = chunks.div_ceil(threads) * threads;
        self.n.div_ceil(chunks.max(1)).max(1)
    }

    /// True when im2col is the identity (1x1 kernel, stride 1, no padding).
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

/// Valid output-column range `[lo, hi)` for kernel offset `j` along one axis: the
/// positions whose input coordinate `o * stride + j - pad` falls inside `[0, len)`.
fn valid_range(out_len: usize, len: usize, j: usize, stride: usize, pad: usize) -> (usize, usize) {
    // o*stride + j >= pad  <=>  o >= ceil((pad - j) / stride)
    let lo = if j >= pad { 0 } else { (pad - j).div_ceil(stride) };
    // o*stride + j - pad < len  <=>  o*stride < len + pad - j
    let hi = if len + pad <= j { 0 } else { (len + pad - j).div_ceil(stride) };
    (lo.min(out_len), hi.min(out_len).max(lo.min(out_len)))
}

/// Fills `col` (`rows x nb*OH*OW`, row-major) from `nb` images of `x`.
fn im2col(g: &ConvGeom, x: &[f32], nb: usize, col: &mut [f32]) {
    let (ohw, cols) = (g.ohw(), nb * g.ohw());
    for c in 0..g.c {
        for i in 0..g.kh {
            let (ylo, yhi) = valid_range(g.oh, g.h, i, g.stride, g.pad);
            for j in 0..g.kw {
                let (xlo, xhi) = valid_range(g.ow, g.w, j, g.stride, g.pad);
                let r = (c * g.kh + i) * g.kw + j;
                let row = &mut col[r * cols..(r + 1) * cols];
                for b in 0..nb {
                    let plane = &x[(b * g.c + c) * g.h * g.w..][..g.h * g.w];
                    let dst = &mut row[b * ohw..(b + 1) * ohw];
                    for oy in 0..g.oh {
                        let line = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                        if oy < ylo || oy >= yhi || xlo >= xhi {
                            line.fill(0.0);
                            continue;
                        }
                        let iy = oy * g.stride + i - g.pad;
                        let src = &plane[iy * g.w..(iy + 1) * g.w];
                        line[..xlo].fill(0.0);
                        line[xhi..].fill(0.0);
                        let ix0 = xlo * g.stride + j - g.pad;
                        if g.stride == 1 {
                            line[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
                        } else {
                            for (o, v) in line[xlo..xhi].iter_mut().enumerate() {
                                *v = src[ix0 + o * g.stride];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds `col` back into `nb` images of `dx` (the adjoint of [`im2col`]).
fn col2im(g: &ConvGeom, col: &[f32], nb: usize, dx: &mut [f32]) {
    let (ohw, cols) = (g.ohw(), nb * g.ohw());
    for c in 0..g.c {
        for i in 0..g.kh {
            let (ylo, yhi) = valid_range(g.oh, g.h, i, g.stride, g.pad);
            for j in 0..g.kw {
                let (xlo, xhi) = valid_range(g.ow, g.w, j, g.stride, g.pad);
                if xlo >= xhi {
                    continue;
                }
                let r = (c * g.kh + i) * g.kw + j;
                let row = &col[r * cols..(r + 1) * cols];
                for b in 0..nb {
                    let plane = &mut dx[(b * g.c + c) * g.h * g.w..][..g.h * g.w];
                    let src = &row[b * ohw..(b + 1) * ohw];
                    for oy in ylo..yhi {
                        let iy = oy * g.stride + i - g.pad;
                        let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                        let line = &src[oy * g.ow + xlo..oy * g.ow + xhi];
                        let ix0 = xlo * g.stride + j - g.pad;
                        if g.stride == 1 {
                            for (d, s) in dst[ix0..ix0 + line.len()].iter_mut().zip(line) {
                                *d += s;
                            }
                        } else {
                            for (o, s) in line.iter().enumerate() {
                                dst[ix0 + o * g.stride] += s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Gathers `nb` images of an NCHW-like tensor `[nb, k, p]` into a `[k, nb*p]` matrix.
fn gather_kp(src: &[f32], nb: usize, k: usize, p: usize, dst: &mut [f32]) {
    let cols = nb * p;
    for b in 0..nb {
        for kk in 0..k {
            dst[kk * cols + b * p..kk * cols + (b + 1) * p]
                .copy_from_slice(&src[(b * k + kk) * p..(b * k + kk + 1) * p]);
        }
    }
}

/// Scatters a `[k, nb*p]` matrix back to `[nb, k, p]`.
fn scatter_kp(src: &[f32], nb: usize, k: usize, p: usize, dst: &mut [f32]) {
    let cols = nb * p;
    for b in 0..nb {
        for kk in 0..k {
            dst[(b * k + kk) * p..(b * k + kk + 1) * p]
                .copy_from_slice(&src[kk * cols + b * p..kk * cols + (b + 1) * p]);
        }
    }
}

/// A row-major matrix view for [`matmul`]: element `(i, j)` is at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// `dst[m x n] (row-major, packed) = a[m x k] * b[k x n]`, overwriting `dst`.
fn matmul(m: usize, n: usize, k: usize, a: View, b: View, dst: &mut [f32], par: Parallelism) {
    assert!(dst.len() >= m * n, "matmul: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    assert!(a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs, "matmul: lhs too small");
    assert!(b.data.len() > (k - 1) * b.rs + (n - 1) * b.cs, "matmul: rhs too small");
    // SAFETY: the asserts above check that every element the GEMM reads (the last one of
    // each operand is at (rows-1)*rs + (cols-1)*cs) and writes (m*n packed) lies inside
    // the slices, which outlive the call; dst does not alias a or b (&mut vs &).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Splits the batch into chunks and decides where the threads go: across chunks when
/// there are enough of them, inside the GEMM otherwise (batch-1 evaluation).
fn plan(g: &ConvGeom) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads();
    let nb = g.chunk_images(threads);
    let chunks = g.n.div_ceil(nb);
    let par = if chunks >= threads || threads == 1 { Parallelism::None } else { Parallelism::Rayon(threads) };
    (nb, par)
}

/// Forward convolution: `x [N,C,H,W]`, `w [K,C,KH,KW]` -> `[N,K,OH,OW]`.
pub fn conv2d_forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (nb, par) = plan(g);
    let (rows, ohw) = (g.rows(), g.ohw());
    let mut out = vec![0f32; g.n * g.out_image()];
    out.par_chunks_mut(nb * g.out_image()).enumerate().for_each(|(ci, out_chunk)| {
        let b0 = ci * nb;
        let nbc = out_chunk.len() / g.out_image();
        let cols = nbc * ohw;
        let xs = &x[b0 * g.in_image()..(b0 + nbc) * g.in_image()];
        let owned;
        let col: &[f32] = if g.is_pointwise() && nbc == 1 {
            xs
        } else {
            let mut buf = vec![0f32; rows * cols];
            im2col(g, xs, nbc, &mut buf);
            owned = buf;
            &owned
        };
        let wv = View { data: w, rs: rows, cs: 1 };
        let cv = View { data: col, rs: cols, cs: 1 };
        if nbc == 1 {
            matmul(g.k, cols, rows, wv, cv, out_chunk, par);
        } else {
            let mut tmp = vec![0f32; g.k * cols];
            matmul(g.k, cols, rows, wv, cv, &mut tmp, par);
            scatter_kp(&tmp, nbc, g.k, ohw, out_chunk);
        }
    });
    out
}

/// Backward convolution: returns `(dx, dw)` for upstream gradient `dy [N,K,OH,OW]`.
/// `dx` is `None` when `need_dx` is false (the network's input needs no gradient).
pub fn conv2d_backward(g: &ConvGeom, x: &[f32], w: &[f32], dy: &[f32], need_dx: bool) -> (Option<Vec<f32>>, Vec<f32>) {
    let (nb, par) = plan(g);
    let (rows, ohw) = (g.rows(), g.ohw());
    let chunks = g.n.div_ceil(nb);
    let mut dx = if need_dx { vec![0f32; g.n * g.in_image()] } else { Vec::new() };
    let dx_chunk_len = if need_dx { nb * g.in_image() } else { 1 };
    let mut dx_chunks: Vec<&mut [f32]> = dx.chunks_mut(dx_chunk_len).collect();
    dx_chunks.resize_with(chunks, Default::default);
    let partials: Vec<Vec<f32>> = dx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(ci, dx_chunk)| {
            let b0 = ci * nb;
            let nbc = nb.min(g.n - b0);
            let cols = nbc * ohw;
            let xs = &x[b0 * g.in_image()..(b0 + nbc) * g.in_image()];
            let dys = &dy[b0 * g.out_image()..(b0 + nbc) * g.out_image()];
            let gathered;
            let dyc: &[f32] = if nbc == 1 {
                dys
            } else {
                let mut buf = vec![0f32; g.k * cols];
                gather_kp(dys, nbc, g.k, ohw, &mut buf);
                gathered = buf;
                &gathered
            };
            let mut col = vec![0f32; rows * cols];
            if g.is_pointwise() && nbc == 1 {
                col.copy_from_slice(xs);
            } else {
                im2col(g, xs, nbc, &mut col);
            }
            // dW[K x R] = dY[K x cols] * col^T[cols x R]
            let mut dw = vec![0f32; g.k * rows];
            let dyv = View { data: dyc, rs: cols, cs: 1 };
            matmul(g.k, rows, cols, dyv, View { data: &col, rs: 1, cs: cols }, &mut dw, par);
            if need_dx {
                // dcol[R x cols] = W^T[R x K] * dY[K x cols], reusing the col buffer.
                matmul(rows, cols, g.k, View { data: w, rs: 1, cs: rows }, dyv, &mut col, par);
                col2im(g, &col, nbc, dx_chunk);
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; g.k * rows];
    for p in &partials {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    (need_dx.then_some(dx), dw)
}

/// The candle custom op: `x.apply_op2(&w, FastConv2d { .. })`.
#[derive(Debug, Clone, Copy)]
pub struct FastConv2d {
    pub stride: usize,
    pub padding: usize,
}

impl FastConv2d {
    fn geom(&self, x: &Layout, w: &Layout) -> candle_core::Result<ConvGeom> {
        ConvGeom::new(x.shape().dims4()?, w.shape().dims4()?, self.stride, self.padding)
    }
}

impl CustomOp2 for FastConv2d {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geom(l1, l2)?;
        let out = super::timing::timed(g.label("fwd"), || -> candle_core::Result<_> {
            Ok(conv2d_forward(&g, cpu_f32(s1, l1)?, cpu_f32(s2, l2)?))
        })?;
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.k, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let g = ConvGeom::new(x.dims4()?, w.dims4()?, self.stride, self.padding)?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (xv, wv, gv) = (super::storage_f32(&xs, xl)?, super::storage_f32(&ws, wl)?, super::storage_f32(&gs, gl)?);
        let (dx, dw) = super::timing::timed(g.label("bwd"), || conv2d_backward(&g, xv, wv, gv, x.track_op()));
        let dx = dx.map(|v| tensor_from_vec(v, x.dims(), x.device())).transpose()?;
        let dw = tensor_from_vec(dw, w.dims(), w.device())?;
        Ok((dx, Some(dw)))
    }
}

/// `conv2d(x, w)`: the fast CPU kernels on the CPU, cuDNN forward and backward on CUDA
/// (in the compute dtype of [`super::compute_dtype`], result in f32), candle's own conv2d
/// when `trainer bench` asks for it.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    if super::use_fast(x.device(), true) && x.dtype() == candle_core::DType::F32 {
        x.apply_op2(w, FastConv2d { stride, padding })
    } else if x.device().is_cuda() && super::backend() != super::Backend::Candle {
        let op = super::device_conv::DeviceConv2d { stride, padding };
        let dt = super::compute_dtype();
        if dt == x.dtype() && dt == w.dtype() {
            x.contiguous()?.apply_op2(&w.contiguous()?, op)
        } else {
            let y = x.to_dtype(dt)?.contiguous()?.apply_op2(&w.to_dtype(dt)?.contiguous()?, op)?;
            y.to_dtype(x.dtype())
        }
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(&b).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f32::max)
    }

    /// Forward value and both gradients against candle's conv2d, on random inputs.
    #[allow(clippy::too_many_arguments)]
    fn check(n: usize, c: usize, h: usize, w: usize, k: usize, ks: usize, stride: usize, pad: usize) {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let wt = Var::randn(0f32, 0.5, (k, c, ks, ks), &dev).unwrap();
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), stride, pad).unwrap();
        let theirs = x.conv2d(&wt, pad, stride, 1, 1).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let what = format!("n{n} c{c} {h}x{w} k{k} {ks}x{ks} s{stride} p{pad}");
        assert!(max_rel_err(&ours, &theirs) < 1e-4, "forward {what}");
        // A random upstream gradient makes every output position matter.
        let up = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
        let g_ours = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("dx", &x), ("dw", &wt)] {
            let a = g_ours.get(v).unwrap();
            let b = g_theirs.get(v).unwrap();
            let e = max_rel_err(a, b);
            assert!(e < 1e-4, "{name} {what}: relative error {e}");
        }
    }

    /// Direct-loop reference: forward, dx and dw for upstream gradient `dy`.
    fn naive(g: &ConvGeom, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut y = vec![0f32; g.n * g.k * g.oh * g.ow];
        let mut dx = vec![0f32; x.len()];
        let mut dw = vec![0f32; w.len()];
        for n in 0..g.n {
            for k in 0..g.k {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let o = ((n * g.k + k) * g.oh + oy) * g.ow + ox;
                        for c in 0..g.c {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (oy * g.stride + i) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + j) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize;
                                    let wi = ((k * g.c + c) * g.kh + i) * g.kw + j;
                                    y[o] += x[xi] * w[wi];
                                    dx[xi] += w[wi] * dy[o];
                                    dw[wi] += x[xi] * dy[o];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f32::max)
    }

    /// Our kernels against the direct loops, for any shape (including those where
    /// candle's own conv backward fails).
    #[allow(clippy::too_many_arguments)]
    fn check_naive(n: usize, c: usize, h: usize, w: usize, k: usize, ks: usize, stride: usize, pad: usize) {
        let g = ConvGeom::new((n, c, h, w), (k, c, ks, ks), stride, pad).unwrap();
        let mut s = 7u64;
        let mut rnd = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    s = crate::data::loader::mix(s);
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        };
        let x = rnd(n * c * h * w);
        let wt = rnd(k * c * ks * ks);
        let dy = rnd(n * k * g.oh * g.ow);
        let (y_ref, dx_ref, dw_ref) = naive(&g, &x, &wt, &dy);
        let what = format!("n{n} c{c} {h}x{w} k{k} {ks}x{ks} s{stride} p{pad}");
        assert!(rel_err(&conv2d_forward(&g, &x, &wt), &y_ref) < 1e-4, "forward {what}");
        let (dx, dw) = conv2d_backward(&g, &x, &wt, &dy, true);
        assert!(rel_err(&dx.unwrap(), &dx_ref) < 1e-4, "dx {what}");
        assert!(rel_err(&dw, &dw_ref) < 1e-4, "dw {what}");
    }

    #[test]
    fn matches_direct_loops_on_all_shapes() {
        for &(n, c, h, w, k, ks, s, p) in &[
            (3, 5, 9, 9, 7, 3, 1, 1),
            (4, 6, 10, 7, 5, 3, 2, 0),
            (2, 3, 11, 11, 4, 3, 2, 1),
            (5, 4, 8, 9, 6, 3, 3, 2),
            (3, 7, 7, 5, 9, 1, 2, 0),
            (4, 3, 8, 8, 12, 2, 1, 0),
            (33, 3, 13, 13, 6, 3, 1, 1),
            (2, 2, 4, 4, 3, 5, 1, 2),
        ] {
            check_naive(n, c, h, w, k, ks, s, p);
        }
    }

    #[test]
    fn matches_candle_3x3_same_padding() {
        check(3, 5, 9, 9, 7, 3, 1, 1);
        check(17, 8, 8, 8, 16, 3, 1, 1);
    }

    #[test]
    fn matches_candle_strided_and_unpadded() {
        check(2, 3, 11, 11, 4, 3, 2, 1);
        check(4, 6, 9, 7, 5, 3, 2, 0);
        check(2, 4, 9, 9, 3, 3, 1, 0);
        // (4, 6, 10, 7, 5, 3, 2, 0) is covered by the direct-loop test only: candle
        // 0.11's own conv2d backward returns a gradient of the wrong shape there.
    }

    #[test]
    fn matches_candle_1x1_and_2x2() {
        check(5, 7, 6, 6, 9, 1, 1, 0);
        check(3, 7, 7, 5, 9, 1, 2, 0);
        check(4, 3, 8, 8, 12, 2, 1, 0);
        check(1, 3, 5, 5, 2, 1, 1, 0);
    }

    #[test]
    fn matches_candle_on_odd_sizes_and_large_batches() {
        check(33, 3, 13, 13, 6, 3, 1, 1);
        check(70, 4, 3, 3, 8, 3, 1, 1);
        check(9, 2, 1, 1, 3, 1, 1, 0);
    }

    #[test]
    fn input_without_gradient_skips_dx() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap();
        let y = conv2d(&x, &w, 1, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w).is_some());
        assert!(grads.get(&x).is_none());
    }

    #[test]
    fn valid_range_covers_exactly_the_in_bounds_outputs() {
        for len in 1..8 {
            for pad in 0..3 {
                for stride in 1..4 {
                    for j in 0..4 {
                        if len + 2 * pad < j + 1 {
                            continue;
                        }
                        let out = (len + 2 * pad - (j + 1)) / stride + 1;
                        let (lo, hi) = valid_range(out, len, j, stride, pad);
                        for o in 0..out {
                            let pos = (o * stride + j) as isize - pad as isize;
                            let inside = pos >= 0 && (pos as usize) < len;
                            assert_eq!(inside, o >= lo && o < hi, "len{len} pad{pad} s{stride} j{j} o{o}");
                        }
                    }
                }
            }
        }
    }
}
