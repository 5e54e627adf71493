//! `cargo fuzz run dataset_tar`: see [`cifar_fuzz::dataset_tar`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::dataset_tar(data);
});
