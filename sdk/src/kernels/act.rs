//! Activations (f32) and the u8 lookup tables that apply them to quantized values.

use crate::artifact::{Activation, QuantParams};

/// `e^x` without branches or libm calls (Cody-Waite range reduction and a degree-7
/// polynomial; relative error ~1e-7), so loops over it vectorize. libm's scalar `expf`
/// made GELU the most expensive op of the f32 engine.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2) with the 1.5 * 2^23 trick.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let y = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + y * (1.0
            + y * (0.5
                + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// GELU in the trainer's tanh form: `x * sigmoid(2u)`, `u = sqrt(2/pi) (x + 0.044715 x^3)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    x / (1.0 + fast_exp(-2.0 * u))
}

/// Applies an activation to one value. ReLU6 and hard-swish clamp as `max` then `min`,
/// the order the x86 kernels use (for ReLU6 NaN becomes 0, where `clamp` would keep it).
#[inline(always)]
#[allow(clippy::manual_clamp)]
pub fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Gelu => gelu(x),
        Activation::Relu6 => x.max(0.0).min(6.0),
        Activation::Hardswish => x * ((x + 3.0).max(0.0).min(6.0) * (1.0 / 6.0)),
        Activation::Sigmoid => 1.0 / (1.0 + fast_exp(-x)),
    }
}

/// `code(y * inv_scale + zero_point)`: a real value to its u8 code, with the output
/// scale's reciprocal precomputed (the int8 convolution epilogue).
#[inline(always)]
pub fn quantize_code(y: f32, inv_scale: f32, zero_point: f32) -> u8 {
    code(y * inv_scale + zero_point)
}

/// The int8 epilogue straight to codes, for the activations that are clamps (none,
/// ReLU, ReLU6): `code(clamp(acc * mult' + offset', lo, hi))`, with `mult' = mult /
/// scale` ([`fold_mult`]), `offset' = offset / scale + zero_point` ([`fold_offset`]) and
/// the activation's bounds moved onto the code grid ([`folded_bounds`]). One
/// multiply-add and a clamp, where the general epilogue
/// (`quantize_code(act(acc * mult + offset), ...)`) multiplies, adds, activates, then
/// multiplies and adds again: the u8 epilogue of every build takes this form for these
/// activations (MobileNetV2 int8, whose pointwise convolutions are short reductions, ran
/// about 10% faster).
#[inline(always)]
pub fn folded_code(acc: f32, mult: f32, offset: f32, (lo, hi): (f32, f32)) -> u8 {
    code(acc.mul_add(mult, offset).max(lo).min(hi))
}

/// `[lo, hi]` of [`folded_code`] for `act` and the output encoding (`1 / scale`, zero
/// point); `None` for activations that are not clamps.
#[inline(always)]
pub fn folded_bounds(act: Activation, inv_scale: f32, zero_point: f32) -> Option<(f32, f32)> {
    match act {
        Activation::None => Some((0.0, 255.0)),
        Activation::Relu => Some((zero_point, 255.0)),
        Activation::Relu6 => Some((zero_point, 6.0f32.mul_add(inv_scale, zero_point).min(255.0))),
        Activation::Gelu | Activation::Hardswish | Activation::Sigmoid => None,
    }
}

/// Folds an epilogue's per-channel `mult` and `offset` in place into [`folded_code`]'s
/// `mult'` and `offset'` for `act` and the output encoding, and returns the clamp's
/// bounds; leaves them as they are and returns `None` where `act` is not a clamp.
pub fn fold_ahead(
    mult: &mut [f32],
    offset: &mut [f32],
    act: Activation,
    inv_scale: f32,
    zero_point: f32,
) -> Option<(f32, f32)> {
    let bounds = folded_bounds(act, inv_scale, zero_point)?;
    mult.iter_mut().for_each(|m| *m = fold_mult(*m, inv_scale));
    offset.iter_mut().for_each(|o| *o = fold_offset(*o, inv_scale, zero_point));
    Some(bounds)
}

/// `mult'` of [`folded_code`].
#[inline(always)]
pub fn fold_mult(mult: f32, inv_scale: f32) -> f32 {
    mult * inv_scale
}

/// `offset'` of [`folded_code`].
#[inline(always)]
pub fn fold_offset(offset: f32, inv_scale: f32, zero_point: f32) -> f32 {
    offset.mul_add(inv_scale, zero_point)
}

impl QuantParams {
    /// The real value of a code.
    #[inline(always)]
    pub fn dequantize(&self, q: u8) -> f32 {
        self.scale * (f32::from(q) - f32::from(self.zero_point))
    }

    /// The nearest code of a real value (saturating; halves round up; NaN gives 0).
    /// Clamp, add 0.5, truncate: no rounding call, so loops over it vectorize.
    #[inline(always)]
    pub fn quantize(&self, x: f32) -> u8 {
        quantize_code(x, 1.0 / self.scale, f32::from(self.zero_point))
    }

