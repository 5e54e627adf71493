//! CPU kernels, in the style of tract-linalg: each hot kernel has one interface (the tile
//! structs below), a portable implementation ([`portable`]) that defines its result, and
//! per-architecture implementations ([`x86`]) plugged into a [`Kernels`] table that is
//! chosen once, from the CPU's features, when the first model is opened. Every
//! implementation runs the same randomized tests against the portable one
//! (`kernel_tests!`, in [`testing`]).
//!
//! Activations are stored NHWC (`[image][y][x][channel]`, with a border of padding
//! around each image's plane where a convolution reads it): a convolution tile takes
//! [`MR`] output pixels by [`PANEL`] output channels, broadcasts input values (f32) or
//! groups of four input bytes (int8) and multiplies them with a panel of packed weights
//! ([`crate::artifact::layers`]), keeping the whole tile in registers over the whole
//! reduction, then applies the fused epilogue (bias or requantization, activation,
//! quantization to u8) and stores each pixel's channels.

pub mod act;
pub mod portable;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use crate::artifact::layers::PANEL;
use crate::artifact::Activation;

/// How many times each convolution tile is computed: 1, or 2 with the test-only
/// `slow-kernels` feature (which exists to show that the speed gate catches a slowdown).
pub(crate) const REPEAT: usize = if cfg!(feature = "slow-kernels") { 2 } else { 1 };

/// Output pixels per convolution tile.
pub const MR: usize = 6;

/// One f32 convolution tile: `out[i][lane] = act(bias[lane] + sum over k of
/// input[i][koffs[k]] * weights[k * PANEL + lane])` for pixels `i < pixels` and lanes
/// `< lanes`. The reduction runs over `k` in order: window positions, then channels.
#[derive(Debug)]
pub struct ConvTileF32<'a> {
    /// Per pixel: its window's first input value (pixels past `pixels` repeat a valid one).
    pub input: [*const f32; MR],
    /// Element offset from the window's first value of each reduction step: one loop
    /// over the whole reduction (short nested loops cost a mispredicted exit each).
    pub koffs: &'a [usize],
    /// The weight panel: `koffs.len() * PANEL` values.
    pub weights: *const f32,
    /// Per lane.
    pub bias: &'a [f32; PANEL],
    /// Fused activation.
    pub act: Activation,
    /// Per pixel: where its lane 0 is stored (lanes are contiguous).
    pub output: [*mut f32; MR],
    /// Valid pixels, `1..=MR`.
    pub pixels: usize,
    /// Valid lanes, `1..=PANEL`.
    pub lanes: usize,
}

/// Where an int8 tile stores its results.
#[derive(Debug, Clone, Copy)]
pub enum StoreU8 {
    /// u8 codes `clamp(round(y / scale + zero_point))`: `inv_scale = 1 / scale`; after
    /// none, ReLU or ReLU6 in the folded form ([`act::folded_code`]).
    Codes {
        /// Per pixel: where its lane 0 goes.
        output: [*mut u8; MR],
        /// `1 / scale` of the output encoding.
        inv_scale: f32,
        /// The output zero point.
        zero_point: f32,
    },
    /// The real values (a final layer's logits).
    Real {
        /// Per pixel: where its lane 0 goes.
        output: [*mut f32; MR],
    },
}

/// One int8 convolution tile: `acc[i][lane] = sum over k of the dot product of the 4
/// input bytes at input[i][koffs[k]] with the 4 weight bytes at weights[(k * PANEL +
/// lane) * 4]`, then `y = act(acc * mult[lane] + offset[lane])`, stored as [`StoreU8`]
/// says.
#[derive(Debug)]
pub struct ConvTileU8<'a> {
    /// Per pixel: its window's first input byte.
    pub input: [*const u8; MR],
    /// Byte offset of each reduction step's four input channels (window positions, then
    /// quads of channels).
    pub koffs: &'a [usize],
    /// The weight panel: `koffs.len() * PANEL * 4` bytes.
    pub weights: *const i8,
    /// Per lane: input scale x weight scale.
    pub mult: &'a [f32; PANEL],
    /// Per lane: bias minus the input zero point's contribution.
    pub offset: &'a [f32; PANEL],
    /// Fused activation.
    pub act: Activation,
    /// Where the results go.
    pub store: StoreU8,
    /// Valid pixels, `1..=MR`.
    pub pixels: usize,
    /// Valid lanes, `1..=PANEL`.
    pub lanes: usize,
}

