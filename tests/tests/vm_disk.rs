//! `disk` volumes of vm groups (issue 15): the device, checked and formatted as for a
//! namespaced group, is attached to the VM as a virtio-blk disk and mounted by the
//! guest, never on the host; after the group is deleted its files are on the device
//! and the disk is free for the next group. Needs root, loop devices, debugfs and the
//! guest image (`ECI_TEST_GUEST_DIR`, see `eci_tests::vm`).

use std::process::Command;

use eci_tests::loop_disk::LoopDisk as Loop;
use eci_tests::scenario::{group, wait_log};
use eci_tests::text;
use eci_tests::vm::{delete_vm, guest_dir, vm_agent, wait_log_vm, wait_phase_vm};

/// A group with one container running `script`, `/data` on the disk `dev`.
fn with_disk(name: &str, dev: &str, extra: &str, script: &str) -> String {
    group(
        name,
        "Never",
        &[("app", script)],
        &format!("{extra}volumes:\n- name: data\n  disk: {{device: {dev}}}\n"),
    )
    .replacen(
        "  command:",
        "  volumeMounts: [{name: data, mountPath: /data}]\n  command:",
        1,
    )
}

#[test]
fn a_vm_groups_disk_is_a_virtio_disk_the_guest_mounts_and_keeps_its_files() {
    let Some(dir) = guest_dir() else { return };
    let disk = Loop::new(64);
    let agent = vm_agent(&dir, "[volumes]\ndisk_devices = [\"/dev/loop*\"]\n");
    let spec = with_disk(
        "vmdisk",
        &disk.dev,
        "sandbox: vm\n",
        "echo from-the-guest > /data/f && sync && echo mounts:$(grep ' /data ' /proc/mounts); \
         echo written; sleep 3600",
    );
    let out = agent.apply("vmdisk", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase_vm(&agent, "vmdisk", "Running");
    let log = wait_log_vm(&agent, "vmdisk", "app", "written");
    assert!(log.contains("mounts:/dev/vd"), "not a virtio disk: {log}");
    assert!(
        disk.mounts().is_empty(),
        "the host mounted the vm group's disk"
    );
    // A second group cannot have the disk meanwhile.
    let other = with_disk("vmdisk-2", &disk.dev, "", "cat /data/f; sleep 3600");
    let out = agent.apply("vmdisk-2", &other);
    assert!(
        !out.status.success(),
        "a held disk was given to another group"
    );
    delete_vm(&agent, "vmdisk");

    // The file is on the device, in a clean filesystem.
    let out = Command::new("debugfs")
        .args(["-R", "cat /f", &disk.dev])
        .output()
        .expect("debugfs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-the-guest"),
        "{}",
        text(&out)
    );
    // The hold is released: a namespaced group gets the disk and reads the file.
    let out = agent.apply("vmdisk-2", &other);
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "vmdisk-2", "app", "from-the-guest");
    let out = agent.ctl(&[
        "delete",
        "vmdisk-2",
        "--force",
        "--wait",
        "--timeout",
        "30s",
    ]);
    assert!(out.status.success(), "{}", text(&out));
}
