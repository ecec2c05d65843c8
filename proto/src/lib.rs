//! The coalition's gRPC API, generated from `proto/coalition/v1/*.proto`.
#![allow(clippy::all, missing_docs)]

pub mod codec;

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("coalition.v1");
    include!(concat!(env!("OUT_DIR"), "/coalition.v1.serde.rs"));
}

/// The encoded file descriptor set, for the gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coalition_descriptor");
