//! The agent's health: which part works, as `Node.Info` conditions, the standard gRPC
//! health service and the systemd watchdog.
//!
//! Three loops beat: the API loop (a health Check of the agent over its own socket every
//! second, so a wedged runtime, accept loop or HTTP/2 server stops it), the supervisor loop (its periodic housekeeping, which
//! takes the supervisor's locks) and the store probe (a read of the store, and while
//! writes fail a write, on a blocking thread). A loop whose last beat is older than
//! [`STALE`] is stalled.
//!
//! - Alive (the watchdog is pinged, `""` is SERVING): every loop beats and the store can
//!   be read. A stalled loop or an unreadable store stops the pings, and systemd restarts
//!   the agent (groups keep running in their shims).
//! - Degraded but alive: the store cannot write (a full disk). Reads, Watch, Logs, Exec
//!   and metrics still work and a restart would not free space, so the watchdog is still
//!   pinged; `StoreWritable` is False and `eci.v1.ContainerGroups` is NOT_SERVING, so a
//!   control plane places no new groups here. Writes resume by themselves once there is
//!   space.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eci_api::v1::NodeCondition;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;

use crate::store::Store;

/// How often each loop beats.
pub const BEAT: Duration = Duration::from_secs(1);
/// A loop that has not beaten for this long is stalled.
pub const STALE: Duration = Duration::from_secs(10);

/// Condition types of `Node.Info`.
pub const API_LOOP: &str = "ApiLoop";
pub const SUPERVISOR_LOOP: &str = "SupervisorLoop";
pub const STORE_READABLE: &str = "StoreReadable";
pub const STORE_WRITABLE: &str = "StoreWritable";

/// The gRPC health names this agent reports.
const SERVICES: [&str; 3] = ["", "eci.v1.ContainerGroups", "eci.v1.Node"];

/// The last beat of one loop.
#[derive(Debug)]
pub struct Beat(Mutex<Instant>);

impl Beat {
    fn new() -> Self {
        Beat(Mutex::new(Instant::now()))
    }