    /// Parameters covering `[lo, hi]` (widened to include 0, so zero is exact).
    pub fn from_range(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let span = (hi - lo).max(1e-6);
        let scale = span / 255.0;
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self { scale, zero_point }
    }
}

/// The u8 code nearest to `v` (already in code units): clamp, then round half up; NaN
/// gives 0.
#[inline(always)]
pub fn code(v: f32) -> u8 {
    // `max` first: it returns 0.0 for NaN (`clamp` would keep the NaN), so the value is
    // always in [0.5, 255.5].
    #[allow(clippy::manual_clamp)]
    let v = v.max(0.0).min(255.0) + 0.5;
    // SAFETY: `v` is finite and in [0.5, 255.5], so it fits an i32; the unchecked
    // conversion (unlike `as`, which must saturate) lets loops over it vectorize.
    (unsafe { v.to_int_unchecked::<i32>() }) as u8
}

/// `table[q] = out.quantize(act(factor * inp.dequantize(q)))`.
fn requant_table(inp: QuantParams, factor: f32, act: Activation, out: QuantParams) -> [u8; 256] {
    let mut table = [0u8; 256];
    for (q, slot) in table.iter_mut().enumerate() {
        *slot = out.quantize(activate(act, factor * inp.dequantize(q as u8)));
    }
    table
}

/// Any per-element map between two u8 encodings, `out.quantize(act(factor *
/// inp.dequantize(q)))`, as one table lookup per element. The int8 ops that do not
/// multiply (pools, flatten, scale) requantize through it.
#[derive(Debug)]
pub struct Requant(Box<[u8; 256]>);

impl Requant {
    /// The map, or `None` where it is the identity: the codes then move as they are.
    pub fn new(inp: QuantParams, factor: f32, act: Activation, out: QuantParams) -> Option<Self> {
        let table = requant_table(inp, factor, act, out);
        let identity = table.iter().enumerate().all(|(q, &v)| usize::from(v) == q);
        (!identity).then(|| Self(Box::new(table)))
    }

    /// The code `q` maps to.
    #[inline]
    pub fn map(&self, q: u8) -> u8 {
        // A u8 always indexes a 256-entry table; `get` keeps the no-indexing lint.
        self.0.get(usize::from(q)).copied().unwrap_or(0)
    }

    /// Maps `codes` in place.
    pub fn apply(&self, codes: &mut [u8]) {
        codes.iter_mut().for_each(|v| *v = self.map(*v));
    }
}

/// Maps `codes` in place where there is a map (`None`: the identity).
pub fn requant_in_place(map: Option<&Requant>, codes: &mut [u8]) {
    if let Some(map) = map {
        map.apply(codes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_the_tanh_formula() {
        for i in -400..400 {
            let x = i as f32 / 50.0;
            let r = 0.5 * x * (1.0 + (0.797_884_6f32 * (x + 0.044_715 * x * x * x)).tanh());
            assert!((gelu(x) - r).abs() <= 1e-6 * (1.0 + r.abs()), "{x}: {} vs {r}", gelu(x));
        }
    }

    #[test]
    fn fast_exp_and_the_activations_match_std() {
        for i in -800..800 {
            let x = i as f32 / 10.0;
            let (a, b) = (fast_exp(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "exp({x}): {a} vs {b}");
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for _ in 0..1000 {
            let z: f32 = rng.gen_range(-12.0..12.0);
            for act in Activation::ALL {
                let want = match act {
                    Activation::None => z,
                    Activation::Relu => z.max(0.0),
                    Activation::Gelu => 0.5 * z * (1.0 + (0.797_884_6f32 * (z + 0.044_715 * z * z * z)).tanh()),
                    Activation::Relu6 => z.clamp(0.0, 6.0),
                    Activation::Hardswish => z * (z + 3.0).clamp(0.0, 6.0) / 6.0,
                    Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
                };
                let got = activate(act, z);
                assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{act:?}({z}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn quantization_round_trips_and_keeps_zero_exact() {
        let q = QuantParams::from_range(-0.3, 5.0);
        assert_eq!(q.dequantize(q.quantize(0.0)), 0.0);
        for i in 0..=255u8 {
            assert_eq!(q.quantize(q.dequantize(i)), i);
        }
        assert_eq!(q.quantize(1e9), 255);
        assert_eq!(q.quantize(-1e9), 0);
        let identity = requant_table(q, 1.0, Activation::None, q);
        assert!(identity.iter().enumerate().all(|(i, &v)| v as usize == i));
        assert!(Requant::new(q, 1.0, Activation::None, q).is_none());
        assert!(Requant::new(q, 1.0, Activation::Relu, q).is_some());
    }
}
