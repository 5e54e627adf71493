//! `cargo fuzz run oip_binary`: see [`cifar_fuzz::oip_binary`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::oip_binary(data);
});
