//! The depthwise row with AVX2 + FMA. Each output pixel's channels are taken 32 at a
//! time (four accumulators of eight lanes, in registers over the whole window), then 8
//! at a time, then the last few through a padded block; each step is one fused
//! multiply-add per eight channels (after `vpmovzxbd` + `vcvtdq2ps` for u8 codes) in the
//! portable build's order, and the epilogue is its scalar arithmetic (folded for codes
//! after clamp activations), so the results are the portable build's bit for bit.

use std::arch::x86_64::*;

use super::{act_block, folded8, folded_constants};
use crate::artifact::Activation;
use crate::kernels::act::folded_bounds;
use crate::kernels::{DepthwiseRow, RowInput, RowStore};

/// Input elements the row reads eight at a time as f32.
trait Lanes: Copy + Default + Into<f32> {
    /// Eight values from `p` as f32.
    ///
    /// # Safety
    /// Eight values must be readable at `p`; the CPU must have AVX2.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Lanes for u8 {
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // SAFETY: the caller's contract (8 bytes).
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()))) }
    }
}

/// # Safety
/// See [`Kernels::depthwise`](crate::kernels::Kernels::depthwise); the CPU must have
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn depthwise(t: &DepthwiseRow<'_>) {
    match t.input {
        // SAFETY: the same contract.
        RowInput::F32(x) => unsafe { pixels(t, x) },
        // SAFETY: the same contract.
        RowInput::U8(x) => unsafe { pixels(t, x) },
    }
}

/// Every pixel of a row, its channels 32 at a time (`$block4`), then 8 (`$block1`), then
/// the rest ([`tail`]), all from `$input`: the loop of both builds (a macro, so that each
/// expands inside a function with its own CPU features and the blocks inline).
///
/// Unsafe: `$t` must be consistent and its windows and outputs valid (the row's contract).
macro_rules! each_block {
    ($t:expr, $input:expr, $block4:expr, $block1:expr) => {{
        let t: &DepthwiseRow<'_> = $t;
        let c = t.channels;
        for (&ip, &op) in t.in_pix.iter().zip(t.out_pix) {
            let (x, at) = ($input.add(ip - t.in_origin), op - t.out_origin);
            let mut c0 = 0;
            while c0 + 32 <= c {
                $block4(t, x, c0, at);
                c0 += 32;
            }
            while c0 + 8 <= c {
                $block1(t, x, c0, at);
                c0 += 8;
            }
            if c0 < c {
                tail(t, x, c0, at);
            }
        }
    }};
}

/// [`depthwise`] on input elements `T` from `input`.
///
/// # Safety
/// As for [`depthwise`].
#[target_feature(enable = "avx2,fma")]
unsafe fn pixels<T: Lanes>(t: &DepthwiseRow<'_>, input: *const T) {
    if !t.consistent() {
        return;
    }
    // SAFETY: the caller's contract; `consistent` held above.
    unsafe { each_block!(t, input, block::<T, 4>, block::<T, 1>) }
}

/// The real results of `N` vectors of sums: `act(acc * mult + offset)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn reals<const N: usize>(act: Activation, acc: [__m256; N], mult: [__m256; N], offset: [__m256; N]) -> [__m256; N] {
    let mut ys = acc;
    for ((y, m), o) in ys.iter_mut().zip(mult).zip(offset) {
        *y = _mm256_add_ps(_mm256_mul_ps(*y, m), o);
    }
    act_block(act, &mut ys);
    ys
}

/// The results of `N` vectors of sums in code units, before rounding: the folded
/// epilogue where the activation is a clamp, `act(acc * mult + offset) * inv + zp`
/// otherwise (the portable build's `code_of`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn code_units<const N: usize>(
    act: Activation,
    acc: [__m256; N],
    mult: [__m256; N],
    offset: [__m256; N],
    (inv_scale, zero_point): (f32, f32),
) -> [__m256; N] {
    let mut vs = acc;
    match folded_bounds(act, inv_scale, zero_point) {
        Some((lo, hi)) => {
            let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
            for ((v, m), o) in vs.iter_mut().zip(mult).zip(offset) {
                *v = folded8(*v, folded_constants(m, o, inv_scale, zero_point), lo, hi);
            }
        }
        None => {
            let (inv, zp) = (_mm256_set1_ps(inv_scale), _mm256_set1_ps(zero_point));
            vs = reals(act, acc, mult, offset);
            for v in &mut vs {
                *v = _mm256_add_ps(_mm256_mul_ps(*v, inv), zp);
            }
        }
    }
    vs
}

