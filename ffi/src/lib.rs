//! `libcifar`: the C ABI over `cifar-sdk`. Opaque handles with create/free pairs (free
//! accepts NULL), a status code from every call with the message in
//! [`cifar_last_error`], and no unwinding across the boundary: every export runs inside
//! [`ffi_guard!`], which turns a panic into `CIFAR_STATUS_PANIC`.
//!
//! The header `include/cifar.h` is generated from this crate by cbindgen
//! (`ffi/cbindgen.toml`) and checked fresh by `tests/header.rs`.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![allow(non_camel_case_types)]

mod args;
mod status;

use std::ffi::{c_char, CString};
use std::sync::Arc;

use cifar_sdk::{DevicePolicy, Model, ModelOptions, Session};

use args::{handle, handle_mut, put, slice, slice_mut, string};
pub use status::*;

/// Major version of the library (`CIFAR_VERSION_MAJOR`).
pub const CIFAR_VERSION_MAJOR: u32 = 0;
/// Minor version of the library.
pub const CIFAR_VERSION_MINOR: u32 = 1;
/// Patch version of the library.
pub const CIFAR_VERSION_PATCH: u32 = 0;
/// Version of the binary interface: changes whenever a signature, struct layout or
/// status meaning changes. Compare with `cifar_abi_version()` at startup.
pub const CIFAR_ABI_VERSION: u32 = 1;

/// Runs an export's body, catching panics: `$body` evaluates to `Result<(), Fail>`.
macro_rules! ffi_guard {
    ($body:block) => {{
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), Fail> { $body }));
        match result {
            Ok(Ok(())) => CIFAR_STATUS_OK,
            Ok(Err(fail)) => status::record(fail),
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                status::record(Fail::new(CIFAR_STATUS_PANIC, format!("internal error (caught panic): {what}")))
            }
        }
    }};
}

/// Options for opening a model.
pub struct cifar_options {
    options: ModelOptions,
}

/// An opened model: immutable, shareable across threads.
pub struct cifar_model {
    model: Arc<Model>,
    labels: Vec<CString>,
    precision: CString,
    device: CString,
    reason: CString,
}

/// Per-thread inference state for one model; keeps the model alive.
pub struct cifar_session {
    session: Session,
}

/// One class of a top-k answer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct cifar_prediction {
    /// Class index (see `cifar_model_label`).
    pub class_index: u32,
    /// Softmax probability.
    pub probability: f32,
    /// Raw logit.
    pub logit: f32,
}

static VERSION: &std::ffi::CStr = c"0.1.0";

/// Drops a handle created by `Box::into_raw` (NULL is ignored), catching any panic.
///
/// # Safety
/// `ptr` must be NULL or come from `Box::into_raw` of a `T`, and not be used afterwards.
unsafe fn free_handle<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: created by Box::into_raw and freed once (the caller's contract).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(unsafe { Box::from_raw(ptr) })));
    }
}

/// The options behind `ptr`, or the defaults for NULL.
///
/// # Safety
/// `ptr` must be NULL or a valid `cifar_options`.
unsafe fn options_or_default(ptr: *const cifar_options) -> Result<ModelOptions, Fail> {
    if ptr.is_null() {
        return Ok(ModelOptions::default());
    }
    // SAFETY: non-NULL and valid (the caller's contract).
    Ok(unsafe { handle(ptr, "options")? }.options.clone())
}

/// The library version, e.g. "0.1.0" (a static string).
#[no_mangle]
pub extern "C" fn cifar_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The ABI version of the loaded library; equals `CIFAR_ABI_VERSION` of a matching header.
#[no_mangle]
pub extern "C" fn cifar_abi_version() -> u32 {
    CIFAR_ABI_VERSION
}

/// Creates options with the defaults (device `auto`, 1 thread, batches of 64).
///
/// # Safety
/// `out` must be NULL or valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn cifar_options_new(out: *mut *mut cifar_options) -> cifar_status {
    ffi_guard!({
        if out.is_null() {
            return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, "out is NULL"));
        }
        let o = Box::new(cifar_options { options: ModelOptions::default() });
        // SAFETY: `out` is non-NULL and writable (contract).
        unsafe { put(out, Box::into_raw(o), "out") }
    })
}

/// Frees options (NULL is ignored).
///
/// # Safety
/// `options` must be NULL or come from `cifar_options_new`, and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn cifar_options_free(options: *mut cifar_options) {
    // SAFETY: forwarded contract: NULL or from this library's constructor, freed once.
    unsafe { free_handle(options) }
}

