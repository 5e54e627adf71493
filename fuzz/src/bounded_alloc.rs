//! The allocator of every fuzz binary and of the regression tests: the system allocator,
//! except that one allocation over [`MAX_ALLOCATION`] aborts the process with a message.
//!
//! Why here and not libFuzzer's `-malloc_limit_mb`: that flag works only where a
//! sanitizer runtime provides malloc hooks (ASan builds). A header that claims
//! gigabytes usually gets them reserved but never touched, so the RSS limit never
//! sees it either. This bound holds in every build, stable included, and an abort is a
//! crash libFuzzer saves as a finding.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

/// The largest single allocation any input may cause: 1 GiB (the SDK's largest
/// deliberate allocation, an image decode, is bounded at 512 MiB).
pub const MAX_ALLOCATION: usize = 1 << 30;

/// [`System`] with the [`MAX_ALLOCATION`] bound.
#[derive(Debug)]
pub struct BoundedAlloc;

fn refuse(size: usize) -> ! {
    // No formatting (it could allocate) and not `std::io::stderr()` (its lock may be held
    // by this thread, mid-`eprintln!`): fixed text and the size's digits, to fd 2.
    let mut digits = [0u8; 20];
    let mut n = size;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    // SAFETY: fd 2 is open for the life of the process; ManuallyDrop keeps it open.
    let mut err = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
    let _ = err.write_all(b"\nfuzz: an allocation of ");
    let _ = err.write_all(&digits[i..]);
    let _ = err.write_all(b" bytes, over the 1 GiB bound (fuzz/src/bounded_alloc.rs)\n");
    std::process::abort()
}

// SAFETY: every call is forwarded to `System` unchanged, with the same layout, so its
// contract holds; the only addition is an abort before an oversized request.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            refuse(layout.size());
        }
        // SAFETY: the caller's layout is passed on as it came.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            refuse(layout.size());
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            refuse(new_size);
        }
        // SAFETY: as in `dealloc`; `new_size` is what the caller asked for.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
