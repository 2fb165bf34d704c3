//! Compiles `proto/eci/v1/*.proto` with protox (a pure-Rust protobuf compiler, so no
//! `protoc` has to be installed), then generates prost messages, tonic services and
//! pbjson serde impls (the proto3 JSON mapping that `ecictl apply -f` reads) from the
//! same descriptor set. The descriptor set is also embedded for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/eci/v1/group.proto",
        "proto/eci/v1/groups.proto",
        "proto/eci/v1/containers.proto",
        "proto/eci/v1/metrics.proto",
        "proto/eci/v1/images.proto",
        "proto/eci/v1/caches.proto",
        "proto/eci/v1/node.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(files, ["proto"])?;
    let bytes = prost::Message::encode_to_vec(&fds);
    let fds_path = out.join("eci_v1_descriptor.bin");
    std::fs::write(&fds_path, &bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .emit_fields()
        .build(&[".eci.v1"])?;
    Ok(())
}
