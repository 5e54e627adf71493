//! The trainer's library: everything `trainer` does, as modules. The binary
//! (`src/main.rs`) only chooses the allocator and calls [`cli::main`]; the library exists
//! so that the fuzz targets (`fuzz/`) can reach the parsers (dataset import, configs,
//! ONNX import) without going through the command line.

// Output goes through `cifar_cli_io`'s macros: a closed stdout ends the program quietly.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
extern crate cifar_cli_io;

pub mod bench;
pub mod cli;
pub mod compile;
pub mod config;
pub mod data;
pub mod device;
pub mod drift_cli;
pub mod eval;
pub mod model;
pub mod model_cli;
pub mod onnx_export;
pub mod onnx_import;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod prune;
pub mod robustness;
pub mod run;
pub mod step;
pub mod sweep;
pub mod trace;
pub mod track;
pub mod train;
