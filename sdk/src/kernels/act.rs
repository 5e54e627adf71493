//! Activations (f32) and the u8 lookup tables that apply them to quantized values.

use crate::artifact::{Activation, QuantParams};

/// GELU in the trainer's tanh form: `x * sigmoid(2u)`, `u = sqrt(2/pi) (x + 0.044715 x^3)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

/// Applies an activation to one value.
#[inline(always)]
pub fn apply(act: Activation, x: f32) -> f32 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Gelu => gelu(x),
    }
}

/// Applies an activation to a slice in place.
pub fn apply_slice(act: Activation, xs: &mut [f32]) {
    match act {
        Activation::None => {}
        Activation::Relu => xs.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::Gelu => xs.iter_mut().for_each(|x| *x = gelu(*x)),
    }
}

impl QuantParams {
    /// The real value of a code.
    #[inline(always)]
    pub fn dequantize(&self, q: u8) -> f32 {
        self.scale * (f32::from(q) - f32::from(self.zero_point))
    }

    /// The nearest code of a real value (saturating).
    #[inline(always)]
    pub fn quantize(&self, x: f32) -> u8 {
        let q = (x / self.scale).round() + f32::from(self.zero_point);
        q.clamp(0.0, 255.0) as u8
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

/// `lut[q] = out.quantize(act(factor * inp.dequantize(q)))`: any per-element map
/// between two u8 encodings in one table lookup.
pub fn requant_lut(inp: QuantParams, factor: f32, act: Activation, out: QuantParams) -> [u8; 256] {
    let mut lut = [0u8; 256];
    for (q, slot) in lut.iter_mut().enumerate() {
        *slot = out.quantize(apply(act, factor * inp.dequantize(q as u8)));
    }
    lut
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
    fn quantization_round_trips_and_keeps_zero_exact() {
        let q = QuantParams::from_range(-0.3, 5.0);
        assert_eq!(q.dequantize(q.quantize(0.0)), 0.0);
        for i in 0..=255u8 {
            assert_eq!(q.quantize(q.dequantize(i)), i);
        }
        assert_eq!(q.quantize(1e9), 255);
        assert_eq!(q.quantize(-1e9), 0);
        let identity = requant_lut(q, 1.0, Activation::None, q);
        assert!(identity.iter().enumerate().all(|(i, &v)| v as usize == i));
    }
}
