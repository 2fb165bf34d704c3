//! A real Debian image in user-namespaced groups (issue 14): the image's own setuid
//! binaries and file capabilities work for the container's users, and from the host every
//! container process runs with an id of its group's range, never as host root.
//!
//! The image is built by `scripts/debian-test-image.sh` (mmdebstrap, the host's suite)
//! and named by `ECI_TEST_DEBIAN_IMAGE` (an OCI archive; `.ci/run` builds and exports
//! it). Without it the test is skipped with a message, except under CI (`CI` set), where
//! a missing image is a failure. Needs root (CI is root).
//!
//! Checked inside the image, with `allowPrivilegeEscalation: true`:
//! - uid 1000 runs `ping -c1 127.0.0.1`: `ping` has `cap_net_raw=ep` as a file
//!   capability only (no setuid bit), and the netns' `ping_group_range` is `1 0`;
//! - uid 1000 runs the setuid-root `passwd -S tester`, which prints the account's
//!   ageing fields only when it could read `/etc/shadow` (root:shadow 0640), i.e. with
//!   euid 0; without the setuid bit it prints just `tester P`;
//! - root runs `su -s /bin/sh nobody -c id` and gets uid 65534;
//! - with `allowPrivilegeEscalation: false` the same ping and `passwd` get neither.

use eci_tests::scenario::{group_id, wait_log};
use eci_tests::{Agent, cgroup_dirs, text};
use std::path::{Path, PathBuf};

/// The reference the archive is imported as.
const IMAGE: &str = "eci.test/debian:userns";
const RANGE: u64 = 65_536;
/// `CAP_NET_RAW`'s bit in the first permitted word of `security.capability`.
const NET_RAW: u32 = 1 << 13;

/// The Debian image archive, or `None` (skip) when none is given outside CI.
fn debian_image() -> Option<PathBuf> {
    match std::env::var_os("ECI_TEST_DEBIAN_IMAGE").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => panic!(
            "ECI_TEST_DEBIAN_IMAGE is not set under CI: .ci/run builds it with \
             scripts/debian-test-image.sh"
        ),
        None => {
            eprintln!(
                "skipped: set ECI_TEST_DEBIAN_IMAGE to the archive \
                 `scripts/debian-test-image.sh DIR` prints"
            );
            None
        }
    }
}

