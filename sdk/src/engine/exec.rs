//! Running a planned program over one batch: the f32 path and the int8 path. Both read
//! weights in place from the model's bytes and write only into the session's buffers.

use rayon::prelude::*;

use super::plan::{split_io, Plan};
use super::program::{ConvKernel, Kernel, Step};
use crate::artifact::{Activation, QuantParams};
use crate::kernels::gemm_f32::{matmul, matmul_strided};
use crate::kernels::qgemm::{pack, pack_block, packed_len, qgemm, wbuf_len};
use crate::kernels::{act, im2col::im2col_images, pool};
use crate::{Error, Result};

fn bytes_as<'a, T: bytemuck::Pod>(bytes: &'a [u8], r: &std::ops::Range<usize>) -> Result<&'a [T]> {
    bytes
        .get(r.clone())
        .and_then(|b| bytemuck::try_cast_slice(b).ok())
        .ok_or_else(|| Error::Input("internal: weight range outside the model".into()))
}

/// Input value ranges of a step (at most two inputs).
fn input_ranges(plan: &Plan, step: &Step, batch: usize) -> [Option<std::ops::Range<usize>>; 2] {
    let r = |k: usize| step.info.inputs.get(k).map(|&v| plan.range(v, batch));
    [r(0), r(1)]
}

/// `[C][b][HW]` -> `[(C, HW)][b]`.
fn flatten<T: Copy>(x: &[T], c: usize, hw: usize, batch: usize, out: &mut [T]) {
    for ci in 0..c {
        for n in 0..batch {
            let src = x.get((ci * batch + n) * hw..(ci * batch + n + 1) * hw).unwrap_or(&[]);
            for (p, &v) in src.iter().enumerate() {
                if let Some(d) = out.get_mut((ci * hw + p) * batch + n) {
                    *d = v;
                }
            }
        }
    }
}

/// Runs the f32 program. The input must already be in value 0's range of `arena`
/// (CNHW). `observe(node, value)` sees every node's output (calibration uses it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_f32(
    bytes: &[u8],
    steps: &[Step],
    plan: &Plan,
    arena: &mut [f32],
    scratch: &mut [f32],
    batch: usize,
    threads: usize,
    observe: &mut crate::session::Observer<'_>,
) -> Result<()> {
    for &i in &plan.order {
        let step = steps.get(i).ok_or_else(|| Error::Input("internal: bad plan".into()))?;
        let ([a, b], out) = split_io(arena, input_ranges(plan, step, batch), plan.range(i + 1, batch))?;
        let [c, h, w] = step.info.input_shapes.first().copied().unwrap_or([0; 3]);
        match &step.kernel {
            Kernel::Conv(k) => conv_f32(bytes, k, a, out, scratch, batch, threads)?,
            Kernel::MaxPool { win, act: f, .. } => {
                pool::max_pool(a, c * batch, win, out);
                act::apply_slice(*f, out);
            }
            Kernel::AvgPool { win, act: f, .. } => pool::avg_pool(a, c * batch, win, 0.0, |j, v| {
                if let Some(o) = out.get_mut(j) {
                    *o = act::apply(*f, v);
                }
            }),
            Kernel::Add { act: f, .. } => {
                for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                    *o = act::apply(*f, x + y);
                }
            }
            Kernel::Flatten => flatten(a, c, h * w, batch, out),
            Kernel::Scale { factor, act: f, .. } => {
                for (o, &x) in out.iter_mut().zip(a) {
                    *o = act::apply(*f, factor * x);
                }
            }
        }
        observe(i, out);
    }
    Ok(())
}

/// Images per im2col block: enough columns for efficient GEMMs, few enough that the
/// block (about 1 MB) stays in cache between im2col and GEMM.
pub(crate) fn images_per_chunk(k: usize, plane: usize, batch: usize) -> usize {
    const BLOCK_ELEMENTS: usize = 1 << 18;
    (BLOCK_ELEMENTS / (k * plane).max(1)).clamp(1, batch.max(1))
}

