//! x86-64 builds of the kernels: AVX2 + FMA (f32 with `vfmadd231ps`; int8 with
//! `vpmaddubsw` + `vpmaddwd`, exact because the tile layers' weights are 7-bit; depthwise
//! layers' 8-bit weights run on their own op), and AVX-512 VNNI
//! (int8 with `vpdpbusd` on 256-bit registers: one instruction per 32 multiply-adds).
//! The depthwise row ([`depthwise`]): AVX2 + FMA, and for int8 layers with VNNI's
//! `vpdpwssd`.
//!
//! Every tile keeps [`MR`] x [`PANEL`] accumulators in twelve registers for the whole
//! reduction; the epilogue does exactly the scalar operations of the portable build
//! (fused multiply-adds only where it has them: the folded u8 epilogue), so all builds
//! agree bit for bit.

use std::arch::x86_64::*;

use super::{ConvTileF32, ConvTileU8, Kernels, StoreU8, MR, PANEL};
use crate::artifact::Activation;

/// AVX2 + FMA.
pub static AVX2: Kernels = Kernels {
    name: "avx2",
    conv_f32: conv_f32_avx2,
    conv_u8: conv_u8_avx2,
    depthwise: depthwise::depthwise,
    add_u8: add_u8_avx2,
    act_f32: act_avx2,
};

/// AVX-512 VNNI (with AVX-512 VL for 256-bit registers) for int8; f32 with AVX-512 VL
/// encodings.
pub static AVX512_VNNI: Kernels = Kernels {
    name: "avx512vnni",
    conv_f32: conv_f32_avx512,
    conv_u8: conv_u8_vnni,
    depthwise: depthwise::depthwise_vnni,
    add_u8: add_u8_avx2,
    act_f32: act_avx2,
};

/// The builds this CPU runs, slowest first.
pub fn available() -> Vec<&'static Kernels> {
    let mut v = Vec::new();
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        v.push(&AVX2);
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            v.push(&AVX512_VNNI);
        }
    }
    v
}

/// `e^x` on 8 lanes: [`super::act::fast_exp`]'s operations, in its order.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
    let magic = _mm256_set1_ps(12_582_912.0);
    let n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), magic), magic);
    let y = _mm256_sub_ps(
        _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693_359_4))),
        _mm256_mul_ps(n, _mm256_set1_ps(-2.121_944_4e-4)),
    );
    let c = |v: f32| _mm256_set1_ps(v);
    let mut p = c(1.0 / 5040.0);
    for k in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_add_ps(c(k), _mm256_mul_ps(y, p));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

/// The u8 codes of 16 values already in code units (`$v0`: lanes 0..8, `$v1`: 8..16)
/// as 16 bytes: [`super::act::code`]'s operations, clamp to [0, 255], add 0.5,
/// truncate. A macro, so that it is always inlined.
macro_rules! round_codes {
    ($v0:expr, $v1:expr) => {{
        let code = |v: __m256| {
            let v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(255.0));
            _mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_set1_ps(0.5)))
        };
        let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(code($v0), code($v1)));
        _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256::<1>(words))
    }};
}

/// [`round_codes!`] for values already clamped to [0, 255] (the folded epilogue's): add
/// 0.5, truncate, pack.
macro_rules! round_clamped {
    ($v0:expr, $v1:expr) => {{
        let code = |v: __m256| _mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_set1_ps(0.5)));
        let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(code($v0), code($v1)));
        _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256::<1>(words))
    }};
}

/// The u8 codes of 16 real values as 16 bytes: [`super::act::quantize_code`]'s
/// operations, `code(y * inv + zp)`.
macro_rules! codes_u8 {
    ($y0:expr, $y1:expr, $inv:expr, $zp:expr) => {{
        let (inv, zp) = ($inv, $zp);
        let affine = |y: __m256| _mm256_add_ps(_mm256_mul_ps(y, inv), zp);
        round_codes!(affine($y0), affine($y1))
    }};
}

/// The folded u8 epilogue ([`super::act::folded_code`]) of 8 sums, before rounding:
/// `min(max(acc * mult' + offset', lo), hi)`, with `(mult', offset')` from
/// [`folded_constants`].
#[inline]
#[target_feature(enable = "avx2,fma")]
fn folded8(acc: __m256, (mult, offset): (__m256, __m256), lo: __m256, hi: __m256) -> __m256 {
    _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(acc, mult, offset), lo), hi)
}

