//! Hostile tenant against user namespaces (issue 14): container root is host uid
//! `base`, never 0. Setuid files and file capabilities it writes or copies up belong to
//! its range on the host disk (a host user executing one gets `base` and no
//! capability, never root); the image's layers stay root's and unchanged; container
//! root with every capability it may add can neither mount nor leave its namespaces
//! nor write host-wide sysctls, and its group sysctls land in its own namespaces only;
//! two groups have disjoint ranges and cannot signal each other; links a tenant plants
//! never lead the agent's chowns, writes or chmods to a host file, even while it races
//! the rewrite of its configFile volume; an Update stops the containers it drops.
//! Needs root (CI is root).

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use eci_tests::host::{find_file, userns_base};
use eci_tests::scenario::{group, group_id, import, wait_log, wait_phase};
use eci_tests::{Agent, oci, text, wait_for};

/// Host pids of the processes in the group's cgroups, with their effective host uid.
fn group_processes(id: &str) -> Vec<(i32, u32)> {
    eci_tests::host::group_processes(id)
        .into_iter()
        .map(|p| (p.pid, p.euid))
        .collect()
}

const IMAGE: &str = "127.0.0.1:5000/demo/uns-attack:1";
const RANGE: u32 = 65_536;
/// `CAP_DAC_OVERRIDE` and `CAP_NET_RAW`: the image's file capability on `/cap-image`.
const IMAGE_CAPS: u32 = 1 << 1 | 1 << 13;

