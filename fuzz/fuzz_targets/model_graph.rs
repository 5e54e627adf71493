//! `cargo fuzz run model_graph`: see [`cifar_fuzz::model_graph`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::model_graph(data);
});