/// `(mult', offset')` of [`super::act::folded_code`] on 8 lanes:
/// [`super::act::fold_mult`] and [`super::act::fold_offset`].
#[inline]
#[target_feature(enable = "avx2,fma")]
fn folded_constants(mult: __m256, offset: __m256, inv_scale: f32, zero_point: f32) -> (__m256, __m256) {
    let (inv, zp) = (_mm256_set1_ps(inv_scale), _mm256_set1_ps(zero_point));
    (_mm256_mul_ps(mult, inv), _mm256_fmadd_ps(offset, inv, zp))
}

// After the macros, which it uses.
mod depthwise;

/// The activation on 8 lanes: [`super::act::activate`]'s operations, in its order.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn act8(act: Activation, x: __m256) -> __m256 {
    let mut ys = [x];
    act_block(act, &mut ys);
    ys[0]
}

/// The activation on up to a tile's twelve vectors ([`super::act::activate`]'s
/// operations, in its order), stage by stage over the block, so that the independent
/// chains overlap (one vector at a time, GELU's long dependency chain leaves the core
/// waiting).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn act_block(act: Activation, ys: &mut [__m256]) {
    match act {
        Activation::None => {}
        Activation::Relu => ys.iter_mut().for_each(|y| *y = _mm256_max_ps(*y, _mm256_setzero_ps())),
        Activation::Gelu => {
            // u = 0.7978846 * (x + ((0.044715 * x) * x) * x); x / (1 + exp(-2 * u))
            let mut e = [_mm256_setzero_ps(); 2 * MR];
            for (e, &x) in e.iter_mut().zip(ys.iter()) {
                let cube = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.044_715), x), x), x);
                let u = _mm256_mul_ps(_mm256_set1_ps(0.797_884_6), _mm256_add_ps(x, cube));
                *e = _mm256_mul_ps(_mm256_set1_ps(-2.0), u);
            }
            for e in e.iter_mut().take(ys.len()) {
                *e = exp8(*e);
            }
            for (y, e) in ys.iter_mut().zip(e) {
                *y = _mm256_div_ps(*y, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            }
        }
        Activation::Relu6 => {
            ys.iter_mut().for_each(|y| *y = _mm256_min_ps(_mm256_max_ps(*y, _mm256_setzero_ps()), _mm256_set1_ps(6.0)))
        }
        Activation::Hardswish => ys.iter_mut().for_each(|y| {
            // x * (min(max(x + 3, 0), 6) * (1 / 6))
            let t = _mm256_add_ps(*y, _mm256_set1_ps(3.0));
            let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(6.0));
            *y = _mm256_mul_ps(*y, _mm256_mul_ps(t, _mm256_set1_ps(1.0 / 6.0)));
        }),
        Activation::Sigmoid => {
            // 1 / (1 + exp(-x)), the exponentials of the block first (independent chains).
            let mut e = [_mm256_setzero_ps(); 2 * MR];
            for (e, &x) in e.iter_mut().zip(ys.iter()) {
                *e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            }
            for (y, e) in ys.iter_mut().zip(e) {
                *y = _mm256_div_ps(_mm256_set1_ps(1.0), _mm256_add_ps(_mm256_set1_ps(1.0), e));
            }
        }
    }
}

/// An activation over a slice, 8 values at a time (the tail through a padded block).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn act_avx2(act: Activation, xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 values.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), act8(act, _mm256_loadu_ps(c.as_ptr()))) };
    }
    let rest = chunks.into_remainder();
    let mut tmp = [0f32; 8];
    tmp.iter_mut().zip(rest.iter()).for_each(|(t, &x)| *t = x);
    // SAFETY: `tmp` holds 8 values.
    unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), act8(act, _mm256_loadu_ps(tmp.as_ptr()))) };
    rest.iter_mut().zip(tmp).for_each(|(x, t)| *x = t);
}