/// Elementwise sum of two u8-encoded values into a third encoding (residual adds):
/// `out = code(act(sa * (a - za) + sb * (b - zb)) / so + zo)`.
#[derive(Debug)]
pub struct AddU8<'a> {
    /// The two inputs (as long as `out`).
    pub a: &'a [u8],
    /// See `a`.
    pub b: &'a [u8],
    /// The result.
    pub out: &'a mut [u8],
    /// Encodings of `a`, `b` and `out`.
    pub quant: [crate::artifact::QuantParams; 3],
    /// Fused activation.
    pub act: Activation,
}

/// Where a [`DepthwiseRow`] stores its results.
#[derive(Debug, Clone, Copy)]
pub enum RowStore {
    /// u8 codes `clamp(round(y / scale + zero_point))`: `inv_scale = 1 / scale`; after
    /// none, ReLU or ReLU6 in the folded form ([`act::folded_code`]).
    Codes {
        /// The row's output; pixel `p`'s channels start at `out_pix[p] - out_origin`.
        output: *mut u8,
        /// `1 / scale` of the output encoding.
        inv_scale: f32,
        /// The output zero point.
        zero_point: f32,
    },
    /// u8 codes of the folded epilogue ([`act::folded_code`]) with the op's constants
    /// folded ahead ([`act::fold_ahead`]): `mult` and `offset` hold `mult'` and
    /// `offset'`, and the activation is the clamp to `[lo, hi]`. (`Codes` folds them per
    /// block; this saves the work on every pixel.)
    FoldedCodes {
        /// As for `Codes`.
        output: *mut u8,
        /// The clamp's bounds on the code grid ([`act::folded_bounds`]), with `0 <= lo
        /// <= hi <= 255` ([`DepthwiseRow::consistent`]): the kernels round without
        /// clamping again.
        lo: f32,
        /// See `lo`.
        hi: f32,
    },
    /// The real values.
    Real {
        /// As for `Codes`.
        output: *mut f32,
    },
}

/// The input of a [`DepthwiseRow`].
#[derive(Debug, Clone, Copy)]
pub enum RowInput {
    /// f32 values.
    F32(*const f32),
    /// u8 codes (an int8 layer's), widened to f32 as they are read.
    U8(*const u8),
}

/// One row of a depthwise convolution (one filter per channel, values NHWC): for every
/// pixel `p` and channel `c < channels`, `acc = sum over k of input[in_pix[p] -
/// in_origin + koffs[k] + c] * weights[k * channels + c]` (fused multiply-adds in window
/// order), then `y = act(acc * mult[c] + offset[c])`, stored as [`RowStore`] says.
///
/// int8 layers run it on their u8 codes, each widened to f32 as it is read, and their
/// weight codes: every product and partial sum is then an integer below 2^24 (at most
/// [`MAX_DEPTHWISE_POSITIONS`](crate::artifact::layers::MAX_DEPTHWISE_POSITIONS)
/// positions of 255 x 127), exact in f32. (Widening a row's input ahead into an f32
/// buffer, to convert each code once rather than once per window position reading it,
/// measured slower: the buffer is four times the bytes.) f32 layers have `mult` 1 and
/// `offset` the bias.
#[derive(Debug)]
pub struct DepthwiseRow<'a> {
    /// The input values; pixel `p`'s window starts at `in_pix[p] - in_origin`.
    pub input: RowInput,
    /// Per pixel: where its window's first value is, plus `in_origin`.
    pub in_pix: &'a [usize],
    /// Subtracted from every `in_pix` (where `input` starts).
    pub in_origin: usize,
    /// Per window position: its offset from the window's first value.
    pub koffs: &'a [usize],
    /// `[position][channel]`.
    pub weights: &'a [f32],
    /// int8 layers: the same weight codes as 32-bit lanes each holding the i16 pair
    /// (code, 0) ([`weight_pair`]), for kernels that multiply-add 16-bit pairs (VNNI's
    /// `vpdpwssd`); may be empty.
    pub weight_pairs: &'a [u32],
    /// Channels (of the input, the output and the filters).
    pub channels: usize,
    /// Per channel: the sums' scale (int8: input scale x weight scale; f32: 1).
    pub mult: &'a [f32],
    /// Per channel: the bias (int8: minus the input zero point's contribution).
    pub offset: &'a [f32],
    /// Fused activation.
    pub act: Activation,
    /// Per pixel (as many as `in_pix`): where its channels go, plus `out_origin`.
    pub out_pix: &'a [usize],
    /// Subtracted from every `out_pix` (the row's first pixel, when the store's pointer
    /// is at it).
    pub out_origin: usize,
    /// Where the results go.
    pub store: RowStore,
}

