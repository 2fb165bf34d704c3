//! Container rules: name, image, pull policy, env, ports, resources, mounts, probes, hooks,
//! security context.

use std::collections::HashSet;

use eci_api::v1::{Container, HttpGetAction, LifecycleHandler, Probe, SecurityContext};

use super::domain::{Bytes, Capability, ContainerSpec, CpuMillis, Mount};
use super::group::parse_opt;
use super::limits::*;
use super::quote::quote;
use super::volume::VolumeSet;
use super::{Errors, check_name, paths};
use crate::images::Reference;
use crate::quantity::{format_cpu, format_memory, parse_cpu_millis, parse_memory_bytes};
use crate::sizes;

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

/// Checks one container on its own (the group checks that its volumes exist and that
/// its ports are free); returns it as a domain value when it broke no rule.
pub(super) fn check(
    path: &str,
    c: &Container,
    init: bool,
    errs: &mut Errors,
) -> Option<ContainerSpec> {
    if let Err(m) = check_name(&c.name) {
        errs.add(format!("{path}.name"), m.to_string());
    }
    if c.image.is_empty() {
        errs.add(format!("{path}.image"), "is required");
    } else if c.image.len() > MAX_IMAGE_REF {
        errs.add(
            format!("{path}.image"),
            format!("{} is longer than {MAX_IMAGE_REF} bytes", quote(&c.image)),
        );
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
                "{} is not one of Always, IfNotPresent, Never",
                quote(&c.image_pull_policy)
            ),
        );
    }
    if !c.working_dir.is_empty()
        && let Err(e) = paths::absolute(&c.working_dir)
    {
        errs.add(format!("{path}.workingDir"), e.to_string());
    }
    check_exec(path, c, errs);
    if c.ports.len() > MAX_PORTS {
        errs.add(
            format!("{path}.ports"),
            format!("{} ports is over the limit of {MAX_PORTS}", c.ports.len()),
        );
    }
    for (i, p) in c.ports.iter().enumerate() {
        let proto = if p.protocol.is_empty() {
            "TCP"
        } else {
            p.protocol.as_str()
        };
        if p.name.len() > MAX_PORT_NAME {
            errs.add(
                format!("{path}.ports[{i}].name"),
                format!("{} is longer than {MAX_PORT_NAME} bytes", quote(&p.name)),
            );
        }
        if !matches!(proto, "TCP" | "UDP") {
            errs.add(
                format!("{path}.ports[{i}].protocol"),
                format!("{} is not one of TCP, UDP", quote(proto)),
            );
        }
        if !(1..=65535).contains(&p.container_port) {
            errs.add(
                format!("{path}.ports[{i}].containerPort"),
                format!("{} is outside 1-65535", p.container_port),
            );
        }
    }
    let res = c.resources.clone().unwrap_or_default();
    let cpu_field = format!("{path}.resources.cpu");
    let cpu = parse_opt(&res.cpu, &cpu_field, parse_cpu_millis, errs);
    let mem_field = format!("{path}.resources.memory");
    let mem = parse_opt(&res.memory, &mem_field, parse_memory_bytes, errs);
    let max = sizes::largest();
    if let Some(cpu) = cpu {
        if cpu < MIN_CONTAINER_CPU_MILLIS {
            errs.add(
                cpu_field,
                format!(
                    "{} is below the minimum {}: the kernel's smallest CFS quota is 1 ms per \
                     100 ms period",
                    format_cpu(cpu),
                    format_cpu(MIN_CONTAINER_CPU_MILLIS)
                ),
            );
        } else if cpu > max.cpu_millis {
            errs.add(
                cpu_field,
                format!(
                    "{} vCPU is more than the largest offered size, {} vCPU",
                    format_cpu(cpu),
                    format_cpu(max.cpu_millis)
                ),
            );
        }
    }
    if let Some(mem) = mem {
        if mem < MIN_CONTAINER_MEMORY {
            errs.add(
                mem_field,
                format!("must be at least {}", format_memory(MIN_CONTAINER_MEMORY)),
            );
        } else if mem > max.memory_bytes {
            errs.add(
                mem_field,
                format!(
                    "{} is more than the largest offered size, {}",
                    format_memory(mem),
                    format_memory(max.memory_bytes)
                ),
            );
        }
    }
    let mounts = check_mounts(path, c, errs);
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
    let sc = c.security_context.clone().unwrap_or_default();
    let (add, drop) = check_security(path, &sc, errs);
    // Built even when this container broke a rule: `validate` refuses the spec then, and
    // `stored` needs the parts that did parse (see there).
    Some(ContainerSpec {
        name: c.name.clone(),
        cpu: cpu.map(CpuMillis),
        memory: mem.map(Bytes),
        mounts,
        add,
        drop,
        read_only_root: sc.read_only_root_filesystem,
        allow_privilege_escalation: sc.allow_privilege_escalation,
    })
}