/// The int8 elementwise add, 16 values at a time: the portable build's operations, in
/// its order (a tail of fewer through a padded block).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn add_u8_avx2(j: &mut super::AddU8<'_>) {
    let [qa, qb, qo] = j.quant;
    let c = |v: f32| _mm256_set1_ps(v);
    let (sa, za, sb, zb) = (c(qa.scale), c(f32::from(qa.zero_point)), c(qb.scale), c(f32::from(qb.zero_point)));
    let (inv, zo, act) = (c(1.0 / qo.scale), c(f32::from(qo.zero_point)), j.act);
    // 16 codes of each input -> 16 output codes.
    let block = |a: __m128i, b: __m128i| -> __m128i {
        // The activated sum of 8 lanes.
        let half = |a: __m128i, b: __m128i| {
            let real = |q: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
            let y = _mm256_add_ps(
                _mm256_mul_ps(sa, _mm256_sub_ps(real(a), za)),
                _mm256_mul_ps(sb, _mm256_sub_ps(real(b), zb)),
            );
            act8(act, y)
        };
        codes_u8!(half(a, b), half(_mm_srli_si128::<8>(a), _mm_srli_si128::<8>(b)), inv, zo)
    };
    let load = |s: &[u8]| match <[u8; 16]>::try_from(s) {
        Ok(full) => u128::from_le_bytes(full),
        Err(_) => {
            let mut t = [0u8; 16];
            t.iter_mut().zip(s).for_each(|(t, &v)| *t = v);
            u128::from_le_bytes(t)
        }
    };
    let (a, b) = (j.a, j.b);
    for ((o, a), b) in j.out.chunks_mut(16).zip(a.chunks(16)).zip(b.chunks(16)) {
        let v = |x: u128| _mm_set_epi64x((x >> 64) as i64, x as i64);
        let r = block(v(load(a)), v(load(b)));
        let bytes =
            ((_mm_extract_epi64::<1>(r) as u64 as u128) << 64 | _mm_cvtsi128_si64(r) as u64 as u128).to_le_bytes();
        match <&mut [u8; 16]>::try_from(&mut *o) {
            Ok(o) => *o = bytes,
            Err(_) => o.iter_mut().zip(bytes).for_each(|(o, p)| *o = p),
        }
    }
}

/// A lane mask for `_mm256_maskstore_ps`: lanes below `n` set.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lane_mask(n: usize) -> __m256i {
    let n = i32::try_from(n.min(8)).unwrap_or(8);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// Stores `lanes` of the 16 values `(lo, hi)` at `out`.
///
/// # Safety
/// `lanes` (at most 16) values must be writable at `out`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_f32(out: *mut f32, lo: __m256, hi: __m256, lanes: usize) {
    // SAFETY: (all stores below) `lanes` writable values at `out` (the caller's
    // contract); masked stores write only the lanes below the count.
    unsafe {
        if lanes >= PANEL {
            _mm256_storeu_ps(out, lo);
            _mm256_storeu_ps(out.add(8), hi);
        } else if lanes >= 8 {
            _mm256_storeu_ps(out, lo);
            _mm256_maskstore_ps(out.add(8), lane_mask(lanes - 8), hi);
        } else {
            _mm256_maskstore_ps(out, lane_mask(lanes), lo);
        }
    }
}

/// Stores the first `lanes` bytes of `bytes` at `out`, in at most four plain stores
/// (no call to `memcpy` for a partial tile).
///
/// # Safety
/// `lanes` (at most 16) bytes must be writable at `out`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_bytes(out: *mut u8, bytes: __m128i, lanes: usize) {
    // SAFETY: (all stores below) each writes bytes below `lanes` only.
    unsafe {
        if lanes >= PANEL {
            _mm_storeu_si128(out.cast(), bytes);
            return;
        }
        let (lo, hi) = (_mm_cvtsi128_si64(bytes) as u64, _mm_extract_epi64::<1>(bytes) as u64);
        let mut at = 0;
        let mut word = lo;
        if lanes >= 8 {
            out.cast::<u64>().write_unaligned(lo);
            (at, word) = (8, hi);
        }
        let rest = lanes - at;
        if rest & 4 != 0 {
            out.add(at).cast::<u32>().write_unaligned(word as u32);
            (at, word) = (at + 4, word >> 32);
        }
        if rest & 2 != 0 {
            out.add(at).cast::<u16>().write_unaligned(word as u16);
            (at, word) = (at + 2, word >> 16);
        }
        if rest & 1 != 0 {
            *out.add(at) = word as u8;
        }
    }
}