/// An int8 weight code as the 32-bit lane of [`DepthwiseRow::weight_pairs`]: the i16
/// pair (code, 0), low half first.
pub fn weight_pair(code: f32) -> u32 {
    u32::from(code as i16 as u16)
}

impl DepthwiseRow<'_> {
    /// Whether the slices agree with `channels` and the store's bounds are on the code
    /// grid (the kernels do nothing otherwise).
    pub fn consistent(&self) -> bool {
        let bounds_ok = match self.store {
            RowStore::FoldedCodes { lo, hi, .. } => 0.0 <= lo && lo <= hi && hi <= 255.0,
            RowStore::Codes { .. } | RowStore::Real { .. } => true,
        };
        bounds_ok
            && self.koffs.len().checked_mul(self.channels).is_some_and(|n| self.weights.len() >= n)
            && self.mult.len() >= self.channels
            && self.offset.len() >= self.channels
            && self.in_pix.len() == self.out_pix.len()
            && self.in_pix.iter().all(|&i| i >= self.in_origin)
            && self.out_pix.iter().all(|&o| o >= self.out_origin)
    }
}

/// The kernel table: one implementation of each hot kernel.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    /// Which implementation (`portable`, `avx2`, `avx512vnni`).
    pub name: &'static str,
    /// The f32 convolution tile.
    ///
    /// # Safety
    /// The value at every input pointer plus every `koffs`, the weight panel, and `lanes`
    /// values after every output pointer of the first `pixels` pixels must be valid;
    /// outputs must not overlap inputs.
    pub conv_f32: unsafe fn(&ConvTileF32<'_>),
    /// The int8 convolution tile.
    ///
    /// # Safety
    /// As for `conv_f32`, with 4 bytes read at every `koffs`.
    pub conv_u8: unsafe fn(&ConvTileU8<'_>),
    /// A row of a depthwise convolution.
    ///
    /// # Safety
    /// `channels` values at every `input + in_pix[p] - in_origin + koffs[k]`, and `channels` values
    /// (bytes or f32) at every output position of the store must be valid.
    pub depthwise: unsafe fn(&DepthwiseRow<'_>),
    /// The int8 elementwise add.
    ///
    /// # Safety
    /// None beyond the CPU features of the table (which [`available`] checks).
    pub add_u8: unsafe fn(&mut AddU8<'_>),
    /// An activation over a slice, in place ([`act::activate`] on every value).
    ///
    /// # Safety
    /// None beyond the CPU features of the table (which [`available`] checks).
    pub act_f32: unsafe fn(Activation, &mut [f32]),
}

impl Kernels {
    /// The int8 elementwise add with this table's build.
    pub fn add_u8(&self, job: &mut AddU8<'_>) {
        // SAFETY: tables are only handed out for CPUs that have their features.
        unsafe { (self.add_u8)(job) }
    }

    /// Applies `act` to every value of `xs` with this table's build.
    pub fn activate(&self, act: Activation, xs: &mut [f32]) {
        if act != Activation::None {
            // SAFETY: tables are only handed out for CPUs that have their features.
            unsafe { (self.act_f32)(act, xs) }
        }
    }
}

/// Every implementation that runs on this CPU, the portable one first.
pub fn available() -> Vec<&'static Kernels> {
    let mut v = vec![&portable::KERNELS];
    #[cfg(target_arch = "x86_64")]
    v.extend(x86::available());
    v
}

/// The implementation used by models: the fastest available one, chosen once. The
/// environment variable `CIFAR_KERNELS` (`portable`, `avx2`, `avx512vnni`) picks another
/// available one, for comparisons.
pub fn best() -> &'static Kernels {
    static BEST: std::sync::OnceLock<&'static Kernels> = std::sync::OnceLock::new();
    BEST.get_or_init(|| {
        let all = available();
        let wanted = std::env::var("CIFAR_KERNELS").ok();
        let chosen = wanted.as_deref().and_then(|w| all.iter().find(|k| k.name == w));
        chosen.or(all.last()).copied().unwrap_or(&portable::KERNELS)
    })
}
