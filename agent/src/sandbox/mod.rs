//! Running a group's containers through its shim: the Task API client, the OCI spec of
//! each container, and the files the agent writes for them.

pub mod attach;
pub mod disk;
pub mod external;
pub mod files;
pub mod shim;
pub mod spec;
pub mod usage;
pub mod volumes;

pub use shim::{ExecIo, Shim, ShimError, ShimLaunch};
