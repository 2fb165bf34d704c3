//! Hostile tenant: a volume's `subPath` cannot leave its volume (Kubernetes
//! CVE-2017-1002101 / CVE-2021-25741). An init container plants symlinks in an
//! `emptyDir`; the app container mounts them with `subPath`, and again after a
//! restart. It must get a path inside the volume, never the host's. Needs root.

use std::time::Duration;

use eci_tests::scenario::{busybox_agent, wait_log};
use eci_tests::{text, wait_for};

#[test]
fn symlinks_planted_in_a_volume_do_not_lead_subpath_out_of_it() {
    let agent = busybox_agent();
    // The host's secrets the tenant is after, at a path it knows.
    let host = tempfile::tempdir().expect("tempdir");
    let secret = host.path().join("secret");
    std::fs::write(&secret, b"host-secret").expect("secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let hostdir = host.path().display().to_string();
    let spec = format!(
        r#"name: sub
restartPolicy: Always
cpu: "1"
memory: 2Gi
volumes:
- name: vol
  emptyDir: {{}}
initContainers:
- name: plant
  image: {image}
  imagePullPolicy: IfNotPresent
  volumeMounts: [{{name: vol, mountPath: /vol}}]
  command: ["/bin/sh", "-c"]
  args: ["ln -s / /vol/root; ln -s ../../../../../../.. /vol/up; ln -s {hostdir} /vol/hostdir; mkdir /vol/real; echo inside > /vol/real/marker"]
containers:
- name: app
  image: {image}
  imagePullPolicy: IfNotPresent
  volumeMounts:
  - {{name: vol, mountPath: /a, subPath: root}}
  - {{name: vol, mountPath: /b, subPath: up}}
  - {{name: vol, mountPath: /c, subPath: hostdir}}
  - {{name: vol, mountPath: /d, subPath: real}}
  command: ["/bin/sh", "-c"]
  args: ["echo a:$(ls /a | tr '\n' ,); echo b:$(ls /b | tr '\n' ,); echo c:$(ls /c | tr '\n' ,); echo d:$(cat /d/marker); cat /c/secret /b{hostdir}/secret 2>&1; echo pwned > /c/dropped; echo pwned > /a{hostdir}/dropped; echo run-$(cat /d/runs 2>/dev/null); echo x >> /d/runs; echo done; sleep 1; exit 1"]
"#,
        image = eci_tests::scenario::IMAGE,
    );
    let out = agent.apply("sub", &spec);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "sub", "app", "done");
    // Every link resolved to the volume's root (which holds the links and `real`).
    for m in ["a", "b"] {
        let listing = l
            .lines()
            .find_map(|x| x.strip_prefix(&format!("{m}:")))
            .unwrap_or_default();
        let names: Vec<&str> = listing.split(',').filter(|n| !n.is_empty()).collect();
        assert!(
            ["hostdir", "real", "root", "up"]
                .iter()
                .all(|n| names.contains(n))
                && !names.contains(&"etc")
                && !names.contains(&"bin"),
            "subPath {m} left the volume: {l}"
        );
    }
    assert!(l.contains("d:inside"), "{l}");
    assert!(!l.contains("host-secret"), "a host file was read: {l}");
    // After a restart (policy Always, the script exits 1) the same mounts are made again.
    let again = wait_for(Duration::from_secs(30), || {
        let l = text(&agent.ctl(&["logs", "sub", "-c", "app"]));
        l.contains("run-x").then_some(l)
    })
    .unwrap_or_else(|| panic!("no restart: {}", text(&agent.ctl(&["describe", "sub"]))));
    assert!(!again.contains("host-secret"), "{again}");
    assert!(
        !host.path().join("dropped").exists(),
        "a file was written on the host"
    );
    assert_eq!(
        std::fs::read_dir(host.path()).expect("ls").count(),
        1,
        "the host directory changed"
    );
    assert_eq!(std::fs::read(&secret).expect("secret"), b"host-secret");
}
