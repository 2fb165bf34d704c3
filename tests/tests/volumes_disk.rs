//! Disk and NFS volumes and local storage limits (issue 9), end to end. A `disk`
//! volume on a loop device keeps its files across a group delete and serves the next
//! group; one group at a time holds it; a device holding data is never formatted;
//! `nfs` on a kernel without an NFS client fails with `FailedMount`; a disk emptyDir
//! over its `sizeLimit` and a rootfs over `ephemeralStorage` are evicted. Needs root
//! and loop devices; each loop device and its mounts go in a Drop guard.

use std::process::Command;
use std::time::Duration;

use eci_tests::loop_disk::LoopDisk as Loop;
use eci_tests::scenario::{busybox_agent_with, group, phase, wait_log, wait_phase};
use eci_tests::{Agent, text, wait_for};

fn agent() -> Agent {
    busybox_agent_with(
        "[volumes]\ndisk_devices = [\"/dev/loop*\"]\nstorage_check_interval = \"300ms\"\n",
    )
}

/// A group with one container running `script`, `/data` on volume `data`.
fn with_volume(name: &str, volume: &str, script: &str) -> String {
    let s = group(
        name,
        "Never",
        &[("app", script)],
        &format!("volumes:\n- name: data\n{volume}"),
    );
    s.replacen(
        "  command:",
        "  volumeMounts: [{name: data, mountPath: /data}]\n  command:",
        1,
    )
}

fn metrics(agent: &Agent, name: &str) -> eci_api::v1::GroupMetrics {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let ch = eci_tests::channel(&agent.socket()).await.expect("channel");
        eci_api::v1::metrics_client::MetricsClient::new(ch)
            .get_metrics(eci_api::v1::GetMetricsRequest { group: name.into() })
            .await
            .expect("metrics")
            .into_inner()
    })
}

fn status(agent: &Agent, name: &str) -> (String, String, String) {
    let g = agent.get_json(name).unwrap_or_default();
    let s = |k: &str| g["status"][k].as_str().unwrap_or_default().to_string();
    (s("phase"), s("reason"), s("message"))
}

/// Waits for the group to end Failed with `reason`; returns its message.
fn wait_failed(agent: &Agent, name: &str, reason: &str) -> String {
    wait_for(Duration::from_secs(30), || {
        let (p, r, m) = status(agent, name);
        (p == "Failed" && r == reason).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "{name} never failed with {reason}: {:?}\n{}",
            status(agent, name),
            text(&agent.ctl(&["describe", name]))
        )
    })
}