/// The f32 tile (and `$half`, its build for tiles of at most 8 lanes) for a set of CPU
/// features: with AVX-512 VL the compiler folds each broadcast into its multiply-add
/// (`vfmadd231ps ymm, ymm, m32{1to8}`), with AVX2 it needs a separate broadcast.
macro_rules! conv_f32_tile {
    ($name:ident, $half:ident, $features:literal) => {
        /// # Safety
        /// See [`Kernels::conv_f32`]; the CPU must have the function's features.
        #[target_feature(enable = $features)]
        unsafe fn $name(t: &ConvTileF32<'_>) {
            if t.lanes <= 8 {
                // SAFETY: the same contract; this build reads and writes only lanes 0..8.
                return unsafe { $half(t) };
            }
            let z = _mm256_setzero_ps();
            let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2) = (z, z, z, z, z, z);
            let (mut a3, mut b3, mut a4, mut b4, mut a5, mut b5) = (z, z, z, z, z, z);
            let [q0, q1, q2, q3, q4, q5] = t.input;
            let mut w = t.weights;
            for &k in t.koffs {
                // SAFETY: the caller guarantees the value at each offset after each input pointer
                // and the whole weight panel, which `w` walks once (koffs.len() * PANEL values).
                unsafe {
                    let w0 = _mm256_loadu_ps(w);
                    let w1 = _mm256_loadu_ps(w.add(8));
                    w = w.add(PANEL);
                    macro_rules! step {
                        ($i:tt, $a:ident, $b:ident, $q:ident) => {
                            let x = _mm256_broadcast_ss(&*$q.add(k));
                            $a = _mm256_fmadd_ps(x, w0, $a);
                            $b = _mm256_fmadd_ps(x, w1, $b);
                        };
                    }
                    step!(0, a0, b0, q0);
                    step!(1, a1, b1, q1);
                    step!(2, a2, b2, q2);
                    step!(3, a3, b3, q3);
                    step!(4, a4, b4, q4);
                    step!(5, a5, b5, q5);
                }
            }
            // SAFETY: the bias array holds 16 values.
            let (bias0, bias1) = unsafe { (_mm256_loadu_ps(t.bias.as_ptr()), _mm256_loadu_ps(t.bias.as_ptr().add(8))) };
            let accs = [a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, a5, b5];
            let mut ys = [_mm256_setzero_ps(); 2 * MR];
            for (k, (y, a)) in ys.iter_mut().zip(accs).enumerate() {
                *y = _mm256_add_ps(a, if k % 2 == 0 { bias0 } else { bias1 });
            }
            act_block(t.act, &mut ys);
            for (y, out) in ys.chunks_exact(2).zip(t.output).take(t.pixels) {
                if let [lo, hi] = *y {
                    // SAFETY: `lanes` writable values at each valid pixel's output.
                    unsafe { store_f32(out, lo, hi, t.lanes) };
                }
            }
        }

        /// The f32 tile for tiles of at most 8 lanes (a layer's last panel): one
        /// accumulator per pixel.
        ///
        /// # Safety
        /// See [`Kernels::conv_f32`] with `lanes <= 8`; the CPU must have the function's features.
        #[target_feature(enable = $features)]
        unsafe fn $half(t: &ConvTileF32<'_>) {
            let z = _mm256_setzero_ps();
            let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5) = (z, z, z, z, z, z);
            let [q0, q1, q2, q3, q4, q5] = t.input;
            let mut w = t.weights;
            for &k in t.koffs {
                // SAFETY: as in the full build (the same panel, of which lanes 0..8 are read).
                unsafe {
                    let w0 = _mm256_loadu_ps(w);
                    w = w.add(PANEL);
                    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q0.add(k)), w0, a0);
                    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q1.add(k)), w0, a1);
                    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q2.add(k)), w0, a2);
                    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q3.add(k)), w0, a3);
                    a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q4.add(k)), w0, a4);
                    a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q5.add(k)), w0, a5);
                }
            }
            // SAFETY: the bias array holds 16 values.
            let bias0 = unsafe { _mm256_loadu_ps(t.bias.as_ptr()) };
            let mut ys = [a0, a1, a2, a3, a4, a5].map(|a| _mm256_add_ps(a, bias0));
            act_block(t.act, &mut ys);
            for (y, out) in ys.iter().zip(t.output).take(t.pixels) {
                // SAFETY: `lanes` (<= 8) writable values at each valid pixel's output.
                unsafe { store_f32(out, *y, _mm256_setzero_ps(), t.lanes) };
            }
        }
    };
}

