//! Training kernels wrapped as candle custom ops: fast CPU kernels, and cuDNN
//! convolutions for CUDA ([`device_conv`]).
//!
//! candle 0.11's CPU backend is correct but slow for training small conv nets: its conv
//! backward is a naive loop and batch norm in train mode is a chain of elementwise ops.
//! Each op here computes its forward and backward in a few passes with GEMM or rayon,
//! and is tested against candle's own ops on random inputs.

pub mod act;
pub mod batchnorm;
pub mod bias_act;
pub mod conv;
pub mod device_conv;
pub mod pool;

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};

/// Which kernels the layers use on the CPU: ours (the default), or candle's built-in
/// ones, kept selectable so `trainer bench` can compare them in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The fast custom ops for conv, batch norm and max pool.
    Fast = 0,
    /// candle's conv2d; our batch norm and max pool.
    CandleConv = 1,
    /// candle's built-in ops everywhere.
    Candle = 2,
}

static BACKEND: AtomicU8 = AtomicU8::new(Backend::Fast as u8);

pub fn set_backend(b: Backend) {
    BACKEND.store(b as u8, Ordering::SeqCst);
}

pub fn backend() -> Backend {
    match BACKEND.load(Ordering::SeqCst) {
        1 => Backend::CandleConv,
        2 => Backend::Candle,
        _ => Backend::Fast,
    }
}

static COMPUTE_DTYPE: AtomicU8 = AtomicU8::new(0);

/// Sets the dtype convolutions compute in on a GPU (mixed precision): f32 (the
/// default), f16 or bf16. Weights and activations stay f32 between ops; each conv casts
/// its inputs, runs on tensor cores with f32 accumulation, and casts its result back.
pub fn set_compute_dtype(dt: DType) {
    let code = match dt {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    };
    COMPUTE_DTYPE.store(code, Ordering::SeqCst);
}

/// The dtype of GPU convolutions (see [`set_compute_dtype`]).
pub fn compute_dtype() -> DType {
    match COMPUTE_DTYPE.load(Ordering::SeqCst) {
        1 => DType::F16,
        2 => DType::BF16,
        _ => DType::F32,
    }
}

/// Per-op wall time, collected when `CIFAR_OP_TIMES=1` (for `trainer bench`).
pub mod timing {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    fn table() -> &'static Mutex<BTreeMap<String, (f64, usize)>> {
        static T: OnceLock<Mutex<BTreeMap<String, (f64, usize)>>> = OnceLock::new();
        T.get_or_init(|| Mutex::new(BTreeMap::new()))
    }

    pub fn enabled() -> bool {
        static E: OnceLock<bool> = OnceLock::new();
        *E.get_or_init(|| std::env::var("CIFAR_OP_TIMES").is_ok_and(|v| v == "1"))
    }

    /// Times `f` under `name` when timing is enabled.
    pub fn timed<R>(name: impl AsRef<str>, f: impl FnOnce() -> R) -> R {
        if !enabled() {
            return f();
        }
        let t = Instant::now();
        let r = f();
        if let Ok(mut m) = table().lock() {
            let e = m.entry(name.as_ref().to_string()).or_insert((0.0, 0));
            e.0 += t.elapsed().as_secs_f64();
            e.1 += 1;
        }
        r
    }

    /// Takes the collected times: `(name, seconds, calls)`.
    pub fn take() -> Vec<(String, f64, usize)> {
        table()
            .lock()
            .map(|mut m| std::mem::take(&mut *m).into_iter().map(|(k, (s, n))| (k, s, n)).collect())
            .unwrap_or_default()
    }
}

/// True when the custom op for `layer` should run on `dev`.
pub(crate) fn use_fast(dev: &Device, conv: bool) -> bool {
    dev.is_cpu()
        && match backend() {
            Backend::Fast => true,
            Backend::CandleConv => !conv,
            Backend::Candle => false,
        }
}

/// The contiguous f32 data of a CPU storage, or an error naming what is wrong.
pub(crate) fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("expected f32 data"),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// Like [`cpu_f32`] for a tensor's storage (any device: non-CPU is an error).
pub(crate) fn storage_f32<'a>(s: &'a Storage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match s {
        Storage::Cpu(cpu) => cpu_f32(cpu, l),
        _ => candle_core::bail!("the fast CPU kernels need tensors on the CPU"),
    }
}

pub(crate) fn tensor_from_vec(v: Vec<f32>, dims: &[usize], dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, dims, dev)
}
