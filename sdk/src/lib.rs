//! `cifar-sdk`: the embeddable inference SDK for compiled CIFAR-style classifiers.
//!
//! ```no_run
//! use cifar_sdk::{Model, ModelOptions};
//! let model = Model::open("model.cifar", &ModelOptions::default())?;
//! println!("{} model on {} ({})", model.precision(), model.device(), model.device_reason());
//! let mut session = model.session()?;
//! let image = std::fs::read("cat.png").map_err(|e| cifar_sdk::Error::Io { path: "cat.png".into(), source: e })?;
//! let answer = session.classify_image(&image, 3)?;
//! for p in &answer.top {
//!     println!("{:>10} {:.3}", p.label, p.probability);
//! }
//! # Ok::<(), cifar_sdk::Error>(())
//! ```
//!
//! Modules: [`artifact`] (the `.cifar` format: reader, writer, validation, the layer
//! tensors), [`ops`] (one module per operation), [`backend`] (the CPU backend over
//! [`kernels`]; with the `candle` feature the device backend, CUDA with `cuda`),
//! [`Model`]/[`Session`] (the API), [`image`] (decoding), [`drift`] (features for drift
//! monitoring), [`device`] (device policy).
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
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("model files are little-endian and read in place; big-endian targets are not supported");

pub mod artifact;
pub mod backend;
pub mod device;
pub mod drift;
mod error;
pub mod fsutil;
pub mod image;
pub mod kernels;
mod model;
pub mod ops;
pub mod preprocess;
mod session;

pub use artifact::{Activation, Precision, QuantParams};
pub use backend::Observer;
pub use device::{Device, DevicePolicy};
pub use error::{Error, Result};
pub use fsutil::write_atomic;
pub use model::{Model, ModelOptions};
pub use preprocess::{Normalization, CIFAR10_CLASSES, INPUT_CHANNELS, INPUT_SIZE};
pub use session::{
    classify_logits, max_relative_error, signal_to_noise_db, softmax, top1_agreement, top_k_indices, Classification,
    Prediction, Session,
};

/// Version of this crate.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