/// An agent with [`IMAGE`]: busybox, `/eci-attack` and its libraries, `/suid-image`, a
/// copy of the tool that the image ships setuid root, and `/cap-image`, a copy with
/// every file capability.
fn agent() -> Agent {
    let agent = Agent::start("").expect("agent");
    let tool = eci_tests::bin("eci-attack");
    let bytes = std::fs::read(&tool).expect("eci-attack");
    let suid = oci::tar(&[oci::TarEntry::File {
        path: "suid-image",
        data: &bytes,
        mode: 0o4755,
    }]);
    // `/cap-image`: the tool again, with `CAP_DAC_OVERRIDE` and `CAP_NET_RAW` as the
    // image's (revision 2) file capability.
    let mut caps = Vec::new();
    for w in [0x0200_0001u32, IMAGE_CAPS, 0, 0, 0] {
        caps.extend_from_slice(&w.to_le_bytes());
    }
    let cap_layer = oci::tar(&[
        oci::TarEntry::Pax {
            records: &[("SCHILY.xattr.security.capability", &caps)],
        },
        oci::TarEntry::File {
            path: "cap-image",
            data: &bytes,
            mode: 0o755,
        },
    ]);
    let image = oci::Image {
        layers: vec![
            oci::busybox_layer().expect("busybox-static"),
            oci::host_binary_layer(&tool, "eci-attack").expect("eci-attack layer"),
            suid,
            cap_layer,
        ],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    import(&agent, &image, IMAGE);
    agent
}

fn spec(name: &str, containers: &[(&str, &str)], extra: &str) -> String {
    group(name, "Always", containers, extra).replace(eci_tests::scenario::IMAGE, IMAGE)
}

fn delete(agent: &Agent, name: &str) {
    let out = agent.ctl(&["delete", name, "--force", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Executes `file` on the host as `nobody` (by descriptor: the agent's directories are
/// closed to other users) and returns what `eci-attack whoami` printed.
fn run_as_nobody(file: &Path) -> String {
    let f = std::fs::File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    // A descriptor that survives exec: the child executes it through /proc/self/fd.
    let fd = nix::unistd::dup(&f).expect("dup");
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut cmd = std::process::Command::new(&path);
    cmd.arg0("eci-attack").arg("whoami");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
            Ok(())
        });
    }
    let out = cmd.output().expect("exec as nobody");
    drop(fd);
    text(&out)
}

/// Container root makes setuid-root copies of a binary in its writable layer, an
/// emptyDir and a configFile volume, and copies up the image's own setuid-root file
/// (and `/etc/passwd`, through `/proc/self/root` too). On the host disk every one of
/// them belongs to `base`: a host user executing one gets euid `base`, never 0. The
/// layers on disk keep their files unchanged and owned by root.
#[test]
fn setuid_files_of_a_tenant_belong_to_its_range_on_the_host() {
    let agent = agent();
    let layers = agent.root().join("var/lib/eci/layers");
    let image_suid = find_file(&layers, "suid-image").expect("suid-image in a layer");
    let image_passwd = find_file(&layers, "etc/passwd").expect("passwd in a layer");
    let (suid_before, passwd_before) = (
        std::fs::read(&image_suid).expect("read"),
        std::fs::read(&image_passwd).expect("read"),
    );
    let script = "cp /eci-attack /suid-upper && chown 0:0 /suid-upper && chmod 4755 /suid-upper; \
                  cp /eci-attack /data/suid-empty && chmod 4755 /data/suid-empty; \
                  cp /eci-attack /conf/suid-conf && chmod 4755 /conf/suid-conf; \
                  chmod 4755 /suid-image && touch /suid-image; \
                  echo 'evil:x:0:0::/:/bin/sh' >> /etc/passwd; \
                  echo 'evil:x:0:' >> /proc/self/root/etc/group; \
                  echo inside=$(/suid-upper whoami); \
                  echo ready; exec sleep 3600";
    let volumes = "volumes:\n- name: scratch\n  emptyDir: {}\n\
                   - name: conf\n  configFile:\n    files:\n    - {path: a.conf, content: \"k=v\"}\n";
    let s = spec("uns-suid", &[("app", script)], volumes).replace(
        "  command:",
        "  volumeMounts: [{name: scratch, mountPath: /data}, {name: conf, mountPath: /conf}]\n  command:",
    );
    let out = agent.apply("uns-suid", &s);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "uns-suid", "app", "ready");
    let b = userns_base(&agent, "uns-suid");
    assert!(b > 0);
    let id = group_id(&agent, "uns-suid");
    let state = agent.root().join("var/lib/eci/groups").join(&id);
    let upper = state.join("app/upper");
    let files = [
        upper.join("suid-upper"),
        upper.join("suid-image"),
        state.join(".volumes/scratch/suid-empty"),
        agent
            .root()
            .join("run/eci/groups")
            .join(&id)
            .join("volumes/conf/suid-conf"),
    ];
    for f in &files {
        let m = std::fs::metadata(f).unwrap_or_else(|e| panic!("{}: {e}\n{l}", f.display()));
        assert_eq!(
            (m.uid(), m.gid()),
            (b, b),
            "{} on the host disk: {l}",
            f.display()
        );
        assert_ne!(m.mode() & 0o4000, 0, "{} kept its setuid bit", f.display());
        let who = run_as_nobody(f);
        assert!(
            who.contains(&format!("ruid=65534 euid={b}")),
            "{} executed by nobody on the host: {who}",
            f.display()
        );
    }
    for f in ["etc/passwd", "etc/group"] {
        let m = std::fs::metadata(upper.join(f)).expect(f);
        assert_eq!((m.uid(), m.gid()), (b, b), "copied-up {f}");
    }
    // The shared layers: unchanged, still root's.
    for (f, before, mode) in [
        (&image_suid, &suid_before, 0o4755),
        (&image_passwd, &passwd_before, 0o644),
    ] {
        let m = std::fs::metadata(f).expect("layer file");
        assert_eq!((m.uid(), m.gid()), (0, 0), "{}", f.display());
        assert_eq!(m.mode() & 0o7777, mode, "{}", f.display());
        assert_eq!(&std::fs::read(f).expect("read"), before, "{}", f.display());
    }
    // The control: the layer's own setuid-root file does make nobody root on the host
    // (the state directory, mode 0700, keeps host users away from it), so the checks
    // above would have seen a root-owned copy.
    let who = run_as_nobody(&image_suid);
    assert!(who.contains("ruid=65534 euid=0"), "{who}");
    delete(&agent, "uns-suid");
}

/// The `security.capability` of `f` as 32-bit words, empty without one.
fn caps_of(f: &Path) -> Vec<u32> {
    xattr::get(f, "security.capability")
        .expect("getxattr")
        .unwrap_or_default()
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// Container root (with `SETFCAP`, a default capability) gives a file in its writable
/// layer and in an emptyDir every file capability, and copies up the image's own
/// file-capability binary. On the host each is a revision-3 capability whose root is
/// `base`: executed by a host user, it grants nothing. The layer keeps its revision 2.
#[test]
fn file_capabilities_of_a_tenant_grant_nothing_on_the_host() {
    let agent = agent();
    let layers = agent.root().join("var/lib/eci/layers");
    let image_cap = find_file(&layers, "cap-image").expect("cap-image in a layer");
    let script = "cp /eci-attack /cap-upper && /eci-attack setcap /cap-upper; \
                  cp /eci-attack /data/cap-empty && /eci-attack setcap /data/cap-empty; \
                  chmod 755 /cap-image; \
                  echo image=$(/cap-image whoami); \
                  echo ready; exec sleep 3600";
    let s = spec(
        "uns-fcaps",
        &[("app", script)],
        "volumes:\n- name: scratch\n  emptyDir: {}\n",
    )
    .replace(
        "  command:",
        "  volumeMounts: [{name: scratch, mountPath: /data}]\n  command:",
    );
    let out = agent.apply("uns-fcaps", &s);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "uns-fcaps", "app", "ready");
    assert_eq!(l.matches("setcap: ok").count(), 2, "{l}");
    let b = userns_base(&agent, "uns-fcaps");
    let id = group_id(&agent, "uns-fcaps");
    let state = agent.root().join("var/lib/eci/groups").join(&id);
    for f in [
        state.join("app/upper/cap-upper"),
        state.join("app/upper/cap-image"),
        state.join(".volumes/scratch/cap-empty"),
    ] {
        let words = caps_of(&f);
        assert_eq!(
            words.first().map(|w| w >> 24),
            Some(3),
            "{}: a namespaced (revision 3) capability: {words:x?}",
            f.display()
        );
        assert_eq!(words.get(5), Some(&b), "{}: its root is base", f.display());
        let who = run_as_nobody(&f);
        assert!(
            who.contains("ruid=65534 euid=65534 capeff=0000000000000000"),
            "{} executed by nobody on the host: {who}",
            f.display()
        );
    }
    let words = caps_of(&image_cap);
    assert_eq!(words.len(), 5, "the layer keeps its revision 2: {words:x?}");
    assert_eq!(words[0], 0x0200_0001);
    // The control: the layer's own file does grant its capabilities on the host (the
    // state directory, mode 0700, keeps host users away from it), so the check above
    // would have seen them.
    let who = run_as_nobody(&image_cap);
    assert!(
        who.contains("ruid=65534 euid=65534 capeff=0000000000002002"),
        "the layer's file executed by nobody: {who}"
    );
    delete(&agent, "uns-fcaps");
}

/// The user namespace a namespace file belongs to, as (dev, ino).
fn owner_of(ns: &Path) -> (u64, u64) {
    let f = std::fs::File::open(ns).expect("ns");
    // NS_GET_USERNS = _IO(0xb7, 0x1)
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1.
    let fd = unsafe { nix::libc::ioctl(f.as_raw_fd(), 0xb701) };
    assert!(fd >= 0, "NS_GET_USERNS {}", ns.display());
    // SAFETY: the kernel just returned this descriptor to us, it is ours to own.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let m = std::fs::File::from(owned).metadata().expect("fstat");
    (m.dev(), m.ino())
}

fn ns_id(p: &Path) -> (u64, u64) {
    let m = std::fs::metadata(p).expect("ns");
    (m.dev(), m.ino())
}

/// Container root with every capability a container may add tries to mount, unmount,
/// `pivot_root`, make a user namespace of its own (and mount in it), join namespaces,
/// write host-wide sysctls and use ids outside its range: all refused. From the host:
/// its mount and pid namespaces belong to the initial user namespace (container root
/// has no power over them), its network namespace to the group's. A group sysctl is
/// seen inside and not on the host.
#[test]
fn container_root_with_every_capability_stays_in_its_namespaces() {
    let agent = agent();
    let host_msgmax = std::fs::read_to_string("/proc/sys/kernel/msgmax").expect("msgmax");
    let host_core = std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("core");
    let want_msgmax = if host_msgmax.trim() == "12345" {
        "12346"
    } else {
        "12345"
    };
    let script = "/eci-attack userns; echo msgmax=$(cat /proc/sys/kernel/msgmax); \
                  echo ready; exec sleep 3600";
    let extra = format!(
        "securityContext:\n  sysctls: [{{name: kernel.msgmax, value: \"{want_msgmax}\"}}]\n"
    );
    let s = spec("uns-caps", &[("app", script)], &extra).replace(
        "  command:",
        "  securityContext: {capabilities: {add: [IPC_LOCK, SYS_PTRACE]}}\n  command:",
    );
    let out = agent.apply("uns-caps", &s);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "uns-caps", "app", "ready");
    assert!(l.contains("userns-done"), "{l}");
    for attempt in [
        "mount_tmpfs",
        "remount_root_rw",
        "umount_proc",
        "pivot_root",
        "unshare_user",
        "unshare_mount",
        "userns_then_mount",
        "sysctl_core_pattern",
        "sysctl_drop_caches",
        "sysctl_file_max",
        "setns_mnt",
        "setns_pid",
        "setns_user",
        "chown_to_unmapped",
        "setuid_unmapped",
    ] {
        let line = l
            .lines()
            .find(|x| x.contains(&format!("{attempt}: ")))
            .unwrap_or_else(|| panic!("{attempt} not tried: {l}"));
        assert!(!line.ends_with(": ok"), "{line}\n{l}");
    }
    assert!(l.contains(&format!("msgmax={want_msgmax}")), "{l}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax").expect("msgmax"),
        host_msgmax,
        "the group's sysctl reached the host"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("core"),
        host_core
    );
    let b = userns_base(&agent, "uns-caps");
    let id = group_id(&agent, "uns-caps");
    let procs = group_processes(&id);
    assert!(!procs.is_empty());
    let initial = ns_id(Path::new("/proc/self/ns/user"));
    for (pid, uid) in &procs {
        assert!(*uid >= b && *uid < b + RANGE, "{pid} runs as {uid}");
        let p = PathBuf::from(format!("/proc/{pid}/ns"));
        let own_user = ns_id(&p.join("user"));
        assert_ne!(own_user, initial, "{pid} is in the initial user namespace");
        assert_eq!(owner_of(&p.join("mnt")), initial, "mount ns of {pid}");
        assert_eq!(owner_of(&p.join("pid")), initial, "pid ns of {pid}");
        assert_eq!(owner_of(&p.join("net")), own_user, "net ns of {pid}");
    }
    delete(&agent, "uns-caps");
}