fn conv_f32(
    bytes: &[u8],
    k: &ConvKernel,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    batch: usize,
    threads: usize,
) -> Result<()> {
    let weight: &[f32] = bytes_as(bytes, &k.weight)?;
    let bias: &[f32] = bytes_as(bytes, &k.bias)?;
    let ncols = batch * k.win.out_plane();
    let (groups, kg) = (k.groups.max(1), k.k());
    let (og, cg) = (k.cout / groups, k.cin / groups);
    let in_group = cg * batch * k.win.in_plane();
    let plane = k.win.out_plane();
    for g in 0..groups {
        let wg = weight.get(g * og * kg..(g + 1) * og * kg).unwrap_or(&[]);
        let dst = out.get_mut(g * og * ncols..(g + 1) * og * ncols).unwrap_or(&mut []);
        if k.is_pointwise() {
            matmul(og, ncols, kg, wg, x, dst, threads)?;
            continue;
        }
        let xs = x.get(g * in_group..(g + 1) * in_group).unwrap_or(&[]);
        let per = images_per_chunk(kg, plane, batch);
        for b0 in (0..batch).step_by(per) {
            let nb = per.min(batch - b0);
            let cols =
                scratch.get_mut(..kg * nb * plane).ok_or_else(|| Error::Input("internal: scratch too small".into()))?;
            im2col_images(xs, cg, batch, b0..b0 + nb, &k.win, 0.0, cols);
            let d = dst.get_mut(b0 * plane..).unwrap_or(&mut []);
            matmul_strided(og, nb * plane, kg, wg, cols, d, ncols, threads)?;
        }
    }
    for (row, &b) in out.chunks_exact_mut(ncols.max(1)).zip(bias) {
        act::bias_act(k.act, b, row);
    }
    Ok(())
}

/// How an int8 conv stores its real-valued results: as u8 codes or as f32 (logits).
trait Store: Copy + Send + Sync {
    fn store(ys: &[f32], q: Option<QuantParams>, out: &mut [Self]);
}

impl Store for u8 {
    #[inline(always)]
    fn store(ys: &[f32], q: Option<QuantParams>, out: &mut [Self]) {
        let Some(q) = q else { return };
        let (inv, zp) = (1.0 / q.scale, f32::from(q.zero_point));
        for (o, &y) in out.iter_mut().zip(ys) {
            *o = act::code(y * inv + zp);
        }
    }
}

impl Store for f32 {
    #[inline(always)]
    fn store(ys: &[f32], _: Option<QuantParams>, out: &mut [Self]) {
        out.iter_mut().zip(ys).for_each(|(o, &y)| *o = y);
    }
}

