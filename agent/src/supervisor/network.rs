//! The supervisor's side of a group's network: set up after the shim made the netns and
//! before any container starts; given back before the netns is released, on every path
//! (delete, finish, lost shim, failed start, leftovers of a crash).

use std::sync::Arc;
use std::time::Duration;

use eci_api::phase;

use super::{GroupCtx, Supervisor, join_err};
use crate::groups::{NORMAL, WARNING, event};
use crate::network::{NetworkError, release, setup};

impl Supervisor {
    /// Sets up the group's network (idempotent) and records it in the status.
    pub(crate) async fn setup_network(&self, ctx: &GroupCtx) -> Result<(), NetworkError> {
        let store = self.groups.store().clone();
        let plan = self.groups.network().clone();
        let (id, name) = (ctx.id.clone(), ctx.name.clone());
        let net = ctx.spec.network.clone();
        let netns = crate::network::netns_path(&ctx.dir);
        let vm = ctx.spec.sandbox == "vm";
        let done = tokio::task::spawn_blocking(move || {
            setup::setup(&store, &plan, &id, &name, net.as_ref(), &netns, vm)
        })
        .await
        .map_err(|_| NetworkError::Join("setting up the group's network"))??;
        let name = ctx.name.clone();
        self.mutate(&ctx.name, move |g| {
            let mut events = Vec::new();
            if let Some(h) = &done.attached {
                events.push(event(
                    &name,
                    NORMAL,
                    "AttachedENI",
                    format!(
                        "attached ENI {} ({}) as eth0 in {} µs",
                        h.original_name, h.mac, done.status.setup_micros
                    ),
                ));
            }
            if let Some(st) = g.status.as_mut() {
                st.network = Some(done.status.clone());
            }
            events
        })
        .await;
        Ok(())
    }

