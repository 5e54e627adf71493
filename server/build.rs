//! Generates the gRPC service (Open Inference Protocol v2) from `proto/inference.proto`
//! with tonic: the server side, and a client for the tests. Needs `protoc`
//! (scripts/setup.sh installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/inference.proto"], &["proto"])?;
    Ok(())
}
