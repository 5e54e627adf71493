//! `cargo fuzz run onnx_import`: see [`cifar_fuzz::onnx_import`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::onnx_import(data);
});
