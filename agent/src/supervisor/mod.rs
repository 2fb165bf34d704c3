//! The group supervisor: drives each admitted group to its desired state through its
//! shim (sandbox, images, init containers, app containers), follows container exits and
//! applies the restart policy, tears groups down on delete, and re-adopts running
//! groups after the agent restarts.
//!
//! One task runs per group; every status change is one store transaction through
//! [`Groups::mutate`], which refuses changes to a group being deleted, so a runner that
//! races a delete stops by itself.

mod attach;
mod containers;
mod exec;
mod handlers;
mod https;
mod janitor;
pub mod monitor;
mod network;
mod probes;
mod start_error;
mod teardown;
mod transitions;
mod vm;
mod volumes;

pub use attach::no_stdin;
pub use exec::{ExecExit, ExecResize, ExecSession};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eci_api::phase;
use eci_api::v1::{ContainerGroup, GroupSpec};
use eci_runtime::layout::GroupDir;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::groups::{Groups, WARNING, event};
use crate::sandbox::{Shim, ShimLaunch};

/// Paths and settings the supervisor needs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub cgroup_parent: String,
    pub shim: ShimLaunch,
    /// `oom_score_adj` of container processes.
    pub oom_score_adj: i32,
    /// First restart back-off; doubles per restart up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Which block devices disk volumes may use.
    pub disks: crate::sandbox::disk::DiskPolicy,
}

/// The supervisor of all groups of this node.
pub struct Supervisor {
    groups: Arc<Groups>,
    cfg: SupervisorConfig,
    /// Tasks working on each group (runner and container watchers).
    tasks: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    /// Groups whose dead shim is being dealt with.
    recovering: Mutex<std::collections::HashSet<String>>,
}

/// Everything about one group a task needs, read once.
#[derive(Clone)]
pub(crate) struct GroupCtx {
    pub name: String,
    pub id: String,
    pub spec: GroupSpec,
    pub dir: GroupDir,
}

impl GroupCtx {
    /// Init and app container names, in start order.
    pub(crate) fn container_names(&self) -> Vec<String> {
        self.spec
            .init_containers
            .iter()
            .chain(&self.spec.containers)
            .map(|c| c.name.clone())
            .collect()
    }
}

impl Supervisor {
    pub fn new(groups: Arc<Groups>, cfg: SupervisorConfig) -> Arc<Self> {
        Arc::new(Supervisor {
            groups,
            cfg,
            tasks: Mutex::new(HashMap::new()),
            recovering: Mutex::new(Default::default()),
        })
    }

    /// The cgroup subtree groups live under.
    pub fn cgroup_parent(&self) -> &str {
        &self.cfg.cgroup_parent
    }

    /// The runtime directory (groups live under `<run>/groups/<id>`).
    pub fn run_dir(&self) -> &std::path::Path {
        &self.cfg.run_dir
    }

    /// Where a group's writable layers live (`<state>/groups/<id>`).
    pub fn writable_dir(&self, group_id: &str) -> std::path::PathBuf {
        self.cfg.state_dir.join("groups").join(group_id)
    }

    /// Where a group's disk, nfs and in-memory volumes are mounted
    /// (`<run>/groups/<id>/volumes`).
    pub fn volumes_dir(&self, group_id: &str) -> PathBuf {
        GroupDir::new(&self.cfg.run_dir, group_id)
            .root()
            .join("volumes")
    }

    /// What the shim counted of a container's output it could not log (current run).
    pub fn log_stats(&self, group_id: &str, container: &str) -> monitor::LogStats {
        monitor::log_stats(&GroupDir::new(&self.cfg.run_dir, group_id).bundle(container))
    }

    /// The pin of a group's network namespace (`<run>/groups/<id>/ns/net`).
    pub fn netns_of(&self, group_id: &str) -> PathBuf {
        crate::network::netns_path(&GroupDir::new(&self.cfg.run_dir, group_id))
    }

    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    fn ctx(&self, g: &ContainerGroup) -> GroupCtx {
        let spec = g.spec.clone().unwrap_or_default();
        GroupCtx {
            name: spec.name.clone(),
            id: g.id.clone(),
            dir: GroupDir::new(&self.cfg.run_dir, &g.id),
            spec,
        }
    }

