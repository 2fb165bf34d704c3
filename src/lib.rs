//! The `eci.v1` gRPC API of the ECI node agent.
//!
//! Generated from `proto/eci/v1/*.proto`: prost messages, tonic clients and servers, and
//! serde impls that follow the proto3 JSON mapping (camelCase field names), which is the
//! format of the files `ecictl apply -f` reads. Only the two binaries (`eci-agent`,
//! `ecictl`) speak gRPC; other crates never see these types.

/// Version 1 of the API. Breaking changes go to a new `v2` package beside it.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("eci.v1");
    include!(concat!(env!("OUT_DIR"), "/eci.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of every `eci.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/eci_v1_descriptor.bin"));

/// Group phases, as they appear in `GroupStatus.phase` (names from the modelled product).
pub mod phase {
    pub const SCHEDULING: &str = "Scheduling";
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const RESTARTING: &str = "Restarting";
    pub const UPDATING: &str = "Updating";
    pub const TERMINATING: &str = "Terminating";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const SCHEDULE_FAILED: &str = "ScheduleFailed";

    /// Phases in which a group no longer holds node resources.
    pub fn is_final(phase: &str) -> bool {
        matches!(phase, SUCCEEDED | FAILED | SCHEDULE_FAILED)
    }
}
