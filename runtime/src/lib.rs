//! Turns an OCI runtime spec into a running container for an ECI group: namespaces,
//! the overlay root and mounts, cgroups (v1 and v2), capabilities, seccomp, rlimits.
//!
//! The shim drives it: [`namespaces`] creates a group's shared namespaces, [`cgroup`]
//! its cgroups, and [`init`] is the code of the short-lived `eci-shim init` process that
//! becomes each container's first process.

pub mod attach;
pub mod capabilities;
pub mod cgroup;
pub mod console;
pub mod device_filter;
pub mod devices;
pub mod fsmount;
pub mod host;
pub mod idmap;
pub mod init;
pub mod layout;
pub mod mounts;
pub mod namespaces;
pub mod sealed_exe;
pub mod seccomp;
pub mod user;
pub mod userns;
pub mod vm_config;

pub use host::{CgroupMode, HostFacts, SandboxKind};
