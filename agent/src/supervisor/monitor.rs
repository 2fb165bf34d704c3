//! The group monitor: one task per started group that looks at its shim every
//! [`PERIOD`] and shows in the status what it sees.
//!
//! - Responsiveness: a Connect call with a short deadline. A shim that does not answer
//!   (stopped, hung) sets the `ShimResponsive=False` condition and a Warning event, and
//!   marks running containers' states as unknown; when it answers again it is cleared.
//!   Nothing else waits on it: each call has its own deadline, and no lock is held
//!   across one, so other groups never notice.
//! - Log drops: the shim records in `<bundle>/log-stats.json` how many bytes of a
//!   container's output it could not write to the log (full or failing filesystem);
//!   a growing count becomes a `LogWriteFailed` Warning event, the end of it a
//!   `LogWriteResumed` event; the Metrics API shows the count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::transitions;
use super::{GroupCtx, Supervisor};
use crate::groups::{NORMAL, WARNING, container_event, event};
use crate::sandbox::{Shim, ShimError};

/// Time between two looks at a group's shim.
pub(crate) const PERIOD: Duration = Duration::from_secs(2);

/// File in a container's bundle where the shim counts output it could not log.
pub const LOG_STATS_FILE: &str = "log-stats.json";

/// `<bundle>/log-stats.json` as the shim writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct LogStats {
    /// Bytes of the current run's output dropped so far.
    pub dropped_bytes: u64,
    /// Whether the last write to the log failed.
    pub failing: bool,
    /// The last write error.
    #[serde(default)]
    pub error: String,
}

/// The log stats of one container run; zero when the shim recorded none.
pub fn log_stats(ctx_bundle: &std::path::Path) -> LogStats {
    std::fs::read(ctx_bundle.join(LOG_STATS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl Supervisor {
    /// Starts the monitor of a group (stopped with the group's other tasks).
    pub(crate) fn spawn_monitor(self: &Arc<Self>, ctx: &GroupCtx) {
        let me = self.clone();
        let ctx2 = ctx.clone();
        let task = tokio::spawn(async move { me.monitor(ctx2).await });
        self.track(&ctx.name, task);
    }

    async fn monitor(self: Arc<Self>, ctx: GroupCtx) {
        let mut shim: Option<Shim> = None;
        let mut responsive = true;
        let mut seen: HashMap<String, LogStats> = HashMap::new();
        loop {
            tokio::time::sleep(PERIOD).await;
            // The store read and the stats files, off the async workers.
            let (groups, ctx2) = (self.groups.clone(), ctx.clone());
            let Ok((phase, stats)) = tokio::task::spawn_blocking(move || {
                let phase = groups
                    .get(&ctx2.name)
                    .ok()
                    .map(|g| g.status.map(|s| s.phase).unwrap_or_default());
                let stats: Vec<(String, LogStats)> = ctx2
                    .container_names()
                    .into_iter()
                    .map(|c| {
                        let s = log_stats(&ctx2.dir.bundle(&c));
                        (c, s)
                    })
                    .collect();
                (phase, stats)
            })
            .await
            else {
                return;
            };
            let Some(phase) = phase else { return };
            if eci_api::phase::is_final(&phase) || phase == eci_api::phase::TERMINATING {
                return;
            }
            let answer = match &shim {
                Some(s) => s.ping().await,
                None => Shim::connect(&ctx.dir.shim_socket())
                    .await
                    .map(|s| shim = Some(s)),
            };
            match answer {
                Ok(()) if !responsive => {
                    responsive = true;
                    self.shim_answers(&ctx).await;
                }
                Ok(()) => {}
                Err(e @ ShimError::Unresponsive { .. }) => {
                    if responsive {
                        responsive = false;
                        self.shim_silent(&ctx, &e).await;
                    }
                }
                // Gone, not silent: the container tasks see the closed connection and
                // recover the group; a new connection is made next time.
                Err(_) => shim = None,
            }
            self.check_logs(&ctx, stats, &mut seen).await;
        }
    }

    /// Waits until the group's silent shim answers again (SIGCONT), with the group
    /// shown `ShimResponsive=False` meanwhile; a delete stops the wait with the task.
    pub(crate) async fn shim_answering(&self, ctx: &GroupCtx) -> Shim {
        let mut shown = false;
        loop {
            match Shim::connect(&ctx.dir.shim_socket()).await {
                Ok(s) => {
                    if shown {
                        self.shim_answers(ctx).await;
                    }
                    return s;
                }
                Err(e) => {
                    if !shown {
                        shown = true;
                        self.shim_silent(ctx, &e).await;
                    }
                }
            }
            tokio::time::sleep(PERIOD).await;
        }
    }

    async fn shim_silent(&self, ctx: &GroupCtx, e: &ShimError) {
        tracing::warn!(group = %ctx.name, error = %e, "the group's shim does not answer");
        let (name, msg) = (ctx.name.clone(), e.to_string());
        self.mutate(&ctx.name, move |g| {
            let now = crate::clock::now();
            let st = g.status.get_or_insert_with(Default::default);
            if transitions::shim_unresponsive(st, &msg, &now) {
                vec![event(
                    &name,
                    WARNING,
                    transitions::SHIM_UNRESPONSIVE,
                    format!("{msg}; container states are unknown until it answers"),
                )]
            } else {
                Vec::new()
            }
        })
        .await;
    }

    async fn shim_answers(&self, ctx: &GroupCtx) {
        tracing::info!(group = %ctx.name, "the group's shim answers again");
        let name = ctx.name.clone();
        let no_probe: std::collections::HashSet<String> = ctx
            .spec
            .containers
            .iter()
            .filter(|c| c.readiness_probe.is_none())
            .map(|c| c.name.clone())
            .collect();
        self.mutate(&ctx.name, move |g| {
            let now = crate::clock::now();
            let st = g.status.get_or_insert_with(Default::default);
            if transitions::shim_responsive(st, |c| no_probe.contains(c), &now) {
                vec![event(
                    &name,
                    NORMAL,
                    "ShimRecovered",
                    "the group's shim answers again",
                )]
            } else {
                Vec::new()
            }
        })
        .await;
    }

    /// Turns changes of each container's log stats into events.
    async fn check_logs(
        &self,
        ctx: &GroupCtx,
        stats: Vec<(String, LogStats)>,
        seen: &mut HashMap<String, LogStats>,
    ) {
        let mut events = Vec::new();
        for (name, now) in stats {
            let before = seen.get(&name).cloned().unwrap_or_default();
            if now.dropped_bytes > before.dropped_bytes {
                events.push(container_event(
                    &ctx.name,
                    WARNING,
                    "LogWriteFailed",
                    format!(
                        "{} bytes of container {}'s output could not be logged so far ({}); the container keeps running",
                        now.dropped_bytes, name, now.error
                    ),
                    name.clone(),
                ));
            }
            if before.failing && !now.failing && now.dropped_bytes > 0 {
                events.push(container_event(
                    &ctx.name,
                    NORMAL,
                    "LogWriteResumed",
                    format!(
                        "container {}'s output is logged again; {} bytes were dropped",
                        name, now.dropped_bytes
                    ),
                    name.clone(),
                ));
            }
            seen.insert(name, now);
        }
        if events.is_empty() {
            return;
        }
        let store = self.groups.store().clone();
        if let Err(e) = tokio::task::spawn_blocking(move || {
            store.write(|tx| events.into_iter().try_for_each(|e| tx.event(e)))
        })
        .await
        {
            tracing::warn!(group = %ctx.name, error = %e, "recording log events");
        }
    }
}
