//! The backends a model runs on, chosen once when it is opened: the [`cpu`] backend
//! (our kernels) or, with the `candle` feature, the [`device`] backend (the graph as
//! candle tensor operations; CUDA with the `cuda` feature). A [`crate::Session`] holds
//! one [`Runner`] of its model's backend and never asks which one it is.

pub(crate) mod cpu;
#[cfg(feature = "candle")]
pub mod device;

use crate::model::Model;
use crate::Result;

/// A caller's input batch.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input<'a> {
    /// `[N][C][H][W]` normalized f32.
    Nchw(&'a [f32]),
    /// `[N][H][W][3]` RGB8.
    Rgb8(&'a [u8]),
}

impl<'a> Input<'a> {
    /// Values in all.
    pub fn len(&self) -> usize {
        match self {
            Input::Nchw(x) => x.len(),
            Input::Rgb8(x) => x.len(),
        }
    }

    /// Images `start..start + n` of a batch with `per_image` values each.
    pub fn part(self, start: usize, n: usize, per_image: usize) -> Self {
        let r = start * per_image..(start + n) * per_image;
        match self {
            Input::Nchw(x) => Input::Nchw(x.get(r).unwrap_or(&[])),
            Input::Rgb8(x) => Input::Rgb8(x.get(r).unwrap_or(&[])),
        }
    }
}

/// A callback that sees each node's output of an f32 model on the CPU: `(node index,
/// value as [image][y][x][channel])`.
pub type Observer<'a> = dyn FnMut(usize, &[f32]) + Send + 'a;

/// What a run reports besides the logits.
pub(crate) enum Watch<'a, 'b> {
    /// Nothing.
    None,
    /// Every node's f32 output (calibration).
    Values(&'a mut Observer<'b>),
    /// Seconds per node, added to `times[node]`.
    Times(&'a mut [f64]),
}

/// A model's backend.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// A runner with its own buffers, for one thread at a time.
    fn runner(&self, model: &Model) -> Result<Box<dyn Runner>>;
}

/// Runs batches of a model; owned by one session.
pub(crate) trait Runner: Send + std::fmt::Debug {
    /// Images per call of [`Runner::run`].
    fn capacity(&self) -> usize;
    /// Threads it computes with.
    fn threads(&self) -> usize;
    /// Writes the logits of `n <= capacity()` images into `out` (`n x classes`).
    fn run(
        &mut self,
        model: &Model,
        input: Input<'_>,
        n: usize,
        out: &mut [f32],
        watch: &mut Watch<'_, '_>,
    ) -> Result<()>;
    /// Writes the logits of a whole batch of `n` images (any size) into `out`, if this
    /// runner has a better way than [`Runner::run`] on parts of `capacity()` images;
    /// returns whether it did.
    fn run_batch(&mut self, _model: &Model, _input: Input<'_>, _n: usize, _out: &mut [f32]) -> Result<bool> {
        Ok(false)
    }
}
