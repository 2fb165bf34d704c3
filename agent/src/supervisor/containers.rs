//! Starting a group and following its containers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use eci_api::phase;
use eci_api::v1::{Container, ContainerGroup};

use super::start_error::StartError;
use super::transitions::{self, Ended, status_of, wants_restart};
use super::{GroupCtx, Supervisor};
use crate::caches;
use crate::clock;
use crate::groups::{NORMAL, WARNING, container_event, event};
use crate::images::pull::{Credential, PullError, PullPolicy};
use crate::images::{ImageRecord, Reference};
use crate::sandbox::{Shim, ShimError, files, spec, volumes};

/// The longest wait between two looks at a named image cache that is still `Creating`:
/// a cache is ready within minutes, and the group should start soon after.
const CACHE_POLL_MAX: Duration = Duration::from_secs(10);

/// Each container (init first) with the image it runs.
pub(super) type Resolved = Vec<(Container, ImageRecord)>;

/// `<bundle>/exit.json` as the shim writes it.
#[derive(serde::Deserialize)]
struct ExitRecord {
    exit_code: i32,
    oom_killed: bool,
    #[serde(default)]
    vm_oom_killed: bool,
    exited_at: String,
    started_at: String,
}

impl Supervisor {
    /// Runs a group from admission to all containers started.
    pub(crate) async fn run(self: Arc<Self>, ctx: GroupCtx) {
        if let Err(e) = self.run_inner(&ctx).await {
            if let StartError::Network(e) = &e {
                return self.network_failed(&ctx, e).await;
            }
            if let StartError::Mount(_) = &e {
                return self.end_group(&ctx, "FailedMount", e.message()).await;
            }
            let msg = e.message();
            tracing::warn!(group = %ctx.name, error = %msg, "group start failed");
            let name = ctx.name.clone();
            self.mutate(&ctx.name, move |g| {
                let st = g.status.get_or_insert_with(Default::default);
                st.reason = "FailedCreateSandbox".into();
                st.message = msg.clone();
                vec![event(&name, WARNING, "FailedCreateSandbox", msg)]
            })
            .await;
        }
    }

    /// The image of `c`, pulled according to its policy when `allow_pull` (an adopted
    /// group only looks: its images were there when it started). Events say what
    /// happened; the error is `(reason, message)` for the container's `Waiting` state.
    async fn resolve_image(
        &self,
        ctx: &GroupCtx,
        c: &Container,
        creds: &[Credential],
        allow_pull: bool,
    ) -> Result<ImageRecord, (&'static str, String)> {
        let mut policy = PullPolicy::of(&c.image_pull_policy, &c.image);
        if !allow_pull {
            policy = PullPolicy::Never;
        }
        let present = self.groups.images().get(&c.image).ok();
        if let Some(rec) = present.clone()
            && policy != PullPolicy::Always
        {
            let msg = format!("Container image {:?} already present on machine", c.image);
            self.emit(container_event(
                &ctx.name,
                NORMAL,
                "Pulled",
                msg,
                c.name.clone(),
            ))
            .await;
            return Ok(rec);
        }
        if policy == PullPolicy::Never {
            return Err((
                "ErrImageNeverPull",
                format!(
                    "container image {:?} is not present with pull policy of Never",
                    c.image
                ),
            ));
        }
        let msg = format!("Pulling image {:?}", c.image);
        self.emit(container_event(
            &ctx.name,
            NORMAL,
            "Pulling",
            msg,
            c.name.clone(),
        ))
        .await;
        let puller = self.groups.puller().clone();
        match puller.ensure(&c.image, policy, creds, None).await {
            Ok(p) => {
                let msg = format!(
                    "Successfully pulled image {:?} in {:.3}s ({:.1} MB)",
                    c.image,
                    p.elapsed.as_secs_f64(),
                    p.image.size() as f64 / 1e6
                );
                self.emit(container_event(
                    &ctx.name,
                    NORMAL,
                    "Pulled",
                    msg,
                    c.name.clone(),
                ))
                .await;
                Ok(p.image)
            }
            Err(e @ PullError::Reference(_)) => Err(("InvalidImageName", crate::error::chain(&e))),
            Err(e) => Err(("ErrImagePull", crate::error::chain(&e))),
        }
    }

