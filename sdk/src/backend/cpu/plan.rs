//! The buffer plan: where each value lives in one arena, computed once per session for
//! its chunk of images. Values that are never alive at the same time share memory
//! (first-fit over live intervals), so the arena is a fraction of the sum of all values
//! and stays in cache.

use super::Program;
use crate::{Error, Result};

/// Offsets are multiples of this many bytes (a cache line).
const ALIGN: usize = 64;

/// Arena layout for chunks of up to `images` images.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Images per chunk.
    pub images: usize,
    /// Byte offset of each value (0 = input, `i + 1` = node `i`).
    pub offsets: Vec<usize>,
    /// Arena length in bytes.
    pub arena_bytes: usize,
}

fn mul(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| Error::Options(format!("batch too large ({a} x {b} bytes)")))
}

impl Plan {
    /// Plans `program` for chunks of `images` images.
    pub fn new(program: &Program, images: usize) -> Result<Self> {
        let nv = program.layouts.len();
        let mut last_use = vec![0usize; nv];
        for (pos, &i) in program.order.iter().enumerate() {
            for &v in program.inputs.get(i).map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(l) = last_use.get_mut(v) {
                    *l = pos + 1;
                }
            }
        }
        if let Some(l) = last_use.get_mut(program.output + 1) {
            *l = usize::MAX;
        }
        let bytes = |v: usize| -> Result<usize> {
            let l = program.layouts.get(v).ok_or_else(|| Error::Internal(format!("no layout for value {v}")))?;
            Ok(mul(l.image_bytes(), images)?.next_multiple_of(ALIGN))
        };
        let mut offsets = vec![0usize; nv];
        let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (start, end, value)
        let mut arena_bytes = 0usize;
        let mut place = |v: usize, live: &mut Vec<(usize, usize, usize)>| -> Result<()> {
            let len = bytes(v)?;
            live.sort_unstable();
            let mut start = 0;
            for &(s, e, _) in live.iter() {
                if start + len <= s {
                    break;
                }
                start = start.max(e);
            }
            if let Some(o) = offsets.get_mut(v) {
                *o = start;
            }
            arena_bytes = arena_bytes.max(start + len);
            live.push((start, start + len, v));
            Ok(())
        };
        place(0, &mut live)?;
        for (pos, &i) in program.order.iter().enumerate() {
            place(i + 1, &mut live)?;
            live.retain(|&(_, _, v)| last_use.get(v).copied().unwrap_or(0) > pos + 1);
        }
        Ok(Self { images, offsets, arena_bytes })
    }

    /// The byte range of value `v` for `images` images.
    pub fn range(&self, program: &Program, v: usize, images: usize) -> Result<std::ops::Range<usize>> {
        let o = *self.offsets.get(v).ok_or_else(|| Error::Internal(format!("value {v} is not planned")))?;
        let l = program.layouts.get(v).ok_or_else(|| Error::Internal(format!("no layout for value {v}")))?;
        Ok(o..o + l.image_bytes() * images.min(self.images))
    }
}
