//! `cifar-sdk`: the embeddable inference SDK for compiled CIFAR-style classifiers.
//!
//! This first version holds only what the trainer and the SDK must agree on from day
//! one: the CIFAR-10 class order, the input normalization, and crash-safe file writes.
//! The artifact reader/writer and the CPU engine come with the artifact issue.
//!
//! The crate never panics on bad input: `unwrap`, `expect`, `panic!` and unchecked
//! indexing are denied outside tests by the lints below.
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
#![warn(missing_docs)]

pub mod fsutil;
pub mod preprocess;

pub use fsutil::write_atomic;
pub use preprocess::{Normalization, CIFAR10_CLASSES, INPUT_CHANNELS, INPUT_SIZE};

/// Errors returned by the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias used throughout the SDK.
pub type Result<T> = std::result::Result<T, Error>;