    /// The group's images from the cache its spec names or auto-matches: Ok(None)
    /// when it uses no cache, else the cache's name and the images it pins (no registry
    /// request is made for them).
    fn resolve_from_cache(
        &self,
        ctx: &GroupCtx,
    ) -> Result<Option<(String, Resolved)>, (&'static str, String)> {
        let Some(sel) = ctx.spec.image_cache.as_ref() else {
            return Ok(None);
        };
        if sel.name.is_empty() && !sel.auto_match {
            return Ok(None);
        }
        let containers: Vec<&Container> = ctx
            .spec
            .init_containers
            .iter()
            .chain(&ctx.spec.containers)
            .collect();
        let mut wanted = Vec::new();
        for c in &containers {
            match Reference::parse(&c.image) {
                Ok(r) => wanted.push(r.to_string()),
                // Resolved (and refused) the usual way.
                Err(_) => return Ok(None),
            }
        }
        let store = self.groups.store();
        let caches = store
            .list_caches()
            .map_err(|e| ("ErrImagePull", crate::error::chain(&e)))?;
        let Some(cache) = caches::select(Some(sel), &caches, &wanted)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (c, r) in containers.into_iter().zip(&wanted) {
            let gone = || {
                (
                    "ImageCacheMismatch",
                    format!(
                        "image cache {:?} pins {r}, which is no longer on this node",
                        cache.name
                    ),
                )
            };
            let digest = cache.pinned(r).ok_or_else(gone)?;
            let rec = store
                .get_image(digest)
                .map_err(|e| ("ErrImagePull", crate::error::chain(&e)))?
                .ok_or_else(gone)?;
            out.push((c.clone(), rec));
        }
        Ok(Some((cache.name.clone(), out)))
    }

    /// Writes one event (informational: made durable by the next status write).
    pub(super) async fn emit(&self, e: eci_api::v1::Event) {
        let store = self.groups.store().clone();
        let _ = tokio::task::spawn_blocking(move || store.write_lazy(|tx| tx.event(e))).await;
    }

    /// Puts container `cname` in `Waiting` for `reason`, the group in `Pending`, with an
    /// event `event_reason`.
    async fn image_waiting(
        &self,
        ctx: &GroupCtx,
        cname: &str,
        reason: &'static str,
        event_reason: &'static str,
        msg: String,
    ) {
        let (name, cname) = (ctx.name.clone(), cname.to_string());
        self.mutate(&ctx.name, move |g| {
            if let Some(s) = status_of(g, &cname) {
                transitions::to_waiting(s, reason, &msg);
            }
            let st = g.status.get_or_insert_with(Default::default);
            st.phase = phase::PENDING.into();
            st.reason = reason.into();
            st.message = msg.clone();
            let e = container_event(&name, WARNING, event_reason, msg, cname);
            vec![e]
        })
        .await;
    }

