//! Turns an OCI runtime spec into a running container for an ECI group.
//!
//! This first part answers what the node can do (cgroup layout, namespaces, sandbox
//! kinds), which the agent reports in `Node.Info` and checks before admitting a group.

pub mod host;

pub use host::{CgroupMode, HostFacts, SandboxKind};
