//! The shared test of every kernel implementation: random tiles (shapes, strides,
//! partial tiles, activations, values) through the implementation and through the
//! portable build, which must agree bit for bit. `kernel_tests!(name, TABLE)` runs it
//! as property tests for one table; implementations the CPU lacks are skipped.

use super::{ConvTileF32, ConvTileU8, DepthwiseRow, Kernels, RowInput, RowStore, StoreU8, MR, PANEL};
use crate::artifact::layers::QUAD;
use crate::artifact::Activation;

/// A random case for every kernel: a convolution tile's geometry and values, read by
/// the depthwise row ([`run_depthwise`]), the add and the activation in their own terms.
#[derive(Debug, Clone)]
pub struct Case {
    /// Window positions and their spacing (element offsets `p * spacing`).
    pub positions: usize,
    /// Distance between window positions, at least one pixel's channels.
    pub spacing: usize,
    /// f32: channels; int8: quads of channels.
    pub depth: usize,
    /// Valid pixels and lanes.
    pub pixels: usize,
    /// Valid lanes.
    pub lanes: usize,
    /// Distance between the pixels' windows.
    pub pixel_stride: usize,
    /// Activation: an index into [`Activation::ALL`].
    pub act: u8,
    /// Seed of the values.
    pub seed: u64,
    /// int8: store codes (true) or real values; the depthwise row: u8 inputs and codes
    /// (true) or f32 inputs and reals.
    pub codes: bool,
    /// int8: every input 255 and every weight pair +-64 with one sign (the largest pair
    /// sums, where i16 arithmetic would saturate); the depthwise row: every input 255
    /// and every weight 127 (the largest sums, which must stay exact).
    pub extreme: bool,
}

