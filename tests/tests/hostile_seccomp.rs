//! Hostile tenant: the default seccomp profile (containerd's, with its argument
//! filters) holds for a container's first process and for exec'd processes. Needs root.

use eci_tests::scenario::{attack_agent_with, group, wait_log};
use eci_tests::text;

const REFUSED: &[&str] = &[
    "socket_vsock: EPERM",
    "unshare_user: EPERM",
    "unshare_mount: EPERM",
    "personality_addr_no_randomize: EPERM",
    "clone3: ENOSYS",
    "keyctl: EPERM",
    "add_key: EPERM",
    "bpf: EPERM",
    "perf_event_open: EPERM",
    "mount: EPERM",
    "umount2: EPERM",
    "kexec_load: EPERM",
    "init_module: EPERM",
    "open_by_handle_at: EPERM",
    "reboot: EPERM",
    "io_uring_setup: EPERM",
    // Without CAP_SYS_PTRACE (containerd gates these two on it).
    "kcmp: EPERM",
    "pidfd_getfd: EPERM",
];
const ALLOWED: &[&str] = &["socket_inet: ok", "personality_query: ok", "getpid: ok"];

fn check(out: &str) {
    for want in REFUSED.iter().chain(ALLOWED) {
        assert!(out.contains(want), "{want}: {out}");
    }
}

#[test]
fn the_default_profile_refuses_what_containerd_refuses() {
    let agent = attack_agent_with("");
    let out = agent.apply(
        "sc",
        &group(
            "sc",
            "Never",
            &[("app", "/eci-attack syscalls; echo done; sleep 3600")],
            "",
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    check(&wait_log(&agent, "sc", "app", "done"));
    let exec = agent.ctl(&["exec", "sc", "--", "/eci-attack", "syscalls"]);
    assert!(exec.status.success(), "{}", text(&exec));
    check(&text(&exec));
}
