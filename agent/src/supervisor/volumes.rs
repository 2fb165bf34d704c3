//! The supervisor's side of disk and NFS volumes and of local storage limits: volumes
//! mounted once the sandbox exists (a group whose volume cannot be mounted fails with
//! `FailedMount`), and groups over `ephemeralStorage` or a disk emptyDir's `sizeLimit`
//! evicted (`Evicted`), as kubelet does. See docs/volumes.md.

use std::sync::Arc;
use std::time::Duration;

use eci_api::phase;

use super::start_error::StartError;
use super::transitions::{self, Ended};
use super::{GroupCtx, Supervisor};
use crate::groups::{WARNING, event};
use crate::sandbox::{external, usage};

impl Supervisor {
    /// Mounts the group's disk and nfs volumes (kept when already mounted). A vm
    /// group's disks are attached to its VM instead (`prepare_vm`), and it has no nfs.
    pub(crate) async fn mount_volumes(&self, ctx: &GroupCtx) -> Result<(), StartError> {
        if ctx.spec.sandbox == "vm"
            || !ctx
                .spec
                .volumes
                .iter()
                .any(|v| v.disk.is_some() || v.nfs.is_some())
        {
            return Ok(());
        }
        let userns = self
            .userns_of(ctx)
            .map(|_| ctx.dir.namespaces().join("user"));
        let netns = crate::network::netns_path(&ctx.dir);
        let (spec, root, policy) = (
            ctx.spec.clone(),
            ctx.dir.root().to_path_buf(),
            self.cfg.disks.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let sandbox = external::Sandbox {
                userns: userns.as_deref(),
                netns: &netns,
            };
            external::mount_all(&spec, &root, &sandbox, &policy)
        })
        .await
        .map_err(|e| StartError::Join("mounting the group's volumes", e))?
        .map_err(StartError::Mount)
    }

    /// Ends a group for good: every running container is recorded as killed, the
    /// group is Failed with `reason`, and its sandbox goes at once (no grace period:
    /// kubelet evicts for local storage the same way). Nothing happens to a group
    /// being deleted.
    pub(crate) async fn end_group(
        self: &Arc<Self>,
        ctx: &GroupCtx,
        reason: &'static str,
        message: String,
    ) {
        let name = ctx.name.clone();
        let ended = self
            .mutate(&ctx.name, move |g| {
                let st = g.status.get_or_insert_with(Default::default);
                let now = crate::clock::now();
                let killed = Ended {
                    code: 137,
                    message: message.clone(),
                    finished_at: now.clone(),
                    ..Default::default()
                };
                for c in st
                    .container_statuses
                    .iter_mut()
                    .chain(st.init_container_statuses.iter_mut())
                {
                    if c.state == transitions::RUNNING {
                        transitions::to_terminated(c, &killed);
                    }
                }
                st.phase = phase::FAILED.into();
                st.reason = reason.into();
                st.message = message.clone();
                st.finished_at = now;
                vec![event(&name, WARNING, reason, message)]
            })
            .await;
        if ended.is_some() {
            self.teardown(ctx, Duration::ZERO).await;
        }
    }

    /// Measures every group that runs (or starts) against its storage limits and
    /// evicts those over one. Called every `volumes.storage_check_interval`.
    pub async fn check_storage(self: &Arc<Self>) {
        let store = self.groups.store().clone();
        let Ok(Ok((groups, _))) = tokio::task::spawn_blocking(move || store.list_groups()).await
        else {
            return;
        };
        for g in groups {
            let p = g
                .status
                .as_ref()
                .map(|s| s.phase.as_str())
                .unwrap_or_default();
            if phase::is_final(p) || p == phase::TERMINATING {
                continue;
            }
            // A vm group's writable layers and emptyDirs live on its guest's own
            // tmpfs, bounded by the VM's memory: the host directories hold none of it.
            if g.spec.as_ref().is_some_and(|s| s.sandbox == "vm") {
                continue;
            }
            let ctx = self.ctx(&g);
            let (spec, dir) = (ctx.spec.clone(), self.writable_dir(&ctx.id));
            let Ok(Some(why)) =
                tokio::task::spawn_blocking(move || usage::over_limit(&spec, &dir)).await
            else {
                continue;
            };
            tracing::warn!(group = %ctx.name, reason = %why, "evicting the group");
            // Its own tasks must not restart what the eviction stops.
            self.stop_tasks(&ctx.name);
            self.end_group(&ctx, "Evicted", why).await;
        }
    }
}
