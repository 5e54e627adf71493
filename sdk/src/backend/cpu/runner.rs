//! The CPU backend's per-session state: the buffer plan and arena, the thread pool, the
//! input tables; loading a caller's images into the arena and reading the logits out.

use std::sync::{Arc, Mutex};

use super::exec::{input_region, interior_f32, run_chunk};
use super::plan::Plan;
use super::threads::{lock, Pool};
use super::{Elem, Program, ValueLayout};
use crate::backend::{Backend, Input, Runner, Watch};
use crate::model::Model;
use crate::{Error, Result};

/// Bytes of activations a chunk of images should keep alive at once: about what the
/// L2 caches of the CPUs we measure on hold, so a chunk's values stay in cache from one
/// layer to the next.
const CHUNK_BYTES: usize = 512 << 10;

/// The most activation memory a session takes (a hostile graph could ask for any
/// amount; real models need a few megabytes).
const MAX_ARENA_BYTES: usize = 4 << 30;

/// The CPU backend of a model.
#[derive(Debug)]
pub(crate) struct CpuBackend {
    program: Arc<Program>,
}

impl CpuBackend {
    pub fn new(program: Program) -> Self {
        Self { program: Arc::new(program) }
    }
}

impl Backend for CpuBackend {
    fn runner(&self, model: &Model) -> Result<Box<dyn Runner>> {
        Ok(Box::new(CpuRunner::new(Arc::clone(&self.program), model)?))
    }
}

#[derive(Debug)]
struct CpuRunner {
    program: Arc<Program>,
    plan: Plan,
    /// One arena per thread: a batch of at least as many images as threads runs with
    /// each thread taking whole chunks through the whole network in its own arena (no
    /// synchronization between layers); smaller batches run on arena 0 with every layer
    /// shared out among the threads.
    arenas: Vec<Mutex<Vec<u64>>>,
    pool: Option<Pool>,
    threads: usize,
    /// Per channel: RGB8 byte -> normalized f32 and -> quantized input code.
    pixel_f32: [[f32; 256]; 3],
    pixel_u8: [[u8; 256]; 3],
}

