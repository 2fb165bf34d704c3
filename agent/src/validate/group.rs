//! Group-level rules: name, labels, policies, resources, shm, storage, sysctls, credentials.

use std::collections::HashSet;

use eci_api::v1::GroupSpec;

use super::limits::*;
use super::quote::quote;
use super::{Errors, ValidSpec, check_name, container, network, sysctl, volume};
use crate::quantity::{format_cpu, format_memory, parse_cpu_millis, parse_memory_bytes};
use crate::sizes::{self, Size};

pub(super) fn check(spec: &GroupSpec, errs: &mut Errors) -> Option<ValidSpec> {
    if let Err(m) = check_name(&spec.name) {
        errs.add("name", m.to_string());
    }
    check_labels(spec, errs);
    if !matches!(
        spec.restart_policy.as_str(),
        "" | "Always" | "OnFailure" | "Never"
    ) {
        errs.add(
            "restartPolicy",
            format!(
                "{} is not one of Always, OnFailure, Never",
                quote(&spec.restart_policy)
            ),
        );
    }
    if !matches!(spec.sandbox.as_str(), "" | "namespaced" | "vm") {
        errs.add(
            "sandbox",
            format!("{} is not one of namespaced, vm", quote(&spec.sandbox)),
        );
    }
    if spec.sandbox == "vm" {
        check_vm(spec, errs);
    }
    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        errs.add(
            "terminationGracePeriodSeconds",
            format!("{grace} is outside 0-{MAX_GRACE_SECONDS}"),
        );
    }
    check_security_context(spec, errs);
    check_credentials(spec, errs);
    if let Some(cache) = &spec.image_cache
        && !cache.name.is_empty()
    {
        if cache.auto_match {
            errs.add("imageCache", "set either name or autoMatch, not both");
        }
        if let Err(m) = check_name(&cache.name) {
            errs.add("imageCache.name", m.to_string());
        }
    }
    if let Some(net) = &spec.network {
        network::check(net, errs);
    }

    let total = spec.containers.len() + spec.init_containers.len();
    if spec.containers.is_empty() {
        errs.add("containers", "at least one container is required");
    } else if total > MAX_CONTAINERS {
        errs.add(
            "containers",
            format!("{total} containers (init included) is over the limit of {MAX_CONTAINERS}"),
        );
    }
    if spec.volumes.len() > MAX_VOLUMES {
        errs.add(
            "volumes",
            format!(
                "{} volumes is over the limit of {MAX_VOLUMES}",
                spec.volumes.len()
            ),
        );
    }
    let volumes = volume::check_all(&spec.volumes, errs);

    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    let mut containers_out = Vec::with_capacity(total.min(MAX_CONTAINERS));
    let lists = [
        ("initContainers", &spec.init_containers, true),
        ("containers", &spec.containers, false),
    ];
    let mut app_sum = Size {
        cpu_millis: 0,
        memory_bytes: 0,
    };
    let mut init_max = Size {
        cpu_millis: 0,
        memory_bytes: 0,
    };
    for (list, containers, init) in lists {
        for (i, c) in containers.iter().enumerate() {
            let path = format!("{list}[{i}]");
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                errs.add(
                    format!("{path}.name"),
                    format!("{} is used by another container", quote(&c.name)),
                );
            }
            container::check_in_group(&path, c, init, &volumes, &mut ports, errs);
            if let Some(spec) = container::check(&path, c, init, errs) {
                let r = Size {
                    cpu_millis: spec.cpu.map_or(0, |c| c.get()),
                    memory_bytes: spec.memory.map_or(0, |m| m.get()),
                };
                if init {
                    init_max.cpu_millis = init_max.cpu_millis.max(r.cpu_millis);
                    init_max.memory_bytes = init_max.memory_bytes.max(r.memory_bytes);
                } else {
                    app_sum.cpu_millis = app_sum.cpu_millis.saturating_add(r.cpu_millis);
                    app_sum.memory_bytes = app_sum.memory_bytes.saturating_add(r.memory_bytes);
                }
                containers_out.push(spec);
            }
        }
    }
    // Init containers run alone, before the app containers: the group needs the larger of
    // the biggest init container and the sum of the app containers (Kubernetes rule).
    let containers_need = Size {
        cpu_millis: app_sum.cpu_millis.max(init_max.cpu_millis),
        memory_bytes: app_sum.memory_bytes.max(init_max.memory_bytes),
    };

    let group_cpu = parse_opt(&spec.cpu, "cpu", parse_cpu_millis, errs);
    let group_mem = parse_opt(&spec.memory, "memory", parse_memory_bytes, errs);
    if group_cpu == Some(0) {
        errs.add("cpu", "must be greater than 0");
    }
    if group_mem == Some(0) {
        errs.add("memory", "must be greater than 0");
    }
    if let Some(cpu) = group_cpu
        && containers_need.cpu_millis > cpu
    {
        errs.add(
            "containers",
            format!(
                "the containers' cpu adds up to {}, more than the group cpu {}",
                format_cpu(containers_need.cpu_millis),
                format_cpu(cpu)
            ),
        );
    }
    if let Some(mem) = group_mem
        && containers_need.memory_bytes > mem
    {
        errs.add(
            "containers",
            format!(
                "the containers' memory adds up to {}, more than the group memory {}",
                format_memory(containers_need.memory_bytes),
                format_memory(mem)
            ),
        );
    }
    // Without any resources stated the group gets the smallest offered size.
    // In-memory volumes live in the group's memory, so the group needs at least that.
    let memory_volumes = volumes.memory_bytes;
    let requested = Size {
        cpu_millis: group_cpu.unwrap_or(containers_need.cpu_millis),
        memory_bytes: group_mem
            .unwrap_or(containers_need.memory_bytes)
            .max(memory_volumes),
    };
    let normalized = sizes::normalize(requested.cpu_millis, requested.memory_bytes);
    if normalized.is_none() {
        // Named where the number came from: the group's own field, or the containers'
        // sum (a single oversized container is already named under its own field).
        let max = sizes::largest();
        if requested.cpu_millis > max.cpu_millis {
            errs.add(
                if group_cpu.is_some() {
                    "cpu"
                } else {
                    "containers"
                },
                format!(
                    "{} vCPU{} is more than the largest offered size, {} vCPU",
                    format_cpu(requested.cpu_millis),
                    if group_cpu.is_some() {
                        ""
                    } else {
                        " (the containers' cpu)"
                    },
                    format_cpu(max.cpu_millis)
                ),
            );
        }
        if requested.memory_bytes > max.memory_bytes {
            errs.add(
                if group_mem.is_some() {
                    "memory"
                } else {
                    "containers"
                },
                format!(
                    "{}{} is more than the largest offered size, {}",
                    format_memory(requested.memory_bytes),
                    if group_mem.is_some() {
                        ""
                    } else {
                        " (the containers' memory and in-memory volumes)"
                    },
                    format_memory(max.memory_bytes)
                ),
            );
        }
    }
    if let Some(mem) = group_mem
        && memory_volumes > mem
    {
        errs.add(
            "volumes",
            format!(
                "in-memory emptyDir volumes add up to {}, more than the group memory {}",
                format_memory(memory_volumes),
                format_memory(mem)
            ),
        );
    }

    let shm = parse_opt(&spec.shm_size, "shmSize", parse_memory_bytes, errs);
    if let (Some(shm), Some(n)) = (shm, normalized) {
        let half = n.memory_bytes / 2;
        if shm >= half {
            errs.add(
                "shmSize",
                format!(
                    "{} must be less than half of the group memory {} ({})",
                    format_memory(shm),
                    format_memory(n.memory_bytes),
                    format_memory(half)
                ),
            );
        }
    }
    let ephemeral = parse_opt(
        &spec.ephemeral_storage,
        "ephemeralStorage",
        parse_memory_bytes,
        errs,
    );
    if let Some(e) = ephemeral
        && (e == 0 || e > MAX_EPHEMERAL_BYTES)
    {
        errs.add(
            "ephemeralStorage",
            format!(
                "{} is outside 1 byte to {}",
                format_memory(e),
                format_memory(MAX_EPHEMERAL_BYTES)
            ),
        );
    }

    Some(ValidSpec {
        requested,
        normalized: normalized?,
        gpus: group_gpus(spec),
        grace_period_seconds: grace,
        shm_bytes: shm.unwrap_or(DEFAULT_SHM_BYTES),
        ephemeral_bytes: ephemeral.unwrap_or(DEFAULT_EPHEMERAL_BYTES),
        containers: containers_out,
    })
}

