//! Networking of ECI container groups: the group's network namespace, the ENI moved into
//! it, and the security-group rules enforced there.
//!
//! This first part holds the typed forms of what a group spec asks for (which host link is
//! the ENI, which rules apply), parsed and checked once so that the agent refuses a bad
//! spec before anything is created, and the code that later programs the kernel gets
//! values it does not have to check again.

pub mod attach;
pub mod bridge;
pub mod connect;
pub mod eni;
pub mod enter;
pub mod link;
pub mod loopback;
pub mod nft;
pub mod observe;
mod rtnl;
pub mod security_group;
pub mod vm;

pub use attach::{AttachError, EniConfig, EniRecord, attach, detach};
pub use bridge::{
    BridgeConfig, BridgeError, attach_veth, attach_veth_with_mac, detach_veth, ensure_bridge,
};
pub use eni::{EniSelector, MacAddress};
pub use link::{HostLink, LinkError, default_route_links, find, host_links, reserved_by_host};
pub use rtnl::ThreadError;
pub use security_group::{Direction, Policy, PortRange, Protocol, Rule};