    /// The wait before retry number `n` (from 1): the restart back-off, doubling per
    /// retry up to its maximum.
    fn retry_delay(&self, n: u32) -> Duration {
        self.cfg
            .backoff_initial
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.cfg.backoff_max)
    }

    /// Images of every container and the cache they came from, if any. From a cache
    /// (named or auto-matched) no registry request is made. Otherwise each image is
    /// pulled as its policy says: a failed pull leaves the container `Waiting`
    /// (`ErrImagePull`, then `ImagePullBackOff` while it backs off) and is retried until
    /// it succeeds or the group is deleted (which stops this task); a refusal no retry
    /// can fix (`Never`, a bad name, a cache that is absent, `Failed` or lacks an image)
    /// returns `None`; a named cache still `Creating` is waited for. Without
    /// `allow_pull` (adopting a running group) only what is present is used, and a cache
    /// that is gone or changed is no reason to stop following the group.
    async fn resolve_images(
        &self,
        ctx: &GroupCtx,
        allow_pull: bool,
    ) -> Option<(Resolved, Option<String>)> {
        let first = ctx
            .spec
            .init_containers
            .iter()
            .chain(&ctx.spec.containers)
            .next()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let mut waits = 0u32;
        loop {
            match self.resolve_from_cache(ctx) {
                Ok(Some((cache, images))) => return Some((images, Some(cache))),
                Ok(None) => break,
                Err(_) if !allow_pull => break,
                // The named cache is still being created: wait for it like a pull that
                // backs off (it ends Ready, or Failed, which is the refusal below).
                Err((reason, msg)) if reason == caches::NOT_READY => {
                    waits += 1;
                    let delay = self.retry_delay(waits).min(CACHE_POLL_MAX);
                    let msg = format!("{msg}; waiting for it, next look in {delay:?}");
                    self.image_waiting(ctx, &first, reason, "BackOff", msg)
                        .await;
                    tokio::time::sleep(delay).await;
                }
                Err((reason, msg)) => {
                    self.image_waiting(ctx, &first, reason, "Failed", msg).await;
                    return None;
                }
            }
        }
        let creds: Vec<Credential> = ctx
            .spec
            .image_registry_credentials
            .iter()
            .map(Credential::from)
            .collect();
        let mut out = Vec::new();
        for c in ctx.spec.init_containers.iter().chain(&ctx.spec.containers) {
            let mut failures = 0u32;
            loop {
                match self.resolve_image(ctx, c, &creds, allow_pull).await {
                    Ok(rec) => {
                        out.push((c.clone(), rec));
                        break;
                    }
                    Err((reason, msg)) => {
                        self.image_waiting(ctx, &c.name, reason, "Failed", msg.clone())
                            .await;
                        if reason != "ErrImagePull" || !allow_pull {
                            return None;
                        }
                        failures += 1;
                        let delay = self.retry_delay(failures);
                        let back = format!("Back-off pulling image {:?}: {msg}", c.image);
                        self.image_waiting(ctx, &c.name, "ImagePullBackOff", "BackOff", back)
                            .await;
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        Some((out, None))
    }

    async fn run_inner(self: &Arc<Self>, ctx: &GroupCtx) -> Result<(), StartError> {
        let valid = stored_spec(ctx).map_err(StartError::Spec)?;
        let Some((images, cache)) = self.resolve_images(ctx, true).await else {
            return Ok(());
        };
        // One transaction for all containers' events.
        let mut pulled: Vec<_> = cache
            .iter()
            .map(|name| {
                event(
                    &ctx.name,
                    NORMAL,
                    "ImageCacheHit",
                    format!("hit image cache {name}"),
                )
            })
            .collect();
        // From a cache nothing was looked up one by one (the puller says what it did).
        if cache.is_some() {
            pulled.extend(images.iter().map(|(c, _)| {
                let msg = format!("Container image {:?} already present on machine", c.image);
                container_event(&ctx.name, NORMAL, "Pulled", msg, c.name.clone())
            }));
        }
        // When each image was last used, for garbage collection (least recently used
        // goes first), and which image each container runs (`imageId`), which keeps that
        // image from garbage collection even if its reference moves to another image.
        let used: Vec<_> = images
            .iter()
            .map(|(c, i)| (c.name.clone(), i.digest.clone()))
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (store, name) = (self.groups.store().clone(), ctx.name.clone());
        // Made durable by the next status write; a crash before it starts the group
        // again, which writes them again.
        let _ = tokio::task::spawn_blocking(move || {
            store.write_lazy(|tx| {
                for (_, d) in &used {
                    tx.touch_image(d, now)?;
                }
                if let Some(mut g) = tx.get_group(&name)?
                    && g.status
                        .as_ref()
                        .is_some_and(|s| s.phase != phase::TERMINATING)
                {
                    let st = g.status.get_or_insert_with(Default::default);
                    for s in st
                        .init_container_statuses
                        .iter_mut()
                        .chain(st.container_statuses.iter_mut())
                    {
                        if let Some((_, d)) = used.iter().find(|(c, _)| *c == s.name) {
                            s.image_id = d.to_string();
                        }
                    }
                    tx.update_group(&mut g)?;
                }
                pulled.into_iter().try_for_each(|e| tx.event(e))
            })
        })
        .await;
        // File and directory work, off the async workers.
        let (c2, writable) = (ctx.clone(), self.writable_dir(&ctx.id));
        let userns = self.userns_of(ctx);
        let owner = userns.map(|r| r.base);
        let ips = self.planned_addresses(ctx);
        let shm_bytes = valid.shm_bytes;
        tokio::task::spawn_blocking(move || -> Result<(), StartError> {
            files::write(&c2.dir.etc(), &c2.spec, owner, &ips).map_err(|source| {
                StartError::Io {
                    step: "writing",
                    path: c2.dir.etc(),
                    source,
                }
            })?;
            volumes::prepare_shm(c2.dir.root(), shm_bytes, owner)?;
            Ok(volumes::prepare(&c2.spec, c2.dir.root(), &writable, owner)?)
        })
        .await
        .map_err(|e| StartError::Join("preparing the group's files", e))??;
        let shim = match Shim::connect(&ctx.dir.shim_socket()).await {
            Ok(s) => s,
            // There, but silent: never start a second shim for the group; wait for it.
            Err(ShimError::Unresponsive { .. }) => self.shim_answering(ctx).await,
            Err(_) => {
                let vm_config = if ctx.spec.sandbox == "vm" {
                    Some(self.prepare_vm(ctx, &images, valid.normalized).await?)
                } else {
                    None
                };
                let shim = Shim::launch(
                    &self.cfg.shim,
                    &ctx.id,
                    &ctx.spec.name,
                    valid.normalized.cpu_millis,
                    valid.normalized.memory_bytes,
                    owner,
                    vm_config.as_deref(),
                )
                .await?;
                if vm_config.is_some() {
                    crate::failpoint::hit("vm-shim-launched");
                }
                shim
            }
        };
        if ctx.spec.sandbox == "vm" {
            self.check_vm_layers(ctx, &images).await?;
        }
        // The network before any container: an init container may need it.
        self.setup_network(ctx).await?;
        self.observe_addresses(ctx).await;
        // Disk and nfs volumes: the user and network namespaces exist now.
        self.mount_volumes(ctx).await?;
        let shm = valid.shm_bytes;
        // Init containers: one at a time, each to success; the app containers wait in
        // PodInitializing meanwhile (as kubelet shows them).
        let n_init = ctx.spec.init_containers.len();
        if n_init > 0 {
            self.app_waiting(ctx, "PodInitializing", "").await;
        }
        for (c, image) in images.iter().take(n_init) {
            let mut restarts = 0;
            loop {
                let ended = match self
                    .start_container(ctx, &shim, c, image, restarts, shm)
                    .await
                {
                    Ok(_) => self.wait_container(ctx, &shim, c).await,
                    Err(e) => Ended {
                        code: 128,
                        message: e.message(),
                        ..Default::default()
                    },
                };
                self.record_exit(ctx, c, &ended).await;
                let _ = shim.delete(&c.name, "").await;
                if ended.code == 0 {
                    break;
                }
                if !wants_restart(&ctx.spec.restart_policy, ended.code) {
                    self.finish_group(ctx, &shim, false).await;
                    return Ok(());
                }
                restarts += 1;
                self.backoff(ctx, c, restarts, true).await;
            }
        }
        if n_init > 0 {
            self.app_waiting(ctx, "ContainerCreating", "").await;
        }
        // App containers: in parallel, each followed by its own task. A container that ran
        // before (group restart, update, lost sandbox) continues its restart count, so
        // each run keeps its own log file.
        let prior = self
            .groups
            .get(&ctx.name)
            .ok()
            .and_then(|g| g.status)
            .unwrap_or_default();
        for (c, image) in images.into_iter().skip(n_init) {
            let base = prior
                .container_statuses
                .iter()
                .find(|s| s.name == c.name && !s.started_at.is_empty())
                .map_or(0, |s| s.restart_count + 1);
            let me = self.clone();
            let (ctx2, shim2) = (ctx.clone(), shim.clone());
            let task = tokio::spawn(async move {
                me.container_loop(ctx2, shim2, c, image, base, false, shm)
                    .await
            });
            self.track(&ctx.name, task);
        }
        self.spawn_monitor(ctx);
        Ok(())
    }

    /// Re-attaches to a running group after an agent restart.
    pub(crate) async fn adopt(self: Arc<Self>, ctx: GroupCtx, shim: Shim, group: ContainerGroup) {
        let valid = match stored_spec(&ctx) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(group = %ctx.name, error = %e, "stored spec does not read back");
                return;
            }
        };
        let statuses = group.status.clone().unwrap_or_default().container_statuses;
        let started = statuses.iter().any(|s| !s.started_at.is_empty());
        if !started {
            // The agent stopped before any app container ran: start over on this shim.
            return self.run(ctx).await;
        }
        // A dev port's guard is put back if something removed it while the agent was
        // away (a host firewall reload flushes every table).
        if let Err(e) = self.reguard_network(&ctx).await {
            tracing::warn!(group = %ctx.name, error = %crate::error::chain(&e), "re-applying the dev port guard");
        }
        // An in-place rules update the agent stopped in the middle of is finished.
        if let Err(e) = self.apply_rules(&ctx).await {
            tracing::warn!(group = %ctx.name, error = %crate::error::chain(&e), "re-applying security-group rules");
        }
        let Some((images, _)) = self.resolve_images(&ctx, false).await else {
            return;
        };
        for (c, image) in images.into_iter().skip(ctx.spec.init_containers.len()) {
            let st = statuses
                .iter()
                .find(|s| s.name == c.name)
                .cloned()
                .unwrap_or_default();
            let known = shim.state(&c.name).await.is_ok();
            if st.state == transitions::TERMINATED
                && !wants_restart(&ctx.spec.restart_policy, st.exit_code)
            {
                continue;
            }
            let me = self.clone();
            let (ctx2, shim2) = (ctx.clone(), shim.clone());
            let restarts = st.restart_count;
            let attach = known && st.state == transitions::RUNNING;
            let shm = valid.shm_bytes;
            let task = tokio::spawn(async move {
                me.container_loop(ctx2, shim2, c, image, restarts, attach, shm)
                    .await
            });
            self.track(&ctx.name, task);
        }
        self.spawn_monitor(&ctx);
        // Exits that happened while the agent was away may have finished the group.
        self.check_group_done(&ctx, &shim).await;
    }

    /// Starts (or, with `attach`, follows an already running) app container, and
    /// applies the restart policy to each exit. Restarts back off from the configured
    /// first delay, doubling to the longest; a run that lasted twice the longest delay
    /// (10 minutes by default, as kubelet) starts the back-off over.
    #[allow(clippy::too_many_arguments)]
    async fn container_loop(
        self: Arc<Self>,
        ctx: GroupCtx,
        shim: Shim,
        c: Container,
        image: ImageRecord,
        mut restarts: u32,
        mut attach: bool,
        shm: u64,
    ) {
        let mut backoffs = restarts;
        loop {
            let run_start = tokio::time::Instant::now();
            let ended = if attach {
                attach = false;
                // Probes resume with fresh counts: the agent's absence is no failure.
                let _probes = self.spawn_probes(&ctx, &shim, &c, run_start);
                self.wait_container(&ctx, &shim, &c).await
            } else {
                match self
                    .start_container(&ctx, &shim, &c, &image, restarts, shm)
                    .await
                {
                    Ok(_) => {
                        let _probes = self.spawn_probes(&ctx, &shim, &c, run_start);
                        self.wait_container(&ctx, &shim, &c).await
                    }
                    Err(e) => {
                        let msg = e.message();
                        // Recorded on the container too; logged so that a container
                        // that never starts is visible in the agent's log.
                        tracing::warn!(group = %ctx.name, container = %c.name, error = %msg, "container start failed");
                        if wants_restart(&ctx.spec.restart_policy, 128)
                            && self.shim_alive(&ctx).await
                        {
                            // Never ran: it waits with the cause, and creation is tried
                            // again after a back-off (kubelet's CreateContainerError).
                            self.create_failed(&ctx, &c, &msg).await;
                            backoffs += 1;
                            self.backoff(&ctx, &c, backoffs, false).await;
                            let _ = shim.delete(&c.name, "").await;
                            continue;
                        }
                        Ended {
                            code: 128,
                            message: msg,
                            finished_at: clock::now(),
                            ..Default::default()
                        }
                    }
                }
            };
            if !ended.message.is_empty() && !self.shim_alive(&ctx).await {
                // Not the container: its shim is gone. Recover the group elsewhere (this
                // task is among those stopped there).
                tracing::warn!(group = %ctx.name, "the group's shim died");
                let me = self.clone();
                let ctx2 = ctx.clone();
                tokio::spawn(async move { me.sandbox_lost(&ctx2).await });
                return;
            }
            self.record_exit(&ctx, &c, &ended).await;
            if !wants_restart(&ctx.spec.restart_policy, ended.code) {
                self.check_group_done(&ctx, &shim).await;
                return;
            }
            restarts += 1;
            if run_start.elapsed() >= self.cfg.backoff_max.saturating_mul(2) {
                backoffs = 0;
            }
            backoffs += 1;
            self.backoff(&ctx, &c, backoffs, true).await;
            let _ = shim.delete(&c.name, "").await;
        }
    }

    /// Waits before the `n`th start of a container (doubling from the first delay up to
    /// the longest), with a `BackOff` event. After an exit (`crashed`) the container
    /// waits in `CrashLoopBackOff` with its last run as `lastState`; otherwise it keeps
    /// the reason it waits for (say, `CreateContainerError`).
    async fn backoff(&self, ctx: &GroupCtx, c: &Container, n: u32, crashed: bool) {
        let delay = self
            .cfg
            .backoff_initial
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.cfg.backoff_max);
        let (name, cname) = (ctx.name.clone(), c.name.clone());
        let shown = humantime::format_duration(delay).to_string();
        let msg = format!("Back-off {shown} restarting failed container {cname}");
        self.mutate(&ctx.name, move |g| {
            if crashed && let Some(s) = status_of(g, &cname) {
                transitions::to_crash_loop(s, &shown);
            }
            let st = g.status.get_or_insert_with(Default::default);
            if st.phase == phase::RUNNING {
                st.phase = phase::RESTARTING.into();
            }
            let e = container_event(&name, WARNING, "BackOff", msg, cname);
            vec![e]
        })
        .await;
        tokio::time::sleep(delay).await;
    }

    /// A container that could not be created waits with the cause
    /// (`CreateContainerError`), with a `Failed` event.
    async fn create_failed(&self, ctx: &GroupCtx, c: &Container, msg: &str) {
        let (name, cname, msg) = (ctx.name.clone(), c.name.clone(), msg.to_string());
        self.mutate(&ctx.name, move |g| {
            if let Some(s) = status_of(g, &cname) {
                transitions::to_waiting(s, "CreateContainerError", &msg);
                s.ready = false;
            }
            vec![container_event(
                &name,
                WARNING,
                "Failed",
                format!("Error: {msg}"),
                cname,
            )]
        })
        .await;
    }

    /// Every app container still Waiting waits for `reason` now.
    async fn app_waiting(&self, ctx: &GroupCtx, reason: &'static str, message: &'static str) {
        self.mutate(&ctx.name, move |g| {
            let st = g.status.get_or_insert_with(Default::default);
            for s in &mut st.container_statuses {
                if s.state == transitions::WAITING {
                    transitions::to_waiting(s, reason, message);
                }
            }
            Vec::new()
        })
        .await;
    }

    /// The group's user namespace range, as its record says: a group keeps the mode it
    /// was admitted with until it is deleted, whatever the agent's config says later.
    pub(super) fn userns_of(&self, ctx: &GroupCtx) -> Option<eci_runtime::userns::IdRange> {
        let u = self.groups.get(&ctx.name).ok()?.status?.user_namespace?;
        Some(eci_runtime::userns::IdRange {
            base: u.host_id_base,
            len: u.size,
        })
    }

    /// Creates and starts one container; records Created/Started.
    async fn start_container(
        &self,
        ctx: &GroupCtx,
        shim: &Shim,
        c: &Container,
        image: &ImageRecord,
        restarts: u32,
        shm: u64,
    ) -> Result<u32, StartError> {
        // Create = ensure. After an agent crash between the shim's Start and the record
        // of it, the shim already runs this container: adopt it, never start a copy
        // (and never touch the writable layer it runs on).
        if let Ok((pid, true)) = shim.state(&c.name).await {
            tracing::info!(group = %ctx.name, container = %c.name, pid, "adopting a running container");
            self.record_started(ctx, c, restarts).await;
            return Ok(pid);
        }
        let bundle = ctx.dir.bundle(&c.name);
        // A fresh writable layer per run, as Kubernetes gives a restarted container.
        let rw = self
            .cfg
            .state_dir
            .join("groups")
            .join(&ctx.id)
            .join(&c.name);
        let (upper, work) = (rw.join("upper"), rw.join("work"));
        let job = BundleJob {
            ctx: ctx.clone(),
            container: c.clone(),
            defaults: image.defaults.clone(),
            bundle: bundle.clone(),
            rw,
            volumes: volumes::paths(&ctx.spec, ctx.dir.root(), &self.writable_dir(&ctx.id)),
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            shm,
            oom_score_adj: self.cfg.oom_score_adj,
            userns: self.userns_of(ctx),
        };
        // Directory and file work (a writable layer can be large): off the async workers.
        tokio::task::spawn_blocking(move || job.write())
            .await
            .map_err(|e| StartError::Join("writing the bundle", e))??;
        // Only directories the image store recorded as unpacked and verified (it
        // unpacks again any that are not, which can take a while: off the runtime).
        let (groups, record) = (self.groups.clone(), image.clone());
        let lower: Vec<String> =
            tokio::task::spawn_blocking(move || groups.images().lower_dirs(&record))
                .await
                .map_err(|e| StartError::Join("preparing the image layers", e))?
                .map_err(StartError::Layers)?
                .iter()
                .rev()
                .map(|d| d.display().to_string())
                .collect();
        let rootfs = api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", lower.join(":")),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
            ],
            ..Default::default()
        };
        let log = self.log_file(&ctx.id, &c.name, restarts);
        let _ = shim.delete(&c.name, "").await;
        shim.create(&c.name, &bundle, rootfs, &log, c.stdin, c.tty)
            .await?;
        let pid = shim.start(&c.name, "").await?;
        // (A vm group's first Create booted its VM: QEMU runs, nothing is recorded yet.)
        if ctx.spec.sandbox == "vm" {
            crate::failpoint::hit("vm-container-started");
        }
        // Not Running (nor ready) until its postStart hook has returned.
        if let Err(output) = self.post_start(ctx, c).await {
            tracing::warn!(group = %ctx.name, container = %c.name, %output, "postStart hook failed");
            let msg = format!("PostStartHook failed: {output}");
            self.emit(container_event(
                &ctx.name,
                WARNING,
                "FailedPostStartHook",
                msg,
                c.name.clone(),
            ))
            .await;
            self.kill_container(ctx, shim, c, super::probes::grace_of(ctx))
                .await;
            return Ok(pid);
        }
        self.record_started(ctx, c, restarts).await;
        tracing::info!(group = %ctx.name, container = %c.name, pid, "container started");
        Ok(pid)
    }

    /// Records a container as Running (status, phase, Created/Started events).
    async fn record_started(&self, ctx: &GroupCtx, c: &Container, restarts: u32) {
        let (gname, cname, id) = (ctx.name.clone(), c.name.clone(), ctx.id.clone());
        // Ready at once without probes; with a startup probe only once it passes.
        let ready_without_probe = c.readiness_probe.is_none() && c.startup_probe.is_none();
        let probed = super::probes::has_probes(c);
        self.mutate(&ctx.name, move |g| {
            let now = clock::now();
            if let Some(s) = status_of(g, &cname) {
                let cid = format!("{id}/{cname}");
                transitions::to_running(s, &now, restarts, ready_without_probe, cid);
                s.health = if probed { "checking" } else { "" }.into();
            }
            transitions::group_health(g.status.get_or_insert_with(Default::default));
            transitions::maybe_running(g.status.get_or_insert_with(Default::default), &now);
            let created = container_event(
                &gname,
                NORMAL,
                "Created",
                format!("Created container {cname}"),
                cname.clone(),
            );
            let started = container_event(
                &gname,
                NORMAL,
                "Started",
                format!("Started container {cname}"),
                cname,
            );
            vec![created, started]
        })
        .await;
    }

    /// `<log_dir>/groups/<id>/<container>/<restart>.log`
    pub fn log_file(&self, group_id: &str, container: &str, restarts: u32) -> PathBuf {
        self.cfg
            .log_dir
            .join("groups")
            .join(group_id)
            .join(container)
            .join(format!("{restarts}.log"))
    }

    /// Waits for a container to exit and reads how (the shim's exit record).
    async fn wait_container(&self, ctx: &GroupCtx, shim: &Shim, c: &Container) -> Ended {
        let code = loop {
            match shim.wait(&c.name, "").await {
                Ok(e) => break e.code as i32,
                // A stopped shim: its container may well be running. The group monitor
                // shows the condition; this task keeps waiting for the shim to answer
                // (a delete stops it). A dead shim fails differently (the connection
                // closes), and that goes on to recovery below.
                Err(crate::sandbox::ShimError::Unresponsive { .. }) => {
                    tokio::time::sleep(super::monitor::PERIOD).await;
                }
                Err(e) => {
                    return Ended {
                        code: 255,
                        message: e.message(),
                        finished_at: clock::now(),
                        ..Default::default()
                    };
                }
            }
        };
        let rec = std::fs::read(ctx.dir.bundle(&c.name).join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<ExitRecord>(&b).ok());
        match rec {
            Some(r) => Ended {
                code: r.exit_code,
                oom: r.oom_killed,
                vm_oom: r.vm_oom_killed,
                started_at: r.started_at,
                finished_at: r.exited_at,
                message: String::new(),
            },
            None => Ended {
                code,
                finished_at: clock::now(),
                ..Default::default()
            },
        }
    }

    async fn record_exit(&self, ctx: &GroupCtx, c: &Container, ended: &Ended) {
        let (name, cname, ended) = (ctx.name.clone(), c.name.clone(), ended.clone());
        self.mutate(&ctx.name, move |g| {
            if let Some(s) = status_of(g, &cname) {
                transitions::to_terminated(s, &ended);
            }
            transitions::group_health(g.status.get_or_insert_with(Default::default));
            let mut events = Vec::new();
            if ended.oom {
                let e = container_event(
                    &name,
                    WARNING,
                    "OOMKilling",
                    format!("Memory limit reached: container {cname} was OOM-killed"),
                    cname.clone(),
                );
                events.push(e);
            }
            if !ended.message.is_empty() {
                let e = container_event(
                    &name,
                    WARNING,
                    "Failed",
                    ended.message.clone(),
                    cname.clone(),
                );
                events.push(e);
            }
            events
        })
        .await;
    }

    /// Ends the group when no app container runs or will restart.
    async fn check_group_done(&self, ctx: &GroupCtx, shim: &Shim) {
        let Ok(g) = self.groups.get(&ctx.name) else {
            return;
        };
        let st = g.status.unwrap_or_default();
        if phase::is_final(&st.phase) {
            return;
        }
        if let Some(ok) = transitions::group_outcome(&st, &ctx.spec.restart_policy) {
            self.finish_group(ctx, shim, ok).await;
        }
    }

    /// Marks the group Succeeded or Failed and releases its sandbox (logs stay).
    async fn finish_group(&self, ctx: &GroupCtx, shim: &Shim, ok: bool) {
        let name = ctx.name.clone();
        let done = self
            .mutate(&ctx.name, move |g| {
                let st = g.status.get_or_insert_with(Default::default);
                st.phase = if ok { phase::SUCCEEDED } else { phase::FAILED }.into();
                st.reason = if ok { "Completed" } else { "Error" }.into();
                st.message = if ok {
                    "all containers exited with 0"
                } else {
                    "a container failed"
                }
                .into();
                st.finished_at = clock::now();
                vec![event(
                    &name,
                    if ok { NORMAL } else { WARNING },
                    if ok { "Completed" } else { "Failed" },
                    st.message.clone(),
                )]
            })
            .await;
        if done.is_some() {
            for c in ctx.spec.init_containers.iter().chain(&ctx.spec.containers) {
                let _ = shim.delete(&c.name, "").await;
            }
            // The ENI leaves the netns before the shim's shutdown releases it.
            self.release_network(ctx).await;
            let _ = shim.shutdown().await;
            self.remove_dirs(ctx).await;
        }
    }

    /// Removes a group's run directory and writable layers (on the blocking pool: a
    /// writable layer can hold many files).
    pub(crate) async fn remove_dirs(&self, ctx: &GroupCtx) {
        let run = ctx.dir.root().to_path_buf();
        let state = self.cfg.state_dir.join("groups").join(&ctx.id);
        let _ = tokio::task::spawn_blocking(move || {
            volumes::unmount_all(&run);
            for d in [run, state] {
                remove_tree(&d);
            }
        })
        .await;
    }
}