/// Channels `c0..c0 + 8N` of the pixel whose window starts at `x`, stored at `at`.
///
/// # Safety
/// As for [`depthwise`], with `c0 + 8N <= channels`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<T: Lanes, const N: usize>(t: &DepthwiseRow<'_>, x: *const T, c0: usize, at: usize) {
    let c = t.channels;
    let w = t.weights.as_ptr();
    let mut acc = [_mm256_setzero_ps(); N];
    for (k, &koff) in t.koffs.iter().enumerate() {
        // SAFETY: 8N values from channel c0 at this window position, and 8N weights of
        // position k (`consistent`: weights hold koffs.len() x c values).
        unsafe {
            let (xp, wp) = (x.add(koff + c0), w.add(k * c + c0));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(T::load8(xp.add(8 * j)), _mm256_loadu_ps(wp.add(8 * j)), *a);
            }
        }
    }
    // SAFETY: the same contract.
    unsafe { store_block(t, acc, c0, at) }
}

/// The epilogue of channels `c0..c0 + 8N` of one pixel from their sums, stored at `at`.
///
/// # Safety
/// As for [`block`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_block<const N: usize>(t: &DepthwiseRow<'_>, acc: [__m256; N], c0: usize, at: usize) {
    // SAFETY: c0 + 8N values in `mult` and `offset` (the contract, `consistent`).
    let (mult, offset) = unsafe {
        let (m, o) = (t.mult.as_ptr().add(c0), t.offset.as_ptr().add(c0));
        (std::array::from_fn(|j| _mm256_loadu_ps(m.add(8 * j))), std::array::from_fn(|j| _mm256_loadu_ps(o.add(8 * j))))
    };
    // SAFETY: 8N output values at `at + c0` (the contract).
    unsafe {
        match t.store {
            RowStore::Codes { output, inv_scale, zero_point } => {
                let vs = code_units(t.act, acc, mult, offset, (inv_scale, zero_point));
                let out = output.add(at + c0);
                for (j, pair) in vs.chunks(2).enumerate() {
                    match *pair {
                        [a, b] => _mm_storeu_si128(out.add(16 * j).cast(), round_codes!(a, b)),
                        [a] => _mm_storel_epi64(out.add(16 * j).cast(), round_codes!(a, _mm256_setzero_ps())),
                        _ => {}
                    }
                }
            }
            RowStore::FoldedCodes { output, lo, hi } => {
                let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
                let mut vs = acc;
                for ((v, m), o) in vs.iter_mut().zip(mult).zip(offset) {
                    *v = folded8(*v, (m, o), lo, hi);
                }
                let out = output.add(at + c0);
                for (j, pair) in vs.chunks(2).enumerate() {
                    match *pair {
                        [a, b] => _mm_storeu_si128(out.add(16 * j).cast(), round_clamped!(a, b)),
                        [a] => _mm_storel_epi64(out.add(16 * j).cast(), round_clamped!(a, _mm256_setzero_ps())),
                        _ => {}
                    }
                }
            }
            RowStore::Real { output } => {
                for (j, y) in reals(t.act, acc, mult, offset).iter().enumerate() {
                    _mm256_storeu_ps(output.add(at + c0 + 8 * j), *y);
                }
            }
        }
    }
}