/// The int8 GEMM epilogue for one row block: `y = act(acc * m + off)`, stored; the
/// AVX2 build when the CPU has it (the closure calling it is compiled for the baseline).
#[inline(always)]
fn requantize<T: Store>(acc: &[i32], m: f32, off: f32, act: Activation, q: Option<QuantParams>, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::has_avx2() {
        // SAFETY: AVX2 and FMA were detected; the body is safe code.
        unsafe { requantize_avx2(acc, m, off, act, q, out) };
        return;
    }
    requantize_body(acc, m, off, act, q, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn requantize_avx2<T: Store>(acc: &[i32], m: f32, off: f32, act: Activation, q: Option<QuantParams>, out: &mut [T]) {
    requantize_body(acc, m, off, act, q, out)
}

#[inline(always)]
fn requantize_body<T: Store>(acc: &[i32], m: f32, off: f32, act: Activation, q: Option<QuantParams>, out: &mut [T]) {
    let mut ys = [0f32; crate::kernels::qgemm::NR];
    for (y, &a) in ys.iter_mut().zip(acc) {
        *y = a as f32 * m + off;
    }
    match act {
        Activation::None => {}
        Activation::Relu => ys.iter_mut().for_each(|y| *y = y.max(0.0)),
        Activation::Gelu => ys.iter_mut().for_each(|y| *y = act::gelu(*y)),
    }
    T::store(ys.get(..acc.len()).unwrap_or(&[]), q, out);
}

#[allow(clippy::too_many_arguments)]
fn conv_i8<T: Store>(
    bytes: &[u8],
    k: &ConvKernel,
    x: &[u8],
    out: &mut [T],
    scratch: &mut [u8],
    packed: &mut [i16],
    wbufs: &mut [i32],
    batch: usize,
    threads: usize,
) -> Result<()> {
    let weight: &[i8] = bytes_as(bytes, &k.weight)?;
    let ncols = batch * k.win.out_plane();
    let (groups, kg) = (k.groups.max(1), k.k());
    let (og, cg) = (k.cout / groups, k.cin / groups);
    let in_group = cg * batch * k.win.in_plane();
    let plane = k.win.out_plane();
    let small = || Error::Input("internal: scratch too small".into());
    for g in 0..groups {
        let dst = out.get_mut(g * og * ncols..(g + 1) * og * ncols).unwrap_or(&mut []);
        let xs = x.get(g * in_group..(g + 1) * in_group).unwrap_or(&[]);
        let per = images_per_chunk(kg, plane, batch);
        for b0 in (0..batch).step_by(per) {
            let nb = per.min(batch - b0);
            let width = nb * plane;
            let xp = packed.get_mut(..packed_len(kg, width)).ok_or_else(small)?;
            if k.is_pointwise() {
                // The input rows are the GEMM rows; pack this block of columns.
                let rows = xs.get(..kg * batch * plane).unwrap_or(&[]);
                pack_block(rows, kg, ncols, b0 * plane, width, xp);
            } else {
                let cols = scratch.get_mut(..kg * width).ok_or_else(small)?;
                im2col_images(xs, cg, batch, b0..b0 + nb, &k.win, k.pad, cols);
                pack(cols, kg, width, xp);
            }
            let xp: &[i16] = xp;
            let col0 = b0 * plane;
            // Row blocks per task: a multiple of the kernel's 4-row block.
            let tasks = if threads > 1 && og >= 8 { threads } else { 1 };
            let rows_per = og.div_ceil(tasks).next_multiple_of(4).max(4);
            let wlen = wbuf_len(kg);
            let run = |(t, (chunk, wbuf)): (usize, (&mut [T], &mut [i32]))| {
                let r0 = g * og + t * rows_per;
                let nr = chunk.len() / ncols.max(1);
                let wr = weight.get(r0 * kg..(r0 + nr) * kg).unwrap_or(&[]);
                qgemm(wr, xp, nr, kg, width, wbuf, |r, c0, acc| {
                    let o = r0 + r;
                    let (m, off) = (k.mult.get(o).copied().unwrap_or(0.0), k.offset.get(o).copied().unwrap_or(0.0));
                    let at = r * ncols + col0 + c0;
                    let row = chunk.get_mut(at..at + acc.len()).unwrap_or(&mut []);
                    requantize(acc, m, off, k.act, k.out_quant, row);
                });
            };
            let wbufs = wbufs.get_mut(..wlen * tasks).ok_or_else(small)?;
            if tasks > 1 {
                dst.par_chunks_mut(rows_per * ncols).zip(wbufs.par_chunks_mut(wlen.max(1))).enumerate().for_each(run);
            } else {
                dst.chunks_mut((rows_per * ncols).max(1)).zip(wbufs.chunks_mut(wlen.max(1))).enumerate().for_each(run);
            }
        }
    }
    Ok(())
}

/// Runs the int8 program. The quantized input must be in value 0's range of `arena`.
/// A final conv/linear without output quantization writes f32 into `logits`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_int8(
    bytes: &[u8],
    steps: &[Step],
    plan: &Plan,
    output: usize,
    arena: &mut [u8],
    scratch: &mut [u8],
    packed: &mut [i16],
    wbufs: &mut [i32],
    logits: &mut [f32],
    batch: usize,
    threads: usize,
) -> Result<()> {
    for &i in &plan.order {
        let step = steps.get(i).ok_or_else(|| Error::Input("internal: bad plan".into()))?;
        let ([a, b], out) = split_io(arena, input_ranges(plan, step, batch), plan.range(i + 1, batch))?;
        let [c, h, w] = step.info.input_shapes.first().copied().unwrap_or([0; 3]);
        let lut_apply = |out: &mut [u8], lut: &Option<Box<[u8; 256]>>| {
            if let Some(l) = lut {
                out.iter_mut().for_each(|v| *v = l.get(usize::from(*v)).copied().unwrap_or(0));
            }
        };
        match &step.kernel {
            Kernel::Conv(k) if k.out_quant.is_none() && i == output => {
                conv_i8(bytes, k, a, logits, scratch, packed, wbufs, batch, threads)?
            }
            Kernel::Conv(k) => conv_i8(bytes, k, a, out, scratch, packed, wbufs, batch, threads)?,
            Kernel::MaxPool { win, lut, .. } => {
                pool::max_pool(a, c * batch, win, out);
                lut_apply(out, lut);
            }
            Kernel::AvgPool { win, act: f, quant } => {
                let (qi, qo) = quant.ok_or_else(|| Error::Input("internal: unquantized pool".into()))?;
                pool::avg_pool(a, c * batch, win, f32::from(qi.zero_point), |j, v| {
                    if let Some(o) = out.get_mut(j) {
                        *o = qo.quantize(act::apply(*f, qi.scale * (v - f32::from(qi.zero_point))));
                    }
                })
            }
            Kernel::Add { act: f, quant } => {
                let (qa, qb, qo) = quant.ok_or_else(|| Error::Input("internal: unquantized add".into()))?;
                for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                    *o = qo.quantize(act::apply(*f, qa.dequantize(x) + qb.dequantize(y)));
                }
            }
            Kernel::Flatten => flatten(a, c, h * w, batch, out),
            Kernel::Scale { lut, .. } => {
                out.iter_mut().zip(a).for_each(|(o, &x)| *o = x);
                lut_apply(out, lut);
            }
        }
    }
    Ok(())
}
