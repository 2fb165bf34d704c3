//! The network of a vm group (sandbox kind "vm"): the group's `eth0` keeps living in the
//! group's netns on the host, but its identity (MAC, addresses, routes) moves into the
//! guest. The host shim bridges `eth0` with a tap QEMU serves ([`plug`]), so the
//! security group, enforced by the netns' nftables table on the bridged traffic, stays
//! out of the tenant's reach; `eci-guest` gives the virtio NIC that identity
//! ([`configure_guest`]).
//!
//! How the pieces use it:
//! - host shim, before booting QEMU: `plug(netns)?` → `Some(Plugged { tap, guest })`;
//!   QEMU gets the tap as `-netdev tap,id=net0,fd=N` (N = `tap` without close-on-exec
//!   in the child) and `-device virtio-net-device,netdev=net0,mac=<guest.mac>`, the
//!   kernel `eci.net=<guest.to_cmdline()>`; `None` (no eth0): no NIC at all. At
//!   teardown, after QEMU is gone: `unplug(netns)` (safe twice, after a crash).
//! - guest (`eci-guest`, PID 1, /proc mounted): `GuestNet::from_cmdline(value)` then
//!   `configure_guest(&net, <pinned group netns>)` from the guest's root netns.
//! - agent: `crate::nft::apply_vm_security_groups(netns, rules, group addresses)`
//!   instead of `apply_security_groups` for a vm group; the ENI return
//!   (`crate::eni::detach`) undoes a leftover plug itself.

//! - agent, httpGet/tcpSocket probes and hooks: connect from the group netns to the
//!   guest's address as for any group (`crate::connect::tcp`). The netns holds no
//!   address of the group any more, so `plug` gives `br0` the host-only
//!   [`PROBE_SOURCE`] and a /32 route to each guest IPv4 address; the guest routes that
//!   source on-link (`GuestNet::probe_source`). The tap's guard keeps the netns' stack
//!   off `eth0` (it talks to the guest only), the security group's input and output
//!   chains of a vm group admit only that and replies (see `crate::nft`).

mod guest;
mod guest_net;
mod plug;
mod tap;

pub use guest::configure_guest;
pub use guest_net::{GuestNet, MAX_ADDRS, MAX_CMDLINE};
pub use plug::{BRIDGE, Plugged, TAP, guest_of, plug, unplug};

/// The source of the agent's probes in a vm group's netns (`br0`'s only address):
/// 192.0.0.8, the IPv4 dummy address of RFC 7600, meant for a host that has no
/// address of its own on a link. It is never routed beyond the bridge, and the same
/// in every group netns.
pub const PROBE_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 0, 8);

use crate::attach::AttachError;
use crate::eni::MacAddress;
use crate::enter::EnterError;
use crate::rtnl::ThreadError;

/// Errors plugging a group's `eth0` into a VM, or configuring the guest's NIC.
#[derive(Debug, thiserror::Error)]
pub enum VmNetError {
    #[error(transparent)]
    Thread(#[from] ThreadError),
    #[error(transparent)]
    Enter(#[from] EnterError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("the guard of the guest's tap")]
    Guard(#[source] crate::nft::NftError),
    #[error("invalid eci.net value {value:?}: {why}")]
    BadCmdline { value: String, why: &'static str },
    #[error("invalid {field} {value}: {limit}")]
    Invalid {
        field: &'static str,
        value: String,
        limit: &'static str,
    },
    /// A kernel request failed; `what` names the step, the link and the netns.
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no NIC with MAC {mac} in the guest's root netns or in {netns}")]
    NoNic { mac: MacAddress, netns: String },
    #[error("{netns} already has a link named eth0 (ifindex {index}) that is not the NIC")]
    Eth0Taken { netns: String, index: u32 },
    #[error("{netns} already has a link named {name} that is not a leftover of a plug")]
    NameTaken { name: String, netns: String },
}

fn step(what: String) -> impl FnOnce(std::io::Error) -> VmNetError {
    move |source| VmNetError::Step { what, source }
}
