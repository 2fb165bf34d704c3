use eci_api::v1::{Container, GroupSpec, ResourceRequirements};

use super::*;

fn container(name: &str, cpu: &str, memory: &str) -> Container {
    Container {
        name: name.into(),
        image: "127.0.0.1:5000/demo/busybox:1".into(),
        resources: Some(ResourceRequirements {
            cpu: cpu.into(),
            memory: memory.into(),
            gpu: 0,
        }),
        ..Default::default()
    }
}

fn spec() -> GroupSpec {
    GroupSpec {
        name: "web-1".into(),
        cpu: "1".into(),
        memory: "2Gi".into(),
        containers: vec![container("app", "500m", "512Mi")],
        ..Default::default()
    }
}

fn fields(spec: &GroupSpec) -> Vec<String> {
    validate(spec)
        .expect_err("spec should be refused")
        .0
        .into_iter()
        .map(|e| e.field)
        .collect()
}

#[test]
fn accepts_the_example_and_normalizes() {
    let v = validate(&spec()).expect("valid");
    assert_eq!(
        v.normalized,
        Size {
            cpu_millis: 1000,
            memory_bytes: 2 << 30
        }
    );
    let mut s = spec();
    s.cpu = "7".into();
    s.memory = "13Gi".into();
    assert_eq!(
        validate(&s).expect("valid").normalized,
        Size {
            cpu_millis: 8000,
            memory_bytes: 16 << 30
        }
    );
}

#[test]
fn sums_containers_when_the_group_has_no_size() {
    let mut s = spec();
    s.cpu.clear();
    s.memory.clear();
    s.containers = vec![
        container("a", "1500m", "3Gi"),
        container("b", "500m", "1Gi"),
    ];
    let v = validate(&s).expect("valid");
    assert_eq!(
        v.requested,
        Size {
            cpu_millis: 2000,
            memory_bytes: 4 << 30
        }
    );
    assert_eq!(
        v.normalized,
        Size {
            cpu_millis: 2000,
            memory_bytes: 4 << 30
        }
    );
}

#[test]
fn names_each_bad_field() {
    let mut s = spec();
    s.name = "Web_1".into();
    assert_eq!(fields(&s), ["name"]);

    let mut s = spec();
    s.containers.push(container("app", "", ""));
    assert_eq!(fields(&s), ["containers[1].name"]);

    let mut s = spec();
    s.containers.push(container("side", "1", "1Gi"));
    assert_eq!(fields(&s), ["containers"]);

    let mut s = spec();
    s.shm_size = "1Gi".into();
    assert_eq!(fields(&s), ["shmSize"]);

    let mut s = spec();
    s.security_context = Some(eci_api::v1::GroupSecurityContext {
        sysctls: vec![eci_api::v1::Sysctl {
            name: "net.core.rmem_max".into(),
            value: "1".into(),
        }],
        ..Default::default()
    });
    assert_eq!(fields(&s), ["securityContext.sysctls[0].name"]);
}

#[test]
fn mount_paths_are_compared_normalized() {
    let mut s = spec();
    s.volumes = vec![eci_api::v1::Volume {
        name: "v".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }];
    let mount = |p: &str| eci_api::v1::VolumeMount {
        name: "v".into(),
        mount_path: p.into(),
        ..Default::default()
    };
    s.containers[0].volume_mounts = vec![mount("/data"), mount("/data/")];
    assert_eq!(fields(&s), ["containers[0].volumeMounts[1].mountPath"]);
    s.containers[0].volume_mounts = vec![mount("/data"), mount("/other/")];
    let v = validate(&s).expect("valid");
    let dests: Vec<&str> = v.containers[0]
        .mounts
        .iter()
        .map(|m| m.destination.as_str())
        .collect();
    assert_eq!(dests, ["/data", "/other"]);
}

#[test]
fn a_stored_spec_breaking_a_newer_rule_still_reads_back() {
    // Admitted by an earlier agent: more env entries than today's limit, and a mount path
    // with a `.` component. The supervisor must still run it after an upgrade.
    let mut s = spec();
    s.containers[0].env = (0..=limits::MAX_ENV)
        .map(|i| eci_api::v1::EnvVar {
            name: format!("K{i}"),
            value: "v".into(),
        })
        .collect();
    assert!(validate(&s).is_err());
    let (v, problems) = stored(&s).expect("reads back");
    assert!(!problems.is_empty());
    assert_eq!(v.containers.len(), 1);
    // A spec that cannot be read at all is still an error.
    s.containers[0].resources = Some(ResourceRequirements {
        cpu: "lots".into(),
        memory: "512Mi".into(),
        gpu: 0,
    });
    assert!(stored(&s).is_err());
}

#[test]
fn a_vm_group_refuses_what_its_guest_cannot_have_by_field() {
    use eci_api::v1::{DiskVolume, NfsVolume, Volume};
    let mut s = spec();
    s.sandbox = "vm".into();
    validate(&s).expect("a plain vm group is valid");
    s.volumes = vec![
        Volume {
            name: "data".into(),
            disk: Some(DiskVolume {
                device: "/dev/vdb".into(),
                read_only: true,
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "share".into(),
            nfs: Some(NfsVolume {
                server: "10.0.0.2".into(),
                path: "/export".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    s.containers[0].resources.as_mut().expect("resources").gpu = 1;
    let f = fields(&s);
    for want in [
        "volumes[0].disk.readOnly",
        "volumes[1].nfs",
        "containers[0].resources.gpu",
    ] {
        assert!(f.iter().any(|x| x == want), "{want} not in {f:?}");
    }
    // The same spec namespaced has none of these refusals.
    s.sandbox = String::new();
    let f = validate(&s).err().map(|e| e.0).unwrap_or_default();
    assert!(
        !f.iter().any(|e| e.message.contains("sandbox: vm")),
        "{f:?}"
    );
}
