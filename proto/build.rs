//! Generates the gRPC code and the descriptor set (for reflection) with a vendored protoc,
//! so a fresh machine needs nothing but cargo.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "coalition/v1/partner.proto",
        "coalition/v1/finance.proto",
        "coalition/v1/operator.proto",
        "coalition/v1/programme.proto",
        "coalition/v1/report.proto",
    ];
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // `prost::Name` on every message: the codec finds a request's schema by its full name.
    config.enable_type_names();
    tonic_prost_build::configure()
        .codec_path("crate::codec::CheckedCodec")
        .file_descriptor_set_path(out.join("coalition_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;
    // serde for every message in the proto3 JSON mapping (webhooks post events as JSON).
    let descriptors = std::fs::read(out.join("coalition_descriptor.bin"))?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".coalition.v1"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
