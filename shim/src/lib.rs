//! eci-shim: one process per container group. It owns the group's sandbox and container
//! processes, so that they outlive restarts of the agent, and serves the containerd shim
//! v2 Task API (ttrpc) on a socket in the group's run directory.

pub mod attach;
pub mod guest_proto;
pub mod kill;
pub mod logs;
pub mod process;
pub mod pty;
pub mod reaper;
pub mod seccomp_profiles;
pub mod start;
pub mod task;
pub mod vm;

pub use eci_runtime::layout::GroupDir;