/// GPUs a group needs: init containers run alone, so the larger of the app containers'
/// sum and the largest init container.
/// What a `vm` group cannot have yet: its containers run in a guest that has no
/// NFS client mounts or GPUs passed through to it, and its disks are read-write. Refused by
/// field rather than accepted and silently missing.
fn check_vm(spec: &GroupSpec, errs: &mut Errors) {
    for (i, v) in spec.volumes.iter().enumerate() {
        // A vm group's disk is attached read-write (docs/vm.md).
        if v.disk.as_ref().is_some_and(|d| d.read_only) {
            errs.add(
                format!("volumes[{i}].disk.readOnly"),
                "read-only disk volumes are not supported with sandbox: vm yet",
            );
        }
        if v.nfs.is_some() {
            errs.add(
                format!("volumes[{i}].nfs"),
                "nfs volumes are not supported with sandbox: vm yet",
            );
        }
    }
    let all = spec.init_containers.iter().chain(&spec.containers);
    for (c, field) in all.zip(
        (0..spec.init_containers.len())
            .map(|i| format!("initContainers[{i}]"))
            .chain((0..spec.containers.len()).map(|i| format!("containers[{i}]"))),
    ) {
        if c.resources.as_ref().is_some_and(|r| r.gpu > 0) {
            errs.add(
                format!("{field}.resources.gpu"),
                "GPUs are not passed through to sandbox: vm groups",
            );
        }
    }
}