/// Shortest wait between checks of a shim that is going away.
pub(crate) const SHIM_POLL: Duration = Duration::from_millis(20);

/// The checked form of a group's stored spec. Rules added since it was admitted are
/// logged, not enforced: a running group survives an agent upgrade.
fn stored_spec(
    ctx: &GroupCtx,
) -> Result<crate::validate::ValidSpec, crate::validate::ValidationErrors> {
    let (valid, newer_rules) = crate::validate::stored(&ctx.spec)?;
    if !newer_rules.is_empty() {
        tracing::warn!(
            group = %ctx.name,
            problems = %crate::validate::ValidationErrors(newer_rules),
            "stored spec breaks rules added since it was admitted; running it as admitted"
        );
    }
    Ok(valid)
}

impl Supervisor {
    /// Records the addresses the group's network namespace really holds: the status
    /// reports what the kernel has, never what the spec asked for.
    async fn observe_addresses(&self, ctx: &GroupCtx) {
        let netns = ctx.dir.namespaces().join("net");
        let seen = tokio::task::spawn_blocking(move || eci_netns::observe::addresses(&netns))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| crate::error::chain(&e)));
        let addresses: Vec<String> = match seen {
            // Link-local IPv6 addresses are the link's, not the group's.
            Ok(list) => list
                .into_iter()
                .filter(|a| !matches!(a.address, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()))
                .map(|a| a.address.to_string())
                .collect(),
            Err(e) => {
                tracing::warn!(group = %ctx.name, error = %e, "reading the group's addresses");
                return;
            }
        };
        self.mutate(&ctx.name, move |g| {
            if let Some(st) = g.status.as_mut() {
                st.ip_addresses = addresses.clone();
            }
            Vec::new()
        })
        .await;
    }
}

