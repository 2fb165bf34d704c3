//! nftables over netlink: the security-group table of a group's netns, and the dev-mode
//! masquerade table and per-port anti-spoofing guards of the host.
//!
//! No `nft` process and no libnftnl: the messages are encoded here on a `netlink-sys`
//! socket. The pure-Rust crates were weighed first (docs/network.md, "Security groups"):
//! `rustables` is GPL-3 and `nftnl` links GPL libnftnl; `nf_tables` 0.1 is a single
//! early release; `nlink` covers nftables but is async-only, 200k+ lines and changes its
//! API every release. What is needed here is small (one table replaced per call, a dozen
//! expression kinds, a rule dump), so a minimal encoder that checks every ACK is less code
//! to trust than any of them.
//!
//! Every change is one nfnetlink batch, so the kernel applies it whole or not at all, and
//! connections (conntrack entries) survive a replacement.

mod attr;
mod batch;
mod consts;
mod counters;
mod expr;
mod masquerade;
mod port_guard;
mod security_groups;
mod socket;
mod table;

use std::path::Path;

pub use masquerade::{MASQUERADE_TABLE, ensure_masquerade, remove_masquerade};
pub(crate) use port_guard::{
    Guarded, ensure_here as ensure_guard_here, remove_here as remove_guard_here,
};
pub use port_guard::{PortGuard, ensure_port_guard, port_guard_table, remove_port_guard};
pub use security_groups::TABLE as SECURITY_GROUP_TABLE;

use crate::security_group::Rule;
use batch::Batch;
use socket::NfSocket;

/// Errors programming or reading nftables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Netns(#[from] crate::enter::EnterError),
    #[error("opening a netfilter netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("sending to netfilter netlink")]
    Send(#[source] std::io::Error),
    #[error("receiving from netfilter netlink")]
    Recv(#[source] std::io::Error),
    #[error("the kernel refused {what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
    #[error("bridge: {0:?} is not a link name (1-15 bytes, no '/', ':', whitespace or NUL)")]
    BridgeName(String),
    #[error("port guard: {0:?} is not a link name (1-15 bytes, no '/', ':', whitespace or NUL)")]
    PortName(String),
}

/// Packets and bytes counted by one spec rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleCounter {
    /// Index of the rule in the `rules` slice given to [`apply_security_groups`].
    pub index: usize,
    pub packets: u64,
    pub bytes: u64,
}

/// Runs `f` with a netfilter socket of the namespace pinned at `netns`.
///
/// The socket is opened on a thread of its own that enters the namespace and ends there,
/// so no thread of the caller (a tokio worker, say) is ever left inside a tenant's
/// namespace; the socket stays bound to the namespace it was opened in.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce(&NfSocket) -> Result<T, NftError> + Send + 'static,
) -> Result<T, NftError> {
    crate::enter::run_in(netns, "eci-nft", move || f(&NfSocket::open()?))
}

/// Replaces the group's security-group table ([`SECURITY_GROUP_TABLE`], family inet) in
/// the netns pinned at `netns` (an nsfs bind-mount path like /run/eci/groups/ID/ns/net)
/// in ONE atomic batch: delete the old table if present + add the new one; the
/// containers' connections are untouched. Rules are sorted by priority (1 first, ties in
/// spec order). Ingress is denied except established/related, loopback, ICMP errors,
/// ICMPv6 errors and neighbour discovery, and what a rule accepts; egress is allowed
/// unless a rule drops it.
pub fn apply_security_groups(netns: &Path, rules: &[Rule]) -> Result<(), NftError> {
    replace_security_groups(netns, security_groups::compile(rules, None))
}