    /// Keeps `task` so a delete can stop it.
    pub(crate) fn track(&self, name: &str, task: JoinHandle<()>) {
        let mut t = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let list = t.entry(name.to_string()).or_default();
        list.retain(|h| !h.is_finished());
        list.push(task);
    }

    /// Stops every task working on a group.
    fn stop_tasks(&self, name: &str) {
        let mut t = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for h in t.remove(name).unwrap_or_default() {
            h.abort();
        }
    }

    /// Creates a group (validation, admission) and starts it when admitted.
    pub async fn create(self: &Arc<Self>, spec: GroupSpec) -> Result<ContainerGroup> {
        let g = self.groups.clone();
        let group = tokio::task::spawn_blocking(move || g.create(spec))
            .await
            .map_err(join_err)??;
        if group
            .status
            .as_ref()
            .is_some_and(|s| s.phase == phase::PENDING)
        {
            self.spawn_run(&group);
        }
        Ok(group)
    }

    fn spawn_run(self: &Arc<Self>, group: &ContainerGroup) {
        let me = self.clone();
        let ctx = self.ctx(group);
        let name = ctx.name.clone();
        let task = tokio::spawn(async move { me.run(ctx).await });
        self.track(&name, task);
    }

    /// Stops every container of a group and starts them again from its current spec,
    /// on the same sandbox (same IP). `phase` is Restarting or Updating meanwhile.
    async fn recreate(
        self: &Arc<Self>,
        name: &str,
        phase_now: &'static str,
        reason: &'static str,
        message: String,
    ) -> Result<ContainerGroup> {
        let n = name.to_string();
        let group = self
            .mutate(name, move |g| {
                let st = g.status.get_or_insert_with(Default::default);
                st.phase = phase_now.into();
                st.reason = reason.into();
                st.message = message.clone();
                vec![event(&n, crate::groups::NORMAL, reason, message)]
            })
            .await
            .ok_or_else(|| Error::FailedPrecondition(format!("group {name:?} is being deleted")))?;
        self.stop_tasks(name);
        self.spawn_recreate(self.ctx(&group));
        Ok(group)
    }

    /// The work of a restart or update, recorded (phase Restarting/Updating) before it
    /// begins: stop every container, start them from the spec. Run again from the start
    /// after a crash, so an accepted restart is never lost or left half done.
    fn spawn_recreate(self: &Arc<Self>, ctx: GroupCtx) {
        let grace = Duration::from_secs(
            ctx.spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
        );
        let name = ctx.name.clone();
        let me = self.clone();
        let task = tokio::spawn(async move {
            let shim = match Shim::connect(&ctx.dir.shim_socket()).await {
                Ok(s) => Some(s),
                Err(crate::sandbox::ShimError::Unresponsive { .. }) => {
                    Some(me.shim_answering(&ctx).await)
                }
                Err(_) => None,
            };
            if let Some(shim) = shim {
                me.stop_containers(&ctx, &shim, grace).await;
            }
            me.run(ctx).await;
        });
        self.track(&name, task);
    }

    /// Restarts every container of a running group (ContainerGroups.Restart).
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<ContainerGroup> {
        let group = self.groups.get(name)?;
        let phase_now = group
            .status
            .as_ref()
            .map(|s| s.phase.clone())
            .unwrap_or_default();
        if phase::is_final(&phase_now) || phase_now == phase::TERMINATING {
            return Err(Error::FailedPrecondition(format!(
                "group {name:?} is {phase_now}; create it again instead"
            )));
        }
        self.recreate(
            name,
            phase::RESTARTING,
            "Restarting",
            "restarting all containers on request".into(),
        )
        .await
    }