pub fn group_gpus(spec: &GroupSpec) -> u32 {
    let gpus = |c: &eci_api::v1::Container| c.resources.as_ref().map_or(0, |r| r.gpu);
    let app = spec
        .containers
        .iter()
        .map(gpus)
        .fold(0u32, u32::saturating_add);
    let init = spec.init_containers.iter().map(gpus).max().unwrap_or(0);
    app.max(init)
}

/// Parses an optional quantity field; empty means unset.
pub(super) fn parse_opt<E: std::fmt::Display>(
    value: &str,
    field: &str,
    parse: fn(&str) -> Result<u64, E>,
    errs: &mut Errors,
) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    parse(value)
        .map_err(|e| errs.add(field, e.to_string()))
        .ok()
}

fn check_labels(spec: &GroupSpec, errs: &mut Errors) {
    if spec.labels.len() > MAX_LABELS {
        errs.add(
            "labels",
            format!(
                "{} labels is over the limit of {MAX_LABELS}",
                spec.labels.len()
            ),
        );
    }
    for (k, v) in &spec.labels {
        let field = format!("labels[{}]", quote(k));
        let key_ok = !k.is_empty()
            && k.chars().count() <= MAX_LABEL_KEY
            && !k
                .chars()
                .any(|c| c.is_control() || c == ',' || c == '=' || c == '!');
        if !key_ok {
            errs.add(
                field.clone(),
                format!(
                    "key must be 1-{MAX_LABEL_KEY} characters without control characters, ',', '=' or '!'"
                ),
            );
        }
        if v.chars().count() > MAX_LABEL_VALUE || v.chars().any(|c| c.is_control()) {
            errs.add(
                field,
                format!("value must be 0-{MAX_LABEL_VALUE} characters without control characters"),
            );
        }
    }
}

fn check_security_context(spec: &GroupSpec, errs: &mut Errors) {
    let Some(sc) = &spec.security_context else {
        return;
    };
    for (flag, field) in [
        (sc.host_network, "hostNetwork"),
        (sc.host_pid, "hostPid"),
        (sc.host_ipc, "hostIpc"),
    ] {
        if flag {
            errs.add(
                format!("securityContext.{field}"),
                "is not supported: a group never shares the host's namespaces",
            );
        }
    }
    if sc.sysctls.len() > MAX_SYSCTLS {
        errs.add(
            "securityContext.sysctls",
            format!(
                "{} sysctls is over the limit of {MAX_SYSCTLS}",
                sc.sysctls.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    for (i, s) in sc.sysctls.iter().enumerate() {
        let path = format!("securityContext.sysctls[{i}]");
        if s.name.len() > MAX_SYSCTL_NAME {
            errs.add(
                format!("{path}.name"),
                format!("{} is longer than {MAX_SYSCTL_NAME} bytes", quote(&s.name)),
            );
        } else if !sysctl::allowed(&s.name) {
            errs.add(
                format!("{path}.name"),
                format!(
                    "{} is not allowed; allowed: kernel.shm*, kernel.msg*, kernel.sem, \
                     fs.mqueue.*, net.* except net.core.rmem_max (dot-separated names)",
                    quote(&s.name)
                ),
            );
        } else if !seen.insert(s.name.as_str()) {
            errs.add(
                format!("{path}.name"),
                format!("{} is set twice", quote(&s.name)),
            );
        }
        if s.value.is_empty() || s.value.contains(['\n', '\0']) {
            errs.add(format!("{path}.value"), "must be a non-empty single line");
        } else if s.value.len() > MAX_SYSCTL_VALUE {
            errs.add(
                format!("{path}.value"),
                format!(
                    "{} bytes is over the limit of {MAX_SYSCTL_VALUE}",
                    s.value.len()
                ),
            );
        }
    }
}

fn check_credentials(spec: &GroupSpec, errs: &mut Errors) {
    if spec.image_registry_credentials.len() > MAX_CREDENTIALS {
        errs.add(
            "imageRegistryCredentials",
            format!(
                "{} credentials is over the limit of {MAX_CREDENTIALS}",
                spec.image_registry_credentials.len()
            ),
        );
    }
    let mut servers = HashSet::new();
    for (i, c) in spec.image_registry_credentials.iter().enumerate() {
        let path = format!("imageRegistryCredentials[{i}]");
        if c.server.len() > MAX_SERVER {
            errs.add(
                format!("{path}.server"),
                format!("{} is longer than {MAX_SERVER} bytes", quote(&c.server)),
            );
        } else if c.server.is_empty() || c.server.contains(['/', ' ']) {
            errs.add(
                format!("{path}.server"),
                "must be a registry host[:port] without scheme or path",
            );
        } else if !servers.insert(c.server.as_str()) {
            errs.add(
                format!("{path}.server"),
                format!("{} has credentials twice", quote(&c.server)),
            );
        }
        if c.username.is_empty() {
            errs.add(format!("{path}.username"), "is required");
        }
        for (field, v) in [("username", &c.username), ("password", &c.password)] {
            if v.len() > MAX_SECRET {
                errs.add(
                    format!("{path}.{field}"),
                    format!("{} bytes is over the limit of {MAX_SECRET}", v.len()),
                );
            }
        }
    }
}
