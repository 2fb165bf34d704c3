//! eci-shim: one process per container group. It owns the group's sandbox and container
//! processes, so that they outlive restarts of the agent, and serves the containerd shim
//! v2 Task API on a socket in the group's run directory.
//!
//! This first part fixes where a group's runtime files live, which the agent and the shim
//! must agree on (the agent finds a shim after its own restart by this layout alone).

pub mod layout;

pub use layout::GroupDir;