/// The group's rules for its containers' ports and mounts: one port space for the app
/// containers (init containers run alone), and mounts of the group's volumes only.
pub(super) fn check_in_group(
    path: &str,
    c: &Container,
    init: bool,
    volumes: &VolumeSet,
    ports: &mut HashSet<(i32, String)>,
    errs: &mut Errors,
) {
    if !init {
        for (i, p) in c.ports.iter().enumerate() {
            let proto = if p.protocol.is_empty() {
                "TCP"
            } else {
                p.protocol.as_str()
            };
            if (1..=65535).contains(&p.container_port)
                && !ports.insert((p.container_port, proto.to_string()))
            {
                errs.add(
                    format!("{path}.ports[{i}].containerPort"),
                    format!(
                        "{} port {} is already used by another container of the group",
                        quote(proto),
                        p.container_port
                    ),
                );
            }
        }
    }
    for (i, m) in c.volume_mounts.iter().enumerate() {
        if !volumes.names.contains(&m.name) {
            errs.add(
                format!("{path}.volumeMounts[{i}].name"),
                format!("{} is not a volume of the group", quote(&m.name)),
            );
        }
    }
}

/// `command`, `args` and `env`: entry counts, and each string and their total within
/// what execve takes (see [`MAX_EXEC_BYTES`]), so an accepted container can start.
fn check_exec(path: &str, c: &Container, errs: &mut Errors) {
    // Each string costs its bytes, its NUL and its pointer in the new process's stack.
    let cost = |len: usize| len + 1 + std::mem::size_of::<usize>();
    let mut total = 0usize;
    for (list, items) in [("command", &c.command), ("args", &c.args)] {
        if items.len() > MAX_ARGS {
            errs.add(
                format!("{path}.{list}"),
                format!("{} entries is over the limit of {MAX_ARGS}", items.len()),
            );
        }
        for (i, a) in items.iter().enumerate() {
            total = total.saturating_add(cost(a.len()));
            if a.len() > MAX_ARG_STRING {
                errs.add(
                    format!("{path}.{list}[{i}]"),
                    format!(
                        "{} bytes is over the limit of {MAX_ARG_STRING} for one argument",
                        a.len()
                    ),
                );
            } else if a.contains('\0') {
                errs.add(format!("{path}.{list}[{i}]"), "must not contain NUL");
            }
        }
    }
    if c.env.len() > MAX_ENV {
        errs.add(
            format!("{path}.env"),
            format!("{} entries is over the limit of {MAX_ENV}", c.env.len()),
        );
    }
    for (i, e) in c.env.iter().enumerate() {
        // As the process sees it: NAME=value.
        let len = e.name.len() + 1 + e.value.len();
        total = total.saturating_add(cost(len));
        if e.name.is_empty() || e.name.contains(['=', '\0']) {
            errs.add(
                format!("{path}.env[{i}].name"),
                "must be non-empty without '=' or NUL",
            );
        }
        if len > MAX_ARG_STRING {
            errs.add(
                format!("{path}.env[{i}]"),
                format!(
                    "NAME=value is {len} bytes, over the limit of {MAX_ARG_STRING} for one variable"
                ),
            );
        } else if e.value.contains('\0') {
            errs.add(format!("{path}.env[{i}].value"), "must not contain NUL");
        }
    }
    if total > MAX_EXEC_BYTES {
        errs.add(
            path,
            format!(
                "command, args and env take {total} bytes for execve, over the limit of \
                 {MAX_EXEC_BYTES}"
            ),
        );
    }
}

/// Volume mounts: paths are clean, and no two mounts share a destination however it is
/// spelled.
fn check_mounts(path: &str, c: &Container, errs: &mut Errors) -> Vec<Mount> {
    if c.volume_mounts.len() > MAX_VOLUME_MOUNTS {
        errs.add(
            format!("{path}.volumeMounts"),
            format!(
                "{} mounts is over the limit of {MAX_VOLUME_MOUNTS}",
                c.volume_mounts.len()
            ),
        );
    }
    let mut mount_paths = HashSet::new();
    let mut mounts = Vec::with_capacity(c.volume_mounts.len());
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        let destination = match paths::mount_path(&m.mount_path) {
            Err(e) => {
                errs.add(format!("{mp}.mountPath"), e.to_string());
                None
            }
            Ok(n) if !mount_paths.insert(n.clone()) => {
                errs.add(
                    format!("{mp}.mountPath"),
                    format!("{} is mounted twice", quote(&m.mount_path)),
                );
                None
            }
            Ok(n) => Some(n),
        };
        let sub_path = if m.sub_path.is_empty() {
            Some(None)
        } else {
            paths::relative(&m.sub_path)
                .map_err(|e| errs.add(format!("{mp}.subPath"), e.to_string()))
                .ok()
                .map(Some)
        };
        if let (Some(destination), Some(sub_path)) = (destination, sub_path) {
            mounts.push(Mount {
                volume: m.name.clone(),
                destination,
                sub_path,
                read_only: m.read_only,
            });
        }
    }
    mounts
}

