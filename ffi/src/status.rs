//! Status codes, their names, and the per-thread last error message.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// The result of every libcifar function: `CIFAR_STATUS_OK` (0) or an error code.
#[allow(non_camel_case_types)]
pub type cifar_status = i32;

/// Success.
pub const CIFAR_STATUS_OK: cifar_status = 0;
/// An argument is out of range or inconsistent (batch size, lengths, options).
pub const CIFAR_STATUS_INVALID_ARGUMENT: cifar_status = 1;
/// A required pointer argument is NULL.
pub const CIFAR_STATUS_NULL_POINTER: cifar_status = 2;
/// A caller's buffer has the wrong size for the request.
pub const CIFAR_STATUS_BUFFER_SIZE: cifar_status = 3;
/// A file could not be read.
pub const CIFAR_STATUS_IO: cifar_status = 4;
/// The model file is malformed (header, metadata, graph or tensors).
pub const CIFAR_STATUS_INVALID_MODEL: cifar_status = 5;
/// The model file's format version is not supported by this library.
pub const CIFAR_STATUS_UNSUPPORTED_VERSION: cifar_status = 6;
/// The model file's content does not match its checksum.
pub const CIFAR_STATUS_CHECKSUM: cifar_status = 7;
/// An encoded image could not be decoded.
pub const CIFAR_STATUS_IMAGE: cifar_status = 8;
/// The requested device cannot be used (e.g. `gpu` without GPU support).
pub const CIFAR_STATUS_DEVICE: cifar_status = 9;
/// An internal error (a caught panic); the library stays usable.
pub const CIFAR_STATUS_PANIC: cifar_status = 10;
/// A bug in the library found and reported without a panic (an inconsistency it should
/// never reach, not a problem with the caller's arguments or model); please report it.
pub const CIFAR_STATUS_INTERNAL: cifar_status = 11;

/// A failure inside an export: a status and its message.
pub(crate) struct Fail(pub cifar_status, pub String);

impl Fail {
    pub(crate) fn new(status: cifar_status, msg: impl Into<String>) -> Self {
        Fail(status, msg.into())
    }
}

impl From<cifar_sdk::Error> for Fail {
    fn from(e: cifar_sdk::Error) -> Self {
        use cifar_sdk::Error as E;
        let status = match &e {
            E::Io { .. } => CIFAR_STATUS_IO,
            E::Container(_) | E::Metadata { .. } | E::Tensor { .. } | E::Graph { .. } => CIFAR_STATUS_INVALID_MODEL,
            E::UnsupportedVersion { .. } => CIFAR_STATUS_UNSUPPORTED_VERSION,
            E::Checksum { .. } => CIFAR_STATUS_CHECKSUM,
            E::Image(_) => CIFAR_STATUS_IMAGE,
            E::Device(_) => CIFAR_STATUS_DEVICE,
            E::Input(_) | E::Options(_) => CIFAR_STATUS_INVALID_ARGUMENT,
            E::Internal(_) => CIFAR_STATUS_INTERNAL,
        };
        Fail(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `f` as this thread's last error and returns its status.
pub(crate) fn record(f: Fail) -> cifar_status {
    let msg = CString::new(f.1.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
    f.0
}

/// The message of the last error on the calling thread ("" if none). The pointer stays
/// valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn cifar_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The name of a status code, e.g. "CIFAR_STATUS_IO" (a static string).
#[no_mangle]
pub extern "C" fn cifar_status_str(status: cifar_status) -> *const c_char {
    let s: &'static std::ffi::CStr = match status {
        CIFAR_STATUS_OK => c"CIFAR_STATUS_OK",
        CIFAR_STATUS_INVALID_ARGUMENT => c"CIFAR_STATUS_INVALID_ARGUMENT",
        CIFAR_STATUS_NULL_POINTER => c"CIFAR_STATUS_NULL_POINTER",
        CIFAR_STATUS_BUFFER_SIZE => c"CIFAR_STATUS_BUFFER_SIZE",
        CIFAR_STATUS_IO => c"CIFAR_STATUS_IO",
        CIFAR_STATUS_INVALID_MODEL => c"CIFAR_STATUS_INVALID_MODEL",
        CIFAR_STATUS_UNSUPPORTED_VERSION => c"CIFAR_STATUS_UNSUPPORTED_VERSION",
        CIFAR_STATUS_CHECKSUM => c"CIFAR_STATUS_CHECKSUM",
        CIFAR_STATUS_IMAGE => c"CIFAR_STATUS_IMAGE",
        CIFAR_STATUS_DEVICE => c"CIFAR_STATUS_DEVICE",
        CIFAR_STATUS_PANIC => c"CIFAR_STATUS_PANIC",
        CIFAR_STATUS_INTERNAL => c"CIFAR_STATUS_INTERNAL",
        _ => c"CIFAR_STATUS_UNKNOWN",
    };
    s.as_ptr()
}
