//! The SDK's error type. Every failure names what was wrong and where: a user who gets
//! an error from opening a model file should know which byte range, tensor, node or
//! metadata key to look at without a debugger.

use std::path::PathBuf;

/// Errors returned by the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The safetensors container itself is malformed (header length, header JSON,
    /// tensor offsets, file size).
    #[error("malformed model file: {0}")]
    Container(String),
    /// A metadata entry is missing or invalid.
    #[error("model metadata `{key}`: {problem}")]
    Metadata {
        /// The `__metadata__` key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The file was written by a newer (or unknown) version of the format.
    #[error(
        "model format version {found} is not supported (this SDK reads versions {} to {supported}){}",
        crate::artifact::schema::OLDEST_FORMAT_VERSION,
        version_hint(.found, *.supported)
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: String,
        /// The newest version this SDK reads.
        supported: u32,
    },
    /// A stored tensor disagrees with the graph (missing, wrong dtype or shape, misaligned).
    #[error("tensor `{name}`: {problem}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The execution graph is not well formed (unknown input, cycle, shapes that do not
    /// propagate, sizes out of range).
    #[error("graph node `{node}`: {problem}")]
    Graph {
        /// The node's name (or `graph` for whole-graph problems).
        node: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The content checksum does not match: the file was modified or damaged.
    #[error(
        "checksum mismatch: the header says {expected}, the content hashes to {actual} (file damaged or modified)"
    )]
    Checksum {
        /// The checksum stored in the file.
        expected: String,
        /// The checksum of the content as read.
        actual: String,
    },
    /// An input given to inference is invalid (wrong length, batch size, ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// An encoded image could not be decoded.
    #[error("cannot decode image: {0}")]
    Image(String),
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// Invalid options (thread count, batch size, ...).
    #[error("invalid option: {0}")]
    Options(String),
    /// A bug in this SDK (an inconsistency it should never reach), not a problem with
    /// the caller's model or input. Please report it.
    #[error("internal error (a bug in cifar-sdk {version}, please report it): {0}", version = crate::VERSION)]
    Internal(String),
}

/// What to do about a file of another format version.
fn version_hint(found: &str, supported: u32) -> &'static str {
    match found.parse::<u32>() {
        Ok(v) if v < crate::artifact::schema::OLDEST_FORMAT_VERSION.min(supported) => {
            ": it was compiled by an older trainer; recompile it from its run with `trainer compile`"
        }
        Ok(_) => ": it was compiled by a newer trainer; update cifar-sdk",
        Err(_) => "",
    }
}

impl Error {
    pub(crate) fn tensor(name: &str, problem: impl Into<String>) -> Self {
        Error::Tensor { name: name.to_string(), problem: problem.into() }
    }

    pub(crate) fn graph(node: &str, problem: impl Into<String>) -> Self {
        Error::Graph { node: node.to_string(), problem: problem.into() }
    }

    pub(crate) fn metadata(key: &str, problem: impl Into<String>) -> Self {
        Error::Metadata { key: key.to_string(), problem: problem.into() }
    }
}

/// Result alias used throughout the SDK.
pub type Result<T> = std::result::Result<T, Error>;