/// Writes `n` images of `input` (shape `[c, h, w]`) into `dst` in layout `l`, row by
/// row: normalized values through `from_f32(channel, value)`, RGB8 bytes through
/// `from_byte(channel, byte)`.
fn load_rows<T: Copy>(
    dst: &mut [T],
    l: &ValueLayout,
    n: usize,
    [c, h, w]: [usize; 3],
    input: Input<'_>,
    from_f32: impl Fn(usize, f32) -> T,
    from_byte: impl Fn(usize, u8) -> T,
) -> Result<()> {
    let short = || Error::Internal("input or its region too small".into());
    let cs = l.cs.max(1);
    for b in 0..n {
        for y in 0..h {
            let row = dst.get_mut(l.row(b, y)).ok_or_else(short)?;
            match input {
                Input::Nchw(v) => {
                    for ch in 0..c {
                        let at = ((b * c + ch) * h + y) * w;
                        let src = v.get(at..at + w).ok_or_else(short)?;
                        for (px, &s) in row.chunks_exact_mut(cs).zip(src) {
                            if let Some(d) = px.get_mut(ch) {
                                *d = from_f32(ch, s);
                            }
                        }
                    }
                }
                Input::Rgb8(v) => {
                    let at = (b * h + y) * w * 3;
                    let src = v.get(at..at + w * 3).ok_or_else(short)?;
                    for (px, s) in row.chunks_exact_mut(cs).zip(src.chunks_exact(3)) {
                        for (ch, (d, &byte)) in px.iter_mut().zip(s).enumerate() {
                            *d = from_byte(ch, byte);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Images per chunk: as many as fit [`CHUNK_BYTES`] (at least one, at most `max_batch`).
/// `CIFAR_CHUNK=N` overrides it (for measurements).
fn chunk_images(program: &Program, max_batch: usize) -> Result<usize> {
    if let Some(n) = std::env::var("CIFAR_CHUNK").ok().and_then(|v| v.parse::<usize>().ok()) {
        return Ok(n.clamp(1, max_batch.max(1)));
    }
    let one = Plan::new(program, 1)?.arena_bytes.max(1);
    Ok((CHUNK_BYTES / one).clamp(1, max_batch.max(1)))
}

impl CpuRunner {
    fn new(program: Arc<Program>, model: &Model) -> Result<Self> {
        let opts = model.options();
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let pool = if threads > 1 { Some(Pool::new(threads)?) } else { None };
        let plan = Plan::new(&program, chunk_images(&program, opts.max_batch)?)?;
        let total = plan.arena_bytes.saturating_mul(threads);
        if total > MAX_ARENA_BYTES {
            return Err(Error::Options(format!(
                "a session of this model with {threads} thread(s) needs {} MB of activations, more than the {} MB allowed",
                total >> 20,
                MAX_ARENA_BYTES >> 20
            )));
        }
        // Zeroed memory straight from the allocator: pages are only touched when used.
        let arenas = (0..threads).map(|_| Mutex::new(vec![0u64; plan.arena_bytes.div_ceil(8)])).collect();
        let norm = model.metadata().preprocessing.normalization;
        let iq = model.metadata().graph.input_quant;
        let mut pixel_f32 = [[0f32; 256]; 3];
        let mut pixel_u8 = [[0u8; 256]; 3];
        for ((lf, lq), (scale, shift)) in pixel_f32.iter_mut().zip(pixel_u8.iter_mut()).zip(norm.affine()) {
            for (p, (f, q)) in lf.iter_mut().zip(lq.iter_mut()).enumerate() {
                let v = p as f32 * scale + shift;
                *f = v;
                *q = iq.map(|iq| iq.quantize(v)).unwrap_or(0);
            }
        }
        Ok(Self { program, plan, arenas, pool, threads, pixel_f32, pixel_u8 })
    }

    /// Writes `n` images of `input` into value 0 of `arena` (border and padding
    /// channels included).
    fn load(&self, arena: &mut [u64], model: &Model, input: Input<'_>, n: usize) -> Result<()> {
        let l: ValueLayout =
            *self.program.layouts.first().ok_or_else(|| Error::Internal("the program has no input layout".into()))?;
        let [c, h, w] = model.input_shape();
        let (pixel_f32, pixel_u8) = (&self.pixel_f32, &self.pixel_u8);
        let iq = model.metadata().graph.input_quant;
        let region = input_region(&self.program, &self.plan, arena, n)?;
        let short = || Error::Internal("input region too small".into());
        match l.elem {
            Elem::F32 => {
                let dst: &mut [f32] = bytemuck::try_cast_slice_mut(region).map_err(|_| short())?;
                dst.fill(0.0);
                load_rows(
                    dst,
                    &l,
                    n,
                    [c, h, w],
                    input,
                    |_, v| v,
                    |ch, byte| pixel_f32.get(ch).and_then(|t| t.get(usize::from(byte))).copied().unwrap_or(0.0),
                )
            }
            Elem::U8 => {
                let q = iq.ok_or_else(|| Error::Internal("int8 model without input quantization".into()))?;
                region.fill(l.zero_code);
                load_rows(
                    region,
                    &l,
                    n,
                    [c, h, w],
                    input,
                    |_, v| q.quantize(v),
                    |ch, byte| pixel_u8.get(ch).and_then(|t| t.get(usize::from(byte))).copied().unwrap_or(0),
                )
            }
        }
    }

    /// Copies the logits of `n` images from the output value in `arena` into `out`.
    fn read_logits(&self, arena: &[u64], model: &Model, n: usize, out: &mut [f32]) -> Result<()> {
        let p = &self.program;
        let v = p.output + 1;
        let l = *p.layouts.get(v).ok_or_else(|| Error::Internal("no output layout".into()))?;
        let range = self.plan.range(p, v, n)?;
        let bytes: &[u8] = bytemuck::cast_slice(arena);
        let bytes = bytes.get(range).ok_or_else(|| Error::Internal("output outside the arena".into()))?;
        let classes = model.classes();
        let bad = || Error::Internal("logits".into());
        let rows = out.chunks_exact_mut(classes.max(1)).enumerate().take(n);
        match (l.elem, model.metadata().graph.nodes.get(p.output).and_then(|nd| nd.quant)) {
            (Elem::F32, _) => {
                let v: &[f32] = bytemuck::try_cast_slice(bytes).map_err(|_| bad())?;
                for (b, row) in rows {
                    let at = l.pixel(b, 0, 0);
                    row.copy_from_slice(v.get(at..at + classes).ok_or_else(bad)?);
                }
            }
            (Elem::U8, Some(q)) => {
                for (b, row) in rows {
                    let at = l.pixel(b, 0, 0);
                    let v = bytes.get(at..at + classes).ok_or_else(bad)?;
                    row.iter_mut().zip(v).for_each(|(o, &c)| *o = q.dequantize(c));
                }
            }
            (Elem::U8, None) => return Err(Error::Internal("quantized output without an encoding".into())),
        }
        Ok(())
    }
}

impl Runner for CpuRunner {
    fn capacity(&self) -> usize {
        self.plan.images
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn run(
        &mut self,
        model: &Model,
        input: Input<'_>,
        n: usize,
        out: &mut [f32],
        watch: &mut Watch<'_, '_>,
    ) -> Result<()> {
        if n > self.capacity() {
            return Err(Error::Internal(format!("{n} images for a runner of {}", self.capacity())));
        }
        let file = model.artifact().bytes();
        let mut arena = lock(self.arenas.first().ok_or_else(|| Error::Internal("no arena".into()))?);
        self.load(&mut arena, model, input, n)?;
        let mut last = std::time::Instant::now();
        let mut observe = |node: usize, io: &super::Io<'_>| -> Result<()> {
            match watch {
                Watch::None => {}
                Watch::Values(f) => f(node, &interior_f32(io)?),
                Watch::Times(t) => {
                    let now = std::time::Instant::now();
                    if let Some(slot) = t.get_mut(node) {
                        *slot += (now - last).as_secs_f64();
                    }
                    last = now;
                }
            }
            Ok(())
        };
        run_chunk(&self.program, &self.plan, &mut arena, file, n, self.pool.as_ref(), &mut observe)?;
        self.read_logits(&arena, model, n, out)
    }

    fn run_batch(&mut self, model: &Model, input: Input<'_>, n: usize, out: &mut [f32]) -> Result<bool> {
        let Some(pool) = self.pool.as_ref() else { return Ok(false) };
        if n < self.threads {
            return Ok(false);
        }
        // Every thread takes whole chunks through the network in its own arena; at least
        // one chunk per thread.
        let chunk = self.capacity().min(n.div_ceil(self.threads)).max(1);
        let per_image = input.len() / n.max(1);
        let classes = model.classes();
        let file = model.artifact().bytes();
        let out = Mutex::new(out);
        pool.run(n.div_ceil(chunk), 1, &|thread, chunks| {
            let mut arena =
                lock(self.arenas.get(thread).ok_or_else(|| Error::Internal("no arena for a thread".into()))?);
            for c in chunks {
                let (start, m) = (c * chunk, chunk.min(n - c * chunk));
                self.load(&mut arena, model, input.part(start, m, per_image), m)?;
                run_chunk(&self.program, &self.plan, &mut arena, file, m, None, &mut |_, _| Ok(()))?;
                let mut out = lock(&out);
                let dst = out
                    .get_mut(start * classes..(start + m) * classes)
                    .ok_or_else(|| Error::Internal("logits".into()))?;
                self.read_logits(&arena, model, m, dst)?;
            }
            Ok(())
        })?;
        Ok(true)
    }
}
