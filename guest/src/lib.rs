//! eci-guest: PID 1 of a vm sandbox's guest. It boots the guest userland (mounts,
//! modules, cgroups), pins the group's namespaces, and serves the group's containers
//! through the same Task service as the host shim, over the virtio-serial ports the
//! host shim talks to (see docs/vm.md and the contract in `eci_shim::guest_proto`).

pub mod bench;
pub mod boot;
pub mod cmdline;
pub mod ctl;
pub mod io;
pub mod oom;
pub mod options;
pub mod pid1;
pub mod ports;
pub mod task;
pub mod vsock;