/// Two groups, both root inside with `KILL` and `SYS_PTRACE`: disjoint host ranges, and
/// root of one killing every process it can reach (`kill -9 -1`) leaves the other
/// group's processes alone.
#[test]
fn two_groups_have_disjoint_ranges_and_cannot_signal_each_other() {
    let agent = agent();
    let caps = "  securityContext: {capabilities: {add: [SYS_PTRACE]}}\n  command:";
    let b_spec =
        spec("uns-b", &[("app", "echo ready; exec sleep 3600")], "").replace("  command:", caps);
    let out = agent.apply("uns-b", &b_spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "uns-b", "app", "ready");
    let b_id = group_id(&agent, "uns-b");
    let before = group_processes(&b_id);
    assert!(!before.is_empty());
    let a_script = "sleep 100 & echo seen=$(ls /proc | grep -c '^[0-9]'); kill -9 -1; \
                    echo killed; exec sleep 3600";
    let a_spec = spec("uns-a", &[("app", a_script)], "").replace("  command:", caps);
    let out = agent.apply("uns-a", &a_spec);
    assert!(out.status.success(), "{}", text(&out));
    let l = wait_log(&agent, "uns-a", "app", "killed");
    let (a, b) = (userns_base(&agent, "uns-a"), userns_base(&agent, "uns-b"));
    assert!(a.abs_diff(b) >= RANGE, "ranges overlap: {a} and {b}");
    for (pid, uid) in group_processes(&group_id(&agent, "uns-a")) {
        assert!(uid >= a && uid < a + RANGE, "{pid} of uns-a runs as {uid}");
    }
    // It saw only its own processes (sh, its subshell, sleep, ls and grep).
    let seen: u32 = l
        .lines()
        .find_map(|x| x.split("seen=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u32::MAX);
    assert!(seen <= 5, "{l}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(group_processes(&b_id), before, "uns-b was touched");
    wait_phase(&agent, "uns-b", "Running");
    delete(&agent, "uns-a");
    delete(&agent, "uns-b");
}

/// A tenant keeps its configFile volume (mounted read-write) full of fresh entries and
/// keeps `app.conf` a link to a host file while the agent rewrites the volume: an agent
/// that restarts while an init container runs starts the group over (and so rewrites
/// its configFile volumes) under that running init container. The removal of the old
/// directory then failed with `ENOTEMPTY`, which was ignored, and the write and chmod
/// of `app.conf` went through the tenant's link to the host (checked: round 1 or 2).
/// The host file stays as it was.
#[test]
fn a_tenant_racing_the_agent_cannot_send_config_file_writes_to_the_host() {
    let mut agent = agent();
    let victim_dir = tempfile::tempdir().expect("tempdir");
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, "original\n").expect("victim");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let script = format!("exec /eci-attack race /conf app.conf {}", victim.display());
    let volumes = "volumes:\n- name: conf\n  configFile:\n    files:\n    - {path: app.conf, content: \"PWNED\"}\n";
    // Two racing groups (all the node's CPUs): two tries at each agent restart.
    let names = ["uns-race1", "uns-race2"];
    let mut confs = Vec::new();
    for name in names {
        let s = spec(name, &[("app", "sleep 3600")], volumes)
            .replace(
            "containers:\n",
            &format!(
                "initContainers:\n- name: racer\n  image: {IMAGE}\n  imagePullPolicy: IfNotPresent\n  \
                 volumeMounts: [{{name: conf, mountPath: /conf}}]\n  command: [\"/bin/sh\", \"-c\"]\n  args: [{}]\ncontainers:\n",
                serde_json::to_string(&script).expect("json")
            ),
        );
        let out = agent.apply(name, &s);
        assert!(out.status.success(), "{}", text(&out));
        wait_log(&agent, name, "racer", "racing");
        let conf = agent
            .root()
            .join("run/eci/groups")
            .join(group_id(&agent, name))
            .join("volumes/conf");
        let ino = std::fs::metadata(&conf).map(|m| m.ino()).ok();
        confs.push((conf, ino));
    }
    agent.kill9_and_restart().expect("restart");
    // The agent started each group over: a new volume directory stands there.
    let rewritten = wait_for(Duration::from_secs(20), || {
        confs
            .iter()
            .all(|(conf, before)| {
                let now = std::fs::metadata(conf).map(|m| m.ino()).ok();
                now.is_some() && now != *before
            })
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let m = std::fs::metadata(&victim).expect("victim");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "original\n",
        "the agent wrote a tenant's configFile through its link"
    );
    assert_eq!(m.mode() & 0o7777, 0o600, "mode changed");
    assert_eq!((m.uid(), m.gid()), (0, 0), "owner changed");
    assert!(rewritten.is_some(), "the volumes were not rewritten");
    for name in names {
        let id = group_id(&agent, name);
        delete(&agent, name);
        assert!(group_processes(&id).is_empty());
    }
}

/// An Update that renames a container stops the old one: it does not run on, unseen,
/// next to the new spec's containers (it did, and it could then race the rewrite of
/// the group's volumes).
#[test]
fn an_update_that_drops_a_container_stops_it() {
    let agent = agent();
    let s = |c: &str| {
        spec(
            "uns-drop",
            &[(c, "echo ready; exec sleep 3600")],
            "terminationGracePeriodSeconds: 1\n",
        )
    };
    let out = agent.apply("uns-drop", &s("old"));
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "uns-drop", "old", "ready");
    let id = group_id(&agent, "uns-drop");
    let before = group_processes(&id);
    assert_eq!(before.len(), 1, "{before:?}");
    let out = agent.apply("uns-drop", &s("new"));
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "uns-drop", "new", "ready");
    let now = group_processes(&id);
    assert_eq!(
        now.len(),
        1,
        "the dropped container still runs: {before:?} {now:?}"
    );
    assert_ne!(now, before);
    delete(&agent, "uns-drop");
}

/// Container root plants links to a host file where the agent chowns and chmods: the
/// root of its writable layer, its emptyDir (and a directory in it), its configFile
/// volume. Its container restarts (a fresh writable layer), the agent crashes and
/// starts again, and an Update recreates every container: the agent's `lchown`s and
/// mode changes never follow a link, and the host file keeps its owner, mode and
/// content.
#[test]
fn planted_links_never_lead_the_agents_chowns_to_host_files() {
    let mut agent = agent();
    let victim_dir = tempfile::tempdir().expect("tempdir");
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, "original\n").expect("victim");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let v = victim.display();
    let script = format!(
        "if [ -e /data/planted ]; then echo second-run; exec sleep 3600; fi; \
         ln -s {v} /victim-link; ln -s {v} /data/link; mkdir -p /data/d; ln -s {v} /data/d/x; \
         rm -f /conf/app.conf; ln -s {v} /conf/app.conf; ln -s {v} /conf/new; \
         touch /data/planted; echo planted; exit 1"
    );
    let volumes = "terminationGracePeriodSeconds: 1\nvolumes:\n- name: scratch\n  emptyDir: {}\n\
                   - name: conf\n  configFile:\n    files:\n    - {path: app.conf, content: \"PWNED\", mode: 511}\n";
    let s = |generation: &str| {
        spec("uns-links", &[("app", &script)], volumes).replace(
            "  command:",
            &format!(
                "  env: [{{name: GEN, value: \"{generation}\"}}]\n  volumeMounts: [{{name: scratch, mountPath: /data}}, {{name: conf, mountPath: /conf}}]\n  command:"
            ),
        )
    };
    let out = agent.apply("uns-links", &s("1"));
    assert!(out.status.success(), "{}", text(&out));
    wait_log(&agent, "uns-links", "app", "second-run");
    let check = |when: &str| {
        let m = std::fs::metadata(&victim).expect("victim");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, 0o600),
            "{when}: the host file's owner or mode changed"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "original\n",
            "{when}"
        );
    };
    check("after a container restart");
    agent.kill9_and_restart().expect("restart");
    wait_phase(&agent, "uns-links", "Running");
    std::thread::sleep(Duration::from_secs(1));
    check("after an agent restart");
    let out = agent.apply("uns-links", &s("2"));
    assert!(out.status.success(), "{}", text(&out));
    wait_for(Duration::from_secs(30), || {
        (agent.get_json("uns-links").ok()?["status"]["phase"] == "Running"
            && eci_tests::scenario::logs(&agent, "uns-links", "app").contains("second-run"))
        .then_some(())
    })
    .expect("the update ran");
    check("after an Update");
    // The links are still there (the tenant's own files), pointing at the host file.
    let id = group_id(&agent, "uns-links");
    let data = agent
        .root()
        .join("var/lib/eci/groups")
        .join(&id)
        .join(".volumes/scratch");
    assert!(std::fs::symlink_metadata(data.join("link")).is_ok_and(|m| m.file_type().is_symlink()));
    delete(&agent, "uns-links");
    check("after delete");
}

