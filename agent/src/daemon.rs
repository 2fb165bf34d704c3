//! The agent's main loop: load state, reconcile, serve, stop cleanly on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::caches::{ImageCaches, PulledImages};
use crate::config::Config;
use crate::groups::Groups;
use crate::health::{self, Health};
use crate::id_ranges::UserNamespaces;
use crate::images::ImageStore;
use crate::node::Node;
use crate::notify;
use crate::sandbox::ShimLaunch;
use crate::server::Listeners;
use crate::store::Store;
use crate::supervisor::{Supervisor, SupervisorConfig};

fn supervisor_config(cfg: &Config) -> Result<SupervisorConfig> {
    let shim = if cfg.runtime.shim.as_os_str().is_empty() {
        let exe = std::env::current_exe().context("locating eci-agent")?;
        exe.with_file_name("eci-shim")
    } else {
        cfg.runtime.shim.clone()
    };
    // Shims (and through them every container's init) run from a read-only bind of the
    // binary, never from the writable file (see eci_runtime::sealed_exe).
    let shim = eci_runtime::sealed_exe::bind_read_only(&shim, &sealed_shim_path(cfg))
        .with_context(|| format!("binding {} read-only", shim.display()))?;
    Ok(SupervisorConfig {
        run_dir: cfg.run_dir.clone(),
        state_dir: cfg.state_dir.clone(),
        log_dir: cfg.log_dir.clone(),
        cgroup_parent: cfg.runtime.cgroup_parent.clone(),
        shim: ShimLaunch {
            binary: shim,
            run_dir: cfg.run_dir.clone(),
            cgroup_parent: cfg.runtime.cgroup_parent.clone(),
            log_max_bytes: crate::quantity::parse_memory_bytes(&cfg.runtime.log_max_size)?,
            log_max_files: cfg.runtime.log_max_files,
            log_compress: cfg.runtime.log_compress,
            pids_max: cfg.runtime.pids_max,
        },
        oom_score_adj: cfg.runtime.oom_score_adj,
        backoff_initial: humantime::parse_duration(&cfg.runtime.restart_backoff)?,
        backoff_max: humantime::parse_duration(&cfg.runtime.restart_backoff_max)?,
        disks: disk_policy(cfg),
    })
}

/// Which block devices disk volumes may use; the agent's own group mounts are under
/// the groups run directory.
fn disk_policy(cfg: &Config) -> crate::sandbox::disk::DiskPolicy {
    crate::sandbox::disk::DiskPolicy {
        allow: cfg.volumes.disk_devices.clone(),
        groups_run_dir: cfg.run_dir.join("groups"),
    }
}

/// Where the read-only bind of the shim binary lives.
fn sealed_shim_path(cfg: &Config) -> std::path::PathBuf {
    cfg.run_dir.join("bin").join("eci-shim")
}

/// The supervisor loop: beats every [`health::BEAT`], forgets finished task handles, and
/// removes finished groups after their retention period (in a task of its own, one at a
/// time, so a slow removal does not look like a stalled loop).
fn spawn_supervisor_loop(sup: Arc<Supervisor>, health: Arc<Health>, cfg: &Config) -> Result<()> {
    let retention = humantime::parse_duration(&cfg.node.finished_group_retention)?;
    let collect_every = Duration::from_secs(60).min(retention);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(health::BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_collect = tokio::time::Instant::now();
        let mut collecting: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tick.tick().await;
            sup.tick();
            health.supervisor.beat();
            let idle = collecting.as_ref().is_none_or(|h| h.is_finished());
            if !retention.is_zero() && idle && last_collect.elapsed() >= collect_every {
                last_collect = tokio::time::Instant::now();
                let sup = sup.clone();
                collecting = Some(tokio::spawn(async move {
                    sup.collect_finished(retention).await
                }));
            }
        }
    });
    Ok(())
}

/// Measures every group's local storage against its limits, one pass at a time
/// (`volumes.storage_check_interval`); a group over one is evicted.
fn spawn_storage_checks(sup: Arc<Supervisor>, cfg: &Config) -> Result<()> {
    let every = humantime::parse_duration(&cfg.volumes.storage_check_interval)?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sup.check_storage().await;
        }
    });
    Ok(())
}

/// How long start waits for the vm probe before serving without it: the quick
/// answers (no guest image, no QEMU, a cached result) come well within it; a probe
/// boot finishes in the background, and `vm` is neither advertised nor accepted
/// until it has.
const VM_PROBE_WAIT: Duration = Duration::from_secs(3);

/// Starts the vm sandbox's probe (see [`crate::vm::detect`]).
async fn start_vm_probe(cfg: &Config) -> Arc<crate::vm::VmSandbox> {
    let settings = crate::vm::VmSettings::from_config(&cfg.vm, &cfg.state_dir);
    let vm = Arc::new(crate::vm::VmSandbox::new(settings));
    let v = vm.clone();
    let mut probe = tokio::spawn(async move { v.probe().await });
    if tokio::time::timeout(VM_PROBE_WAIT, &mut probe)
        .await
        .is_err()
    {
        tracing::info!(
            "probing the vm sandbox in the background (a probe boot of the guest image)"
        );
    }
    vm
}