fn delete(agent: &Agent, name: &str) {
    let out = agent.ctl(&["delete", name, "--force", "--wait", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_disk_keeps_its_files_across_groups_and_serves_one_group_at_a_time() {
    let disk = Loop::new(64);
    let agent = agent();
    let vol = format!("  disk: {{device: {}}}\n", disk.dev);
    // Holds the first id range, so disk-a gets another one than disk-c will.
    let out = agent.apply(
        "filler",
        &group("filler", "Never", &[("app", "exec sleep 3600")], ""),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = agent.apply(
        "disk-a",
        &with_volume(
            "disk-a",
            &vol,
            "echo kept-by-a > /data/f && echo owner=$(stat -c %u:%g /data/f) && echo wrote; exec sleep 3600",
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "disk-a", "app", "wrote");
    // Container root owns what it writes, in its own user namespace as without one.
    assert!(l.contains("owner=0:0"), "{l}");
    assert_eq!(disk.mounts().len(), 1, "{:?}", disk.mounts());
    // Metrics: the group's local storage against its limit, and the disk's filesystem.
    wait_phase(&agent, "disk-a", "Running");
    let m = metrics(&agent, "disk-a");
    let root = m.disk.iter().find(|d| d.mount_point == "/").expect("/");
    assert!(
        root.total_bytes <= 40 << 30 && root.used_bytes > 0,
        "{root:?}"
    );
    let data = m
        .disk
        .iter()
        .find(|d| d.mount_point == "volume:data")
        .expect("volume:data");
    assert!(
        data.total_bytes > 32 << 20 && data.total_bytes <= 64 << 20 && data.used_bytes > 0,
        "{data:?}"
    );

    // A second group naming the same device is refused while the first holds it.
    let out = agent.apply("disk-b", &with_volume("disk-b", &vol, "exec sleep 3600"));
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("volumes[0].disk.device") && msg.contains("held by group \"disk-a\""),
        "{msg}"
    );

    let range = |name: &str| {
        agent.get_json(name).expect("get")["status"]["userNamespace"]["hostIdBase"].clone()
    };
    let range_a = range("disk-a");

    // Deleted: the disk is unmounted, and the next group (another id range) finds
    // the file, owned by its own root, and may write to it.
    delete(&agent, "disk-a");
    assert!(disk.mounts().is_empty(), "{:?}", disk.mounts());
    delete(&agent, "filler");
    let out = agent.apply(
        "disk-c",
        &with_volume(
            "disk-c",
            &vol,
            "cat /data/f; echo owner=$(stat -c %u:%g /data/f); echo more >> /data/f && echo read; exec sleep 3600",
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "disk-c", "app", "read");
    assert!(l.contains("kept-by-a") && l.contains("owner=0:0"), "{l}");
    assert_ne!(
        range("disk-c"),
        range_a,
        "the second group should get another id range"
    );
    delete(&agent, "disk-c");
    assert!(disk.mounts().is_empty(), "{:?}", disk.mounts());
    // On the disk itself the file belongs to uid 0 (stored through the idmapped
    // mount), not to a host id of either group's range.
    let out = Command::new("debugfs")
        .args(["-R", "stat /f", &disk.dev])
        .output()
        .expect("debugfs");
    let st = String::from_utf8_lossy(&out.stdout);
    assert!(
        st.contains("User:     0") && st.contains("Group:     0"),
        "{st}"
    );
}

#[test]
fn a_device_holding_data_is_never_formatted() {
    let disk = Loop::new(16);
    disk.write_at(0, b"precious tenant data");
    let agent = agent();
    let vol = format!("  disk: {{device: {}}}\n", disk.dev);
    let out = agent.apply(
        "disk-data",
        &with_volume("disk-data", &vol, "exec sleep 3600"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let m = wait_failed(&agent, "disk-data", "FailedMount");
    assert!(
        m.contains("volume data: disk") && m.contains("is never formatted"),
        "{m}"
    );
    let mut head = vec![0u8; 20];
    std::io::Read::read_exact(&mut std::fs::File::open(&disk.dev).expect("dev"), &mut head)
        .expect("read");
    assert_eq!(&head, b"precious tenant data");
    assert!(disk.mounts().is_empty());
}

#[test]
fn nfs_without_a_kernel_client_fails_with_failed_mount() {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.ends_with("nfs") || l.ends_with("nfs4"))
    {
        eprintln!("this kernel has an NFS client: the FailedMount case cannot be shown");
        return;
    }
    let agent = agent();
    let out = agent.apply(
        "nfs",
        &with_volume(
            "nfs",
            "  nfs: {server: 10.0.0.9, path: /export, readOnly: true}\n",
            "exec sleep 3600",
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let m = wait_failed(&agent, "nfs", "FailedMount");
    assert!(m.contains("this host's kernel has no NFS client"), "{m}");
    let d = text(&agent.ctl(&["describe", "nfs"]));
    assert!(d.contains("FailedMount"), "{d}");
    // Its sandbox went with it.
    let id = eci_tests::scenario::group_id(&agent, "nfs");
    assert!(
        wait_for(Duration::from_secs(10), || {
            (!agent
                .root()
                .join("run/eci/groups")
                .join(&id)
                .join("ns")
                .exists())
            .then_some(())
        })
        .is_some()
    );
}

#[test]
fn a_disk_empty_dir_over_its_size_limit_evicts_the_group() {
    let agent = agent();
    let out = agent.apply(
        "cache",
        &with_volume(
            "cache",
            "  emptyDir: {sizeLimit: 1Mi}\n",
            "dd if=/dev/zero of=/data/f bs=1024 count=3072 2>&1; sync; echo wrote; exec sleep 3600",
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let m = wait_failed(&agent, "cache", "Evicted");
    assert!(
        m.contains("Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\""),
        "{m}"
    );
    let g = agent.get_json("cache").expect("get");
    assert_eq!(
        g["status"]["containerStatuses"][0]["state"].as_str(),
        Some("Terminated"),
        "{g}"
    );
    let d = text(&agent.ctl(&["describe", "cache"]));
    assert!(d.contains("Evicted"), "{d}");
}

#[test]
fn writing_past_ephemeral_storage_in_the_rootfs_evicts_the_group() {
    let agent = agent();
    let s = group(
        "eph",
        "Always",
        &[(
            "app",
            "dd if=/dev/zero of=/big bs=1024 count=6144 2>&1; sync; echo wrote; exec sleep 3600",
        )],
        "ephemeralStorage: 4Mi\n",
    );
    let out = agent.apply("eph", &s);
    assert!(out.status.success(), "{}", text(&out));
    let m = wait_failed(&agent, "eph", "Evicted");
    assert!(
        m.contains("Pod ephemeral local storage usage exceeds the total limit of containers 4Mi"),
        "{m}"
    );
    // Under restartPolicy Always, still: an evicted group is not started again.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(phase(&agent, "eph"), "Failed");
    let id = eci_tests::scenario::group_id(&agent, "eph");
    assert!(
        !agent.root().join("var/lib/eci/groups").join(&id).exists(),
        "the writable layer went with the sandbox"
    );
}

#[test]
fn a_device_the_host_uses_or_the_node_does_not_allow_is_refused_at_create() {
    let disk = Loop::new(16);
    let out = Command::new("mkfs.ext4")
        .args(["-q", &disk.dev])
        .output()
        .expect("mkfs");
    assert!(out.status.success(), "{}", text(&out));
    let at = tempfile::tempdir().expect("tempdir");
    let out = Command::new("mount")
        .arg(&disk.dev)
        .arg(at.path())
        .output()
        .expect("mount");
    assert!(out.status.success(), "{}", text(&out));
    let agent = agent();
    let vol = format!("  disk: {{device: {}}}\n", disk.dev);
    let out = agent.apply(
        "host-disk",
        &with_volume("host-disk", &vol, "exec sleep 3600"),
    );
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("volumes[0].disk.device")
            && msg.contains(&format!(
                "is mounted on the host at {}",
                at.path().display()
            )),
        "{msg}"
    );
    let _ = nix::mount::umount2(at.path(), nix::mount::MntFlags::MNT_DETACH);

    // Only devices the node's volumes.disk_devices allows.
    let strict = busybox_agent_with("[volumes]\ndisk_devices = [\"/dev/vd[b-z]\"]\n");
    let out = strict.apply(
        "not-allowed",
        &with_volume("not-allowed", &vol, "exec sleep 3600"),
    );
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("is not allowed by the node's volumes.disk_devices"),
        "{msg}"
    );
}

#[test]
fn a_disk_stays_mounted_once_across_an_agent_kill_and_goes_with_the_group() {
    let disk = Loop::new(32);
    let mut agent = agent();
    let vol = format!("  disk: {{device: {}}}\n", disk.dev);
    let out = agent.apply(
        "disk-k",
        &with_volume(
            "disk-k",
            &vol,
            "echo before > /data/f; echo wrote; exec sleep 3600",
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "disk-k", "app", "wrote");
    wait_phase(&agent, "disk-k", "Running");
    agent.kill9_and_restart().expect("restart");
    wait_phase(&agent, "disk-k", "Running");
    assert_eq!(disk.mounts().len(), 1, "{:?}", disk.mounts());
    // A restart of the group's containers keeps the one mount and its content.
    let out = agent.ctl(&["restart", "disk-k"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = agent.ctl(&["exec", "disk-k", "-c", "app", "--", "cat", "/data/f"]);
    let got = wait_for(Duration::from_secs(20), || {
        let o = agent.ctl(&["exec", "disk-k", "-c", "app", "--", "cat", "/data/f"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("before")
            .then_some(())
    });
    assert!(got.is_some(), "{}", text(&out));
    assert_eq!(disk.mounts().len(), 1, "{:?}", disk.mounts());
    delete(&agent, "disk-k");
    assert!(disk.mounts().is_empty(), "{:?}", disk.mounts());
}

/// Kills the agent at crash point `at` while `act` runs, then restarts it without.
fn crash_at(agent: &mut Agent, at: &str, act: impl FnOnce(&Agent)) {
    agent.set_env(&[("ECI_CRASH_AT", at)]);
    agent
        .kill9_and_restart()
        .expect("restart with the crash point");
    act(agent);
    assert!(
        agent.wait_exit(Duration::from_secs(30)),
        "the agent did not reach {at}:\n{}",
        agent.log()
    );
    agent.set_env(&[]);
    agent.restart().expect("restart");
}

#[test]
fn crashes_after_the_mount_and_before_the_unmount_converge() {
    let disk = Loop::new(32);
    let mut agent = agent();
    let vol = format!("  disk: {{device: {}}}\n", disk.dev);
    let spec = with_volume("disk-x", &vol, "echo up; exec sleep 3600");
    crash_at(&mut agent, "disk-mounted", |a| {
        let out = a.apply("disk-x", &spec);
        assert!(out.status.success(), "{}", text(&out));
    });
    // Started again on the mount the crash left: still one.
    wait_phase(&agent, "disk-x", "Running");
    wait_log(&agent, "disk-x", "app", "up");
    assert_eq!(disk.mounts().len(), 1, "{:?}", disk.mounts());

    crash_at(&mut agent, "volumes-unmounting", |a| {
        let out = a.ctl(&["delete", "disk-x", "--force"]);
        assert!(out.status.success(), "{}", text(&out));
    });
    // The restarted agent finishes the delete, and the unmount with it.
    let gone = wait_for(Duration::from_secs(30), || {
        (agent.get_json("disk-x").is_err() && disk.mounts().is_empty()).then_some(())
    });
    assert!(gone.is_some(), "{:?}\n{}", disk.mounts(), agent.log());
}

#[test]
fn without_user_namespaces_a_disk_is_mounted_plain() {
    let disk = Loop::new(32);
    let agent = busybox_agent_with(
        "[volumes]\ndisk_devices = [\"/dev/loop*\"]\n[user_namespaces]\nenabled = false\n",
    );
    let vol = format!("  disk: {{device: {}}}\n", disk.dev);
    let out = agent.apply(
        "plain",
        &with_volume(
            "plain",
            &vol,
            "echo x > /data/f && echo owner=$(stat -c %u:%g /data/f) && echo wrote; exec sleep 3600",
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "plain", "app", "wrote");
    assert!(l.contains("owner=0:0"), "{l}");
    let id = eci_tests::scenario::group_id(&agent, "plain");
    let on_host = agent
        .root()
        .join("run/eci/groups")
        .join(&id)
        .join("volumes/data/f");
    let m = std::fs::metadata(&on_host).expect("file on the host");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), 0);
    delete(&agent, "plain");
    assert!(disk.mounts().is_empty(), "{:?}", disk.mounts());
}

#[test]
fn dev_shm_is_one_tmpfs_of_shm_size_shared_by_the_group() {
    let agent = agent();
    let s = group(
        "shm",
        "Always",
        &[
            (
                "a",
                "echo from-a > /dev/shm/seg; echo wrote; exec sleep 3600",
            ),
            (
                "b",
                "until [ -f /dev/shm/seg ]; do sleep 0.1; done; cat /dev/shm/seg; \
                 echo owner=$(stat -c %u /dev/shm); grep ' /dev/shm ' /proc/mounts; echo read; exec sleep 3600",
            ),
        ],
        "shmSize: 48Mi\n",
    );
    let out = agent.apply("shm", &s);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "shm", "b", "read");
    assert!(l.contains("from-a") && l.contains("owner=0"), "{l}");
    assert!(l.contains("size=49152k"), "{l}");
    // Restarting the containers keeps what is in it, as a pod's sandbox does.
    let out = agent.ctl(&["restart", "shm"]);
    assert!(out.status.success(), "{}", text(&out));
    let seen = wait_for(Duration::from_secs(20), || {
        let o = agent.ctl(&["exec", "shm", "-c", "b", "--", "cat", "/dev/shm/seg"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("from-a")
            .then_some(())
    });
    assert!(seen.is_some());
    let id = eci_tests::scenario::group_id(&agent, "shm");
    delete(&agent, "shm");
    let shm = agent.root().join("run/eci/groups").join(&id).join("shm");
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(&format!(" {} ", shm.display()));
    assert!(!mounted, "the group's /dev/shm is still mounted");
}