/// `usr/bin/ping` of the unpacked layers of `agent`.
fn unpacked_ping(agent: &Agent) -> Option<PathBuf> {
    std::fs::read_dir(agent.root().join("var/lib/eci/layers"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("usr/bin/ping"))
        .find(|p| p.is_file())
}

/// A container of the Debian image: `security` is its `securityContext` (YAML flow
/// map), `script` runs under `/bin/sh -c` and then the container idles, so its
/// processes can be looked at from the host.
fn container(name: &str, security: &str, script: &str) -> String {
    let script = format!("{script}; echo DONE; trap 'exit 0' TERM; while :; do sleep 1; done");
    format!(
        "- name: {name}\n  image: {IMAGE}\n  imagePullPolicy: IfNotPresent\n  \
         securityContext: {security}\n  command: [\"/bin/sh\", \"-c\"]\n  args: [{}]\n",
        serde_json::to_string(&script).expect("json")
    )
}

fn group_spec(name: &str, containers: &[String]) -> String {
    format!(
        "name: {name}\nrestartPolicy: Never\ncpu: \"1\"\nmemory: 1Gi\ncontainers:\n{}",
        containers.concat()
    )
}

/// Host pids of container `c` of group `id`, from its cgroups.
fn container_pids(agent: &Agent, id: &str, c: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = cgroup_dirs(&agent.cgroup_parent())
        .iter()
        .filter(|d| d.ends_with(Path::new(id).join(c)))
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The real, effective, saved and filesystem uids and gids of a host process, from the
/// host's `/proc` (so host ids); `None` once the process is gone.
fn host_ids(pid: u32) -> Option<(Vec<u64>, Vec<u64>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ids = |key: &str| -> Vec<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Some((ids("Uid:"), ids("Gid:")))
}

/// When the group reports a user namespace, every process of container `c` runs with
/// host ids of its range (`base + inside`, never 0); `inside_uid` is the uid it runs as
/// inside. Without one (user namespaces off), there is nothing to check.
fn assert_runs_in_its_range(agent: &Agent, group: &str, c: &str, inside_uid: u64) {
    let g = agent.get_json(group).expect("get");
    let u = &g["status"]["userNamespace"];
    let Some(base) = u["hostIdBase"].as_u64() else {
        eprintln!("{group}: no status.userNamespace, host ids not checked");
        return;
    };
    assert_eq!(u["size"].as_u64(), Some(RANGE), "{g}");
    let id = group_id(agent, group);
    let pids = container_pids(agent, &id, c);
    assert!(
        !pids.is_empty(),
        "no processes of {group}/{c} in its cgroups"
    );
    let range = base..base + RANGE;
    for pid in pids {
        let Some((uids, gids)) = host_ids(pid) else {
            continue;
        };
        assert!(
            uids.len() == 4 && gids.len() == 4,
            "{group}/{c} pid {pid}: {uids:?} {gids:?}"
        );
        for x in uids.iter().chain(&gids) {
            assert!(
                *x != 0 && range.contains(x),
                "{group}/{c} pid {pid} runs with host ids uid {uids:?} gid {gids:?}, \
                 outside its range {base}+{RANGE}"
            );
        }
        assert_eq!(
            uids[0],
            base + inside_uid,
            "{group}/{c} pid {pid}: host uid of inside uid {inside_uid}"
        );
    }
}

fn delete(agent: &Agent, name: &str) {
    let out = agent.ctl(&["delete", name, "--force", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn debian_setuid_file_caps_and_su_work_in_user_namespaces() {
    let Some(archive) = debian_image() else {
        return;
    };
    let agent = Agent::start("").expect("agent");
    let out = agent.ctl(&[
        "images",
        "import",
        archive.to_str().expect("utf-8 path"),
        "--reference",
        IMAGE,
    ]);
    assert!(out.status.success(), "import: {}", text(&out));

    // The unpacked layer keeps ping's file capability (revision 2, CAP_NET_RAW, effective)
    // and no setuid bit, and passwd's and su's setuid bits.
    let ping = unpacked_ping(&agent).expect("usr/bin/ping in an unpacked layer");
    let caps = xattr::get(&ping, "security.capability")
        .expect("getxattr")
        .expect("ping has security.capability");
    assert_eq!(caps.len(), 20, "revision 2: {caps:?}");
    let word = |i: usize| u32::from_le_bytes(caps[i * 4..i * 4 + 4].try_into().expect("4"));
    assert_eq!(word(0), 0x0200_0001, "revision 2 with the effective flag");
    assert_ne!(word(1) & NET_RAW, 0, "CAP_NET_RAW permitted: {caps:?}");
    let layer = ping.ancestors().nth(3).expect("layer dir").to_path_buf();
    let mode = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(layer.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .mode()
    };
    assert_eq!(mode("usr/bin/ping") & 0o6000, 0, "ping needs no setuid bit");
    for setuid in ["usr/bin/passwd", "usr/bin/su"] {
        assert_eq!(mode(setuid) & 0o4000, 0o4000, "{setuid} is setuid");
    }

    // The image runs as it is (no new field needed).
    let out = agent.apply(
        "deb-plain",
        &group_spec(
            "deb-plain",
            &[container(
                "root",
                "{}",
                "echo debian:$(cat /etc/debian_version); id",
            )],
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "deb-plain", "root", "DONE");
    assert!(l.contains("debian:") && l.contains("uid=0(root)"), "{l}");

    let user = "{runAsUser: 1000, runAsGroup: 1000, allowPrivilegeEscalation: true}";
    let nnp = "{runAsUser: 1000, runAsGroup: 1000, allowPrivilegeEscalation: false}";
    let ping = "echo ping_group_range:$(cat /proc/sys/net/ipv4/ping_group_range); id; \
                if ping -c1 -W5 127.0.0.1; then echo PING-OK; else echo PING-FAILED; fi";
    let passwd = "id; echo PASSWD:$(passwd -S tester 2>&1)";
    let spec = group_spec(
        "deb-userns",
        &[
            container("ping", user, ping),
            container("setuid", user, passwd),
            container(
                "su",
                "{allowPrivilegeEscalation: true}",
                "echo SU:$(su -s /bin/sh nobody -c id 2>&1)",
            ),
            container("nnp-ping", nnp, ping),
            container("nnp-setuid", nnp, passwd),
        ],
    );
    let out = agent.apply("deb-userns", &spec);
    assert!(out.status.success(), "{}", text(&out));

    // (a) File capability: uid 1000 pings through a raw socket.
    let l = wait_log(&agent, "deb-userns", "ping", "DONE");
    assert!(l.contains("uid=1000(tester)"), "{l}");
    assert!(
        l.contains("PING-OK") && l.contains("1 received"),
        "ping as uid 1000 failed (cap_net_raw from the file):\n{l}"
    );
    // (b) setuid root: passwd read /etc/shadow, so it printed the ageing fields.
    let l = wait_log(&agent, "deb-userns", "setuid", "DONE");
    let status = passwd_status(&l);
    assert_eq!(
        status.split_whitespace().count(),
        7,
        "passwd -S did not run with euid 0 (no shadow fields):\n{l}"
    );
    assert!(status.starts_with("tester "), "{l}");
    // (c) root switches to nobody through su (setuid/setgid/setgroups inside).
    let l = wait_log(&agent, "deb-userns", "su", "DONE");
    assert!(
        l.contains("SU:uid=65534(nobody) gid=65534(nogroup)"),
        "su to nobody failed:\n{l}"
    );
    // Without privilege escalation neither the file capability nor setuid applies.
    let l = wait_log(&agent, "deb-userns", "nnp-ping", "DONE");
    assert!(
        l.contains("PING-FAILED"),
        "ping worked with no_new_privs:\n{l}"
    );
    let l = wait_log(&agent, "deb-userns", "nnp-setuid", "DONE");
    let status = passwd_status(&l);
    assert_eq!(
        status.split_whitespace().count(),
        2,
        "passwd ran with euid 0 under no_new_privs:\n{l}"
    );

    // From the host: no process of any container is host root.
    assert_runs_in_its_range(&agent, "deb-plain", "root", 0);
    for (c, uid) in [
        ("ping", 1000),
        ("setuid", 1000),
        ("su", 0),
        ("nnp-ping", 1000),
        ("nnp-setuid", 1000),
    ] {
        assert_runs_in_its_range(&agent, "deb-userns", c, uid);
    }
    delete(&agent, "deb-plain");
    delete(&agent, "deb-userns");
}

/// What `passwd -S` printed (the line after `PASSWD:`): 7 fields when it could read
/// `/etc/shadow` (euid 0), 2 when not.
fn passwd_status(log: &str) -> &str {
    log.lines()
        .find_map(|l| l.strip_prefix("PASSWD:"))
        .unwrap_or_default()
}