/// As [`apply_security_groups`], for a vm group whose guest holds `guest_addrs` (the
/// group's addresses, those of its `eth0` before `crate::vm::plug`): the table also
/// gets a `forward` chain that filters the traffic bridged between the guest's tap and
/// `eth0`, ingress being what goes to a guest address, egress what comes from one (or
/// from the guest's IPv6 link-local address), with the same defaults (ingress denied
/// but established/related, ICMP errors, neighbour discovery and what a rule accepts;
/// egress allowed unless a rule drops it); other forwarded traffic (spoofed sources) is
/// dropped. The netns' own stack gets none of the spec's rules: it may only open TCP
/// connections from `crate::vm::PROBE_SOURCE` to a guest IPv4 address (the agent's
/// probes and hooks) and take in replies. Apply it before or after the plug: it does
/// not depend on the bridge.
pub fn apply_vm_security_groups(
    netns: &Path,
    rules: &[Rule],
    guest_addrs: &[std::net::IpAddr],
) -> Result<(), NftError> {
    replace_security_groups(netns, security_groups::compile(rules, Some(guest_addrs)))
}

/// Replaces the security-group table with `table` in one batch.
fn replace_security_groups(netns: &Path, table: table::Table) -> Result<(), NftError> {
    let mut b = Batch::new();
    table::delete_table(&mut b, table.family, &table.name);
    table::add_table(&mut b, &table);
    in_netns(netns, move |s| s.apply(b))
}

/// The counters of the spec rules in the netns pinned at `netns`, by rule index (the
/// index in the slice last given to [`apply_security_groups`]). Empty when the table
/// does not exist (never applied).
pub fn security_group_counters(netns: &Path) -> Result<Vec<RuleCounter>, NftError> {
    in_netns(netns, counters::read)
}

/// Deletes the security-group table in the netns pinned at `netns`, if present: all
/// traffic is then allowed. Idempotent.
pub fn remove_security_groups(netns: &Path) -> Result<(), NftError> {
    let mut b = Batch::new();
    table::delete_table(&mut b, consts::NFPROTO_INET, SECURITY_GROUP_TABLE);
    in_netns(netns, move |s| s.apply(b))
}

#[cfg(test)]
mod tests {
    use super::consts::*;
    use super::expr::{Expr, Verdict};
    use super::table::{Chain, Hook, NftRule, Table};
    use super::*;
    use nix::sched::CloneFlags;

    /// Runs `f` on a thread in a new, empty network namespace. Needs root.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            f()
        })
        .join()
        .expect("netns thread")
    }

    #[test]
    fn a_refused_batch_names_the_message_and_applies_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let err = in_new_netns(|| {
            let s = NfSocket::open().expect("socket");
            let bad = Table {
                name: "eci_test".into(),
                family: NFPROTO_INET,
                chains: vec![Chain {
                    name: "c",
                    hook: Hook {
                        num: NF_INET_LOCAL_IN,
                        priority: 0,
                        // No such chain type: the kernel refuses the chain.
                        kind: "no-such-type",
                        policy: Verdict::Accept,
                    },
                    rules: vec![NftRule {
                        exprs: vec![Expr::Counter],
                        comment: None,
                    }],
                }],
            };
            let mut b = Batch::new();
            table::add_table(&mut b, &bad);
            let err = s.apply(b).expect_err("refused");
            // Nothing of the batch is left: the table does not exist.
            let mut w = attr::AttrWriter::default();
            w.put_str(NFTA_RULE_TABLE, "eci_test");
            let rules = s.dump(NFT_MSG_GETRULE, NFPROTO_INET, &w.buf);
            (err, rules.map(|r| r.len()).unwrap_or(0))
        });
        let (err, rules) = err;
        let msg = err.to_string();
        assert!(msg.contains("adding chain eci_test c"), "{msg}");
        assert_eq!(rules, 0);
    }

    #[test]
    fn counters_of_a_namespace_without_the_table_are_empty() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let counters = in_new_netns(|| counters::read(&NfSocket::open().expect("socket")));
        assert_eq!(counters.expect("read"), vec![]);
        let err = apply_security_groups(Path::new("/nonexistent/ns/net"), &[])
            .expect_err("no such netns");
        assert!(
            matches!(err, NftError::Netns(crate::enter::EnterError::Open { .. })),
            "{err}"
        );
        let err =
            apply_security_groups(Path::new("/proc/self/status"), &[]).expect_err("not a netns");
        assert!(
            matches!(err, NftError::Netns(crate::enter::EnterError::Enter { .. })),
            "{err}"
        );
    }
}
