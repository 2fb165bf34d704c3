//! Container rules: name, image, pull policy, env, ports, resources, mounts, probes, hooks,
//! security context.

use std::collections::HashSet;

use eci_api::v1::{Container, HttpGetAction, LifecycleHandler, Probe};

use super::group::parse_opt;
use super::volume::{VolumeSet, is_relative_inside};
use super::{Errors, check_name};
use crate::images::Reference;
use crate::quantity::{parse_cpu_millis, parse_memory_bytes};
use crate::sizes::Size;

/// Capabilities a container of a namespaced group may add: the default set (containerd's
/// 14, which `add` may name again after a `drop: [ALL]`) and the few whose power stays
/// inside the group. Each is argued in docs/security.md; everything else (SYS_ADMIN,
/// NET_ADMIN, SYS_MODULE, SYS_RAWIO, DAC_READ_SEARCH, BPF, PERFMON, SYS_TIME, …) reaches
/// the host kernel, another group, or the group's own firewall and address.
pub const ADDABLE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
    // Locked memory is charged to the group's memory cgroup.
    "IPC_LOCK",
    // Debuggers (AWS Fargate allows it too). Safe because an exec'd process is confined
    // before it is visible in the container (eci_runtime::init) and every runtime
    // process is non-dumpable and runs from a read-only binary.
    "SYS_PTRACE",
];

/// Capabilities a container may add or drop (Linux 5.x names, without `CAP_`).
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
    "ALL",
];

