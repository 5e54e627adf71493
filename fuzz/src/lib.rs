//! The fuzz targets' bodies: one function per parser of bytes from outside, each taking
//! the fuzzer's input. `fuzz_targets/*.rs` hand them to libFuzzer (`cargo fuzz run NAME`,
//! nightly); `tests/regressions.rs` runs every saved input through them on stable, in the
//! ordinary test suite. A finding is a panic (or, under the fuzzer, a crash, a hang, an
//! out-of-bounds access or an allocation over `-rss_limit_mb`/`-malloc_limit_mb`).
//!
//! - [`sdk`]: `.cifar` files, as bytes ([`model_file`]) and as structure around a valid
//!   checksum ([`model_graph`]); whatever validates also runs one inference.
//! - [`server`]: the real `cifar-serve` router in-process: OIP v2 JSON ([`oip_json`]) and
//!   binary ([`oip_binary`]) requests, `/v1/classify` bodies ([`classify_body`]) and gRPC
//!   `ModelInfer` messages ([`grpc_infer`]).
//! - [`trainer`]: dataset archives ([`dataset_tar`]), configs with overrides
//!   ([`config`]) and ONNX models ([`onnx_import`]).
//! - [`seeds`]: the starting corpora, built from the repository's fixtures.
//! - [`bounded_alloc`]: the allocator that makes one allocation over 1 GiB a finding.

pub mod bounded_alloc;
pub mod sdk;
pub mod seeds;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "trainer")]
pub mod trainer;

pub use sdk::{model_file, model_graph};
#[cfg(feature = "server")]
pub use server::{classify_body, grpc_infer, oip_binary, oip_json};
#[cfg(feature = "trainer")]
pub use trainer::{config, dataset_tar, onnx_import};

/// One allocation over 1 GiB is a finding, in every build ([`bounded_alloc`]).
#[global_allocator]
static ALLOCATOR: bounded_alloc::BoundedAlloc = bounded_alloc::BoundedAlloc;

/// A fuzz target: its name (the binary, the corpus folder) and its body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The `cargo fuzz` target and the folder of its corpus and regressions.
    pub name: &'static str,
    /// The body: panics on a finding; returns whether the input was accepted (a model
    /// that validated, a request served, an archive imported ...).
    pub run: fn(&[u8]) -> bool,
    /// libFuzzer's `-max_len` for it: the largest input worth mutating.
    pub max_len: usize,
    /// The crate feature that builds it (`sdk`: always built).
    pub feature: &'static str,
}

/// Every target this build has (the `server` and `trainer` features add theirs). The
/// one list: the scripts, the seed writer and the regression test read it
/// (`fuzz-seeds --list`).
pub fn targets() -> Vec<Target> {
    #[allow(unused_mut)]
    let mut all = vec![
        Target { name: "model_file", run: model_file, max_len: 128 << 10, feature: "sdk" },
        Target { name: "model_graph", run: model_graph, max_len: 16 << 10, feature: "sdk" },
    ];
    #[cfg(feature = "server")]
    all.extend([
        Target { name: "oip_json", run: oip_json, max_len: 64 << 10, feature: "server" },
        Target { name: "oip_binary", run: oip_binary, max_len: 64 << 10, feature: "server" },
        Target { name: "classify_body", run: classify_body, max_len: 64 << 10, feature: "server" },
        Target { name: "grpc_infer", run: grpc_infer, max_len: 64 << 10, feature: "server" },
    ]);
    #[cfg(feature = "trainer")]
    all.extend([
        Target { name: "dataset_tar", run: dataset_tar, max_len: 64 << 10, feature: "trainer" },
        Target { name: "config", run: config, max_len: 8 << 10, feature: "trainer" },
        Target { name: "onnx_import", run: onnx_import, max_len: 64 << 10, feature: "trainer" },
    ]);
    all
}

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    targets().into_iter().find(|t| t.name == name)
}

/// The repository's `fixtures/` folder, where the seeds come from.
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}
