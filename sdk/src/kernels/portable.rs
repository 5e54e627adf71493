//! The portable kernels: plain Rust, any CPU. They define the results the SIMD builds
//! must reproduce bit for bit: f32 products are accumulated with fused multiply-adds in
//! the order (window position, channel), the int8 epilogue is the scalar arithmetic of
//! [`super::act`] ([`folded_code`] for codes after the clamp activations), and every
//! SIMD build does the same operations in the same order.

use super::act::{activate, fold_mult, fold_offset, folded_bounds, folded_code, quantize_code};
use super::{ConvTileF32, ConvTileU8, DepthwiseRow, Kernels, RowInput, RowStore, StoreU8, MR, PANEL};
use crate::artifact::layers::QUAD;
use crate::artifact::Activation;

/// The portable table.
pub static KERNELS: Kernels = Kernels { name: "portable", conv_f32, conv_u8, depthwise, add_u8, act_f32 };

/// # Safety
/// None (a safe body; `unsafe` for the table's signature).
unsafe fn add_u8(j: &mut super::AddU8<'_>) {
    let [qa, qb, qo] = j.quant;
    let (za, zb, inv, zo) =
        (f32::from(qa.zero_point), f32::from(qb.zero_point), 1.0 / qo.scale, f32::from(qo.zero_point));
    for ((o, &a), &b) in j.out.iter_mut().zip(j.a).zip(j.b) {
        let y = qa.scale * (f32::from(a) - za) + qb.scale * (f32::from(b) - zb);
        *o = quantize_code(activate(j.act, y), inv, zo);
    }
}

/// # Safety
/// None (a safe body; `unsafe` for the table's signature).
unsafe fn act_f32(act: crate::artifact::Activation, xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = activate(act, *x));
}

