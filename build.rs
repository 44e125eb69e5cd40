// Generates the gRPC services (tonic + prost) and their proto3-JSON serde impls (pbjson) from proto/.
// protoc comes from the protoc-bin-vendored crate, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("whatisup_descriptor.bin");
    let protos = [
        "proto/whatisup/v1/channels.proto",
        "proto/whatisup/v1/sandbox.proto",
        "proto/whatisup/v1/events.proto",
        "proto/whatisup/v1/api_keys.proto",
        "proto/whatisup/v1/webhooks.proto",
        "proto/whatisup/v1/messages.proto",
        "proto/whatisup/v1/media.proto",
    ];
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // pbjson-types prints "+00:00"; our Timestamp prints the canonical "Z".
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        .compile_with_config(prost_config, &protos, &["proto"])?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        // The contract's JSON is snake_case, and shows every field (null when unset).
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".whatisup"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
