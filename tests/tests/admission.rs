//! Admission through the real gRPC API: a representative set of fields the agent cannot
//! honour (unbuilt features, values the kernel would refuse at run time, values over a
//! limit), each refused on Create and on Update with its code and field path, nothing
//! stored; and the hostile sizes a stock client must read as a short INVALID_ARGUMENT.
//! The full per-field matrix is the agent's unit test `validate::matrix`.

use std::path::Path;
use std::process::Command;

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::*;
use eci_tests::{Agent, channel, text};
use prost::Message;
use tonic::Code;

const NODE: &str = "[node]\ncpu = \"16\"\nmemory = \"64Gi\"\n";
const CREATE_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/create.py");

fn base(name: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        cpu: "1".into(),
        memory: "2Gi".into(),
        volumes: vec![Volume {
            name: "v".into(),
            empty_dir: Some(EmptyDirVolume::default()),
            ..Default::default()
        }],
        containers: vec![Container {
            name: "app".into(),
            image: "busybox:1".into(),
            command: vec!["sleep".into(), "3600".into()],
            resources: Some(ResourceRequirements {
                cpu: "500m".into(),
                memory: "512Mi".into(),
                gpu: 0,
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn c0(s: &mut GroupSpec) -> &mut Container {
    &mut s.containers[0]
}

fn mount(s: &mut GroupSpec, path: &str) {
    c0(s).volume_mounts = vec![VolumeMount {
        name: "v".into(),
        mount_path: path.into(),
        ..Default::default()
    }];
}

fn sysctl(s: &mut GroupSpec, name: &str) {
    s.security_context = Some(GroupSecurityContext {
        sysctls: vec![Sysctl {
            name: name.into(),
            value: "1".into(),
        }],
        ..Default::default()
    });
}

fn probe() -> Option<Probe> {
    Some(Probe {
        exec: Some(ExecAction {
            command: vec!["/bin/false".into()],
        }),
        period_seconds: 1,
        failure_threshold: 1,
        ..Default::default()
    })
}

/// (what, code, the field path the message must name, the change to a valid spec).
type Row = (&'static str, Code, &'static str, fn(&mut GroupSpec));

fn rows() -> Vec<Row> {
    vec![
        (
            "liveness probe with a success threshold",
            Code::InvalidArgument,
            "containers[0].livenessProbe.successThreshold",
            |s| {
                c0(s).liveness_probe = probe().map(|p| Probe {
                    success_threshold: 2,
                    ..p
                })
            },
        ),
        (
            "readiness probe over FTP",
            Code::InvalidArgument,
            "containers[0].readinessProbe.httpGet.scheme",
            |s| {
                c0(s).readiness_probe = Some(Probe {
                    http_get: Some(HttpGetAction {
                        port: 21,
                        scheme: "FTP".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
        ),
        (
            "postStart hook with no action",
            Code::InvalidArgument,
            "containers[0].lifecycle.postStart",
            |s| {
                c0(s).lifecycle = Some(Lifecycle {
                    post_start: Some(LifecycleHandler::default()),
                    pre_stop: None,
                })
            },
        ),
        (
            "gpu",
            Code::Unimplemented,
            "containers[0].resources.gpu",
            |s| {
                if let Some(r) = c0(s).resources.as_mut() {
                    r.gpu = 1;
                }
            },
        ),
        (
            "eni not on this host",
            Code::FailedPrecondition,
            "network.eni",
            |s| {
                s.network = Some(NetworkSpec {
                    eni: Some(EniSelector {
                        mac_address: "02:00:00:00:00:99".into(),
                        ..Default::default()
                    }),
                    ipv4_address: "10.0.3.17/24".into(),
                    ..Default::default()
                })
            },
        ),
        (
            "address without an ENI",
            Code::InvalidArgument,
            "network.ipv4Address",
            |s| {
                s.network = Some(NetworkSpec {
                    ipv4_address: "10.0.3.17/24".into(),
                    ..Default::default()
                })
            },
        ),
        (
            "security group",
            Code::InvalidArgument,
            "network.securityGroupRules[0]",
            |s| {
                s.network = Some(NetworkSpec {
                    security_group_rules: vec![SecurityGroupRule {
                        direction: "ingress".into(),
                        protocol: "tcp".into(),
                        port_range: "80/70".into(),
                        cidr: "0.0.0.0/0".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            },
        ),
        (
            "disk volume that is no block device",
            Code::FailedPrecondition,
            "volumes[0].disk.device",
            |s| {
                s.volumes[0] = Volume {
                    name: "v".into(),
                    disk: Some(DiskVolume {
                        device: "/dev/null".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            },
        ),
        (
            "disk volume leaving /dev",
            Code::InvalidArgument,
            "volumes[0].disk.device",
            |s| {
                s.volumes[0] = Volume {
                    name: "v".into(),
                    disk: Some(DiskVolume {
                        device: "/dev/../etc/passwd".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            },
        ),
        (
            "nfs volume path",
            Code::InvalidArgument,
            "volumes[0].nfs.path",
            |s| {
                s.volumes[0] = Volume {
                    name: "v".into(),
                    nfs: Some(NfsVolume {
                        server: "10.0.0.9".into(),
                        path: "export".into(),
                        read_only: true,
                    }),
                    ..Default::default()
                }
            },
        ),
        (
            "credentials with a URL for a server",
            Code::InvalidArgument,
            "imageRegistryCredentials[0].server",
            |s| {
                s.image_registry_credentials = vec![RegistryCredential {
                    server: "https://registry.example.com/v2".into(),
                    username: "u".into(),
                    password: "p".into(),
                }]
            },
        ),
        (
            "image cache name",
            Code::InvalidArgument,
            "imageCache.name",
            |s| {
                s.image_cache = Some(ImageCacheSelector {
                    name: "Warm_1".into(),
                    auto_match: false,
                })
            },
        ),
        (
            "image cache both",
            Code::InvalidArgument,
            "imageCache",
            |s| {
                s.image_cache = Some(ImageCacheSelector {
                    name: "warm".into(),
                    auto_match: true,
                })
            },
        ),
        (
            "1m cpu",
            Code::InvalidArgument,
            "containers[0].resources.cpu",
            |s| {
                if let Some(r) = c0(s).resources.as_mut() {
                    r.cpu = "1m".into();
                }
            },
        ),
        (
            "0m cpu",
            Code::InvalidArgument,
            "containers[0].resources.cpu",
            |s| {
                if let Some(r) = c0(s).resources.as_mut() {
                    r.cpu = "0m".into();
                }
            },
        ),
        (
            "65 cpu",
            Code::InvalidArgument,
            "containers[0].resources.cpu",
            |s| {
                s.cpu.clear();
                s.memory.clear();
                if let Some(r) = c0(s).resources.as_mut() {
                    r.cpu = "65".into();
                }
            },
        ),
        (
            "kernel.shm",
            Code::InvalidArgument,
            "securityContext.sysctls[0].name",
            |s| sysctl(s, "kernel.shm"),
        ),
        (
            "net.ipv4.",
            Code::InvalidArgument,
            "securityContext.sysctls[0].name",
            |s| sysctl(s, "net.ipv4."),
        ),
        (
            "no such net sysctl",
            Code::InvalidArgument,
            "securityContext.sysctls[0].name",
            |s| sysctl(s, "net.ipv4.no_such_knob"),
        ),
        (
            "sysctl value the kernel refuses",
            Code::InvalidArgument,
            "securityContext.sysctls[0].value",
            |s| {
                sysctl(s, "net.ipv4.ip_forward");
                if let Some(sc) = s.security_context.as_mut() {
                    sc.sysctls[0].value = "yes".into();
                }
            },
        ),
        (
            "NUL mountPath",
            Code::InvalidArgument,
            "containers[0].volumeMounts[0].mountPath",
            |s| mount(s, "/data\0x"),
        ),
        (
            "// mountPath",
            Code::InvalidArgument,
            "containers[0].volumeMounts[0].mountPath",
            |s| mount(s, "/data//x"),
        ),
        (
            ".. mountPath",
            Code::InvalidArgument,
            "containers[0].volumeMounts[0].mountPath",
            |s| mount(s, "/data/../etc"),
        ),
        (
            "10,001 env",
            Code::InvalidArgument,
            "containers[0].env",
            |s| {
                c0(s).env = (0..10_001)
                    .map(|i| EnvVar {
                        name: format!("E{i}"),
                        value: "v".into(),
                    })
                    .collect()
            },
        ),
        // Both kinds: INVALID_ARGUMENT wins and lists the invalid field.
        (
            "gpu and 1m cpu",
            Code::InvalidArgument,
            "containers[0].resources.cpu",
            |s| {
                if let Some(r) = c0(s).resources.as_mut() {
                    r.gpu = 1;
                    r.cpu = "1m".into();
                }
            },
        ),
    ]
}

#[tokio::test]
async fn unhonourable_fields_are_refused_on_create_and_update_with_their_path() {
    let agent = Agent::start(NODE).expect("agent");
    let mut client = ContainerGroupsClient::new(channel(&agent.socket()).await.expect("channel"));
    // The valid base is admitted: the refusals below are the change's.
    let ok = client
        .create(CreateGroupRequest {
            spec: Some(base("kept")),
        })
        .await
        .expect("the base spec is admitted")
        .into_inner();
    let rows = rows();
    assert!(rows.len() >= 20);
    for (i, (what, code, field, mutate)) in rows.iter().enumerate() {
        let mut spec = base(&format!("refused-{i}"));
        mutate(&mut spec);
        let err = client
            .create(CreateGroupRequest {
                spec: Some(spec.clone()),
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), *code, "{what}: {}", err.message());
        assert!(err.message().contains(field), "{what}: {}", err.message());
        assert!(
            err.message().len() <= 4096,
            "{what}: {}",
            err.message().len()
        );

        // The same spec as an Update of the existing group: same answer, nothing changed.
        spec.name = "kept".into();
        let err = client
            .update(UpdateGroupRequest { spec: Some(spec) })
            .await
            .expect_err(what);
        assert_eq!(err.code(), *code, "update {what}: {}", err.message());
        assert!(
            err.message().contains(field),
            "update {what}: {}",
            err.message()
        );
    }
    let list = client
        .list(ListGroupsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: Vec<&str> = list
        .groups
        .iter()
        .filter_map(|g| g.spec.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert_eq!(names, ["kept"], "a refused spec was stored");
    let kept = client
        .get(GetGroupRequest {
            name: "kept".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        kept.generation, ok.generation,
        "a refused update changed the group"
    );
}

/// Encoded CreateGroupRequest files for the hostile cases, the field each answer must
/// name, and the most bytes it may take (a list of problems is cut at 4 KiB encoded).
fn hostile_requests(dir: &Path) -> Vec<(std::path::PathBuf, &'static str, usize)> {
    let mut cases: Vec<(&str, GroupSpec, &str)> = Vec::new();
    let mut s = base("cpu-1m");
    if let Some(r) = c0(&mut s).resources.as_mut() {
        r.cpu = "1m".into();
    }
    cases.push(("cpu-1m", s, "containers[0].resources.cpu"));
    let mut s = base("no-sysctl");
    sysctl(&mut s, "kernel.shm");
    cases.push(("no-sysctl", s, "securityContext.sysctls[0].name"));
    let mut s = base("env-6mb");
    c0(&mut s).env = vec![EnvVar {
        name: "BIG".into(),
        value: "x".repeat(6 << 20),
    }];
    // Over the whole-spec limit too: that one is named, before any field work.
    cases.push(("env-6mb", s, "limit of 1572864 bytes"));
    let mut s = base("spec-2mb");
    c0(&mut s).env = (0..40)
        .map(|i| EnvVar {
            name: format!("E{i}"),
            value: "y".repeat(50 << 10),
        })
        .collect();
    cases.push(("spec-2mb", s, "limit of 1572864 bytes"));
    let mut s = base("value-200k");
    c0(&mut s).env = vec![EnvVar {
        name: "BIG".into(),
        value: "z".repeat(200 << 10),
    }];
    cases.push(("value-200k", s, "containers[0].env[0]"));
    // Many problems with non-ASCII values: each is quoted short, the list is cut at 20,
    // and the message is cut by its percent-encoded size.
    let mut s = base("many-mounts");
    c0(&mut s).volume_mounts = (0..60)
        .map(|i| VolumeMount {
            name: format!("é{i}{}", "é".repeat(3000)),
            mount_path: format!("é{i}{}", "é".repeat(3000)),
            ..Default::default()
        })
        .collect();
    cases.push(("many-mounts", s, "containers[0].volumeMounts[0].name"));
    cases
        .into_iter()
        .map(|(name, spec, field)| {
            let path = dir.join(format!("{name}.bin"));
            let req = CreateGroupRequest { spec: Some(spec) };
            std::fs::write(&path, req.encode_to_vec()).expect("writing a request");
            let max = if name == "many-mounts" { 4096 } else { 1024 };
            (path, field, max)
        })
        .collect()
}

#[tokio::test]
async fn hostile_sizes_get_a_short_invalid_argument_over_tonic() {
    let agent = Agent::start(NODE).expect("agent");
    let mut client = ContainerGroupsClient::new(channel(&agent.socket()).await.expect("channel"));
    for (path, field, max) in hostile_requests(agent.root()) {
        let bytes = std::fs::read(&path).expect("request");
        let req = CreateGroupRequest::decode(bytes.as_slice()).expect("decode");
        let err = client.create(req).await.expect_err("refused");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{path:?}: {}",
            err.message()
        );
        assert!(err.message().contains(field), "{path:?}: {}", err.message());
        assert!(
            err.message().len() < max,
            "{path:?}: {} bytes",
            err.message().len()
        );
    }
}

/// Debian's interpreter, where python3-grpcio is installed (see python_client.rs).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn a_stock_grpcio_client_reads_invalid_argument_not_resource_exhausted() {
    let agent = Agent::start(NODE).expect("agent");
    let cases = hostile_requests(agent.root());
    let out = Command::new(python())
        .arg(CREATE_PY)
        .arg(agent.socket())
        .args(cases.iter().map(|(p, _, _)| p))
        .output()
        .expect("running create.py (needs python3-grpcio)");
    assert!(out.status.success(), "create.py: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    for (path, field, max) in &cases {
        let line = said
            .lines()
            .find(|l| l.starts_with(&*path.to_string_lossy()))
            .unwrap_or_else(|| panic!("no answer for {path:?}: {said}"));
        let mut parts = line.splitn(4, ' ');
        let (_, code, len, details) = (
            parts.next(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        assert_eq!(code, "INVALID_ARGUMENT", "{line}");
        assert!(details.contains(field), "{line}");
        let len: usize = len.parse().expect("length");
        assert!(len < *max, "{line}");
    }
}

#[test]
fn accepted_sysctls_and_the_smallest_cpu_run() {
    // The other side of the kernel checks: what admission lets through starts, with the
    // sysctls set in the group's namespaces and the smallest CFS quota written.
    use eci_tests::scenario::{busybox_agent, group, wait_log};
    let agent = busybox_agent();
    let spec = group(
        "runs",
        "Never",
        &[(
            "app",
            "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni; echo done; sleep 3600",
        )],
        "securityContext: {sysctls: [{name: net.ipv4.ip_forward, value: \"1\"}, {name: kernel.shmmni, value: \"8000\"}]}\n",
    )
    .replace(
        "  command:",
        "  resources: {cpu: 10m, memory: 64Mi}\n  volumeMounts: [{name: v, mountPath: /data/}]\n  command:",
    )
    .replacen("containers:", "volumes: [{name: v, emptyDir: {}}]\ncontainers:", 1);
    let out = agent.apply("runs", &spec);
    assert!(out.status.success(), "{}\n{spec}", text(&out));
    let log = wait_log(&agent, "runs", "app", "done");
    assert!(log.contains("1\n8000\ndone"), "{log}");
}

#[test]
fn enforced_container_fields_take_effect() {
    // The fields docs/api.md lists as enforced with no other run-time test: each one
    // is visible from inside the container.
    use eci_tests::scenario::{busybox_agent, group, wait_log};
    let agent = busybox_agent();
    let script = "pwd; echo FOO=$FOO; id -u; id -g; \
                  touch /rootfs-probe 2>/dev/null && echo rootfs-rw || echo rootfs-ro; \
                  grep ' /dev/shm ' /proc/mounts; cat /etc/resolv.conf; echo done; sleep 3600";
    let spec = group(
        "fields",
        "Never",
        &[("app", script)],
        "shmSize: 32Mi\nnetwork: {dns: {nameservers: [10.9.9.9], searches: [svc.local], options: [\"ndots:2\"]}}\n",
    )
    .replace(
        "  command:",
        "  workingDir: /tmp\n  env: [{name: FOO, value: bar}]\n  securityContext: {runAsUser: 1234, runAsGroup: 4321, readOnlyRootFilesystem: true}\n  command:",
    );
    let out = agent.apply("fields", &spec);
    assert!(out.status.success(), "{}\n{spec}", text(&out));
    let log = wait_log(&agent, "fields", "app", "done");
    for want in [
        "/tmp\n",
        "FOO=bar\n",
        "1234\n4321\n",
        "rootfs-ro\n",
        "size=32768k",
        "nameserver 10.9.9.9\n",
        "search svc.local\n",
        "options ndots:2\n",
    ] {
        assert!(log.contains(want), "{want:?} not in {log}");
    }
}
