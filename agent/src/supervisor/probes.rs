//! Probes of one running container, as kubelet runs them: a startup probe first (the
//! others wait for it), then liveness and readiness side by side. Readiness drives the
//! container's `ready` and `health` (and so the group's); liveness or startup failing
//! `failureThreshold` times in a row kills the container (preStop, SIGTERM, SIGKILL at
//! the end of the grace period) with an `Unhealthy` event naming the probe's output, and
//! the restart policy takes it from there.
//!
//! The task lives as long as one run of the container: it starts when the container is
//! Running (after its postStart hook) and is aborted when the run ends. After an agent
//! restart a new task starts with fresh counts, so time the agent was away never counts
//! as failures.

use std::sync::Arc;
use std::time::Duration;

use eci_api::v1::{Container, Probe};
use tokio::time::Instant;

use super::handlers::{Action, Outcome};
use super::transitions::{self, status_of};
use super::{GroupCtx, Supervisor};
use crate::groups::{NORMAL, WARNING, container_event};
use crate::sandbox::Shim;

/// A probe's timing and thresholds with Kubernetes' defaults for unset (0) fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub(crate) fn of(p: &Probe) -> Self {
        let or = |v: i32, d: u32| if v <= 0 { d } else { v as u32 };
        Timing {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.max(0) as u64),
            period: Duration::from_secs(or(p.period_seconds, 10).into()),
            timeout: Duration::from_secs(or(p.timeout_seconds, 1).into()),
            success_threshold: or(p.success_threshold, 1),
            failure_threshold: or(p.failure_threshold, 3),
        }
    }
}

/// Aborts the probe task of a container run when the run ends (or the task following
/// the container is itself stopped).
pub(crate) struct ProbeTask(Option<tokio::task::JoinHandle<()>>);

impl Drop for ProbeTask {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Whether `c` has any probe.
pub(crate) fn has_probes(c: &Container) -> bool {
    c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some()
}

/// Kubelet's name of a probe kind in events.
#[derive(Clone, Copy)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

impl Supervisor {
    /// Starts the probes of a container that has just become Running at `started`.
    pub(crate) fn spawn_probes(
        self: &Arc<Self>,
        ctx: &GroupCtx,
        shim: &Shim,
        c: &Container,
        started: Instant,
    ) -> ProbeTask {
        if !has_probes(c) {
            return ProbeTask(None);
        }
        let (me, ctx, shim, c) = (self.clone(), ctx.clone(), shim.clone(), c.clone());
        ProbeTask(Some(tokio::spawn(async move {
            me.probe_container(&ctx, &shim, &c, started).await
        })))
    }

    async fn probe_container(&self, ctx: &GroupCtx, shim: &Shim, c: &Container, started: Instant) {
        if let Some(p) = &c.startup_probe {
            let t = Timing::of(p);
            tokio::time::sleep_until(started + t.initial_delay).await;
            let mut failures = 0;
            loop {
                let o = self.probe_once(ctx, c, Kind::Startup, p, t).await;
                if o.ok {
                    break;
                }
                if !o.unknown {
                    failures += 1;
                }
                if failures >= t.failure_threshold {
                    return self.probe_kill(ctx, shim, c, Kind::Startup).await;
                }
                tokio::time::sleep(t.period).await;
            }
        }
        // Started: without a readiness probe the container is ready now.
        if c.readiness_probe.is_none() {
            self.set_probe_state(ctx, c, Some(true), "healthy").await;
        }
        let live = async {
            let Some(p) = &c.liveness_probe else {
                return std::future::pending().await;
            };
            let t = Timing::of(p);
            tokio::time::sleep_until(started + t.initial_delay).await;
            let mut failures = 0;
            loop {
                let o = self.probe_once(ctx, c, Kind::Liveness, p, t).await;
                if !o.unknown {
                    failures = if o.ok { 0 } else { failures + 1 };
                }
                if failures >= t.failure_threshold {
                    return self.probe_kill(ctx, shim, c, Kind::Liveness).await;
                }
                tokio::time::sleep(t.period).await;
            }
        };
        let ready = async {
            let Some(p) = &c.readiness_probe else {
                return std::future::pending().await;
            };
            let t = Timing::of(p);
            tokio::time::sleep_until(started + t.initial_delay).await;
            let (mut ok_run, mut fail_run) = (0u32, 0u32);
            let mut verdict: Option<bool> = None;
            loop {
                let o = self.probe_once(ctx, c, Kind::Readiness, p, t).await;
                // An unknown result (the shim does not answer) changes no count.
                if !o.unknown {
                    if o.ok {
                        ok_run += 1;
                        fail_run = 0;
                    } else {
                        fail_run += 1;
                        ok_run = 0;
                    }
                }
                if ok_run >= t.success_threshold {
                    verdict = Some(true);
                } else if fail_run >= t.failure_threshold {
                    verdict = Some(false);
                }
                // Compared with the status as stored, not as last written: something
                // else (a silent shim, say) may have changed it since.
                if let Some(ready) = verdict {
                    let health = if ready { "healthy" } else { "unhealthy" };
                    if !self.shows(ctx, c, ready, health) {
                        self.set_probe_state(ctx, c, Some(ready), health).await;
                    }
                }
                tokio::time::sleep(t.period).await;
            }
        };
        tokio::select! {
            () = live => {}
            () = ready => {}
        }
    }