/// The last `channels - c0` (< 8) channels, through 8-lane buffers.
///
/// # Safety
/// As for [`depthwise`], with `c0 < channels < c0 + 8`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tail<T: Lanes>(t: &DepthwiseRow<'_>, x: *const T, c0: usize, at: usize) {
    let (c, n) = (t.channels, t.channels - c0);
    let mut acc = _mm256_setzero_ps();
    for (k, &koff) in t.koffs.iter().enumerate() {
        let (mut xs, mut ws) = ([T::default(); 8], [0f32; 8]);
        for (i, (xv, wv)) in xs.iter_mut().zip(ws.iter_mut()).enumerate().take(n) {
            // SAFETY: channel c0 + i < c at this window position (the contract).
            *xv = unsafe { *x.add(koff + c0 + i) };
            *wv = t.weights.get(k * c + c0 + i).copied().unwrap_or(0.0);
        }
        // SAFETY: 8 values in `xs` and `ws`.
        let (xv, wv) = unsafe { (T::load8(xs.as_ptr()), _mm256_loadu_ps(ws.as_ptr())) };
        acc = _mm256_fmadd_ps(xv, wv, acc);
    }
    let (mut m, mut o) = ([0f32; 8], [0f32; 8]);
    for (i, (mv, ov)) in m.iter_mut().zip(o.iter_mut()).enumerate().take(n) {
        *mv = t.mult.get(c0 + i).copied().unwrap_or(0.0);
        *ov = t.offset.get(c0 + i).copied().unwrap_or(0.0);
    }
    // SAFETY: 8 values in `m` and `o`.
    let (mult, offset) = unsafe { ([_mm256_loadu_ps(m.as_ptr())], [_mm256_loadu_ps(o.as_ptr())]) };
    match t.store {
        RowStore::Codes { output, inv_scale, zero_point } => {
            let [v] = code_units(t.act, [acc], mult, offset, (inv_scale, zero_point));
            let mut bytes = [0u8; 16];
            // SAFETY: 16 bytes in `bytes`.
            unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), round_codes!(v, _mm256_setzero_ps())) };
            for (i, &b) in bytes.iter().enumerate().take(n) {
                // SAFETY: channel c0 + i < c of the pixel's output (the contract).
                unsafe { *output.add(at + c0 + i) = b };
            }
        }
        RowStore::FoldedCodes { output, lo, hi } => {
            let [m0] = mult;
            let [o0] = offset;
            let v = folded8(acc, (m0, o0), _mm256_set1_ps(lo), _mm256_set1_ps(hi));
            let mut bytes = [0u8; 16];
            // SAFETY: 16 bytes in `bytes`.
            unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), round_clamped!(v, _mm256_setzero_ps())) };
            for (i, &b) in bytes.iter().enumerate().take(n) {
                // SAFETY: channel c0 + i < c of the pixel's output (the contract).
                unsafe { *output.add(at + c0 + i) = b };
            }
        }
        RowStore::Real { output } => {
            let [y] = reals(t.act, [acc], mult, offset);
            let mut vals = [0f32; 8];
            // SAFETY: 8 values in `vals`.
            unsafe { _mm256_storeu_ps(vals.as_mut_ptr(), y) };
            for (i, &v) in vals.iter().enumerate().take(n) {
                // SAFETY: as above.
                unsafe { *output.add(at + c0 + i) = v };
            }
        }
    }
}

/// The depthwise row with AVX-512 VNNI (256-bit registers) for u8 codes whose layer
/// gives its weights as 16-bit pairs ([`DepthwiseRow::weight_pairs`]): `vpdpwssd` adds
/// each code (zero-extended to a 32-bit lane, the pair (code, 0)) times its weight (the
/// pair (weight, 0)) to an i32 sum in one instruction, where the f32 path converts the
/// code and multiply-adds in two. The sums are the same integers, so the results are
/// the other builds' bit for bit. Other rows take the AVX2 + FMA path.
///
/// # Safety
/// See [`Kernels::depthwise`](crate::kernels::Kernels::depthwise); the CPU must have
/// AVX2, FMA, AVX-512 VNNI and AVX-512 VL.
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
pub(super) unsafe fn depthwise_vnni(t: &DepthwiseRow<'_>) {
    let RowInput::U8(input) = t.input else {
        // SAFETY: the same contract; AVX2 and FMA are among this function's features.
        return unsafe { depthwise(t) };
    };
    let pairs_ok = t.koffs.len().checked_mul(t.channels).is_some_and(|n| t.weight_pairs.len() >= n);
    if !t.consistent() || !pairs_ok {
        // SAFETY: as above.
        return unsafe { depthwise(t) };
    }
    // SAFETY: the caller's contract; `consistent` and the pairs' length held above.
    unsafe { each_block!(t, input, block_pairs::<4>, block_pairs::<1>) }
}

/// [`block`] for u8 codes on 16-bit weight pairs.
///
/// # Safety
/// As for [`block`], with `weight_pairs` as long as `weights`; the CPU must have the
/// function's features.
#[inline]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn block_pairs<const N: usize>(t: &DepthwiseRow<'_>, x: *const u8, c0: usize, at: usize) {
    let c = t.channels;
    let w = t.weight_pairs.as_ptr();
    let mut acc = [_mm256_setzero_si256(); N];
    for (k, &koff) in t.koffs.iter().enumerate() {
        // SAFETY: 8N codes from channel c0 at this window position, and 8N weight pairs
        // of position k (checked by the caller).
        unsafe {
            let (xp, wp) = (x.add(koff + c0), w.add(k * c + c0));
            for (j, a) in acc.iter_mut().enumerate() {
                let codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(xp.add(8 * j).cast()));
                *a = _mm256_dpwssd_epi32(*a, codes, _mm256_loadu_si256(wp.add(8 * j).cast()));
            }
        }
    }
    // SAFETY: the same contract.
    unsafe { store_block(t, acc.map(|a| _mm256_cvtepi32_ps(a)), c0, at) }
}
