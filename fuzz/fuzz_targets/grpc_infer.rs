//! `cargo fuzz run grpc_infer`: see [`cifar_fuzz::grpc_infer`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cifar_fuzz::grpc_infer(data);
});