    /// One run of probe `p`; a failure is reported with an `Unhealthy` event.
    async fn probe_once(
        &self,
        ctx: &GroupCtx,
        c: &Container,
        kind: Kind,
        p: &Probe,
        t: Timing,
    ) -> Outcome {
        let Some(action) = Action::of_probe(p) else {
            return Outcome {
                ok: true,
                ..Default::default()
            };
        };
        let o = self.run_action(ctx, &c.name, action, t.timeout).await;
        if o.unknown {
            tracing::info!(group = %ctx.name, container = %c.name, probe = kind.name(), output = %o.output, "probe could not run");
        } else if !o.ok {
            tracing::info!(group = %ctx.name, container = %c.name, probe = kind.name(), output = %o.output, "probe failed");
            let msg = format!("{} probe failed: {}", kind.name(), o.output);
            self.emit(container_event(
                &ctx.name,
                WARNING,
                "Unhealthy",
                msg,
                c.name.clone(),
            ))
            .await;
        }
        o
    }

    /// A liveness or startup probe gave up: the container is killed (the restart
    /// policy then applies).
    async fn probe_kill(&self, ctx: &GroupCtx, shim: &Shim, c: &Container, kind: Kind) {
        let msg = format!(
            "Container {} failed {} probe, will be restarted",
            c.name,
            kind.name().to_lowercase()
        );
        self.emit(container_event(
            &ctx.name,
            NORMAL,
            "Killing",
            msg,
            c.name.clone(),
        ))
        .await;
        self.set_probe_state(ctx, c, Some(false), "unhealthy").await;
        self.kill_container(ctx, shim, c, grace_of(ctx)).await;
    }

    /// Whether the stored status of `c` already shows `ready` and `health`.
    fn shows(&self, ctx: &GroupCtx, c: &Container, ready: bool, health: &str) -> bool {
        self.groups
            .get(&ctx.name)
            .ok()
            .and_then(|g| g.status)
            .and_then(|st| st.container_statuses.into_iter().find(|s| s.name == c.name))
            .is_none_or(|s| {
                s.state != transitions::RUNNING || (s.ready == ready && s.health == health)
            })
    }

    /// Records what the probes say of a container: `ready` and its `health`, and the
    /// group's health from all of them. Only while the container is Running.
    async fn set_probe_state(
        &self,
        ctx: &GroupCtx,
        c: &Container,
        ready: Option<bool>,
        health: &str,
    ) {
        let (cname, health) = (c.name.clone(), health.to_string());
        self.mutate(&ctx.name, move |g| {
            if let Some(s) = status_of(g, &cname)
                && s.state == transitions::RUNNING
            {
                if let Some(r) = ready {
                    s.ready = r;
                }
                s.health = health.clone();
            }
            transitions::group_health(g.status.get_or_insert_with(Default::default));
            Vec::new()
        })
        .await;
    }

    /// Stops one container: its preStop hook, SIGTERM, and SIGKILL when `grace`
    /// (counted from now, hook included) is over. Returns once it has exited.
    pub(crate) async fn kill_container(
        &self,
        ctx: &GroupCtx,
        shim: &Shim,
        c: &Container,
        grace: Duration,
    ) {
        let deadline = Instant::now() + grace;
        self.pre_stop(ctx, c, deadline).await;
        let _ = shim
            .kill(&c.name, nix::sys::signal::Signal::SIGTERM as i32, false)
            .await;
        if tokio::time::timeout_at(deadline, shim.wait(&c.name, ""))
            .await
            .is_err()
        {
            tracing::info!(group = %ctx.name, container = %c.name, "grace period over: SIGKILL");
            let _ = shim
                .kill(&c.name, nix::sys::signal::Signal::SIGKILL as i32, true)
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(10), shim.wait(&c.name, "")).await;
        }
    }

    /// Runs `c`'s preStop hook, if any, until `deadline` at the latest; a failure is a
    /// `FailedPreStopHook` event (the stop goes on).
    pub(crate) async fn pre_stop(&self, ctx: &GroupCtx, c: &Container, deadline: Instant) {
        let Some(action) = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(Action::of_hook)
        else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let o = self.run_action(ctx, &c.name, action, left).await;
        if !o.ok {
            let msg = format!("PreStopHook failed: {}", o.output);
            self.emit(container_event(
                &ctx.name,
                WARNING,
                "FailedPreStopHook",
                msg,
                c.name.clone(),
            ))
            .await;
        }
    }

    /// Runs `c`'s postStart hook, if any, bounded by the group's grace period. Err with
    /// the hook's output when it failed.
    pub(crate) async fn post_start(&self, ctx: &GroupCtx, c: &Container) -> Result<(), String> {
        let Some(action) = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .and_then(Action::of_hook)
        else {
            return Ok(());
        };
        let o = self
            .run_action(ctx, &c.name, action, grace_of(ctx).max(MIN_HOOK_TIME))
            .await;
        if o.ok { Ok(()) } else { Err(o.output) }
    }
}

/// The shortest time a postStart hook is given (a group with a grace period of 0 still
/// runs its hooks).
const MIN_HOOK_TIME: Duration = Duration::from_secs(30);

/// The group's termination grace period (default 30 s).
pub(crate) fn grace_of(ctx: &GroupCtx) -> Duration {
    Duration::from_secs(
        ctx.spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_kubernetes_defaults() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        assert_eq!(t.initial_delay, Duration::ZERO);
        let t = Timing::of(&Probe {
            period_seconds: 2,
            failure_threshold: 1,
            initial_delay_seconds: 5,
            ..Default::default()
        });
        assert_eq!(t.period, Duration::from_secs(2));
        assert_eq!(t.failure_threshold, 1);
        assert_eq!(t.initial_delay, Duration::from_secs(5));
    }
}