/// Checks one container; returns its stated resources (zero where unset).
pub(super) fn check(
    path: &str,
    c: &Container,
    init: bool,
    volumes: &VolumeSet,
    ports: &mut HashSet<(i32, String)>,
    errs: &mut Errors,
) -> Option<Size> {
    if let Err(m) = check_name(&c.name) {
        errs.add(format!("{path}.name"), m);
    }
    if c.image.is_empty() {
        errs.add(format!("{path}.image"), "is required");
    } else if let Err(e) = Reference::parse(&c.image) {
        errs.add(format!("{path}.image"), e.to_string());
    }
    if !matches!(
        c.image_pull_policy.as_str(),
        "" | "Always" | "IfNotPresent" | "Never"
    ) {
        errs.add(
            format!("{path}.imagePullPolicy"),
            format!(
                "{:?} is not one of Always, IfNotPresent, Never",
                c.image_pull_policy
            ),
        );
    }
    if !c.working_dir.is_empty() && !c.working_dir.starts_with('/') {
        errs.add(
            format!("{path}.workingDir"),
            format!("{:?} must be an absolute path", c.working_dir),
        );
    }
    for (i, e) in c.env.iter().enumerate() {
        if e.name.is_empty() || e.name.contains(['=', '\0']) {
            errs.add(
                format!("{path}.env[{i}].name"),
                "must be non-empty without '=' or NUL",
            );
        }
        if e.value.contains('\0') {
            errs.add(format!("{path}.env[{i}].value"), "must not contain NUL");
        }
    }
    for (i, p) in c.ports.iter().enumerate() {
        let proto = if p.protocol.is_empty() {
            "TCP"
        } else {
            p.protocol.as_str()
        };
        if !matches!(proto, "TCP" | "UDP") {
            errs.add(
                format!("{path}.ports[{i}].protocol"),
                format!("{proto:?} is not one of TCP, UDP"),
            );
        }
        if !(1..=65535).contains(&p.container_port) {
            errs.add(
                format!("{path}.ports[{i}].containerPort"),
                format!("{} is outside 1-65535", p.container_port),
            );
        } else if !init && !ports.insert((p.container_port, proto.to_string())) {
            // The group has one IP and one port space.
            errs.add(
                format!("{path}.ports[{i}].containerPort"),
                format!(
                    "{proto} port {} is already used by another container of the group",
                    p.container_port
                ),
            );
        }
    }
    let res = c.resources.clone().unwrap_or_default();
    let cpu = parse_opt(
        &res.cpu,
        &format!("{path}.resources.cpu"),
        parse_cpu_millis,
        errs,
    );
    let mem = parse_opt(
        &res.memory,
        &format!("{path}.resources.memory"),
        parse_memory_bytes,
        errs,
    );
    if mem.is_some_and(|m| m < 4 << 20) {
        errs.add(format!("{path}.resources.memory"), "must be at least 4Mi");
    }
    let mut mount_paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        if !volumes.names.contains(&m.name) {
            errs.add(
                format!("{mp}.name"),
                format!("{:?} is not a volume of the group", m.name),
            );
        }
        if !m.mount_path.starts_with('/') || m.mount_path.split('/').any(|s| s == "..") {
            errs.add(
                format!("{mp}.mountPath"),
                format!("{:?} must be an absolute path without '..'", m.mount_path),
            );
        } else if !mount_paths.insert(m.mount_path.trim_end_matches('/')) {
            errs.add(
                format!("{mp}.mountPath"),
                format!("{:?} is mounted twice", m.mount_path),
            );
        }
        if !m.sub_path.is_empty() && !is_relative_inside(&m.sub_path) {
            errs.add(
                format!("{mp}.subPath"),
                format!("{:?} must be a relative path without '..'", m.sub_path),
            );
        }
    }
    let probes = [
        ("livenessProbe", &c.liveness_probe, true),
        ("readinessProbe", &c.readiness_probe, false),
        ("startupProbe", &c.startup_probe, true),
    ];
    for (name, probe, success_must_be_one) in probes {
        if let Some(p) = probe {
            if init {
                errs.add(
                    format!("{path}.{name}"),
                    "is not allowed on init containers",
                );
            }
            check_probe(&format!("{path}.{name}"), p, success_must_be_one, errs);
        }
    }
    if let Some(l) = &c.lifecycle {
        if init {
            errs.add(
                format!("{path}.lifecycle"),
                "is not allowed on init containers",
            );
        }
        for (name, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            if let Some(h) = h {
                check_handler(&format!("{path}.lifecycle.{name}"), h, errs);
            }
        }
    }
    if let Some(sc) = &c.security_context {
        if sc.privileged {
            errs.add(
                format!("{path}.securityContext.privileged"),
                "is not supported: containers cannot be privileged",
            );
        }
        for (field, v) in [
            ("runAsUser", sc.run_as_user),
            ("runAsGroup", sc.run_as_group),
        ] {
            if let Some(id) = v
                && !(0..=i64::from(u32::MAX - 1)).contains(&id)
            {
                errs.add(
                    format!("{path}.securityContext.{field}"),
                    format!("{id} is outside 0-4294967294"),
                );
            }
        }
        if let Some(caps) = &sc.capabilities {
            for (list, names) in [("add", &caps.add), ("drop", &caps.drop)] {
                for (i, n) in names.iter().enumerate() {
                    let bare = n.strip_prefix("CAP_").unwrap_or(n);
                    if !CAPABILITIES.contains(&bare) {
                        errs.add(
                            format!("{path}.securityContext.capabilities.{list}[{i}]"),
                            format!("{n:?} is not a Linux capability"),
                        );
                    }
                    if list == "add" && bare == "ALL" {
                        errs.add(
                            format!("{path}.securityContext.capabilities.add[{i}]"),
                            "adding ALL capabilities is privileged mode, which is not supported",
                        );
                    } else if list == "add"
                        && CAPABILITIES.contains(&bare)
                        && !ADDABLE_CAPABILITIES.contains(&bare)
                    {
                        errs.add(
                            format!("{path}.securityContext.capabilities.add[{i}]"),
                            format!(
                                "{n:?} cannot be added in a namespaced group: its power reaches \
                                 beyond the group (addable: {})",
                                ADDABLE_CAPABILITIES.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
    Some(Size {
        cpu_millis: cpu.unwrap_or(0),
        memory_bytes: mem.unwrap_or(0),
    })
}

fn check_probe(path: &str, p: &Probe, success_must_be_one: bool, errs: &mut Errors) {
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
    ];
    if handlers.iter().filter(|h| **h).count() != 1 {
        errs.add(path, "set exactly one of exec, httpGet, tcpSocket");
    }
    if let Some(e) = &p.exec
        && e.command.is_empty()
    {
        errs.add(format!("{path}.exec.command"), "is required");
    }
    if let Some(h) = &p.http_get {
        check_http(&format!("{path}.httpGet"), h, errs);
    }
    if let Some(t) = &p.tcp_socket
        && !(1..=65535).contains(&t.port)
    {
        errs.add(
            format!("{path}.tcpSocket.port"),
            format!("{} is outside 1-65535", t.port),
        );
    }
    let fields = [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("periodSeconds", p.period_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ];
    for (name, v) in fields {
        if !(0..=3600).contains(&v) {
            errs.add(
                format!("{path}.{name}"),
                format!("{v} is outside 0-3600 (0 takes the default)"),
            );
        }
    }
    if success_must_be_one && p.success_threshold > 1 {
        errs.add(
            format!("{path}.successThreshold"),
            "must be 1 for liveness and startup probes",
        );
    }
}

fn check_handler(path: &str, h: &LifecycleHandler, errs: &mut Errors) {
    match (&h.exec, &h.http_get) {
        (Some(e), None) => {
            if e.command.is_empty() {
                errs.add(format!("{path}.exec.command"), "is required");
            }
        }
        (None, Some(g)) => check_http(&format!("{path}.httpGet"), g, errs),
        _ => errs.add(path, "set exactly one of exec, httpGet"),
    }
}

fn check_http(path: &str, h: &HttpGetAction, errs: &mut Errors) {
    if !(1..=65535).contains(&h.port) {
        errs.add(
            format!("{path}.port"),
            format!("{} is outside 1-65535", h.port),
        );
    }
    if !h.path.is_empty() && !h.path.starts_with('/') {
        errs.add(
            format!("{path}.path"),
            format!("{:?} must start with '/'", h.path),
        );
    }
    if !matches!(h.scheme.as_str(), "" | "HTTP" | "HTTPS") {
        errs.add(
            format!("{path}.scheme"),
            format!("{:?} is not one of HTTP, HTTPS", h.scheme),
        );
    }
}
