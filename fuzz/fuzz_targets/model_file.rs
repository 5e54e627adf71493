//! `cargo fuzz run model_file`: see [`cifar_fuzz::model_file`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::model_file(data);
});