conv_f32_tile!(conv_f32_avx2, conv_f32_avx2_half, "avx2,fma");
conv_f32_tile!(conv_f32_avx512, conv_f32_avx512_half, "avx2,fma,avx512f,avx512vl");

/// The int8 epilogue's store for one pixel of activated values: as codes or as real
/// values. A macro so
/// that it is always inlined into the tile (as a function it is not: the call passes
/// the vectors through memory and costs more than the work).
///
/// Safety: `t.lanes` values must be writable at pixel `$i`'s output.
macro_rules! finish_u8 {
    ($t:expr, $i:expr, $y0:expr, $y1:expr) => {{
        let t: &ConvTileU8<'_> = $t;
        let (y0, y1) = ($y0, $y1);
        match t.store {
            StoreU8::Real { output } => {
                if let Some(&out) = output.get($i) {
                    // SAFETY: the macro's contract.
                    unsafe { store_f32(out, y0, y1, t.lanes) };
                }
            }
            StoreU8::Codes { output, inv_scale, zero_point } => {
                if let Some(&out) = output.get($i) {
                    let bytes = codes_u8!(y0, y1, _mm256_set1_ps(inv_scale), _mm256_set1_ps(zero_point));
                    // SAFETY: `lanes` writable bytes at `out` (the macro's contract).
                    unsafe { store_bytes(out, bytes, t.lanes) };
                }
            }
        }
    }};
}

/// The requantization constants of a tile, as vectors.
///
/// # Safety
/// None beyond AVX2: the arrays hold 16 values each.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn epilogue_constants(t: &ConvTileU8<'_>) -> [__m256; 4] {
    let (m, o) = (t.mult.as_ptr(), t.offset.as_ptr());
    // SAFETY: `mult` and `offset` are arrays of 16 values.
    unsafe { [_mm256_loadu_ps(m), _mm256_loadu_ps(m.add(8)), _mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))] }
}

