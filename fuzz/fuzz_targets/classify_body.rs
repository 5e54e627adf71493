//! `cargo fuzz run classify_body`: see [`cifar_fuzz::classify_body`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::classify_body(data);
});
