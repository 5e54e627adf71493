//! The buffer plan: where each value lives in one arena, computed once per session for
//! its batch capacity. Values that are never alive at the same time share memory
//! (first-fit over live intervals), so the arena is a fraction of the sum of all
//! activations; the im2col scratch is a separate buffer sized for the largest conv.

use super::program::{Kernel, Step};
use crate::{Error, Result};

/// Offsets are multiples of this many elements (64 bytes for f32).
const ALIGN: usize = 16;

/// Arena layout for one batch capacity.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Images per run.
    pub capacity: usize,
    /// Start of each value (0 = input, `i + 1` = node `i`), in elements.
    pub offsets: Vec<usize>,
    /// Elements per image of each value.
    pub sizes: Vec<usize>,
    /// Which nodes run (those the output depends on), in order.
    pub order: Vec<usize>,
    /// Arena length in elements.
    pub arena_len: usize,
    /// im2col scratch length in elements.
    pub scratch_len: usize,
    /// Packed int8 GEMM operand length in i16 elements.
    pub packed_len: usize,
    /// Weight-pair scratch of one int8 GEMM task, in i32 elements.
    pub wbuf_len: usize,
}

fn mul(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| Error::Options(format!("batch capacity too large ({a} x {b} elements)")))
}

impl Plan {
    /// Plans `steps` (output node `output`) for batches of up to `capacity` images.
    pub fn new(steps: &[Step], input_elems: usize, output: usize, capacity: usize) -> Result<Self> {
        let nv = steps.len() + 1;
        // Nodes the output needs, found backwards.
        let mut needed = vec![false; nv];
        if let Some(n) = needed.get_mut(output + 1) {
            *n = true;
        }
        for (i, s) in steps.iter().enumerate().rev() {
            if needed.get(i + 1).copied().unwrap_or(false) {
                for &v in &s.info.inputs {
                    if let Some(n) = needed.get_mut(v) {
                        *n = true;
                    }
                }
            }
        }
        let order: Vec<usize> = (0..steps.len()).filter(|i| needed.get(i + 1).copied().unwrap_or(false)).collect();
        let mut last_use = vec![0usize; nv];
        for (pos, &i) in order.iter().enumerate() {
            for &v in steps.get(i).map(|s| s.info.inputs.as_slice()).unwrap_or(&[]) {
                if let Some(l) = last_use.get_mut(v) {
                    *l = pos + 1;
                }
            }
        }
        if let Some(l) = last_use.get_mut(output + 1) {
            *l = usize::MAX;
        }
        let mut sizes = vec![0usize; nv];
        if let Some(s) = sizes.first_mut() {
            *s = input_elems;
        }
        for (i, s) in steps.iter().enumerate() {
            if let Some(slot) = sizes.get_mut(i + 1) {
                *slot = s.info.shape.iter().product();
            }
        }
        let mut offsets = vec![0usize; nv];
        let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (start, end, value)
        let mut arena_len = 0usize;
        let mut place = |v: usize, live: &mut Vec<(usize, usize, usize)>| -> Result<()> {
            let len = mul(sizes.get(v).copied().unwrap_or(0), capacity)?.next_multiple_of(ALIGN);
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
            arena_len = arena_len.max(start + len);
            live.push((start, start + len, v));
            Ok(())
        };
        place(0, &mut live)?;
        let mut scratch_len = 0usize;
        let mut packed_len = 0usize;
        let mut wbuf_len = 0usize;
        for (pos, &i) in order.iter().enumerate() {
            place(i + 1, &mut live)?;
            live.retain(|&(_, _, v)| last_use.get(v).copied().unwrap_or(0) > pos + 1);
            if let Some(Step { kernel: Kernel::Conv(c), .. }) = steps.get(i) {
                let per = super::exec::images_per_chunk(c.k(), c.win.out_plane(), capacity);
                wbuf_len = wbuf_len.max(crate::kernels::qgemm::wbuf_len(c.k()));
                packed_len = packed_len.max(crate::kernels::qgemm::packed_len(c.k(), mul(c.win.out_plane(), per)?));
                if !c.is_pointwise() {
                    let per = super::exec::images_per_chunk(c.k(), c.win.out_plane(), capacity);
                    scratch_len = scratch_len.max(mul(mul(c.k(), c.win.out_plane())?, per)?);
                }
            }
        }
        Ok(Self { capacity, offsets, sizes, order, arena_len, scratch_len, packed_len, wbuf_len })
    }

    /// The arena range of value `v` for a batch of `batch` images.
    pub fn range(&self, v: usize, batch: usize) -> std::ops::Range<usize> {
        let o = self.offsets.get(v).copied().unwrap_or(0);
        o..o + self.sizes.get(v).copied().unwrap_or(0) * batch
    }
}

/// Splits `arena` into read-only views of the `inputs` ranges and a mutable view of
/// `out`; the plan guarantees that a node's output never overlaps its inputs (they are
/// alive at the same time), and this checks it.
pub(crate) fn split_io<'a, T>(
    arena: &'a mut [T],
    inputs: [Option<std::ops::Range<usize>>; 2],
    out: std::ops::Range<usize>,
) -> Result<([&'a [T]; 2], &'a mut [T])> {
    let bad = || Error::Input("internal: buffer plan overlap".into());
    if out.end > arena.len() {
        return Err(bad());
    }
    let (left, rest) = arena.split_at_mut(out.start);
    let (o, right) = rest.split_at_mut(out.end - out.start);
    let (left, right): (&'a [T], &'a [T]) = (left, right);
    let view = |r: Option<std::ops::Range<usize>>| -> Result<&'a [T]> {
        match r {
            None => Ok(&[]),
            Some(r) if r.end <= out.start => left.get(r).ok_or_else(bad),
            Some(r) if r.start >= out.end => right.get(r.start - out.end..r.end - out.end).ok_or_else(bad),
            Some(_) => Err(bad()),
        }
    };
    let [a, b] = inputs;
    Ok(([view(a)?, view(b)?], o))
}