/// Returns the capabilities to add and to drop.
fn check_security(
    path: &str,
    sc: &SecurityContext,
    errs: &mut Errors,
) -> (Vec<Capability>, Vec<Capability>) {
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
    let (mut add, mut drop) = (Vec::new(), Vec::new());
    let Some(caps) = &sc.capabilities else {
        return (add, drop);
    };
    for (list, names) in [("add", &caps.add), ("drop", &caps.drop)] {
        if names.len() > MAX_CAPABILITIES {
            errs.add(
                format!("{path}.securityContext.capabilities.{list}"),
                format!(
                    "{} entries is over the limit of {MAX_CAPABILITIES}",
                    names.len()
                ),
            );
        }
        for (i, n) in names.iter().enumerate() {
            let field = format!("{path}.securityContext.capabilities.{list}[{i}]");
            let bare = n.strip_prefix("CAP_").unwrap_or(n);
            if !CAPABILITIES.contains(&bare) {
                errs.add(field, format!("{} is not a Linux capability", quote(n)));
            } else if list == "add" && bare == "ALL" {
                errs.add(
                    field,
                    "adding ALL capabilities is privileged mode, which is not supported",
                );
            } else if list == "add" && !ADDABLE_CAPABILITIES.contains(&bare) {
                errs.add(
                    field,
                    format!(
                        "{} cannot be added in a namespaced group: its power reaches \
                         beyond the group (addable: {})",
                        quote(n),
                        ADDABLE_CAPABILITIES.join(", ")
                    ),
                );
            } else {
                let cap = Capability(if bare == "ALL" {
                    "ALL".to_string()
                } else {
                    format!("CAP_{bare}")
                });
                if list == "add" { &mut add } else { &mut drop }.push(cap);
            }
        }
    }
    (add, drop)
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
    if let Some(e) = &p.exec {
        check_exec_action(&format!("{path}.exec.command"), &e.command, errs);
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
        (Some(e), None) => check_exec_action(&format!("{path}.exec.command"), &e.command, errs),
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
            format!("{} must start with '/'", quote(&h.path)),
        );
    }
    if !h.host.is_empty() && h.host.parse::<std::net::IpAddr>().is_err() {
        errs.add(
            format!("{path}.host"),
            format!("{} is not an IP address", quote(&h.host)),
        );
    }
    if h.http_headers.len() > MAX_HTTP_HEADERS {
        errs.add(
            format!("{path}.httpHeaders"),
            format!(
                "{} headers is over the limit of {MAX_HTTP_HEADERS}",
                h.http_headers.len()
            ),
        );
    }
    for (i, hd) in h.http_headers.iter().enumerate() {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if hd.name.is_empty() || hd.name.len() > 256 || !hd.name.chars().all(token) {
            errs.add(
                format!("{path}.httpHeaders[{i}].name"),
                format!(
                    "{} is not an HTTP header name (1-256 token characters)",
                    quote(&hd.name)
                ),
            );
        }
        if hd.value.len() > 4096 || hd.value.chars().any(|c| c.is_ascii_control() && c != '\t') {
            errs.add(
                format!("{path}.httpHeaders[{i}].value"),
                "must be at most 4096 bytes without control characters",
            );
        }
    }
    if !matches!(h.scheme.as_str(), "" | "HTTP" | "HTTPS") {
        errs.add(
            format!("{path}.scheme"),
            format!("{} is not one of HTTP, HTTPS", quote(&h.scheme)),
        );
    }
}

/// Most headers of one httpGet action.
const MAX_HTTP_HEADERS: usize = 32;

/// A probe's or hook's command: required, and within the limits of a container's.
fn check_exec_action(field: &str, command: &[String], errs: &mut Errors) {
    if command.is_empty() {
        errs.add(field, "is required");
    } else if command.len() > MAX_ARGS {
        errs.add(
            field,
            format!("{} entries is over the limit of {MAX_ARGS}", command.len()),
        );
    }
    let total: usize = command.iter().map(|a| a.len() + 1).sum();
    if total > MAX_EXEC_BYTES {
        errs.add(
            field,
            format!("{total} bytes is over the limit of {MAX_EXEC_BYTES}"),
        );
    }
}