/// Sets the device policy: "auto", "cpu", "gpu" or "gpu-or-cpu".
///
/// # Safety
/// `options` must be NULL or valid; `policy` NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cifar_options_set_device(options: *mut cifar_options, policy: *const c_char) -> cifar_status {
    ffi_guard!({
        // SAFETY: pointers checked by the helpers, validity by contract.
        let (o, p) = unsafe { (handle_mut(options, "options")?, string(policy, "policy")?) };
        o.options.device = p.parse::<DevicePolicy>()?;
        Ok(())
    })
}

/// Sets the threads per session (0: one per core; 1 by default).
///
/// # Safety
/// `options` must be NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn cifar_options_set_threads(options: *mut cifar_options, threads: u32) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked for NULL; valid by contract.
        let o = unsafe { handle_mut(options, "options")? };
        if threads > 1024 {
            return Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("threads {threads} is more than 1024")));
        }
        o.options.threads = threads as usize;
        Ok(())
    })
}

/// Sets the internal batch size (images per run; memory grows with it), 1..=65536.
///
/// # Safety
/// `options` must be NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn cifar_options_set_max_batch(options: *mut cifar_options, max_batch: u32) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked for NULL; valid by contract.
        let o = unsafe { handle_mut(options, "options")? };
        if max_batch == 0 || max_batch > 65536 {
            return Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("max_batch {max_batch} is not in 1..=65536")));
        }
        o.options.max_batch = max_batch as usize;
        Ok(())
    })
}

fn wrap_model(model: Arc<Model>) -> Box<cifar_model> {
    let c = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
    Box::new(cifar_model {
        labels: model.labels().iter().map(|l| c(l)).collect(),
        precision: c(&model.precision().to_string()),
        device: c(&model.device().to_string()),
        reason: c(model.device_reason()),
        model,
    })
}

/// Opens and validates a model file through a read-only memory map.
///
/// # Safety
/// `path` must be NULL or NUL-terminated; `options` NULL (defaults) or valid; `out`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cifar_model_open(
    path: *const c_char,
    options: *const cifar_options,
    out: *mut *mut cifar_model,
) -> cifar_status {
    ffi_guard!({
        // SAFETY: pointers checked by the helpers, validity by contract.
        let path = unsafe { string(path, "path")? };
        // SAFETY: NULL or valid by contract.
        let opts = unsafe { options_or_default(options)? };
        if out.is_null() {
            return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, "out is NULL"));
        }
        let m = wrap_model(Model::open(path, &opts)?);
        // SAFETY: `out` is non-NULL and writable (contract).
        unsafe { put(out, Box::into_raw(m), "out") }
    })
}

/// Opens and validates a model held in memory (copied once; the buffer may be freed
/// after the call).
///
/// # Safety
/// `data` must be NULL or readable for `len` bytes; `options` NULL or valid; `out` NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn cifar_model_open_buffer(
    data: *const u8,
    len: usize,
    options: *const cifar_options,
    out: *mut *mut cifar_model,
) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helper, validity by contract.
        let bytes = unsafe { slice(data, len, "data")? };
        // SAFETY: NULL or valid by contract.
        let opts = unsafe { options_or_default(options)? };
        if out.is_null() {
            return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, "out is NULL"));
        }
        let m = wrap_model(Model::from_bytes(bytes, &opts)?);
        // SAFETY: `out` is non-NULL and writable (contract).
        unsafe { put(out, Box::into_raw(m), "out") }
    })
}

/// Releases a model handle (NULL is ignored). Sessions created from it stay valid.
///
/// # Safety
/// `model` must be NULL or come from `cifar_model_open*`, and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn cifar_model_free(model: *mut cifar_model) {
    // SAFETY: forwarded contract: NULL or from this library's constructor, freed once.
    unsafe { free_handle(model) }
}

/// Number of classes.
///
/// # Safety
/// `model` must be NULL or valid; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cifar_model_num_classes(model: *const cifar_model, out: *mut usize) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helpers, validity by contract.
        unsafe { put(out, handle(model, "model")?.labels.len(), "out") }
    })
}

/// The label of class `index`; the string lives as long as the model handle.
///
/// # Safety
/// `model` must be NULL or valid; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cifar_model_label(
    model: *const cifar_model,
    index: usize,
    out: *mut *const c_char,
) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helper, validity by contract.
        let m = unsafe { handle(model, "model")? };
        let label = m.labels.get(index).ok_or_else(|| {
            Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("class index {index} >= {} classes", m.labels.len()))
        })?;
        // SAFETY: checked by the helper, validity by contract.
        unsafe { put(out, label.as_ptr(), "out") }
    })
}

