//! Hostile tenant: an image's content cannot redirect the runtime's own writes (runc
//! CVE-2023-27561 / CVE-2024-45310 class). `/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf`, `/dev` and a volume's mount path are symlinks to host paths
//! (absolute and `..`); `/proc` is a symlink. Nothing may be created, changed or mounted
//! on the host. Needs root.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use eci_tests::oci::{self, TarEntry};
use eci_tests::scenario::{busybox_agent, group_on, import, wait_log, wait_phase};
use eci_tests::{text, wait_for};

/// Every path below `dir` with its mode, for before/after comparisons.
fn snapshot(dir: &std::path::Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = std::fs::symlink_metadata(e.path()).expect("meta");
        out.push((e.path().display().to_string(), meta.permissions().mode()));
        if meta.is_dir() {
            out.extend(snapshot(&e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn links_in_an_image_keep_the_runtime_inside_the_rootfs() {
    let agent = busybox_agent();
    let host = tempfile::tempdir().expect("tempdir");
    let h = host.path().display().to_string();
    std::fs::create_dir(host.path().join("dev")).expect("dev");
    std::fs::write(host.path().join("dev/victim"), b"keep").expect("victim");
    std::fs::set_permissions(
        host.path().join("dev/victim"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let before = snapshot(host.path());
    let climb = format!("../../../../../../../..{h}/hostname");
    let (hosts, dev, data) = (
        format!("{h}/hosts"),
        format!("{h}/dev"),
        format!("{h}/data"),
    );
    let hostile = oci::tar(&[
        TarEntry::Symlink {
            path: "etc/hosts",
            target: &hosts,
        },
        TarEntry::Symlink {
            path: "etc/hostname",
            target: &climb,
        },
        TarEntry::Symlink {
            path: "etc/resolv.conf",
            target: "/run/systemd/resolve/stub-resolv.conf",
        },
        TarEntry::Symlink {
            path: "dev",
            target: &dev,
        },
        TarEntry::Symlink {
            path: "data",
            target: &data,
        },
    ]);
    let image = oci::Image {
        layers: vec![oci::busybox_layer().expect("busybox"), hostile],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    import(&agent, &image, "127.0.0.1:5000/hostile/links:1");
    let spec = group_on(
        "127.0.0.1:5000/hostile/links:1",
        "links",
        "Never",
        &[(
            "app",
            "grep -c links /etc/hosts; cat /etc/hostname; echo null:$(head -c 3 /dev/zero | wc -c); \
             echo x > /data/f && echo data-ok; test -c /dev/pts/ptmx && echo pts-ok; echo done; sleep 3600",
        )],
        "volumes:\n- name: data\n  emptyDir: {}\n",
    )
    .replace(
        "  command:",
        "  volumeMounts: [{name: data, mountPath: /data}]\n  command:",
    );
    let out = agent.apply("links", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "links", "Running");
    let l = wait_log(&agent, "links", "app", "done");
    assert!(
        l.contains("1\nlinks\n"),
        "our hosts and hostname files: {l}"
    );
    assert!(
        l.contains("null:3") && l.contains("data-ok") && l.contains("pts-ok"),
        "{l}"
    );
    assert_eq!(
        snapshot(host.path()),
        before,
        "the runtime created or changed files on the host"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&h),
        "something was mounted on the host: {mounts}"
    );
}

#[test]
fn a_symlinked_proc_is_refused() {
    let agent = busybox_agent();
    let image = oci::Image {
        layers: vec![
            oci::busybox_layer().expect("busybox"),
            oci::tar(&[
                TarEntry::Dir { path: "fakeproc" },
                TarEntry::Symlink {
                    path: "proc",
                    target: "/fakeproc",
                },
            ]),
        ],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    import(&agent, &image, "127.0.0.1:5000/hostile/proc:1");
    let spec = group_on(
        "127.0.0.1:5000/hostile/proc:1",
        "fakeproc",
        "Never",
        &[("app", "echo started; sleep 3600")],
        "",
    );
    assert!(agent.apply("fakeproc", &spec).status.success());
    let d = wait_for(Duration::from_secs(20), || {
        let d = text(&agent.ctl(&["describe", "fakeproc"]));
        d.contains("not a symlink").then_some(d)
    })
    .unwrap_or_else(|| panic!("{}", text(&agent.ctl(&["describe", "fakeproc"]))));
    assert!(d.contains("/proc"), "{d}");
    assert!(!text(&agent.ctl(&["logs", "fakeproc", "-c", "app"])).contains("started"));
}