/// # Safety
/// See [`Kernels::conv_f32`].
unsafe fn conv_f32(t: &ConvTileF32<'_>) {
    let mut acc = [[0f32; PANEL]; MR];
    for (i, row) in acc.iter_mut().enumerate().take(t.pixels.min(MR)) {
        let Some(&base) = t.input.get(i) else { continue };
        for (k, &off) in t.koffs.iter().enumerate() {
            // SAFETY: the caller guarantees the value at each offset after each input
            // pointer and the weight panel of koffs.len() * PANEL values.
            let (x, w) = unsafe { (*base.add(off), t.weights.add(k * PANEL)) };
            for (lane, a) in row.iter_mut().enumerate() {
                // SAFETY: as above.
                let wv = unsafe { *w.add(lane) };
                *a = x.mul_add(wv, *a);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(t.pixels.min(MR)) {
        let Some(&out) = t.output.get(i) else { continue };
        for (lane, (&a, &b)) in row.iter().zip(t.bias).enumerate().take(t.lanes.min(PANEL)) {
            // SAFETY: the caller guarantees `lanes` writable values after each output
            // pointer of a valid pixel.
            unsafe { *out.add(lane) = activate(t.act, a + b) };
        }
    }
}

/// The exact i32 sums of one int8 tile.
///
/// # Safety
/// See [`Kernels::conv_u8`].
unsafe fn sums(t: &ConvTileU8<'_>) -> [[i32; PANEL]; MR] {
    let mut acc = [[0i32; PANEL]; MR];
    for (i, row) in acc.iter_mut().enumerate().take(t.pixels.min(MR)) {
        let Some(&base) = t.input.get(i) else { continue };
        for (k, &off) in t.koffs.iter().enumerate() {
            for r in 0..QUAD {
                // SAFETY: the caller guarantees these bytes at each offset after each input
                // pointer and the weight panel of koffs.len() * PANEL * QUAD weights.
                let (x, w) = unsafe { (i32::from(*base.add(off + r)), t.weights.add(k * PANEL * QUAD + r)) };
                for (lane, a) in row.iter_mut().enumerate() {
                    // SAFETY: as above.
                    *a += x * i32::from(unsafe { *w.add(lane * QUAD) });
                }
            }
        }
    }
    acc
}

/// # Safety
/// See [`Kernels::conv_u8`].
unsafe fn conv_u8(t: &ConvTileU8<'_>) {
    // SAFETY: the same contract as this function's.
    let acc = unsafe { sums(t) };
    for (i, row) in acc.iter().enumerate().take(t.pixels.min(MR)) {
        for (lane, &a) in row.iter().enumerate().take(t.lanes.min(PANEL)) {
            let (m, o) = (t.mult.get(lane).copied().unwrap_or(0.0), t.offset.get(lane).copied().unwrap_or(0.0));
            match t.store {
                StoreU8::Codes { output, inv_scale, zero_point } => {
                    if let Some(&out) = output.get(i) {
                        // SAFETY: `lanes` writable bytes after each valid pixel's pointer.
                        unsafe { *out.add(lane) = code_of(a as f32, m, o, t.act, inv_scale, zero_point) };
                    }
                }
                StoreU8::Real { output } => {
                    if let Some(&out) = output.get(i) {
                        // SAFETY: `lanes` writable values after each valid pixel's pointer.
                        unsafe { *out.add(lane) = activate(t.act, a as f32 * m + o) };
                    }
                }
            }
        }
    }
}

/// The u8 epilogue of a sum stored as a code: [`folded_code`] where the activation is
/// a clamp, the general form otherwise.
#[inline(always)]
fn code_of(acc: f32, m: f32, o: f32, act: Activation, inv_scale: f32, zero_point: f32) -> u8 {
    match folded_bounds(act, inv_scale, zero_point) {
        Some(bounds) => folded_code(acc, fold_mult(m, inv_scale), fold_offset(o, inv_scale, zero_point), bounds),
        None => quantize_code(activate(act, acc * m + o), inv_scale, zero_point),
    }
}

/// # Safety
/// See [`Kernels::depthwise`].
unsafe fn depthwise(t: &DepthwiseRow<'_>) {
    match t.input {
        // SAFETY: the same contract.
        RowInput::F32(x) => unsafe { depthwise_from(t, x) },
        // SAFETY: the same contract.
        RowInput::U8(x) => unsafe { depthwise_from(t, x) },
    }
}

/// [`depthwise`] reading `x` (the row's input) as f32.
///
/// # Safety
/// See [`Kernels::depthwise`].
unsafe fn depthwise_from<T: Copy + Into<f32>>(t: &DepthwiseRow<'_>, x: *const T) {
    if !t.consistent() {
        return;
    }
    let c = t.channels;
    for (&ip, &op) in t.in_pix.iter().zip(t.out_pix) {
        let (ip, at) = (ip - t.in_origin, op - t.out_origin);
        for ch in 0..c {
            let mut acc = 0f32;
            for (k, &koff) in t.koffs.iter().enumerate() {
                // SAFETY: the caller guarantees `channels` values at each window position.
                let v: f32 = unsafe { *x.add(ip + koff + ch) }.into();
                acc = v.mul_add(t.weights.get(k * c + ch).copied().unwrap_or(0.0), acc);
            }
            let (m, o) = (t.mult.get(ch).copied().unwrap_or(0.0), t.offset.get(ch).copied().unwrap_or(0.0));
            match t.store {
                // SAFETY: the caller guarantees `channels` writable values at each pixel's output.
                RowStore::Codes { output, inv_scale, zero_point } => unsafe {
                    *output.add(at + ch) = code_of(acc, m, o, t.act, inv_scale, zero_point);
                },
                // SAFETY: as above.
                RowStore::FoldedCodes { output, lo, hi } => unsafe {
                    *output.add(at + ch) = folded_code(acc, m, o, (lo, hi));
                },
                // SAFETY: as above.
                RowStore::Real { output } => unsafe { *output.add(at + ch) = activate(t.act, acc * m + o) },
            }
        }
    }
}
