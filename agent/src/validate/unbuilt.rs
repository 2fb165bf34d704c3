//! Fields whose feature this agent does not build yet. A spec that sets one is refused
//! with `UNIMPLEMENTED` naming it: accepting it and ignoring it would tell the control
//! plane something that is not so (a probe that never runs, an address never configured).
//! When a feature lands, its field leaves this list in the same change.

use eci_api::v1::{Container, GroupSpec};

use super::Errors;

/// Collects every unbuilt field `spec` sets.
pub(super) fn check(spec: &GroupSpec, errs: &mut Errors) {
    if !spec.ephemeral_storage.is_empty() {
        errs.add(
            "ephemeralStorage",
            "a size for the writable layers is not enforced yet (no quota on the layer directory)",
        );
    }
    if !spec.image_registry_credentials.is_empty() {
        errs.add(
            "imageRegistryCredentials",
            "registry pulls are not built yet (Images/Pull is UNIMPLEMENTED): import the image",
        );
    }
    if let Some(c) = &spec.image_cache
        && (!c.name.is_empty() || c.auto_match)
    {
        errs.add("imageCache", "image caches are not built yet");
    }
    if let Some(n) = &spec.network {
        let net = "the group's network namespace has only lo until ENIs are built";
        if n.eni.is_some() {
            errs.add("network.eni", format!("ENIs are not built yet: {net}"));
        }
        for (set, field) in [
            (!n.ipv4_address.is_empty(), "network.ipv4Address"),
            (!n.ipv4_gateway.is_empty(), "network.ipv4Gateway"),
            (!n.ipv6_address.is_empty(), "network.ipv6Address"),
            (!n.ipv6_gateway.is_empty(), "network.ipv6Gateway"),
            (n.mtu != 0, "network.mtu"),
        ] {
            if set {
                errs.add(field, format!("addresses are not configured yet: {net}"));
            }
        }
        if !n.security_group_rules.is_empty() {
            errs.add(
                "network.securityGroupRules",
                "security-group rules are not applied yet",
            );
        }
    }
    for (list, containers) in [
        ("initContainers", &spec.init_containers),
        ("containers", &spec.containers),
    ] {
        for (i, c) in containers.iter().enumerate() {
            container(&format!("{list}[{i}]"), c, errs);
        }
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        if v.disk.is_some() {
            errs.add(
                format!("volumes[{i}].disk"),
                "disk volumes are not built yet",
            );
        }
        if v.nfs.is_some() {
            errs.add(format!("volumes[{i}].nfs"), "nfs volumes are not built yet");
        }
        if let Some(e) = &v.empty_dir
            && e.medium.is_empty()
            && !e.size_limit.is_empty()
        {
            errs.add(
                format!("volumes[{i}].emptyDir.sizeLimit"),
                "a size limit on a disk emptyDir is not enforced yet (medium Memory has one)",
            );
        }
    }
}

fn container(path: &str, c: &Container, errs: &mut Errors) {
    for (set, field) in [
        (c.liveness_probe.is_some(), "livenessProbe"),
        (c.readiness_probe.is_some(), "readinessProbe"),
        (c.startup_probe.is_some(), "startupProbe"),
    ] {
        if set {
            errs.add(format!("{path}.{field}"), "probes are not run yet");
        }
    }
    if let Some(l) = &c.lifecycle {
        let mut any = false;
        for (set, field) in [
            (l.post_start.is_some(), "postStart"),
            (l.pre_stop.is_some(), "preStop"),
        ] {
            if set {
                any = true;
                errs.add(
                    format!("{path}.lifecycle.{field}"),
                    "lifecycle hooks are not run yet",
                );
            }
        }
        if !any {
            errs.add(
                format!("{path}.lifecycle"),
                "lifecycle hooks are not run yet",
            );
        }
    }
    if c.resources.as_ref().is_some_and(|r| r.gpu > 0) {
        errs.add(
            format!("{path}.resources.gpu"),
            "GPU devices are not given to containers yet",
        );
    }
    for (set, field) in [(c.stdin, "stdin"), (c.tty, "tty")] {
        if set {
            errs.add(
                format!("{path}.{field}"),
                "a container's own stdin/tty is not built yet (Attach is UNIMPLEMENTED; \
                 `ecictl exec -it` gives a terminal)",
            );
        }
    }
}