    /// The addresses the group will have, for its `/etc/hosts`: its ENI's from the spec,
    /// or the dev address it holds.
    pub(crate) fn planned_addresses(&self, ctx: &GroupCtx) -> Vec<std::net::IpAddr> {
        let net = ctx.spec.network.clone().unwrap_or_default();
        if net.eni.is_some() {
            return [&net.ipv4_address, &net.ipv6_address]
                .into_iter()
                .filter_map(|a| a.parse::<ipnet::IpNet>().ok())
                .map(|n| n.addr())
                .collect();
        }
        let Some(dev) = &self.groups.network().dev else {
            return Vec::new();
        };
        match self.groups.store().dev_address_of(&ctx.name) {
            Ok(Some(v4)) => std::iter::once(std::net::IpAddr::V4(v4))
                .chain(dev.v6_for(v4).map(|n| std::net::IpAddr::V6(n.addr())))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Re-converges a running dev group's bridge port and its guard (adoption).
    pub(crate) async fn reguard_network(&self, ctx: &GroupCtx) -> Result<(), NetworkError> {
        let store = self.groups.store().clone();
        let plan = self.groups.network().clone();
        let (id, name) = (ctx.id.clone(), ctx.name.clone());
        let net = ctx.spec.network.clone();
        let netns = crate::network::netns_path(&ctx.dir);
        tokio::task::spawn_blocking(move || {
            setup::reguard(&store, &plan, &id, &name, net.as_ref(), &netns)
        })
        .await
        .map_err(|_| NetworkError::Join("re-applying the dev port guard"))?
    }

    /// Replaces the security-group rules of a running group with its (updated) spec's.
    pub(crate) async fn apply_rules(&self, ctx: &GroupCtx) -> Result<usize, NetworkError> {
        let net = ctx.spec.network.clone().unwrap_or_default();
        let netns = crate::network::netns_path(&ctx.dir);
        let has_link = self
            .groups
            .get(&ctx.name)
            .ok()
            .and_then(|g| g.status?.network)
            .is_some_and(|n| n.mode != "none");
        if !has_link {
            return Ok(0);
        }
        let vm = ctx.spec.sandbox == "vm";
        tokio::task::spawn_blocking(move || {
            let rules = setup::rules_of(&net);
            setup::apply_rules(&netns, &rules, vm).map(|()| rules.len())
        })
        .await
        .map_err(|_| NetworkError::Join("applying security-group rules"))?
    }

    /// An Update that changed only the security-group rules: applied to the running
    /// sandbox, containers untouched.
    pub(crate) async fn update_rules_in_place(self: &Arc<Self>, ctx: GroupCtx) {
        let outcome = self
            .apply_rules(&ctx)
            .await
            .map_err(|e| crate::error::chain(&e));
        let name = ctx.name.clone();
        self.mutate(&ctx.name, move |g| {
            let st = g.status.get_or_insert_with(Default::default);
            match &outcome {
                Ok(n) => {
                    if let Some(net) = st.network.as_mut() {
                        net.security_group_rules = *n as u32;
                    }
                    vec![event(
                        &name,
                        NORMAL,
                        "UpdatedSecurityGroup",
                        format!("{n} security-group rules in force; containers kept running"),
                    )]
                }
                Err(e) => vec![event(
                    &name,
                    WARNING,
                    "FailedUpdateSecurityGroup",
                    e.clone(),
                )],
            }
        })
        .await;
    }

    /// Gives back the group's ENI and dev veth. Blocking: called from cleanup that runs
    /// on the blocking pool, always before the group's netns pins are removed.
    pub(crate) fn release_network_blocking(&self, id: &str) -> bool {
        release_blocking(self.groups.store(), &self.cfg.run_dir, id)
    }

    /// As [`Supervisor::release_network_blocking`], from async code.
    pub(crate) async fn release_network(&self, ctx: &GroupCtx) {
        let store = self.groups.store().clone();
        let run_dir = self.cfg.run_dir.clone();
        let id = ctx.id.clone();
        let _ = tokio::task::spawn_blocking(move || release_blocking(&store, &run_dir, &id))
            .await
            .map_err(join_err);
    }

    /// A group whose network could not be set up fails, and gives back what it took.
    pub(crate) async fn network_failed(self: &Arc<Self>, ctx: &GroupCtx, e: &NetworkError) {
        let msg = crate::error::chain(e);
        let reason = match e {
            NetworkError::EniNotFound(_)
            | NetworkError::EniHeld { .. }
            | NetworkError::EniNoMac(_)
            | NetworkError::Attach { .. } => "FailedAttachENI",
            _ => "FailedSetupNetwork",
        };
        tracing::warn!(group = %ctx.name, error = %msg, "group network setup failed");
        let name = ctx.name.clone();
        self.mutate(&ctx.name, move |g| {
            let st = g.status.get_or_insert_with(Default::default);
            st.phase = phase::FAILED.into();
            st.reason = reason.into();
            st.message = msg.clone();
            st.finished_at = crate::clock::now();
            vec![event(&name, WARNING, reason, msg.clone())]
        })
        .await;
        self.teardown(ctx, Duration::ZERO).await;
    }
}

/// Gives back group `id`'s ENI and dev veth; false when that failed (its netns must
/// then stay pinned).
fn release_blocking(store: &crate::store::Store, run_dir: &std::path::Path, id: &str) -> bool {
    let netns = crate::network::netns_path(&eci_runtime::layout::GroupDir::new(run_dir, id));
    // A transient failure (a busy netlink socket) is retried; the record stays
    // until the ENI is back, so the next cleanup tries again if these fail.
    let mut last = None;
    for attempt in 0..3 {
        match release::release(store, id, &netns) {
            Ok(r) => {
                if let Some((h, found)) = r.eni {
                    let e = if found {
                        tracing::info!(group = %h.group, eni = %h.original_name, mac = %h.mac, "ENI returned to the host");
                        event(
                            &h.group,
                            NORMAL,
                            "DetachedENI",
                            format!("ENI {} ({}) returned to the host", h.original_name, h.mac),
                        )
                    } else {
                        tracing::error!(group = %h.group, eni = %h.original_name, mac = %h.mac, "the group's ENI is neither in its netns nor on the host");
                        event(
                            &h.group,
                            WARNING,
                            "ENILost",
                            format!(
                                "ENI {} ({}) was found neither in the group's netns nor on the host",
                                h.original_name, h.mac
                            ),
                        )
                    };
                    let _ = store.write(|tx| tx.event(e));
                }
                return true;
            }
            Err(e) => {
                tracing::warn!(group_id = %id, attempt, error = %crate::error::chain(&e), "giving back the group's network");
                last = Some(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    if let Some(e) = last {
        tracing::error!(group_id = %id, error = %crate::error::chain(&e), "the group's network could not be given back; its netns is kept pinned");
    }
    false
}