fn act(a: u8) -> Activation {
    let all = Activation::ALL;
    all.get(usize::from(a) % all.len()).copied().unwrap_or_default()
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// The reduction offsets of a case: window positions, then `depth` steps `width` apart.
fn koffs(c: &Case, width: usize) -> Vec<usize> {
    (0..c.positions).flat_map(|p| (0..c.depth).map(move |d| p * c.spacing + d * width)).collect()
}

/// The input span a case reads: `MR` windows.
fn input_len(c: &Case, width: usize) -> usize {
    (MR - 1) * c.pixel_stride + (c.positions - 1) * c.spacing + c.depth * width + 1
}

/// Runs an f32 case through `k`; returns every output value (`MR * PANEL`, untouched
/// slots stay NaN so that stray writes show).
pub fn run_f32(k: &Kernels, c: &Case) -> Vec<u32> {
    let mut next = rng(c.seed);
    let mut uniform = move || (next() % 2001) as f32 / 1000.0 - 1.0;
    let input: Vec<f32> = (0..input_len(c, 1)).map(|_| uniform()).collect();
    let weights: Vec<f32> = (0..c.positions * c.depth * PANEL).map(|_| uniform()).collect();
    let mut bias = [0f32; PANEL];
    bias.iter_mut().for_each(|b| *b = uniform());
    let koffs = koffs(c, 1);
    let mut out = vec![f32::NAN; MR * PANEL];
    let base = out.as_mut_ptr();
    let tile = ConvTileF32 {
        input: std::array::from_fn(|i| input[i.min(c.pixels - 1) * c.pixel_stride..].as_ptr()),
        koffs: &koffs,
        weights: weights.as_ptr(),
        bias: &bias,
        act: act(c.act),
        output: std::array::from_fn(|i| base.wrapping_add(i * PANEL)),
        pixels: c.pixels,
        lanes: c.lanes,
    };
    // SAFETY: the buffers above cover every window, the panel and MR x PANEL outputs.
    unsafe { (k.conv_f32)(&tile) };
    out.iter().map(|v| v.to_bits()).collect()
}

/// Runs an int8 case through `k`; returns the stored bytes or values as bits.
pub fn run_u8(k: &Kernels, c: &Case) -> Vec<u32> {
    let mut next = rng(c.seed);
    let input: Vec<u8> = (0..input_len(c, QUAD)).map(|_| if c.extreme { 255 } else { (next() % 256) as u8 }).collect();
    let weights: Vec<i8> = (0..c.positions * c.depth * PANEL * QUAD)
        .map(|i| match (c.extreme, (i / 2) % 2) {
            (true, 0) => 64,
            (true, _) => -64,
            (false, _) => ((next() % 129) as i32 - 64) as i8,
        })
        .collect();
    let k_len = (c.positions * c.depth * QUAD) as f32;
    let mut mult = [0f32; PANEL];
    let mut offset = [0f32; PANEL];
    for (m, o) in mult.iter_mut().zip(offset.iter_mut()) {
        *m = (1 + next() % 100) as f32 / (2000.0 * k_len);
        *o = (next() % 2001) as f32 / 500.0 - 2.0;
    }
    let koffs = koffs(c, QUAD);
    let mut codes = vec![0xA5u8; MR * PANEL];
    let mut reals = vec![f32::NAN; MR * PANEL];
    let store = if c.codes {
        let base = codes.as_mut_ptr();
        StoreU8::Codes {
            output: std::array::from_fn(|i| base.wrapping_add(i * PANEL)),
            // ReLU6's top (6 x 20 + 97) is inside the code range.
            inv_scale: 20.0,
            zero_point: 97.0,
        }
    } else {
        let base = reals.as_mut_ptr();
        StoreU8::Real { output: std::array::from_fn(|i| base.wrapping_add(i * PANEL)) }
    };
    let tile = ConvTileU8 {
        input: std::array::from_fn(|i| input[i.min(c.pixels - 1) * c.pixel_stride..].as_ptr()),
        koffs: &koffs,
        weights: weights.as_ptr(),
        mult: &mult,
        offset: &offset,
        act: act(c.act),
        store,
        pixels: c.pixels,
        lanes: c.lanes,
    };
    // SAFETY: the buffers above cover every window, the panel and MR x PANEL outputs.
    unsafe { (k.conv_u8)(&tile) };
    if c.codes {
        codes.iter().map(|&v| u32::from(v)).collect()
    } else {
        reals.iter().map(|v| v.to_bits()).collect()
    }
}

/// Runs a depthwise row for a case: `pixels` pixels of `depth + lanes` channels, windows
/// of `positions` positions `spacing` apart (at least a pixel's channels), pixels
/// `pixel_stride` apart, counted from an origin of `act` (`in_origin`). With `codes`
/// (an int8 layer), u8 inputs, 8-bit weight codes as f32 and code outputs; with
/// `extreme`, every input 255 and every weight 127; otherwise f32 reals. Returns the
/// stored bytes or values as bits.
pub fn run_depthwise(k: &Kernels, c: &Case) -> Vec<u32> {
    let mut next = rng(c.seed ^ 0xD1);
    let mut uniform = move || (next() % 2001) as f32 / 1000.0 - 1.0;
    let channels = c.depth + c.lanes;
    let spacing = c.spacing.max(channels);
    let koffs: Vec<usize> = (0..c.positions).map(|p| p * spacing).collect();
    let origin = usize::from(c.act);
    let in_pix: Vec<usize> = (0..c.pixels).map(|i| origin + i * c.pixel_stride).collect();
    let input_len = (c.pixels - 1) * c.pixel_stride + (c.positions - 1) * spacing + channels;
    let mut code = |max: f32| (uniform() * max).round();
    // u8 codes for an int8 layer, reals otherwise.
    let codes_in: Vec<u8> =
        (0..input_len).map(|_| if c.extreme { 255 } else { (code(128.0) + 127.0).max(0.0) as u8 }).collect();
    let reals_in: Vec<f32> = (0..input_len).map(|_| code(1e6) / 1e6).collect();
    let input = if c.codes || c.extreme { RowInput::U8(codes_in.as_ptr()) } else { RowInput::F32(reals_in.as_ptr()) };
    let weights: Vec<f32> = (0..c.positions * channels)
        .map(|_| match (c.extreme, c.codes) {
            (true, _) => 127.0,
            (false, true) => code(127.0),
            (false, false) => code(1e6) / 1e6,
        })
        .collect();
    // u8 rows carry the pairs (the VNNI path) except on some seeds (the f32 path).
    let pairs: Vec<u32> = if matches!(input, RowInput::U8(_)) && !c.seed.is_multiple_of(3) {
        weights.iter().map(|&w| super::weight_pair(w)).collect()
    } else {
        Vec::new()
    };
    let mut next = rng(c.seed ^ 0xD2);
    // Scales that keep most codes off the clamps (sums of u8 x 8-bit codes are large).
    let k_len = c.positions as f32 * if matches!(input, RowInput::U8(_)) { 32.0 } else { 1.0 };
    let (mut mult, mut offset): (Vec<f32>, Vec<f32>) = (0..channels)
        .map(|_| ((1 + next() % 100) as f32 / (2000.0 * k_len), (next() % 2001) as f32 / 500.0 - 2.0))
        .unzip();
    // Outputs after a gap of 3 values, so that the origin is exercised.
    let out_pix: Vec<usize> = (0..c.pixels).map(|i| 3 + i * channels).collect();
    let mut codes = vec![0xA5u8; c.pixels * channels];
    let mut reals = vec![f32::NAN; c.pixels * channels];
    // Codes: folded ahead where the activation folds and the seed is odd, folded by
    // the kernel otherwise.
    let (inv_scale, zero_point) = (20.0, 97.0);
    let ahead = if c.codes && c.seed % 2 == 1 {
        super::act::fold_ahead(&mut mult, &mut offset, act(c.act), inv_scale, zero_point)
    } else {
        None
    };
    let store = match (c.codes, ahead) {
        (true, Some((lo, hi))) => RowStore::FoldedCodes { output: codes.as_mut_ptr(), lo, hi },
        (true, None) => RowStore::Codes { output: codes.as_mut_ptr(), inv_scale, zero_point },
        (false, _) => RowStore::Real { output: reals.as_mut_ptr() },
    };
    let row = DepthwiseRow {
        input,
        in_pix: &in_pix,
        in_origin: origin,
        koffs: &koffs,
        weights: &weights,
        weight_pairs: &pairs,
        channels,
        mult: &mult,
        offset: &offset,
        act: act(c.act),
        out_pix: &out_pix,
        out_origin: 3,
        store,
    };
    assert!(row.consistent());
    // SAFETY: the buffers above cover every window and every pixel's outputs.
    unsafe { (k.depthwise)(&row) };
    if c.codes {
        codes.iter().map(|&v| u32::from(v)).collect()
    } else {
        reals.iter().map(|v| v.to_bits()).collect()
    }
}

/// Runs the activation of a case over values around the interesting range.
pub fn run_act(k: &Kernels, c: &Case) -> Vec<u32> {
    let mut next = rng(c.seed);
    let n = c.positions * c.depth + c.lanes;
    let mut xs: Vec<f32> = (0..n).map(|_| (next() % 20001) as f32 / 1000.0 - 10.0).collect();
    k.activate(act(c.act), &mut xs);
    xs.iter().map(|v| v.to_bits()).collect()
}

/// Runs the int8 add of a case.
pub fn run_add(k: &Kernels, c: &Case) -> Vec<u32> {
    let mut next = rng(c.seed);
    let n = c.positions * c.depth + c.lanes;
    let a: Vec<u8> = (0..n).map(|_| (next() % 256) as u8).collect();
    let b: Vec<u8> = (0..n).map(|_| (next() % 256) as u8).collect();
    let q = |lo: f32, hi: f32| crate::QuantParams::from_range(lo, hi);
    let mut out = vec![0u8; n];
    k.add_u8(&mut super::AddU8 {
        a: &a,
        b: &b,
        out: &mut out,
        quant: [q(-1.0, 3.0), q(-2.5, 0.5), q(-1.5, 3.5)],
        act: act(c.act),
    });
    out.iter().map(|&v| u32::from(v)).collect()
}

/// Every kernel of `k` agrees with the portable build on `c`.
pub fn check(k: &Kernels, c: &Case) -> Result<(), String> {
    let p = &super::portable::KERNELS;
    if run_add(k, c) != run_add(p, c) {
        return Err(format!("{}: add_u8 differs from the portable build on {c:?}", k.name));
    }
    if run_act(k, c) != run_act(p, c) {
        return Err(format!("{}: act_f32 differs from the portable build on {c:?}", k.name));
    }
    if run_f32(k, c) != run_f32(p, c) {
        return Err(format!("{}: conv_f32 differs from the portable build on {c:?}", k.name));
    }
    if run_u8(k, c) != run_u8(p, c) {
        return Err(format!("{}: conv_u8 differs from the portable build on {c:?}", k.name));
    }
    if run_depthwise(k, c) != run_depthwise(p, c) {
        return Err(format!("{}: depthwise differs from the portable build on {c:?}", k.name));
    }
    Ok(())
}

/// Random cases: small and large reductions, every pixel and lane count, overlapping
/// windows.
pub fn cases() -> impl proptest::strategy::Strategy<Value = Case> {
    use proptest::prelude::*;
    (1usize..10, 0usize..3, 1usize..40, 1..=MR, 1..=PANEL, 1usize..80, 0u8..6, any::<u64>(), any::<bool>()).prop_map(
        |(positions, extra, depth, pixels, lanes, pixel_stride, act, seed, codes)| Case {
            positions,
            spacing: depth * QUAD + extra * 7,
            depth,
            pixels,
            lanes,
            pixel_stride,
            act,
            seed,
            codes,
            extreme: false,
        },
    )
}

/// Property tests of one kernel table against the portable one.
macro_rules! kernel_tests {
    ($name:ident, $table:expr) => {
        mod $name {
            use proptest::prelude::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(200))]
                #[test]
                fn agrees_with_the_portable_build(case in $crate::kernels::testing::cases()) {
                    let table = &$table;
                    if !$crate::kernels::available().iter().any(|k| k.name == table.name) {
                        return Ok(()); // this CPU lacks the implementation
                    }
                    if let Err(e) = $crate::kernels::testing::check(table, &case) {
                        prop_assert!(false, "{}", e);
                    }
                }
            }

            #[test]
            fn extreme_values_do_not_saturate() {
                // 255 x 64 summed over a long reduction: the worst case for i16 pairs.
                let table = &$table;
                if !$crate::kernels::available().iter().any(|k| k.name == table.name) {
                    return;
                }
                let case = $crate::kernels::testing::Case {
                    positions: 9,
                    spacing: 512,
                    depth: 128,
                    pixels: 6,
                    lanes: 16,
                    pixel_stride: 3,
                    act: 0,
                    seed: 1,
                    codes: false,
                    extreme: true,
                };
                let result = $crate::kernels::testing::check(table, &case);
                assert!(result.is_ok(), "{result:?}");
                // The depthwise row's largest window: sums up to 512 x 255 x 127, still
                // exact in f32 (and in the VNNI build's i32).
                let largest = $crate::kernels::testing::Case {
                    positions: $crate::artifact::layers::MAX_DEPTHWISE_POSITIONS,
                    spacing: 40,
                    depth: 20,
                    lanes: 16,
                    ..case
                };
                let p = &$crate::kernels::portable::KERNELS;
                assert_eq!(
                    $crate::kernels::testing::run_depthwise(table, &largest),
                    $crate::kernels::testing::run_depthwise(p, &largest),
                    "{}: the largest depthwise window",
                    table.name
                );
            }
        }
    };
}
pub(crate) use kernel_tests;

#[cfg(test)]
mod tests {
    kernel_tests!(portable, crate::kernels::portable::KERNELS);
}
