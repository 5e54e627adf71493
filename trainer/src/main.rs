//! `trainer`: imports CIFAR-10-style data and trains convolutional classifiers.
//!
//! ```text
//! trainer data import ../shared/data/cifar10-train-jpg.tar.gz
//! trainer fit --config configs/cpu-quick.toml
//! trainer eval --run runs/<id>
//! ```

// glibc's allocator returns large tensor buffers to the OS after every op and faults
// them in again on the next: about 30% of a training step on this CPU. mimalloc keeps
// them. Decided here, in the binary, so no user has to tune their shell.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc returns freed pages to the OS after 10 ms by default; a training step frees
    // and reallocates the same multi-megabyte tensors every few milliseconds, so each one
    // was faulted in (and zeroed) again: over 20% of a step. Keep freed memory instead.
    // SAFETY: setting an allocator option is a plain store into mimalloc's option table;
    // 15 is `mi_option_purge_delay` in mimalloc v3's `mi_option_e`, -1 means never purge.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    cifar_cli_io::exit_status(cifar_trainer::cli::main())
}