    /// Records that the loop is alive.
    pub fn beat(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long since the last beat.
    fn age(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// What each part of the agent reports.
pub struct Health {
    store: Arc<Store>,
    pub api: Beat,
    pub supervisor: Beat,
    pub store_probe: Beat,
    /// Condition type → (status, time of the last change), for `last_transition_time`.
    transitions: Mutex<HashMap<&'static str, (bool, String)>>,
    reporter: HealthReporter,
    /// What the reporter was last told, so it is told only of changes.
    reported: Mutex<HashMap<&'static str, ServingStatus>>,
}

impl Health {
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        Arc::new(Health {
            store,
            api: Beat::new(),
            supervisor: Beat::new(),
            store_probe: Beat::new(),
            transitions: Mutex::new(HashMap::new()),
            reporter: HealthReporter::new(),
            reported: Mutex::new(HashMap::new()),
        })
    }

    /// The reporter behind the `grpc.health.v1.Health` service.
    pub fn reporter(&self) -> HealthReporter {
        self.reporter.clone()
    }

    fn beat_condition(&self, kind: &'static str, beat: &Beat, what: &str) -> NodeCondition {
        let age = beat.age();
        let ok = age < STALE;
        self.condition(
            kind,
            ok,
            if ok { "Beating" } else { "Stalled" },
            if ok {
                String::new()
            } else {
                format!("the {what} has not run for {}s", age.as_secs())
            },
            None,
        )
    }

    fn condition(
        &self,
        kind: &'static str,
        ok: bool,
        reason: &str,
        message: String,
        since: Option<&str>,
    ) -> NodeCondition {
        let mut t = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = t
            .entry(kind)
            .or_insert_with(|| (ok, since.map_or_else(crate::clock::now, str::to_string)));
        if entry.0 != ok {
            *entry = (ok, since.map_or_else(crate::clock::now, str::to_string));
        }
        NodeCondition {
            r#type: kind.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message,
            last_transition_time: entry.1.clone(),
        }
    }

    /// Each part's condition now.
    pub fn conditions(&self) -> Vec<NodeCondition> {
        let store = self.store.health().borrow().clone();
        let mut read = self.condition(
            STORE_READABLE,
            store.read.ok,
            store.read.reason,
            store.read.message.clone(),
            Some(&store.read.since),
        );
        let probe_age = self.store_probe.age();
        if store.read.ok && probe_age >= STALE {
            read = self.condition(
                STORE_READABLE,
                false,
                "ProbeStalled",
                format!(
                    "a read of the state database has not finished for {}s",
                    probe_age.as_secs()
                ),
                None,
            );
        }
        vec![
            self.beat_condition(API_LOOP, &self.api, "API loop"),
            self.beat_condition(SUPERVISOR_LOOP, &self.supervisor, "supervisor loop"),
            read,
            self.condition(
                STORE_WRITABLE,
                store.write.ok,
                store.write.reason,
                store.write.message.clone(),
                Some(&store.write.since),
            ),
        ]
    }

    /// Whether every loop beats and the store can be read: what the watchdog needs.
    /// A store that cannot write is degraded, not dead.
    pub fn alive(&self) -> bool {
        self.conditions()
            .iter()
            .all(|c| c.status == "True" || c.r#type == STORE_WRITABLE)
    }

    /// `healthy`, or which parts are not, for `Node.Info.health`.
    pub fn summary(conditions: &[NodeCondition]) -> String {
        let bad: Vec<String> = conditions
            .iter()
            .filter(|c| c.status != "True")
            .map(|c| format!("{} ({})", c.r#type, c.reason))
            .collect();
        if bad.is_empty() {
            "healthy".into()
        } else {
            format!("degraded: {}", bad.join(", "))
        }
    }

    /// Tells the gRPC health service what is serving, when that changed.
    async fn report(&self) {
        let conditions = self.conditions();
        let alive = conditions
            .iter()
            .all(|c| c.status == "True" || c.r#type == STORE_WRITABLE);
        let writable = conditions
            .iter()
            .all(|c| c.r#type != STORE_WRITABLE || c.status == "True");
        for service in SERVICES {
            let serving = match service {
                "eci.v1.ContainerGroups" => alive && writable,
                _ => alive,
            };
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            let changed = {
                let mut r = self.reported.lock().unwrap_or_else(|p| p.into_inner());
                r.insert(service, status) != Some(status)
            };
            if changed {
                if !serving {
                    tracing::warn!(service, health = %Self::summary(&conditions), "not serving");
                }
                self.reporter.set_service_status(service, status).await;
            }
        }
    }

    /// Starts the API beat, the store probe and the reporting loop. The API beat is a
    /// real call: a `grpc.health.v1` Check of this agent over its own socket, so it stops
    /// when accepting, HTTP/2 or routing is wedged, not only when the runtime is.
    pub async fn spawn(self: &Arc<Self>, socket: PathBuf) {
        self.report().await;
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut client = None;
            loop {
                tick.tick().await;
                match tokio::time::timeout(BEAT * 3, self_check(&socket, &mut client)).await {
                    Ok(Ok(())) => me.api.beat(),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "API self-check failed");
                        client = None;
                    }
                    Err(_) => {
                        tracing::debug!("API self-check timed out");
                        client = None;
                    }
                }
                me.report().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BEAT * 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let store = me.store.clone();
                // A read that hangs (a dead disk) leaves the beat stale: the watchdog stops.
                if let Ok(r) = tokio::task::spawn_blocking(move || store.probe()).await {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "store probe failed");
                    }
                    me.store_probe.beat();
                }
            }
        });
    }
}

/// One health Check of the agent through its Unix socket (connecting when `client` is
/// None).
async fn self_check(
    socket: &Path,
    client: &mut Option<HealthClient<Channel>>,
) -> Result<(), tonic::Status> {
    if client.is_none() {
        let path = socket.to_path_buf();
        // The URI is required by HTTP/2 but unused: the connector dials the socket.
        let ch = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        *client = Some(HealthClient::new(ch));
    }
    let Some(c) = client.as_mut() else {
        return Err(tonic::Status::unavailable("no connection"));
    };
    // "eci.v1.Node" is SERVING or NOT_SERVING; either answer shows the API serves.
    c.check(HealthCheckRequest {
        service: "eci.v1.Node".into(),
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> (tempfile::TempDir, Arc<Health>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("state.redb")).expect("store"));
        (dir, Health::new(store))
    }

    fn status(h: &Health, kind: &str) -> (String, String) {
        let c = h
            .conditions()
            .into_iter()
            .find(|c| c.r#type == kind)
            .expect("condition");
        (c.status, c.reason)
    }

    #[test]
    fn a_stalled_loop_is_not_alive_and_says_which() {
        let (_dir, h) = health();
        assert!(h.alive());
        assert_eq!(Health::summary(&h.conditions()), "healthy");
        let Some(long_ago) = Instant::now().checked_sub(STALE * 2) else {
            return; // The machine booted moments ago: nothing to test against.
        };
        *h.supervisor.0.lock().expect("lock") = long_ago;
        assert!(!h.alive());
        assert_eq!(
            status(&h, SUPERVISOR_LOOP),
            ("False".to_string(), "Stalled".to_string())
        );
        assert_eq!(status(&h, API_LOOP).0, "True");
        assert!(Health::summary(&h.conditions()).contains("SupervisorLoop (Stalled)"));
        h.supervisor.beat();
        assert!(h.alive());
        // A store probe that never returns (a hung disk) is as bad as a failed read.
        *h.store_probe.0.lock().expect("lock") = long_ago;
        assert!(!h.alive());
        assert_eq!(status(&h, STORE_READABLE).1, "ProbeStalled");
    }
}