    /// Stores a new spec and recreates the containers from it; the IP stays.
    pub async fn update(self: &Arc<Self>, spec: GroupSpec) -> Result<ContainerGroup> {
        let g = self.groups.clone();
        let name = spec.name.clone();
        let (updated, in_place) = tokio::task::spawn_blocking(move || g.update_with(spec))
            .await
            .map_err(join_err)??;
        if in_place {
            let me = self.clone();
            let ctx = self.ctx(&updated);
            me.update_rules_in_place(ctx).await;
            return self.groups.get(&name);
        }
        let phase_now = updated
            .status
            .as_ref()
            .map(|s| s.phase.clone())
            .unwrap_or_default();
        if phase_now == phase::SCHEDULE_FAILED {
            return Ok(updated);
        }
        let msg = format!(
            "recreating containers for spec generation {}",
            updated.generation
        );
        self.recreate(&name, phase::UPDATING, "Updating", msg).await
    }

    /// Forgets finished groups after `retention`, with their logs (their sandbox went
    /// when they finished).
    pub async fn collect_finished(&self, retention: Duration) {
        let g = self.groups.clone();
        match tokio::task::spawn_blocking(move || g.collect_finished(retention)).await {
            Ok(Ok(removed)) => {
                for group in &removed {
                    let ctx = self.ctx(group);
                    self.remove_dirs(&ctx).await;
                    let logs = self.cfg.log_dir.join("groups").join(&group.id);
                    let _ =
                        tokio::task::spawn_blocking(move || containers::remove_tree(&logs)).await;
                    tracing::info!(group = %ctx.name, "finished group removed after its retention period");
                }
            }
            Ok(Err(e)) => tracing::error!(error = ?e, "removing finished groups"),
            Err(e) => tracing::error!(error = %e, "removing finished groups"),
        }
    }

    /// Marks a group Terminating and tears it down in the background.
    pub async fn delete(
        self: &Arc<Self>,
        name: &str,
        grace: Option<i64>,
        force: bool,
    ) -> Result<ContainerGroup> {
        let g = self.groups.clone();
        let n = name.to_string();
        let group = tokio::task::spawn_blocking(move || g.delete(&n, grace, force))
            .await
            .map_err(join_err)??;
        self.stop_tasks(name);
        let me = self.clone();
        let grace = if force {
            0
        } else {
            grace
                .or(group
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30)
        };
        let ctx = self.ctx(&group);
        tokio::spawn(async move {
            me.finish_delete(ctx, Duration::from_secs(grace.max(0) as u64))
                .await
        });
        Ok(group)
    }

    async fn finish_delete(self: Arc<Self>, ctx: GroupCtx, grace: Duration) {
        self.teardown(&ctx, grace).await;
        // A deleted group's logs go with it (a finished group keeps them until deleted).
        let logs = self.cfg.log_dir.join("groups").join(&ctx.id);
        let _ = tokio::task::spawn_blocking(move || containers::remove_tree(&logs)).await;
        let mut wait = STORE_RETRY_FIRST;
        loop {
            let g = self.groups.clone();
            let name = ctx.name.clone();
            match tokio::task::spawn_blocking(move || g.finish_delete(&name)).await {
                Ok(Ok(())) => tracing::info!(group = %ctx.name, "group deleted"),
                // Torn down but still recorded: forget it once the store writes again.
                Ok(Err(e)) if e.is_store_unwritable() => {
                    tracing::warn!(group = %ctx.name, error = %e, "the store cannot forget the deleted group; retrying");
                    self.wait_writable(wait).await;
                    wait = (wait * 2).min(STORE_RETRY_MAX);
                    continue;
                }
                Ok(Err(e)) => tracing::error!(group = %ctx.name, error = ?e, "forgetting group"),
                Err(e) => tracing::error!(group = %ctx.name, error = %e, "forgetting group"),
            }
            break;
        }
    }

