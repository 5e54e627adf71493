//! `cargo fuzz run config`: see [`cifar_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::config(data);
});