/// The int8 tile, generic over the multiply-accumulate step; `$half` is the build for
/// tiles of at most 8 lanes (one accumulator per pixel).
macro_rules! conv_u8_tile {
    ($name:ident, $half:ident, $features:literal, $mac:expr) => {
        /// # Safety
        /// See [`Kernels::conv_u8`] with `lanes <= 8`; the CPU must have the function's
        /// features.
        #[target_feature(enable = $features)]
        unsafe fn $half(t: &ConvTileU8<'_>) {
            let z = _mm256_setzero_si256();
            let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5) = (z, z, z, z, z, z);
            let [q0, q1, q2, q3, q4, q5] = t.input;
            let mut w = t.weights.cast::<__m256i>();
            for &k in t.koffs {
                // SAFETY: as in the full build below.
                unsafe {
                    let w0 = _mm256_loadu_si256(w);
                    w = w.add(2);
                    let x = |p: *const u8| _mm256_set1_epi32(p.add(k).cast::<i32>().read_unaligned());
                    a0 = $mac(a0, x(q0), w0);
                    a1 = $mac(a1, x(q1), w0);
                    a2 = $mac(a2, x(q2), w0);
                    a3 = $mac(a3, x(q3), w0);
                    a4 = $mac(a4, x(q4), w0);
                    a5 = $mac(a5, x(q5), w0);
                }
            }
            let [m0, _, o0, _] = epilogue_constants(t);
            if let StoreU8::Codes { output, inv_scale, zero_point } = t.store {
                if let Some((lo, hi)) = super::act::folded_bounds(t.act, inv_scale, zero_point) {
                    let k0 = folded_constants(m0, o0, inv_scale, zero_point);
                    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
                    for (i, a) in [a0, a1, a2, a3, a4, a5].into_iter().enumerate().take(t.pixels) {
                        if let Some(&out) = output.get(i) {
                            let bytes = round_clamped!(folded8(_mm256_cvtepi32_ps(a), k0, lo, hi), _mm256_setzero_ps());
                            // SAFETY: `lanes` (<= 8) writable bytes at each valid pixel's output.
                            unsafe { store_bytes(out, bytes, t.lanes) };
                        }
                    }
                    return;
                }
            }
            let mut ys = [a0, a1, a2, a3, a4, a5].map(|a| _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), m0), o0));
            act_block(t.act, &mut ys);
            for (i, y) in ys.iter().enumerate().take(t.pixels) {
                // Safety: `lanes` (<= 8) writable values at each valid pixel's output.
                finish_u8!(t, i, *y, _mm256_setzero_ps());
            }
        }

        /// # Safety
        /// See [`Kernels::conv_u8`]; the CPU must have the function's features.
        #[target_feature(enable = $features)]
        unsafe fn $name(t: &ConvTileU8<'_>) {
            if t.lanes <= 8 {
                // SAFETY: the same contract.
                return unsafe { $half(t) };
            }
            let z = _mm256_setzero_si256();
            let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2) = (z, z, z, z, z, z);
            let (mut a3, mut b3, mut a4, mut b4, mut a5, mut b5) = (z, z, z, z, z, z);
            let [q0, q1, q2, q3, q4, q5] = t.input;
            let mut w = t.weights.cast::<__m256i>();
            for &k in t.koffs {
                // SAFETY: the caller guarantees 4 bytes at each offset after each input
                // pointer and the whole weight panel, which `w` walks once (64 bytes per
                // step); the 4-byte input loads are unaligned reads.
                unsafe {
                    let w0 = _mm256_loadu_si256(w);
                    let w1 = _mm256_loadu_si256(w.add(1));
                    w = w.add(2);
                    macro_rules! step {
                        ($i:tt, $a:ident, $b:ident, $q:ident) => {
                            let x = _mm256_set1_epi32($q.add(k).cast::<i32>().read_unaligned());
                            $a = $mac($a, x, w0);
                            $b = $mac($b, x, w1);
                        };
                    }
                    step!(0, a0, b0, q0);
                    step!(1, a1, b1, q1);
                    step!(2, a2, b2, q2);
                    step!(3, a3, b3, q3);
                    step!(4, a4, b4, q4);
                    step!(5, a5, b5, q5);
                }
            }
            let [m0, m1, o0, o1] = epilogue_constants(t);
            let accs = [a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, a5, b5];
            if let StoreU8::Codes { output, inv_scale, zero_point } = t.store {
                if let Some((lo, hi)) = super::act::folded_bounds(t.act, inv_scale, zero_point) {
                    let k0 = folded_constants(m0, o0, inv_scale, zero_point);
                    let k1 = folded_constants(m1, o1, inv_scale, zero_point);
                    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
                    for (i, pair) in accs.chunks_exact(2).enumerate().take(t.pixels) {
                        if let ([a, b], Some(&out)) = (pair, output.get(i)) {
                            let v0 = folded8(_mm256_cvtepi32_ps(*a), k0, lo, hi);
                            let v1 = folded8(_mm256_cvtepi32_ps(*b), k1, lo, hi);
                            // SAFETY: `lanes` writable bytes at each valid pixel's output.
                            unsafe { store_bytes(out, round_clamped!(v0, v1), t.lanes) };
                        }
                    }
                    return;
                }
            }
            let mut ys = [_mm256_setzero_ps(); 2 * MR];
            for (k, (y, a)) in ys.iter_mut().zip(accs).enumerate() {
                let (m, o) = if k % 2 == 0 { (m0, o0) } else { (m1, o1) };
                *y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), m), o);
            }
            act_block(t.act, &mut ys);
            for (i, y) in ys.chunks_exact(2).enumerate().take(t.pixels) {
                if let [y0, y1] = *y {
                    // Safety: `lanes` writable values at each valid pixel's output.
                    finish_u8!(t, i, y0, y1);
                }
            }
        }
    };
}

/// `acc + sum of four u8 x i8 products` per 32-bit lane with AVX2: `vpmaddubsw` sums
/// pairs into i16 (exact for 7-bit weights), `vpmaddwd` with ones sums the pairs.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn mac_avx2(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), _mm256_set1_epi16(1)))
}

/// The same with one VNNI instruction.
#[inline]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
fn mac_vnni(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, x, w)
}

conv_u8_tile!(conv_u8_avx2, conv_u8_avx2_half, "avx2,fma", mac_avx2);
conv_u8_tile!(conv_u8_vnni, conv_u8_vnni_half, "avx2,fma,avx512vnni,avx512vl", mac_vnni);

const _: () = assert!(MR == 6 && PANEL == 16, "the x86 tiles are written for 6 x 16");

#[cfg(test)]
mod tests {
    crate::kernels::testing::kernel_tests!(avx2, crate::kernels::x86::AVX2);
    crate::kernels::testing::kernel_tests!(avx512vnni, crate::kernels::x86::AVX512_VNNI);
}