/// The input shape: `out[0]` channels, `out[1]` height, `out[2]` width.
///
/// # Safety
/// `model` must be NULL or valid; `out` NULL or writable for 3 values.
#[no_mangle]
pub unsafe extern "C" fn cifar_model_input_shape(model: *const cifar_model, out: *mut usize) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helpers, validity by contract (3 elements).
        let (m, o) = unsafe { (handle(model, "model")?, slice_mut(out, 3, "out")?) };
        o.copy_from_slice(&m.model.input_shape());
        Ok(())
    })
}

/// The weight precision, "f32" or "int8"; the string lives as long as the model handle.
///
/// # Safety
/// `model` must be NULL or valid; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cifar_model_precision(model: *const cifar_model, out: *mut *const c_char) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helpers, validity by contract.
        unsafe { put(out, handle(model, "model")?.precision.as_ptr(), "out") }
    })
}

/// The device that runs the model ("cpu", ...) and why it was chosen (states any
/// fallback); either out-pointer may be NULL. Strings live as long as the model handle.
///
/// # Safety
/// `model` must be NULL or valid; `device` and `reason` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cifar_model_device(
    model: *const cifar_model,
    device: *mut *const c_char,
    reason: *mut *const c_char,
) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helper, validity by contract.
        let m = unsafe { handle(model, "model")? };
        if device.is_null() && reason.is_null() {
            return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, "device and reason are both NULL"));
        }
        if !device.is_null() {
            // SAFETY: non-NULL and writable (contract).
            unsafe { put(device, m.device.as_ptr(), "device")? };
        }
        if !reason.is_null() {
            // SAFETY: non-NULL and writable (contract).
            unsafe { put(reason, m.reason.as_ptr(), "reason")? };
        }
        Ok(())
    })
}

/// Creates a session (buffers for one thread at a time). It keeps the model alive.
///
/// # Safety
/// `model` must be NULL or valid; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cifar_session_new(model: *const cifar_model, out: *mut *mut cifar_session) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helper, validity by contract.
        let m = unsafe { handle(model, "model")? };
        if out.is_null() {
            return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, "out is NULL"));
        }
        let s = Box::new(cifar_session { session: m.model.session()? });
        // SAFETY: non-NULL and writable (contract).
        unsafe { put(out, Box::into_raw(s), "out") }
    })
}

/// Frees a session (NULL is ignored).
///
/// # Safety
/// `session` must be NULL or come from `cifar_session_new`, and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn cifar_session_free(session: *mut cifar_session) {
    // SAFETY: forwarded contract: NULL or from this library's constructor, freed once.
    unsafe { free_handle(session) }
}

fn expect_len(what: &str, got: usize, want: Option<usize>) -> Result<(), Fail> {
    match want {
        Some(w) if w == got => Ok(()),
        Some(w) => {
            Err(Fail::new(CIFAR_STATUS_BUFFER_SIZE, format!("{what} holds {got} values, the request needs {w}")))
        }
        None => Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("{what}: size overflows"))),
    }
}

/// Raw logits of `batch` RGB8 images (`[batch][height][width][3]` bytes) into `logits`
/// (`batch * classes` floats, row-major).
///
/// # Safety
/// `session` must be NULL or valid and not in use by another thread; `pixels` readable
/// for `pixels_len` bytes; `logits` writable for `logits_len` floats.
#[no_mangle]
pub unsafe extern "C" fn cifar_logits_rgb8(
    session: *mut cifar_session,
    pixels: *const u8,
    pixels_len: usize,
    batch: usize,
    logits: *mut f32,
    logits_len: usize,
) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helpers, validity by contract.
        let (s, px, out) = unsafe {
            (
                handle_mut(session, "session")?,
                slice(pixels, pixels_len, "pixels")?,
                slice_mut(logits, logits_len, "logits")?,
            )
        };
        check_batch(s, batch, px.len(), 3, out.len())?;
        s.session.run_rgb8(px, batch, out)?;
        Ok(())
    })
}