/// Every minute, kills the QEMU of any vm group the store no longer has.
fn spawn_vm_janitor(sup: Arc<Supervisor>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s = sup.clone();
            let _ = tokio::task::spawn_blocking(move || s.kill_orphan_vms()).await;
        }
    });
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    cfg.check()?;
    eci_runtime::seccomp::supported().context("containers cannot be confined on this host")?;
    for dir in [&cfg.state_dir, &cfg.run_dir, &cfg.log_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Image layers, writable layers and volumes hold what tenants wrote, setuid files
    // included: no host user but root may reach them.
    let groups_run = cfg.run_dir.join("groups");
    for dir in [&cfg.state_dir, &groups_run] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    let node = Node::detect(&cfg.node).context("reading the node's resources")?;
    let db = cfg.state_db_path();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open(&db))
            .await
            .context("opening the store")??,
    );
    let images =
        ImageStore::open(&cfg.state_dir, store.clone()).context("opening the image store")?;
    let userns_cfg = cfg.user_namespaces.clone();
    let layers = cfg.state_dir.join("layers");
    let userns = tokio::task::spawn_blocking(move || UserNamespaces::probe(&userns_cfg, &layers))
        .await
        .context("probing user namespaces")?;
    if userns.mode == crate::id_ranges::Mode::Off {
        // Said once, loudly: every new group's root is host root on this node.
        tracing::warn!(
            "user namespaces are off (user_namespaces.enabled = false): container root of new groups is host root"
        );
    } else {
        tracing::info!(
            mode = userns.mode.as_str(),
            ranges = userns.config.ranges,
            first_host_id = userns.config.first_host_id,
            "user namespaces"
        );
    }
    let vm = start_vm_probe(&cfg).await;
    let network = crate::network::NetworkPlan::from_config(&cfg.network)?;
    tracing::info!(dev_bridge = %network.describe_dev(), "group networking");
    let groups = Arc::new(
        Groups::new(store, node, images)
            .with_user_namespaces(userns)
            .with_network(network)
            .with_disks(disk_policy(&cfg))
            .with_vm(vm)
            .with_puller(cfg.pull.clone(), cfg.registries.clone()),
    );
    let g = groups.clone();
    // A failure (a full filesystem, say) is not fatal: the agent still serves, and the
    // next start tries again.
    match tokio::task::spawn_blocking(move || g.reconcile_id_ranges()).await {
        Ok(Ok(r)) if r == Default::default() => {}
        Ok(Ok(r)) => {
            tracing::info!(freed = ?r.freed, "id ranges reconciled")
        }
        Ok(Err(e)) => tracing::warn!(error = %crate::error::chain(&e), "reconciling id ranges"),
        Err(e) => tracing::warn!(error = %e, "reconciling id ranges"),
    }
    let sup = Supervisor::new(groups.clone(), supervisor_config(&cfg)?);
    // How image caches obtain their images. The registry puller goes here.
    let source = Arc::new(PulledImages::new(groups.clone()));
    let caches = ImageCaches::new(groups.clone(), source, cfg.images.policy()?);
    let (total, _) = groups.store().list_groups()?;
    tracing::info!(
        groups = total.len(),
        cpu_millis = groups.node().allocatable.cpu_millis,
        memory_bytes = groups.node().allocatable.memory_bytes,
        "state loaded"
    );

    let listeners = Listeners::bind(&cfg).await?;
    // Re-adopt running groups before answering: a Get right after start sees them.
    sup.reconcile().await.context("re-adopting groups")?;
    tracing::info!(socket = %cfg.socket_path().display(), tcp = %cfg.api.tcp_listen, "serving");
    let health = Health::new(groups.store().clone());
    health.spawn(cfg.socket_path()).await;
    spawn_supervisor_loop(sup.clone(), health.clone(), &cfg)?;
    spawn_storage_checks(sup.clone(), &cfg)?;
    spawn_vm_janitor(sup.clone());
    // Caches a crash left Creating continue; then expiry and garbage collection run
    // periodically.
    match caches.resume().await {
        Ok(r) if r.is_empty() => {}
        Ok(r) => tracing::info!(caches = ?r, "resumed image cache creation"),
        Err(e) => tracing::warn!(error = %crate::error::chain(&e), "resuming image caches"),
    }
    caches.spawn_maintenance();
    notify::ready();
    notify::spawn_watchdog(health.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        notify::stopping();
        let _ = stop_tx.send(true);
    });
    listeners.serve(sup, caches, health, stop_rx).await?;
    let _ = std::fs::remove_file(cfg.socket_path());
    // Running shims keep the detached bind they were started from.
    eci_runtime::sealed_exe::release(&sealed_shim_path(&cfg));
    tracing::info!("stopped");
    Ok(())
}
