//! The per-field admission matrix: for every field of `GroupSpec` (walked from the
//! compiled proto descriptor, so a field added to the proto without a row here fails the
//! test), a value this agent cannot honour, and the answer it must get: INVALID_ARGUMENT
//! or UNIMPLEMENTED, naming the field. docs/api.md's field table is this matrix.

use std::collections::BTreeSet;

use eci_api::v1::*;
use prost::Message;
use prost_types::{FileDescriptorSet, field_descriptor_proto::Type};

use super::{SpecError, admit, limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Invalid,
    Unimplemented,
}
use Want::*;

/// Fields every value of which is honoured (a bool the runtime applies either way).
const HONOURED: &[&str] = &[
    "containers.volumeMounts.readOnly",
    "containers.securityContext.readOnlyRootFilesystem",
    "containers.securityContext.allowPrivilegeEscalation",
    "volumes.disk.readOnly",
    "volumes.nfs.readOnly",
];

struct Case {
    /// The proto field (camelCase, no indices; `initContainers` rows are `containers`).
    field: &'static str,
    want: Want,
    /// The start of the field path the refusal must name.
    names: &'static str,
    mutate: fn(&mut GroupSpec),
}

fn base() -> GroupSpec {
    GroupSpec {
        name: "web".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        restart_policy: "Always".into(),
        image_registry_credentials: vec![RegistryCredential {
            server: "registry.example.com".into(),
            username: "u".into(),
            password: "p".into(),
        }],
        cpu: "1".into(),
        memory: "2Gi".into(),
        security_context: Some(GroupSecurityContext {
            sysctls: vec![Sysctl {
                name: "net.ipv4.ip_forward".into(),
                value: "1".into(),
            }],
            ..Default::default()
        }),
        network: Some(NetworkSpec {
            dns: Some(DnsConfig {
                nameservers: vec!["10.0.0.2".into()],
                searches: vec!["svc.local".into()],
                options: vec!["ndots:2".into()],
            }),
            ..Default::default()
        }),
        volumes: vec![
            Volume {
                name: "v".into(),
                empty_dir: Some(EmptyDirVolume::default()),
                ..Default::default()
            },
            Volume {
                name: "c".into(),
                config_file: Some(ConfigFileVolume {
                    files: vec![ConfigFileItem {
                        path: "a.conf".into(),
                        content: "x=1\n".into(),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            },
        ],
        init_containers: vec![Container {
            name: "init".into(),
            image: "busybox:1".into(),
            command: vec!["true".into()],
            ..Default::default()
        }],
        containers: vec![Container {
            name: "app".into(),
            image: "busybox:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec!["sleep 1".into()],
            working_dir: "/srv".into(),
            env: vec![EnvVar {
                name: "A".into(),
                value: "b".into(),
            }],
            ports: vec![ContainerPort {
                name: "http".into(),
                container_port: 80,
                protocol: "TCP".into(),
            }],
            resources: Some(ResourceRequirements {
                cpu: "500m".into(),
                memory: "1Gi".into(),
                gpu: 0,
            }),
            volume_mounts: vec![VolumeMount {
                name: "v".into(),
                mount_path: "/data".into(),
                sub_path: "x".into(),
                read_only: false,
            }],
            security_context: Some(SecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                capabilities: Some(Capabilities {
                    add: vec!["NET_RAW".into()],
                    drop: vec!["MKNOD".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn c0(s: &mut GroupSpec) -> &mut Container {
    &mut s.containers[0]
}
fn res(s: &mut GroupSpec) -> &mut ResourceRequirements {
    c0(s).resources.get_or_insert_with(Default::default)
}
fn sc(s: &mut GroupSpec) -> &mut SecurityContext {
    c0(s).security_context.get_or_insert_with(Default::default)
}
fn caps(s: &mut GroupSpec) -> &mut Capabilities {
    sc(s).capabilities.get_or_insert_with(Default::default)
}
fn gsc(s: &mut GroupSpec) -> &mut GroupSecurityContext {
    s.security_context.get_or_insert_with(Default::default)
}
fn net(s: &mut GroupSpec) -> &mut NetworkSpec {
    s.network.get_or_insert_with(Default::default)
}
fn dns(s: &mut GroupSpec) -> &mut DnsConfig {
    net(s).dns.get_or_insert_with(Default::default)
}
fn file(s: &mut GroupSpec) -> &mut ConfigFileItem {
    &mut s.volumes[1]
        .config_file
        .as_mut()
        .expect("base has a configFile")
        .files[0]
}
fn exec_probe() -> Option<Probe> {
    Some(Probe {
        exec: Some(ExecAction {
            command: vec!["true".into()],
        }),
        ..Default::default()
    })
}
fn exec_hook() -> Option<LifecycleHandler> {
    Some(LifecycleHandler {
        exec: Some(ExecAction {
            command: vec!["true".into()],
        }),
        ..Default::default()
    })
}

fn cases() -> Vec<Case> {
    macro_rules! case {
        ($field:expr, $want:expr, $names:expr, $m:expr) => {
            Case {
                field: $field,
                want: $want,
                names: $names,
                mutate: $m,
            }
        };
    }
    vec![
        case!("name", Invalid, "name", |s| s.name = "Web_1".into()),
        case!("labels", Invalid, "labels[", |s| {
            s.labels.insert("k".repeat(64), "v".into());
        }),
        case!("restartPolicy", Invalid, "restartPolicy", |s| s
            .restart_policy =
            "Sometimes".into()),
        case!("cpu", Invalid, "cpu", |s| s.cpu = "65".into()),
        case!("memory", Invalid, "memory", |s| s.memory = "2GB".into()),
        case!(
            "terminationGracePeriodSeconds",
            Invalid,
            "terminationGracePeriodSeconds",
            |s| s.termination_grace_period_seconds = Some(3601)
        ),
        case!("shmSize", Invalid, "shmSize", |s| s.shm_size = "1Gi".into()),
        case!("ephemeralStorage", Invalid, "ephemeralStorage", |s| {
            s.ephemeral_storage = "0".into()
        }),
        case!(
            "securityContext.sysctls.name",
            Invalid,
            "securityContext.sysctls[1].name",
            |s| gsc(s).sysctls.push(Sysctl {
                name: "kernel.shm".into(),
                value: "1".into()
            })
        ),
        case!(
            "securityContext.sysctls.value",
            Invalid,
            "securityContext.sysctls[0].value",
            |s| gsc(s).sysctls[0].value = "1\n2".into()
        ),
        case!(
            "securityContext.hostNetwork",
            Invalid,
            "securityContext.hostNetwork",
            |s| gsc(s).host_network = true
        ),
        case!(
            "securityContext.hostPid",
            Invalid,
            "securityContext.hostPid",
            |s| gsc(s).host_pid = true
        ),
        case!(
            "securityContext.hostIpc",
            Invalid,
            "securityContext.hostIpc",
            |s| gsc(s).host_ipc = true
        ),
        case!(
            "imageRegistryCredentials",
            Invalid,
            "imageRegistryCredentials[1].server",
            |s| s.image_registry_credentials.push(RegistryCredential {
                server: "https://registry.example.com/v2".into(),
                username: "u".into(),
                password: "p".into()
            })
        ),
        case!("imageCache.name", Invalid, "imageCache.name", |s| {
            s.image_cache = Some(ImageCacheSelector {
                name: "Warm_1".into(),
                ..Default::default()
            })
        }),
        case!("imageCache", Invalid, "imageCache", |s| {
            s.image_cache = Some(ImageCacheSelector {
                name: "warm-1".into(),
                auto_match: true,
            })
        }),
        case!("network.eni", Invalid, "network.eni", |s| {
            net(s).eni = Some(EniSelector {
                mac_address: "02:zz:00:00:00:01".into(),
                ..Default::default()
            });
            net(s).ipv4_address = "10.0.0.5/24".into();
        }),
        case!("network.ipv4Address", Invalid, "network.ipv4Address", |s| {
            net(s).ipv4_address = "10.0.0.5/24".into()
        }),
        case!("network.ipv4Gateway", Invalid, "network.ipv4Gateway", |s| {
            net(s).ipv4_gateway = "10.0.0.1".into()
        }),
        case!("network.ipv6Address", Invalid, "network.ipv6Address", |s| {
            net(s).ipv6_address = "fd00::5/64".into()
        }),
        case!("network.ipv6Gateway", Invalid, "network.ipv6Gateway", |s| {
            net(s).ipv6_gateway = "fd00::1".into()
        }),
        case!("network.mtu", Invalid, "network.mtu", |s| net(s).mtu = 1500),
        case!(
            "network.dns.nameservers",
            Invalid,
            "network.dns.nameservers[0]",
            |s| dns(s).nameservers[0] = "ns1".into()
        ),
        case!(
            "network.dns.searches",
            Invalid,
            "network.dns.searches[0]",
            |s| dns(s).searches[0] = "a b".into()
        ),
        case!(
            "network.dns.options",
            Invalid,
            "network.dns.options[0]",
            |s| dns(s).options[0] = "x".repeat(65)
        ),
        case!(
            "network.securityGroupRules",
            Invalid,
            "network.securityGroupRules[0]",
            |s| net(s).security_group_rules.push(SecurityGroupRule {
                direction: "sideways".into(),
                protocol: "tcp".into(),
                port_range: "80/80".into(),
                cidr: "0.0.0.0/0".into(),
                ..Default::default()
            })
        ),
        case!("sandbox", Invalid, "sandbox", |s| s.sandbox = "kata".into()),
        case!("containers", Invalid, "containers", |s| s
            .containers
            .clear()),
        case!(
            "initContainers",
            Invalid,
            "initContainers[0].livenessProbe",
            |s| s.init_containers[0].liveness_probe = exec_probe()
        ),
        case!("volumes", Invalid, "volumes", |s| {
            for i in 0..limits::MAX_VOLUMES {
                s.volumes.push(Volume {
                    name: format!("e{i}"),
                    empty_dir: Some(EmptyDirVolume::default()),
                    ..Default::default()
                });
            }
        }),
        case!("containers.name", Invalid, "containers[0].name", |s| c0(
            s
        )
        .name =
            "App".into()),
        case!("containers.image", Invalid, "containers[0].image", |s| {
            c0(s).image = "Not A Ref".into()
        }),
        case!(
            "containers.imagePullPolicy",
            Invalid,
            "containers[0].imagePullPolicy",
            |s| c0(s).image_pull_policy = "Sometimes".into()
        ),
        case!(
            "containers.command",
            Invalid,
            "containers[0].command[0]",
            |s| c0(s).command[0] = "a\0b".into()
        ),
        case!("containers.args", Invalid, "containers[0].args[0]", |s| {
            c0(s).args[0] = "x".repeat(limits::MAX_ARG_STRING + 1)
        }),
        case!(
            "containers.workingDir",
            Invalid,
            "containers[0].workingDir",
            |s| c0(s).working_dir = "srv".into()
        ),
        case!("containers.env", Invalid, "containers[0].env", |s| {
            c0(s).env = (0..=limits::MAX_ENV)
                .map(|i| EnvVar {
                    name: format!("E{i}"),
                    value: String::new(),
                })
                .collect()
        }),
        case!(
            "containers.env.name",
            Invalid,
            "containers[0].env[0].name",
            |s| c0(s).env[0].name = "A=B".into()
        ),
        case!(
            "containers.env.value",
            Invalid,
            "containers[0].env[0]",
            |s| c0(s).env[0].value = "v".repeat(limits::MAX_ARG_STRING)
        ),
        case!(
            "containers.ports.name",
            Invalid,
            "containers[0].ports[0].name",
            |s| c0(s).ports[0].name = "a-very-long-port-name".into()
        ),
        case!(
            "containers.ports.containerPort",
            Invalid,
            "containers[0].ports[0].containerPort",
            |s| c0(s).ports[0].container_port = 70000
        ),
        case!(
            "containers.ports.protocol",
            Invalid,
            "containers[0].ports[0].protocol",
            |s| c0(s).ports[0].protocol = "SCTP".into()
        ),
        case!(
            "containers.resources.cpu",
            Invalid,
            "containers[0].resources.cpu",
            |s| res(s).cpu = "1m".into()
        ),
        case!(
            "containers.resources.memory",
            Invalid,
            "containers[0].resources.memory",
            |s| res(s).memory = "1Mi".into()
        ),
        case!(
            "containers.resources.gpu",
            Unimplemented,
            "containers[0].resources.gpu",
            |s| res(s).gpu = 1
        ),
        case!(
            "containers.volumeMounts.name",
            Invalid,
            "containers[0].volumeMounts[0].name",
            |s| c0(s).volume_mounts[0].name = "nope".into()
        ),
        case!(
            "containers.volumeMounts.mountPath",
            Invalid,
            "containers[0].volumeMounts[0].mountPath",
            |s| c0(s).volume_mounts[0].mount_path = "/a//b".into()
        ),
        case!(
            "containers.volumeMounts.subPath",
            Invalid,
            "containers[0].volumeMounts[0].subPath",
            |s| c0(s).volume_mounts[0].sub_path = "../x".into()
        ),
        case!(
            "containers.livenessProbe",
            Invalid,
            "containers[0].livenessProbe.successThreshold",
            |s| c0(s).liveness_probe = Some(Probe {
                success_threshold: 2,
                ..exec_probe().expect("probe")
            })
        ),
        case!(
            "containers.readinessProbe",
            Invalid,
            "containers[0].readinessProbe.periodSeconds",
            |s| c0(s).readiness_probe = Some(Probe {
                period_seconds: 3601,
                ..exec_probe().expect("probe")
            })
        ),
        case!(
            "containers.readinessProbe.httpGet.scheme",
            Invalid,
            "containers[0].readinessProbe.httpGet.scheme",
            |s| c0(s).readiness_probe = Some(Probe {
                http_get: Some(HttpGetAction {
                    port: 80,
                    scheme: "GOPHER".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        ),
        case!(
            "containers.readinessProbe.httpGet.httpHeaders",
            Invalid,
            "containers[0].readinessProbe.httpGet.httpHeaders[0].value",
            |s| c0(s).readiness_probe = Some(Probe {
                http_get: Some(HttpGetAction {
                    port: 80,
                    http_headers: vec![HttpHeader {
                        name: "X".into(),
                        value: "a\r\nB: c".into(),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
        ),
        case!(
            "containers.startupProbe",
            Invalid,
            "containers[0].startupProbe.tcpSocket.port",
            |s| c0(s).startup_probe = Some(Probe {
                tcp_socket: Some(TcpSocketAction {
                    port: 0,
                    host: String::new(),
                }),
                ..Default::default()
            })
        ),
        case!(
            "containers.lifecycle.postStart",
            Invalid,
            "containers[0].lifecycle.postStart",
            |s| c0(s).lifecycle = Some(Lifecycle {
                post_start: Some(LifecycleHandler::default()),
                pre_stop: None
            })
        ),
        case!(
            "containers.lifecycle.preStop",
            Invalid,
            "containers[0].lifecycle.preStop.httpGet.host",
            |s| c0(s).lifecycle = Some(Lifecycle {
                post_start: None,
                pre_stop: Some(LifecycleHandler {
                    exec: None,
                    http_get: Some(HttpGetAction {
                        port: 80,
                        host: "example.com".into(),
                        ..Default::default()
                    }),
                })
            })
        ),
        case!(
            "containers.securityContext.runAsUser",
            Invalid,
            "containers[0].securityContext.runAsUser",
            |s| sc(s).run_as_user = Some(-1)
        ),
        case!(
            "containers.securityContext.runAsGroup",
            Invalid,
            "containers[0].securityContext.runAsGroup",
            |s| sc(s).run_as_group = Some(1 << 32)
        ),
        case!(
            "containers.securityContext.capabilities.add",
            Invalid,
            "containers[0].securityContext.capabilities.add[1]",
            |s| caps(s).add.push("SYS_ADMIN".into())
        ),
        case!(
            "containers.securityContext.capabilities.drop",
            Invalid,
            "containers[0].securityContext.capabilities.drop[1]",
            |s| caps(s).drop.push("NOPE".into())
        ),
        case!(
            "containers.securityContext.privileged",
            Invalid,
            "containers[0].securityContext.privileged",
            |s| sc(s).privileged = true
        ),
        case!("volumes.name", Invalid, "volumes[0].name", |s| s.volumes
            [0]
        .name =
            "V".into()),
        case!(
            "volumes.emptyDir.medium",
            Invalid,
            "volumes[0].emptyDir.medium",
            |s| s.volumes[0].empty_dir = Some(EmptyDirVolume {
                medium: "Disk".into(),
                ..Default::default()
            })
        ),
        case!(
            "volumes.emptyDir.sizeLimit",
            Invalid,
            "volumes[0].emptyDir.sizeLimit",
            |s| s.volumes[0].empty_dir = Some(EmptyDirVolume {
                size_limit: "1GB".into(),
                ..Default::default()
            })
        ),
        case!(
            "volumes.configFile.files.path",
            Invalid,
            "volumes[1].configFile.files[0].path",
            |s| file(s).path = "../x".into()
        ),
        case!(
            "volumes.configFile.files.content",
            Invalid,
            "volumes[1].configFile.files",
            |s| file(s).content = "x".repeat(limits::MAX_CONFIG_BYTES + 1)
        ),
        case!(
            "volumes.configFile.files.contentBase64",
            Invalid,
            "volumes[1].configFile.files[0]",
            |s| {
                let f = file(s);
                f.content.clear();
                f.content_base64 = "!!!!".into();
            }
        ),
        case!(
            "volumes.configFile.files.mode",
            Invalid,
            "volumes[1].configFile.files[0].mode",
            |s| file(s).mode = 0o1777
        ),
        case!(
            "volumes.disk.device",
            Invalid,
            "volumes[0].disk.device",
            |s| s.volumes[0] = Volume {
                name: "v".into(),
                disk: Some(DiskVolume {
                    device: "vdb/../sda".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        ),
        case!(
            "volumes.disk.fsType",
            Invalid,
            "volumes[0].disk.fsType",
            |s| s.volumes[0] = Volume {
                name: "v".into(),
                disk: Some(DiskVolume {
                    device: "/dev/vdb".into(),
                    fs_type: "btrfs".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        ),
        case!(
            "volumes.nfs.server",
            Invalid,
            "volumes[0].nfs.server",
            |s| s.volumes[0] = Volume {
                name: "v".into(),
                nfs: Some(NfsVolume {
                    server: "a/b".into(),
                    path: "/export".into(),
                    read_only: false
                }),
                ..Default::default()
            }
        ),
        case!("volumes.nfs.path", Invalid, "volumes[0].nfs.path", |s| s
            .volumes[0] =
            Volume {
                name: "v".into(),
                nfs: Some(NfsVolume {
                    server: "10.0.0.9".into(),
                    path: "export".into(),
                    read_only: false
                }),
                ..Default::default()
            }),
        case!("volumes.hostPath", Invalid, "volumes[0].hostPath", |s| s
            .volumes[0] =
            Volume {
                name: "v".into(),
                host_path: Some(HostPathVolume {
                    path: "/etc".into()
                }),
                ..Default::default()
            }),
    ]
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for ch in snake.chars() {
        if ch == '_' {
            up = true;
        } else if up {
            out.extend(ch.to_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}

/// Every leaf field path of `GroupSpec`, from the compiled descriptor; a map counts as a
/// leaf, and `initContainers` is folded into `containers` (the same message).
fn spec_fields() -> BTreeSet<String> {
    let set = FileDescriptorSet::decode(eci_api::FILE_DESCRIPTOR_SET).expect("descriptor");
    let messages: std::collections::HashMap<String, &prost_types::DescriptorProto> = set
        .file
        .iter()
        .filter(|f| f.package() == "eci.v1")
        .flat_map(|f| &f.message_type)
        .map(|m| (format!(".eci.v1.{}", m.name()), m))
        .collect();
    fn walk(
        messages: &std::collections::HashMap<String, &prost_types::DescriptorProto>,
        msg: &str,
        prefix: &str,
        out: &mut BTreeSet<String>,
    ) {
        let m = messages[msg];
        for f in &m.field {
            let path = if prefix.is_empty() {
                camel(f.name())
            } else {
                format!("{prefix}.{}", camel(f.name()))
            };
            match messages.get(f.type_name()) {
                Some(_) if f.r#type() == Type::Message => walk(messages, f.type_name(), &path, out),
                // Map entries are nested types, not in `messages`: a leaf.
                _ => {
                    out.insert(path.replacen("initContainers", "containers", 1));
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&messages, ".eci.v1.GroupSpec", "", &mut out);
    out
}

#[test]
fn the_base_spec_is_admitted() {
    admit(&base()).expect("the matrix's base spec is admitted");
}

#[test]
fn every_spec_field_has_a_row() {
    let rows = cases();
    let covered = |leaf: &str| {
        HONOURED.contains(&leaf)
            || rows.iter().any(|c| {
                leaf == c.field
                    || leaf.starts_with(&format!("{}.", c.field))
                    || (c.field == "initContainers" && leaf.starts_with("containers."))
            })
    };
    let missing: Vec<String> = spec_fields().into_iter().filter(|f| !covered(f)).collect();
    assert!(
        missing.is_empty(),
        "fields with no admission row: {missing:?}"
    );
    assert!(spec_fields().len() > 60, "the walk found too few fields");
}

#[test]
fn every_field_refuses_what_cannot_be_honoured_and_names_itself() {
    for c in cases() {
        let mut s = base();
        (c.mutate)(&mut s);
        let err = match admit(&s) {
            Ok(_) => panic!("{}: accepted", c.field),
            Err(e) => e,
        };
        let kind = match &err {
            SpecError::Invalid(_) => Invalid,
            SpecError::Unimplemented(_) => Unimplemented,
        };
        assert_eq!(kind, c.want, "{}: {err}", c.field);
        assert!(
            err.errors().iter().any(|e| e.field.starts_with(c.names)),
            "{}: does not name {}: {err}",
            c.field,
            c.names
        );
        let msg = err.to_string();
        assert!(msg.contains(c.names), "{}: {msg}", c.field);
        assert!(msg.len() < 2048, "{}: {} bytes", c.field, msg.len());
    }
}

#[test]
fn invalid_wins_over_unimplemented_and_lists_everything() {
    let mut s = base();
    res(&mut s).gpu = 1;
    c0(&mut s).name = "App".into();
    res(&mut s).cpu = "0m".into();
    let err = admit(&s).expect_err("refused");
    assert!(matches!(err, SpecError::Invalid(_)), "{err}");
    let fields: Vec<&str> = err.errors().iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["containers[0].name", "containers[0].resources.cpu"],
        "{err}"
    );
    let mut s = base();
    res(&mut s).gpu = 1;
    let err = admit(&s).expect_err("refused");
    assert!(matches!(err, SpecError::Unimplemented(_)), "{err}");
    assert_eq!(err.errors().len(), 1, "{err}");
}

#[test]
fn an_oversized_spec_is_refused_before_anything_else() {
    let mut s = base();
    c0(&mut s).env[0].value = "v".repeat(limits::MAX_SPEC_BYTES);
    res(&mut s).gpu = 1;
    let err = admit(&s).expect_err("refused");
    assert!(matches!(err, SpecError::Invalid(_)), "{err}");
    assert_eq!(err.errors().len(), 1, "{err}");
    assert_eq!(err.errors()[0].field, "spec");
    assert!(err.to_string().contains("1572864"), "{err}");
}

#[test]
fn refusals_of_huge_values_stay_short() {
    let huge = "é".repeat(3 << 20);
    let mut s = base();
    s.restart_policy = huge.clone();
    res(&mut s).cpu = huge.clone();
    c0(&mut s).working_dir = huge.clone();
    c0(&mut s).volume_mounts[0].mount_path = huge.clone();
    let err = admit(&s).expect_err("refused");
    assert!(err.to_string().len() < 2048, "{}", err.to_string().len());

    // More problems than are listed: the rest are counted.
    let mut s = base();
    c0(&mut s).env = (0..500)
        .map(|_| EnvVar {
            name: "=".into(),
            value: String::new(),
        })
        .collect();
    let msg = admit(&s).expect_err("refused").to_string();
    assert!(msg.ends_with("and 480 more"), "{msg}");
    assert!(msg.len() < 4096, "{}", msg.len());
}

#[test]
fn cpu_quota_minimum_and_maximum_are_named_per_container() {
    for (cpu, want) in [
        ("1m", "below the minimum 10m"),
        ("0m", "below the minimum 10m"),
    ] {
        let mut s = base();
        res(&mut s).cpu = cpu.into();
        let msg = admit(&s).expect_err(cpu).to_string();
        assert!(
            msg.contains("containers[0].resources.cpu") && msg.contains(want),
            "{msg}"
        );
    }
    assert!(
        {
            let mut s = base();
            res(&mut s).cpu = "10m".into();
            admit(&s).is_ok()
        },
        "10m is the smallest CFS quota"
    );
    let mut s = base();
    s.cpu.clear();
    s.memory.clear();
    res(&mut s).cpu = "65".into();
    let err = admit(&s).expect_err("65 vCPU");
    let first = &err.errors()[0];
    assert_eq!(first.field, "containers[0].resources.cpu", "{err}");
    assert!(
        first
            .message
            .contains("65 vCPU is more than the largest offered size, 64 vCPU"),
        "{err}"
    );
    assert!(!err.to_string().contains("/ 0"), "{err}");
}

#[test]
fn probes_and_hooks_are_admitted() {
    let mut s = base();
    c0(&mut s).liveness_probe = exec_probe();
    c0(&mut s).readiness_probe = Some(Probe {
        http_get: Some(HttpGetAction {
            path: "/healthz".into(),
            port: 8080,
            http_headers: vec![HttpHeader {
                name: "X-Probe".into(),
                value: "1".into(),
            }],
            ..Default::default()
        }),
        period_seconds: 1,
        ..Default::default()
    });
    c0(&mut s).startup_probe = Some(Probe {
        tcp_socket: Some(TcpSocketAction {
            port: 8080,
            host: "127.0.0.1".into(),
        }),
        ..Default::default()
    });
    c0(&mut s).lifecycle = Some(Lifecycle {
        post_start: exec_hook(),
        pre_stop: exec_hook(),
    });
    admit(&s).expect("probes and hooks are admitted");
}
