//! Row-wise helpers of the light ops (pools, elementwise ops): their work units are the
//! output rows of the chunk, `images * h` of them, and each unit writes one contiguous
//! run of its output (the interior of one row), so concurrent units never overlap.

use crate::backend::cpu::{Io, ValueLayout};
use crate::{Error, Result};

/// Units of a row-wise op over `images` images of output layout `out`.
pub(crate) fn units(out: &ValueLayout, images: usize) -> usize {
    images * out.h
}

/// Unit `u` as `(image, row)`.
pub(crate) fn unit(out: &ValueLayout, u: usize) -> (usize, usize) {
    (u / out.h.max(1), u % out.h.max(1))
}

/// Output row `y` of image `n` as f32.
///
/// # Safety
/// Only the unit `(n, y)` may ask for this row while its step runs (units are rows, and
/// the executor gives each unit to one thread).
#[allow(clippy::mut_from_ref)] // one row of the arena, by the contract above
pub(crate) unsafe fn out_f32<'a>(io: &'a Io<'_>, n: usize, y: usize) -> Result<&'a mut [f32]> {
    // SAFETY: the caller's contract makes the row exclusive.
    unsafe { io.output_f32(io.output_layout().row(n, y)) }
}

/// Output row `y` of image `n` as u8.
///
/// # Safety
/// As for [`out_f32`].
#[allow(clippy::mut_from_ref)] // one row of the arena, by the contract above
pub(crate) unsafe fn out_u8<'a>(io: &'a Io<'_>, n: usize, y: usize) -> Result<&'a mut [u8]> {
    // SAFETY: the caller's contract makes the row exclusive.
    unsafe { io.output_u8(io.output_layout().row(n, y)) }
}

/// The `cs` channels of pixel `at` of a value, or an internal error.
pub(crate) fn px<T>(v: &[T], at: usize, cs: usize) -> Result<&[T]> {
    v.get(at..at + cs).ok_or_else(|| Error::Internal(format!("pixel at {at} outside its value")))
}
