//! CPU kernels. Activations are laid out `[C][N*H*W]` ("CNHW": channel-major, then
//! batch): a convolution is then one GEMM per group whose output is already the next
//! layer's input, for any batch size, with no transposes between layers.
//!
//! Every kernel has a portable version; the hot ones are also compiled for AVX2+FMA and
//! chosen at run time ([`has_avx2`]). Tests compare both with simple references.

pub mod act;
pub mod gemm_f32;
pub mod im2col;
pub mod pool;
pub mod qgemm;

/// How many times each GEMM is computed: 1, or 2 with the test-only `slow-kernels`
/// feature (which exists to show that the speed regression gate catches a slowdown).
pub(crate) const GEMM_REPEAT: usize = if cfg!(feature = "slow-kernels") { 2 } else { 1 };

/// Whether this CPU runs the AVX2+FMA builds of the kernels (checked once).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A convolution or pooling window over one `[H][W]` plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Output height and width.
    pub out_hw: [usize; 2],
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[ph, pw]`.
    pub padding: [usize; 2],
}

impl Window {
    /// Input coordinate of output position `o`, kernel offset `k` along axis `axis`, or
    /// `None` in the padding.
    #[inline(always)]
    pub fn src(&self, axis: usize, o: usize, k: usize) -> Option<usize> {
        let (s, p, n) = match axis {
            0 => (self.stride[0], self.padding[0], self.in_hw[0]),
            _ => (self.stride[1], self.padding[1], self.in_hw[1]),
        };
        (o * s + k).checked_sub(p).filter(|&i| i < n)
    }

    /// Elements of one input plane.
    pub fn in_plane(&self) -> usize {
        self.in_hw[0] * self.in_hw[1]
    }

    /// Elements of one output plane.
    pub fn out_plane(&self) -> usize {
        self.out_hw[0] * self.out_hw[1]
    }
}