/// What one container's bundle is written from, owned so the work can run on the
/// blocking pool.
struct BundleJob {
    ctx: GroupCtx,
    container: Container,
    defaults: crate::images::ImageDefaults,
    bundle: PathBuf,
    rw: PathBuf,
    volumes: std::collections::HashMap<String, PathBuf>,
    cgroup_parent: String,
    shm: u64,
    oom_score_adj: i32,
    userns: Option<eci_runtime::userns::IdRange>,
}

impl BundleJob {
    /// A fresh writable layer and `config.json`.
    fn write(self) -> Result<(), StartError> {
        let bundle = &self.bundle;
        let _ = std::fs::remove_dir_all(&self.rw);
        for d in [bundle.clone(), self.rw.join("upper"), self.rw.join("work")] {
            std::fs::create_dir_all(&d).map_err(|source| StartError::Io {
                step: "creating",
                path: d,
                source,
            })?;
        }
        // The writable layer belongs to the range's root: the overlay's root directory
        // takes the upper directory's owner, and new files land with mapped ids.
        if let Some(r) = self.userns {
            for d in [self.rw.join("upper"), self.rw.join("work")] {
                std::os::unix::fs::lchown(&d, Some(r.base), Some(r.base)).map_err(|source| {
                    StartError::Io {
                        step: "giving the writable layer to the group's user namespace",
                        path: d,
                        source,
                    }
                })?;
            }
        }
        let process = crate::images::process::merge(&self.defaults, &self.container)?;
        let etc = self.ctx.dir.etc();
        let shm = volumes::shm_dir(self.ctx.dir.root());
        let config = spec::build(&spec::SpecInputs {
            group_id: &self.ctx.id,
            cgroup_parent: &self.cgroup_parent,
            group: &self.ctx.spec,
            container: &self.container,
            process: &process,
            shm_bytes: self.shm,
            // A group an older agent started has none: each container gets its own.
            shm_dir: Some(shm.as_path()).filter(|d| volumes::is_mounted(d)),
            etc_dir: &etc,
            volumes: &self.volumes,
            oom_score_adj: self.oom_score_adj,
            userns: self.userns,
        })?;
        let json = serde_json::to_vec_pretty(&config).map_err(StartError::Encode)?;
        let path = bundle.join("config.json");
        std::fs::write(&path, json).map_err(|source| StartError::Io {
            step: "writing",
            path,
            source,
        })
    }
}

/// Removes a directory tree; a missing one is fine, any other failure is logged.
pub(crate) fn remove_tree(d: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(d)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %d.display(), error = %e, "removing a group directory");
    }
}
