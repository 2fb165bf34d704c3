//! Hostile tenant: devices. A container (which holds CAP_MKNOD by default) creates a
//! node for the host's disk on its root, on its /dev and on /dev/shm, and for
//! /dev/mem; none of them opens. Every writable mount but /dev is `nodev`. Needs root.

use eci_tests::scenario::{busybox_agent, group, wait_log};
use eci_tests::text;

/// `major minor` of a block device of this host (its first disk or loop device).
fn host_block_device() -> (String, String) {
    let mut devs: Vec<_> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .collect();
    devs.sort();
    let d = devs.first().expect("a block device").trim().to_string();
    let (ma, mi) = d.split_once(':').expect("major:minor");
    (ma.to_string(), mi.to_string())
}

#[test]
fn device_nodes_a_container_makes_do_not_open() {
    let agent = busybox_agent();
    let (ma, mi) = host_block_device();
    let script = format!(
        "for p in /disk /dev/disk /dev/shm/disk /vol/disk; do busybox mknod $p b {ma} {mi} 2>/dev/null; \
         head -c 512 $p >/dev/null 2>&1 && echo READ:$p || echo refused:$p; done; \
         busybox mknod /dev/mem2 c 1 1; head -c 1 /dev/mem2 >/dev/null 2>&1 && echo READ:mem || echo refused:mem; \
         head -c 1 /dev/zero | wc -c | sed 's/^/zero:/'; \
         for m in / /dev/shm /vol; do grep \" $m \" /proc/self/mountinfo | grep -q nodev && echo nodev:$m; done; echo done; sleep 3600"
    );
    let spec = group(
        "dev",
        "Never",
        &[("app", &script)],
        "volumes:\n- name: vol\n  emptyDir: {}\n",
    )
    .replace(
        "  command:",
        "  volumeMounts: [{name: vol, mountPath: /vol}]\n  command:",
    );
    let out = agent.apply("dev", &spec);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "dev", "app", "done");
    assert!(
        !l.contains("READ:"),
        "a device outside the default set opened: {l}"
    );
    for p in ["/disk", "/dev/disk", "/dev/shm/disk", "/vol/disk", "mem"] {
        assert!(l.contains(&format!("refused:{p}")), "{p}: {l}");
    }
    assert!(l.contains("zero:1"), "the default devices work: {l}");
    for m in ["/", "/dev/shm", "/vol"] {
        assert!(l.contains(&format!("nodev:{m}\n")), "{m} is not nodev: {l}");
    }
}
