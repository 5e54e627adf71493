//! Checked conversions of C arguments: NULL, zero and oversized lengths, UTF-8.

use std::ffi::{c_char, CStr};

use crate::status::*;

/// Largest buffer length accepted (1 GiB): anything larger is a caller bug.
pub(crate) const MAX_LEN: usize = 1 << 30;

/// A shared reference from a handle pointer.
///
/// # Safety
/// `ptr` must be NULL or point to a live `T` created by this library.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Fail> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid; NULL is rejected here.
    unsafe { ptr.as_ref() }.ok_or_else(|| Fail::new(CIFAR_STATUS_NULL_POINTER, format!("{what} is NULL")))
}

/// An exclusive reference from a handle pointer.
///
/// # Safety
/// `ptr` must be NULL or point to a live `T` created by this library, not used by any
/// other thread during the call.
pub(crate) unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Fail> {
    // SAFETY: as for `handle`, plus exclusivity, which the caller guarantees.
    unsafe { ptr.as_mut() }.ok_or_else(|| Fail::new(CIFAR_STATUS_NULL_POINTER, format!("{what} is NULL")))
}

/// A caller's input array.
///
/// # Safety
/// `ptr` must be NULL or valid for reads of `len` elements.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T], Fail> {
    if ptr.is_null() {
        return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, format!("{what} is NULL")));
    }
    if len == 0 {
        return Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("{what} has length 0")));
    }
    if len.saturating_mul(std::mem::size_of::<T>()) > MAX_LEN {
        return Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("{what} length {len} is too large")));
    }
    // SAFETY: non-NULL, and the caller guarantees `len` readable elements; the size
    // is below isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A caller's output array.
///
/// # Safety
/// `ptr` must be NULL or valid for writes of `len` elements, not aliased during the call.
pub(crate) unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize, what: &str) -> Result<&'a mut [T], Fail> {
    if ptr.is_null() {
        return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, format!("{what} is NULL")));
    }
    if len == 0 {
        return Err(Fail::new(CIFAR_STATUS_BUFFER_SIZE, format!("{what} has length 0")));
    }
    if len.saturating_mul(std::mem::size_of::<T>()) > MAX_LEN {
        return Err(Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("{what} length {len} is too large")));
    }
    // SAFETY: non-NULL, and the caller guarantees `len` writable, unaliased elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A NUL-terminated UTF-8 string.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn string<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if ptr.is_null() {
        return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map_err(|_| Fail::new(CIFAR_STATUS_INVALID_ARGUMENT, format!("{what} is not valid UTF-8")))
}

/// Writes `value` through an out-pointer.
///
/// # Safety
/// `ptr` must be NULL or valid for a write of one `T`.
pub(crate) unsafe fn put<T>(ptr: *mut T, value: T, what: &str) -> Result<(), Fail> {
    if ptr.is_null() {
        return Err(Fail::new(CIFAR_STATUS_NULL_POINTER, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and writable by the caller's contract; `write` does not read or
    // drop the old (possibly uninitialized) value.
    unsafe { ptr.write(value) };
    Ok(())
}