/// Raw logits of `batch` normalized images in NCHW f32 (`[batch][3][height][width]`).
///
/// # Safety
/// As for `cifar_logits_rgb8`, with `input` readable for `input_len` floats.
#[no_mangle]
pub unsafe extern "C" fn cifar_logits_nchw(
    session: *mut cifar_session,
    input: *const f32,
    input_len: usize,
    batch: usize,
    logits: *mut f32,
    logits_len: usize,
) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helpers, validity by contract.
        let (s, x, out) = unsafe {
            (
                handle_mut(session, "session")?,
                slice(input, input_len, "input")?,
                slice_mut(logits, logits_len, "logits")?,
            )
        };
        let c = s.session.model().input_shape()[0];
        check_batch(s, batch, x.len(), c, out.len())?;
        s.session.run_nchw(x, batch, out)?;
        Ok(())
    })
}

/// Checks a batch request: `batch` images of `per_pixel` values per pixel in `given`
/// inputs, and `out` logits.
fn check_batch(s: &cifar_session, batch: usize, given: usize, per_pixel: usize, out: usize) -> Result<(), Fail> {
    if batch == 0 {
        return Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, "batch is 0"));
    }
    let m = s.session.model();
    let [_, h, w] = m.input_shape();
    let per_image = h * w * per_pixel;
    expect_len("the input", given, batch.checked_mul(per_image))?;
    expect_len("the output buffer", out, batch.checked_mul(m.classes()))
}

fn top_k(c: &cifar_sdk::Classification, out: &mut [cifar_prediction]) {
    for (o, p) in out.iter_mut().zip(&c.top) {
        *o = cifar_prediction { class_index: p.class as u32, probability: p.probability, logit: p.logit };
    }
}

/// The `k` most likely classes of each of `batch` RGB8 images, most likely first:
/// `out` holds `batch * k` predictions (image-major).
///
/// # Safety
/// As for `cifar_logits_rgb8`, with `out` writable for `out_len` predictions.
#[no_mangle]
pub unsafe extern "C" fn cifar_classify_rgb8(
    session: *mut cifar_session,
    pixels: *const u8,
    pixels_len: usize,
    batch: usize,
    k: usize,
    out: *mut cifar_prediction,
    out_len: usize,
) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helpers, validity by contract.
        let (s, px, o) = unsafe {
            (handle_mut(session, "session")?, slice(pixels, pixels_len, "pixels")?, slice_mut(out, out_len, "out")?)
        };
        let classes = s.session.model().classes();
        if k == 0 || k > classes {
            return Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("k = {k} is not in 1..={classes}")));
        }
        check_batch(s, batch, px.len(), 3, batch.saturating_mul(classes))?;
        expect_len("out", o.len(), batch.checked_mul(k))?;
        let answers = s.session.classify_rgb8(px, batch, k)?;
        for (a, chunk) in answers.iter().zip(o.chunks_exact_mut(k)) {
            top_k(a, chunk);
        }
        Ok(())
    })
}

/// The `k` most likely classes of an encoded image (PNG, JPEG or PPM, any size; resized
/// to the model input). `out` holds at least `k` predictions.
///
/// # Safety
/// `session` as for `cifar_logits_rgb8`; `data` readable for `len` bytes; `out` writable
/// for `out_len` predictions.
#[no_mangle]
pub unsafe extern "C" fn cifar_classify_encoded(
    session: *mut cifar_session,
    data: *const u8,
    len: usize,
    k: usize,
    out: *mut cifar_prediction,
    out_len: usize,
) -> cifar_status {
    ffi_guard!({
        // SAFETY: checked by the helpers, validity by contract.
        let (s, bytes, o) =
            unsafe { (handle_mut(session, "session")?, slice(data, len, "data")?, slice_mut(out, out_len, "out")?) };
        let classes = s.session.model().classes();
        if k == 0 || k > classes {
            return Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("k = {k} is not in 1..={classes}")));
        }
        if o.len() < k {
            return Err(Fail::new(CIFAR_STATUS_BUFFER_SIZE, format!("out holds {} predictions, k is {k}", o.len())));
        }
        let answer = s.session.classify_image(bytes, k)?;
        top_k(&answer, o);
        Ok(())
    })
}

/// Testing only: panics inside the library and returns what the panic boundary makes of
/// it (always `CIFAR_STATUS_PANIC`). Lets C tests check that no panic crosses into C.
#[no_mangle]
pub extern "C" fn cifar_test_force_panic() -> cifar_status {
    ffi_guard!({
        let v: Vec<u8> = Vec::new();
        let i = v.len() + 3;
        // Out of bounds on purpose: the one deliberate panic in the library.
        #[allow(clippy::indexing_slicing)]
        let _ = v[i];
        Ok(())
    })
}
