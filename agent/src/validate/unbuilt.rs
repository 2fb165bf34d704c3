//! Fields whose feature this agent does not build yet. A spec that sets one is refused
//! with `UNIMPLEMENTED` naming it: accepting it and ignoring it would tell the control
//! plane something that is not so (a probe that never runs, an address never configured).
//! When a feature lands, its field leaves this list in the same change.
//!
//! The wire messages are destructured here without `..`: a field added to the proto does
//! not compile until someone decides whether it is enforced (bound to `_` with the rule
//! that checks it) or refused here.

use eci_api::v1::{Container, GroupSpec, Volume};

use super::Errors;

/// Collects every unbuilt field `spec` sets.
pub(super) fn check(spec: &GroupSpec, errs: &mut Errors) {
    // Enforced or checked by `group.rs` and the container/volume/network checks.
    let GroupSpec {
        name: _,
        labels: _,
        restart_policy: _,
        cpu: _,
        memory: _,
        termination_grace_period_seconds: _,
        shm_size: _,
        // Enforced by eviction (`sandbox/usage.rs`).
        ephemeral_storage: _,
        security_context: _,
        // Used by the puller (credentials; never shown back) and the supervisor (caches,
        // checked by `group.rs`).
        image_registry_credentials: _,
        image_cache: _,
        // Applied in the group's netns (crate::network); checked by `network.rs`.
        network: _,
        sandbox: _,
        containers,
        init_containers,
        volumes,
    } = spec;
    for (list, containers) in [
        ("initContainers", init_containers),
        ("containers", containers),
    ] {
        for (i, c) in containers.iter().enumerate() {
            container(&format!("{list}[{i}]"), c, errs);
        }
    }
    for v in volumes {
        volume(v);
    }
}

fn volume(v: &Volume) {
    // Every source is built (a disk emptyDir's sizeLimit by eviction); hostPath is
    // refused by `volume.rs`.
    let Volume {
        name: _,
        empty_dir: _,
        config_file: _,
        disk: _,
        nfs: _,
        host_path: _,
    } = v;
}

fn container(path: &str, c: &Container, errs: &mut Errors) {
    // The rest is enforced (see docs/api.md) and checked by `container.rs`.
    let Container {
        name: _,
        image: _,
        image_pull_policy: _,
        command: _,
        args: _,
        working_dir: _,
        env: _,
        ports: _,
        resources,
        volume_mounts: _,
        // Run by the supervisor (supervisor/probes.rs); checked by `container.rs`.
        liveness_probe: _,
        readiness_probe: _,
        startup_probe: _,
        lifecycle: _,
        security_context: _,
        // A stdin pipe / terminal from the shim, for Containers.Attach.
        stdin: _,
        tty: _,
    } = c;
    if resources.as_ref().is_some_and(|r| r.gpu > 0) {
        errs.add(
            format!("{path}.resources.gpu"),
            "GPU devices are not given to containers yet",
        );
    }
}
