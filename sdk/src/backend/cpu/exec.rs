//! Runs a program over one chunk of images: for each node, fill its output's border,
//! then its units, shared out among the session's threads. Every unit computes its
//! outputs the same way whichever thread runs it, so results do not depend on the
//! thread count (int8 and f32 alike, bit for bit: `sdk/tests/threads.rs`).

use super::plan::Plan;
use super::threads::Pool;
use super::{Elem, Io, Program, ValueRef};
use crate::{Error, Result};

/// Sees each node's output after it runs: `(node index, its Io)`.
pub(crate) type Observe<'a> = dyn FnMut(usize, &Io<'_>) -> Result<()> + 'a;

/// The arena as bytes.
fn arena_ptr(arena: &mut [u64]) -> (*mut u8, usize) {
    (arena.as_mut_ptr().cast::<u8>(), arena.len() * 8)
}

fn value(program: &Program, plan: &Plan, base: (*mut u8, usize), v: usize, images: usize) -> Result<ValueRef> {
    let r = plan.range(program, v, images)?;
    if r.end > base.1 {
        return Err(Error::Internal(format!("value {v} lies outside the arena")));
    }
    let layout = *program.layouts.get(v).ok_or_else(|| Error::Internal(format!("no layout for value {v}")))?;
    // SAFETY: `r.start <= r.end <= arena length`, checked above.
    Ok(ValueRef { ptr: unsafe { base.0.add(r.start) }, bytes: r.len(), layout })
}

/// The view of input value 0 of a chunk, for loading images into it.
pub(crate) fn input_region<'a>(
    program: &Program,
    plan: &Plan,
    arena: &'a mut [u64],
    images: usize,
) -> Result<&'a mut [u8]> {
    let r = plan.range(program, 0, images)?;
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(arena);
    bytes.get_mut(r).ok_or_else(|| Error::Internal("the input lies outside the arena".into()))
}

/// Fills the border of every image of `v` with the encoding of 0.0.
fn fill_border(v: ValueRef, images: usize) {
    let l = v.layout;
    if l.border == 0 {
        return;
    }
    let (row, b) = (l.row_len(), l.border);
    let side = b * l.cs;
    for n in 0..images {
        let img = n * l.image_len();
        let fill = |start: usize, len: usize| {
            let (start, end) = (img + start, img + start + len);
            match l.elem {
                Elem::F32 if end * 4 <= v.bytes => {
                    // SAFETY: in bounds (checked), aligned (arena), and this node's output is
                    // written by nothing else while its border is filled.
                    let s = unsafe { std::slice::from_raw_parts_mut(v.ptr.cast::<f32>().add(start), len) };
                    s.fill(0.0);
                }
                Elem::U8 if end <= v.bytes => {
                    // SAFETY: as above.
                    let s = unsafe { std::slice::from_raw_parts_mut(v.ptr.add(start), len) };
                    s.fill(l.zero_code);
                }
                _ => {}
            }
        };
        fill(0, b * row);
        fill((l.h + b) * row, b * row);
        for y in 0..l.h {
            let r0 = (y + b) * row;
            fill(r0, side);
            fill(r0 + row - side, side);
        }
    }
}

/// Runs every node of `program` the output needs over the `images` images already in
/// value 0 of `arena`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_chunk(
    program: &Program,
    plan: &Plan,
    arena: &mut [u64],
    file: &[u8],
    images: usize,
    pool: Option<&Pool>,
    observe: &mut Observe<'_>,
) -> Result<()> {
    let base = arena_ptr(arena);
    for &i in &program.order {
        let op = program
            .ops
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Internal(format!("node {i} has no op")))?;
        let ins = program.inputs.get(i).map(Vec::as_slice).unwrap_or(&[]);
        let input = |k: usize| ins.get(k).map(|&v| value(program, plan, base, v, images)).transpose();
        let io =
            Io { images, file, inputs: [input(0)?, input(1)?], output: value(program, plan, base, i + 1, images)? };
        fill_border(io.output, images);
        let units = op.units(images);
        match pool {
            // Ranges of about a quarter of a thread's share: a thread that starts late or
            // is preempted leaves its part to the others, and few claims keep the shared
            // counter cheap. (One unit, or no workers: the pool runs it on this thread.)
            Some(p) => p.run(units, units.div_ceil(p.threads() * 4), &|_, r| op.run(&io, r))?,
            // Panics become errors on this path too.
            None => super::threads::call(&|_, r| op.run(&io, r), 0, 0..units)?,
        }
        observe(i, &io)?;
    }
    Ok(())
}

/// The interior (border excluded) of an f32 output, `[image][y][x][channel]`.
pub(crate) fn interior_f32(io: &Io<'_>) -> Result<Vec<f32>> {
    let l = io.output_layout();
    let (ptr, bytes) = io.output_ptr();
    if l.elem != Elem::F32 {
        return Err(Error::Internal("interior_f32 of a u8 value".into()));
    }
    // SAFETY: the whole output value, aligned (arena), read after its op finished.
    let all = unsafe { std::slice::from_raw_parts(ptr.cast::<f32>(), bytes / 4) };
    let mut out = Vec::with_capacity(io.images * l.h * l.w * l.c);
    for n in 0..io.images {
        for y in 0..l.h {
            let row = all.get(l.row(n, y)).ok_or_else(|| Error::Internal("value row out of range".into()))?;
            for px in row.chunks_exact(l.cs.max(1)) {
                out.extend_from_slice(px.get(..l.c).unwrap_or(px));
            }
        }
    }
    Ok(out)
}
