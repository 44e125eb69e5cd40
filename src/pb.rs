//! Generated from proto/whatisup/v1 (tonic + prost, pbjson for proto3 JSON).
#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("whatisup.v1");
include!(concat!(env!("OUT_DIR"), "/whatisup.v1.serde.rs"));

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("whatisup_descriptor");
