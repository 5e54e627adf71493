//! Activations and the elementwise kernels around them.
//!
//! GELU (tanh form) through glibc's `tanhf` cost a quarter of a training step: it is a
//! scalar call per element. Here `gelu(z) = z * sigmoid(2u)` with
//! `u = sqrt(2/pi) (z + 0.044715 z^3)` (the same function: `(1 + tanh u) / 2 =
//! sigmoid(2u)`) and `exp` is computed branch-free (Cody-Waite range reduction and a
//! degree-7 polynomial), so the loops vectorize. Each slice kernel is compiled twice, for
//! AVX2+FMA (chosen at run time when the CPU has them) and portable, and tested against
//! the std-math reference.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Activation fused into the producing op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    None,
    #[default]
    Relu,
    Gelu,
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `e^x`, relative error ~1e-7, no branches: shared with the SDK's engine so that
/// training and inference compute GELU the same way.
pub use cifar_sdk::kernels::act::fast_exp;

#[inline(always)]
fn sigmoid2u(z: f32) -> (f32, f32) {
    let u = SQRT_2_OVER_PI * (z + GELU_C * z * z * z);
    (1.0 / (1.0 + fast_exp(-2.0 * u)), u)
}

#[inline(always)]
pub fn gelu(z: f32) -> f32 {
    z * sigmoid2u(z).0
}

/// d gelu / dz = s + 2 z s (1 - s) u', with s = sigmoid(2u).
#[inline(always)]
pub fn gelu_grad(z: f32) -> f32 {
    let (s, _) = sigmoid2u(z);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * z * z);
    s + 2.0 * z * s * (1.0 - s) * du
}

#[cfg_attr(not(test), allow(dead_code))]
impl Activation {
    #[inline(always)]
    pub fn apply(self, z: f32) -> f32 {
        match self {
            Activation::None => z,
            Activation::Relu => z.max(0.0),
            Activation::Gelu => gelu(z),
        }
    }

    /// d act(z) / dz.
    #[inline(always)]
    pub fn derivative(self, z: f32) -> f32 {
        match self {
            Activation::None => 1.0,
            Activation::Relu => f32::from(u8::from(z > 0.0)),
            Activation::Gelu => gelu_grad(z),
        }
    }

    /// The same activation from candle ops (devices without the fused ops).
    pub fn apply_tensor(self, t: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::None => Ok(t.clone()),
            Activation::Relu => t.relu(),
            Activation::Gelu => t.gelu(),
        }
    }
}

/// Defines `pub fn $name(..)` that runs `$body` compiled for AVX2+FMA when the CPU has
/// them, and the portable build of the same body otherwise.
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above), the
                    // only requirement of a `target_feature` function.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

multiversion! {
    /// `dst = act(src * scale + shift)`.
    pub fn affine_act(act: Activation, src: &[f32], scale: f32, shift: f32, dst: &mut [f32]) {
        match act {
            Activation::None => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * scale + shift),
            Activation::Relu => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = (v * scale + shift).max(0.0)),
            Activation::Gelu => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = gelu(v * scale + shift)),
        }
    }
}

multiversion! {
    /// `dz = dy * act'(src * scale + shift)`.
    pub fn affine_act_grad(act: Activation, src: &[f32], scale: f32, shift: f32, dy: &[f32], dz: &mut [f32]) {
        match act {
            Activation::None => dz.copy_from_slice(dy),
            Activation::Relu => dz.iter_mut().zip(src).zip(dy).for_each(|((d, &v), &g)| {
                *d = if v * scale + shift > 0.0 { g } else { 0.0 }
            }),
            Activation::Gelu => dz.iter_mut().zip(src).zip(dy).for_each(|((d, &v), &g)| *d = g * gelu_grad(v * scale + shift)),
        }
    }
}

multiversion! {
    /// `(sum(a), sum(a * (b - c)))`, with eight f32 partial sums per lane group
    /// (so the adds pipeline and vectorize) combined in f64.
    pub fn dot_sums(a: &[f32], b: &[f32], c: f32) -> (f64, f64) {
        let mut s = [0f32; 8];
        let mut q = [0f32; 8];
        let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for i in 0..8 {
                s[i] += x[i];
                q[i] += x[i] * (y[i] - c);
            }
        }
        let mut st: f64 = s.iter().map(|&v| v as f64).sum();
        let mut qt: f64 = q.iter().map(|&v| v as f64).sum();
        for (&x, &y) in ar.iter().zip(br) {
            st += x as f64;
            qt += (x * (y - c)) as f64;
        }
        (st, qt)
    }
}

multiversion! {
    /// `dz = a * dz + b * (x - m) + c`, in place (the batch-norm input gradient).
    pub fn bn_input_grad(dz: &mut [f32], x: &[f32], a: f32, b: f32, m: f32, c: f32) {
        dz.iter_mut().zip(x).for_each(|(d, &v)| *d = a * *d + b * (v - m) + c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gelu_ref(z: f64) -> f64 {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z);
        0.5 * z * (1.0 + u.tanh())
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let (got, want) = (fast_exp(x) as f64, (x as f64).exp());
            assert!(((got - want) / want).abs() < 5e-7, "exp({x}) = {got}, want {want}");
            x += 0.0137;
        }
        assert_eq!(fast_exp(-1000.0), fast_exp(-87.0));
        assert!(fast_exp(1000.0).is_finite());
    }

    #[test]
    fn gelu_and_its_gradient_match_the_reference() {
        let mut z = -12.0f64;
        while z < 12.0 {
            let g = gelu(z as f32) as f64;
            assert!((g - gelu_ref(z)).abs() < 2e-6 * (1.0 + z.abs()), "gelu({z})");
            let h = 1e-4;
            let num = (gelu_ref(z + h) - gelu_ref(z - h)) / (2.0 * h);
            assert!((gelu_grad(z as f32) as f64 - num).abs() < 1e-4, "gelu'({z})");
            z += 0.01;
        }
    }

    #[test]
    fn slice_kernels_match_scalar_code_on_random_inputs() {
        let mut s = 11u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    s = crate::data::loader::mix(s);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
                })
                .collect()
        };
        for n in [0, 1, 7, 8, 9, 100, 1031] {
            let (x, dy) = (rnd(n), rnd(n));
            for act in [Activation::None, Activation::Relu, Activation::Gelu] {
                let mut y = vec![0f32; n];
                let mut dz = vec![0f32; n];
                affine_act(act, &x, 0.7, -0.2, &mut y);
                affine_act_grad(act, &x, 0.7, -0.2, &dy, &mut dz);
                for i in 0..n {
                    let z = x[i] * 0.7 - 0.2;
                    assert!((y[i] - act.apply(z)).abs() < 1e-6);
                    assert!((dz[i] - dy[i] * act.derivative(z)).abs() < 1e-5);
                }
            }
            let (a, b) = dot_sums(&x, &dy, 0.3);
            let a_ref: f64 = x.iter().map(|&v| v as f64).sum();
            let b_ref: f64 = x.iter().zip(&dy).map(|(&p, &q)| p as f64 * (q as f64 - 0.3)).sum();
            assert!((a - a_ref).abs() < 1e-3 && (b - b_ref).abs() < 1e-3, "n={n}");
        }
    }
}