    /// Brings every stored group in line after the agent starts: finishes deletes,
    /// re-adopts running groups through their shims, restarts what was lost.
    pub async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let g = self.groups.clone();
        let (groups, _) = tokio::task::spawn_blocking(move || g.store().list_groups())
            .await
            .map_err(join_err)??;
        // What exists on the host for groups the store does not have (a delete or a
        // shim launch cut short by a crash) goes first.
        let live: std::collections::HashSet<String> = groups.iter().map(|g| g.id.clone()).collect();
        let me = self.clone();
        let cleaned = tokio::task::spawn_blocking(move || me.collect_orphans(&live))
            .await
            .map_err(join_err)?;
        if !cleaned.is_empty() {
            let events: Vec<_> = cleaned
                .iter()
                .map(|id| {
                    crate::groups::event(
                        "",
                        crate::groups::WARNING,
                        "LeftoversRemoved",
                        format!("removed the shim, cgroups, namespaces and directories of group id {id}, which the store does not have"),
                    )
                })
                .collect();
            let store = self.groups.store().clone();
            let _ = tokio::task::spawn_blocking(move || {
                store.write(|tx| events.into_iter().try_for_each(|e| tx.event(e)))
            })
            .await;
        }
        // Every shim at once: a silent one costs its deadline once, not once per group.
        let conns = futures::future::join_all(groups.iter().map(|g| {
            let socket = GroupDir::new(&self.cfg.run_dir, &g.id).shim_socket();
            async move { Shim::connect(&socket).await }
        }))
        .await;
        for (group, conn) in groups.into_iter().zip(conns) {
            let ctx = self.ctx(&group);
            let phase = group
                .status
                .as_ref()
                .map(|s| s.phase.clone())
                .unwrap_or_default();
            if phase == phase::TERMINATING {
                let me = self.clone();
                tokio::spawn(async move { me.finish_delete(ctx, Duration::ZERO).await });
                continue;
            }
            if phase::is_final(&phase) {
                // Finished, but a crash cut its release short: the ENI, the shim and
                // the netns go now.
                let held = self
                    .groups
                    .store()
                    .held_eni(&ctx.id)
                    .ok()
                    .flatten()
                    .is_some();
                if held
                    || ctx.dir.namespaces().exists()
                    || ctx.dir.shim_pid().exists()
                    || crate::sandbox::volumes::has_mounts(ctx.dir.root())
                {
                    tracing::warn!(group = %ctx.name, "releasing the sandbox of a finished group");
                    let me = self.clone();
                    tokio::spawn(async move { me.teardown(&ctx, Duration::ZERO).await });
                }
                continue;
            }
            match conn {
                // (A silent shim is waited for there.)
                Ok(_) | Err(crate::sandbox::ShimError::Unresponsive { .. })
                    if phase == phase::RESTARTING || phase == phase::UPDATING =>
                {
                    tracing::info!(group = %ctx.name, %phase, "resuming the interrupted {phase}");
                    self.spawn_recreate(ctx);
                }
                Ok(shim) => {
                    tracing::info!(group = %ctx.name, "re-adopting group from its shim");
                    let me = self.clone();
                    let name = ctx.name.clone();
                    let task = tokio::spawn(async move { me.adopt(ctx, shim, group).await });
                    self.track(&name, task);
                }
                Err(crate::sandbox::ShimError::Unresponsive { .. }) => {
                    // A stopped or hung shim is alive: wait for it, then re-adopt.
                    tracing::warn!(group = %ctx.name, "the group's shim does not answer; waiting for it");
                    let me = self.clone();
                    let name = ctx.name.clone();
                    let task = tokio::spawn(async move {
                        let shim = me.shim_answering(&ctx).await;
                        me.adopt(ctx, shim, group).await
                    });
                    self.track(&name, task);
                }
                Err(_) if ctx.dir.namespaces().exists() || ctx.dir.shim_pid().exists() => {
                    tracing::warn!(group = %ctx.name, "the group's shim is gone");
                    self.sandbox_lost(&ctx).await;
                }
                Err(_) => self.spawn_run(&group),
            }
        }
        Ok(())
    }

    /// The shim died with the group's processes: clean up, then apply the restart policy.
    /// Several of the group's tasks may notice at once; one recovers.
    pub(crate) async fn sandbox_lost(self: &Arc<Self>, ctx: &GroupCtx) {
        if !self
            .recovering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ctx.name.clone())
        {
            return;
        }
        // The group's other tasks wait on the dead shim: stop them.
        self.stop_tasks(&ctx.name);
        self.teardown(ctx, Duration::ZERO).await;
        // The shim's death is a failure of every container it ran.
        let restart = transitions::wants_restart(&ctx.spec.restart_policy, 137);
        let name = ctx.name.clone();
        let updated = self
            .mutate(&ctx.name, move |g| {
                let st = g.status.get_or_insert_with(Default::default);
                let now = crate::clock::now();
                let lost = transitions::Ended {
                    code: 137,
                    message: "the group's shim died".into(),
                    finished_at: now.clone(),
                    ..Default::default()
                };
                for c in &mut st.container_statuses {
                    if c.state == transitions::RUNNING {
                        transitions::to_terminated(c, &lost);
                    }
                }
                st.reason = "SandboxLost".into();
                if restart {
                    st.phase = phase::PENDING.into();
                    st.message = "the shim died; recreating the sandbox".into();
                } else {
                    st.phase = phase::FAILED.into();
                    st.message = "the shim died".into();
                    st.finished_at = now;
                }
                vec![event(
                    &name,
                    WARNING,
                    "SandboxLost",
                    "the group's shim died; its processes are gone",
                )]
            })
            .await;
        self.recovering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ctx.name);
        if restart && let Some(g) = updated {
            self.spawn_run(&g);
        }
    }

    /// Whether the group's shim still lives: it answers, or it is there but does not
    /// answer in time (stopped, hung) — that is a condition, not a death.
    pub(crate) async fn shim_alive(&self, ctx: &GroupCtx) -> bool {
        match Shim::connect(&ctx.dir.shim_socket()).await {
            Ok(_) | Err(crate::sandbox::ShimError::Unresponsive { .. }) => true,
            Err(_) => false,
        }
    }

    /// [`Groups::mutate`] off the async workers. While the store cannot write (a full
    /// disk), the change is not dropped: it is applied again to the group as stored then,
    /// once the store writes again (waiting with back-off, not spinning), and meanwhile
    /// the group's task waits here.
    pub(crate) async fn mutate(
        &self,
        name: &str,
        f: impl FnOnce(&mut ContainerGroup) -> Vec<eci_api::v1::Event> + Clone + Send + 'static,
    ) -> Option<ContainerGroup> {
        let mut wait = STORE_RETRY_FIRST;
        loop {
            let g = self.groups.clone();
            let n = name.to_string();
            let f = f.clone();
            match tokio::task::spawn_blocking(move || g.mutate(&n, f)).await {
                Ok(Ok(g)) => return g,
                Ok(Err(e)) if e.is_store_unwritable() => {
                    tracing::warn!(group = %name, error = %e, retry_in_s = wait.as_secs(), "the store cannot record the group's status; retrying");
                    self.wait_writable(wait).await;
                    wait = (wait * 2).min(STORE_RETRY_MAX);
                }
                Ok(Err(e)) => {
                    tracing::error!(group = %name, error = ?e, "updating group status");
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits until the store says it can write again, or `at_most`.
    pub(crate) async fn wait_writable(&self, at_most: Duration) {
        let mut health = self.groups.store().health();
        let _ = tokio::time::timeout(at_most, health.wait_for(|h| h.write.ok)).await;
        // The store reports writable after its own probe; give other writers a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// The supervisor loop's periodic work: forgets the handles of finished tasks. It
    /// takes the supervisor's locks, so a deadlock in them stops the loop's heartbeat.
    pub fn tick(&self) {
        let mut t = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, list| {
            list.retain(|h| !h.is_finished());
            !list.is_empty()
        });
        drop(t);
        drop(self.recovering.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// First and longest wait before a status write the store refused is tried again.
const STORE_RETRY_FIRST: Duration = Duration::from_secs(1);
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);

pub(crate) fn join_err(e: tokio::task::JoinError) -> Error {
    Error::FailedPrecondition(format!("internal task failed: {e}"))
}
