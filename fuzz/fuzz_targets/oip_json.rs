//! `cargo fuzz run oip_json`: see [`cifar_fuzz::oip_json`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::oip_json(data);
});