/// `runAsUser`/`runAsGroup` past the range (65536 would be the next group's root on
/// the host): the container never starts, and nothing runs outside the range.
#[test]
fn ids_past_the_range_never_reach_another_groups_ids() {
    let agent = agent();
    for (name, ctx) in [
        ("uns-uid", "{runAsUser: 65536}"),
        ("uns-gid", "{runAsUser: 0, runAsGroup: 65536}"),
    ] {
        let s = spec(name, &[("app", "echo STARTED; exec sleep 3600")], "").replace(
            "  command:",
            &format!("  securityContext: {ctx}\n  command:"),
        );
        let out = agent.apply(name, &s);
        assert!(out.status.success(), "{}", text(&out));
        let b = userns_base(&agent, name);
        let id = group_id(&agent, name);
        let failed = wait_for(Duration::from_secs(20), || {
            let d = text(&agent.ctl(&["describe", name]));
            d.contains("outside the group's user namespace")
                .then_some(d)
        });
        assert!(
            failed.is_some(),
            "{name}: {}",
            text(&agent.ctl(&["describe", name]))
        );
        assert!(
            !eci_tests::scenario::logs(&agent, name, "app").contains("STARTED"),
            "{name} ran"
        );
        for (pid, uid) in group_processes(&id) {
            assert!(uid >= b && uid < b + RANGE, "{name}: {pid} runs as {uid}");
        }
        delete(&agent, name);
    }
}
