//! Stopping a group: SIGTERM, the grace period, SIGKILL, then everything the sandbox
//! held on the host (cgroups, pinned namespaces, directories) is removed.

use std::sync::Arc;
use std::time::Duration;

use super::containers::SHIM_POLL;
use super::{GroupCtx, Supervisor};
use crate::groups::{NORMAL, event};
use crate::sandbox::Shim;

impl Supervisor {
    /// SIGTERM to every running container, up to `grace` for them to exit, SIGKILL to
    /// what is left (and everything in their cgroups), then the shim forgets them.
    ///
    /// Every container this sandbox ran, not only those of the current spec: after an
    /// Update that drops or renames a container, the old one still runs in the shim
    /// (its bundle directory says so) and must stop too, or it would run on, unseen by
    /// the group's status, next to the containers of the new spec.
    ///
    /// Containers with a preStop hook run it first (all at once), inside the grace
    /// period, which counts from here: the hooks' time is taken from it.
    pub(crate) async fn stop_containers(&self, ctx: &GroupCtx, shim: &Shim, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let mut names = ctx.container_names();
        let bundles = ctx.dir.root().join("containers");
        if let Ok(mut dir) = tokio::fs::read_dir(&bundles).await {
            while let Ok(Some(e)) = dir.next_entry().await {
                if let Some(n) = e.file_name().to_str()
                    && !names.iter().any(|m| m == n)
                {
                    names.push(n.to_string());
                }
            }
        }
        let mut running = Vec::new();
        for n in &names {
            if let Ok((_, true)) = shim.state(n).await {
                running.push(n.clone());
            }
        }
        // (A forced delete, grace 0, skips them.)
        let hooks = ctx
            .spec
            .containers
            .iter()
            .filter(|c| !grace.is_zero() && running.contains(&c.name))
            .map(|c| self.pre_stop(ctx, c, deadline));
        let _ = tokio::time::timeout_at(deadline, futures::future::join_all(hooks)).await;
        for n in std::mem::take(&mut running) {
            if let Ok((_, true)) = shim.state(&n).await {
                let _ = shim
                    .kill(&n, nix::sys::signal::Signal::SIGTERM as i32, false)
                    .await;
                running.push(n);
            }
        }
        if !running.is_empty() {
            let e = event(
                &ctx.name,
                NORMAL,
                "Killing",
                format!("Stopping container {}", running.join(", ")),
            );
            let store = self.groups.store().clone();
            // Written directly: the group may be Terminating, which `mutate` refuses.
            let _ = tokio::task::spawn_blocking(move || store.write(|tx| tx.event(e))).await;
        }
        let waits = running.iter().map(|n| shim.wait(n, ""));
        if tokio::time::timeout_at(deadline, futures::future::join_all(waits))
            .await
            .is_err()
        {
            tracing::info!(group = %ctx.name, "grace period over: SIGKILL");
        }
        for n in &running {
            let _ = shim
                .kill(n, nix::sys::signal::Signal::SIGKILL as i32, true)
                .await;
        }
        let waits = running.iter().map(|n| shim.wait(n, ""));
        let _ =
            tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(waits)).await;
        for n in &names {
            let _ = shim.delete(n, "").await;
        }
    }

    pub(crate) async fn teardown(self: &Arc<Self>, ctx: &GroupCtx, grace: Duration) {
        // Without a shim that answers, what it held is removed below.
        if let Ok(shim) = Shim::connect(&ctx.dir.shim_socket()).await {
            self.stop_containers(ctx, &shim, grace).await;
            crate::failpoint::hit("teardown-containers-stopped");
            // The ENI leaves the netns before the shim's shutdown releases it.
            self.release_network(ctx).await;
            if let Err(e) = shim.shutdown().await {
                tracing::warn!(group = %ctx.name, error = %e.message(), "shim shutdown");
            }
            crate::failpoint::hit("teardown-shim-shut-down");
            // The shim removes its socket last.
            for _ in 0..250 {
                if !ctx.dir.shim_socket().exists() {
                    break;
                }
                tokio::time::sleep(SHIM_POLL).await;
            }
        }
        // Whatever is left — a shim that did not answer or whose launch a crash cut
        // short, processes, cgroups, namespaces, directories — goes, found on the host.
        let me = self.clone();
        let id = ctx.id.clone();
        let _ = tokio::task::spawn_blocking(move || me.remove_leftovers(&id)).await;
    }
}
