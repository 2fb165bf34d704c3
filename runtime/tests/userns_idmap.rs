//! Privileged proof of issue 14's building blocks: a group user namespace, idmapped
//! layers under an overlay, and a process in the namespace writing through it.
//! Skipped unless root. Every mount is made in a private mount namespace of a
//! dedicated thread, so all of them go when the thread ends, even on panic; the temp
//! dirs are removed afterwards from the test's own namespace, where nothing is mounted.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use eci_runtime::idmap;
use eci_runtime::userns::{self, IdRange};
use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;

const BASE_A: u32 = 1_500_000_000;
const BASE_B: u32 = BASE_A + IdRange::GROUP_LEN;

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root");
    false
}

/// Runs `f` on a thread with its own private mount namespace; panics propagate.
fn in_private_mounts<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A temp dir others may traverse (ids of a user namespace must reach the mounts).
fn scratch() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// An image layer as the unpacker leaves it: owned by host root, one file by 1000.
fn layer(dir: &Path) -> PathBuf {
    let l = dir.join("layer");
    std::fs::create_dir_all(l.join("etc")).expect("layer");
    std::fs::write(l.join("etc/os-release"), "ID=test\n").expect("file");
    std::fs::write(l.join("user-file"), "mine\n").expect("file");
    std::os::unix::fs::chown(l.join("user-file"), Some(1000), Some(1000)).expect("chown");
    l
}

/// Upper and work dirs of one group, owned by the group's root.
fn upper_work(dir: &Path, name: &str, base: u32) -> (PathBuf, PathBuf, PathBuf) {
    let (u, w, m) = (
        dir.join(format!("{name}-upper")),
        dir.join(format!("{name}-work")),
        dir.join(format!("{name}-merged")),
    );
    for d in [&u, &w, &m] {
        std::fs::create_dir(d).expect("mkdir");
    }
    for d in [&u, &w] {
        std::os::unix::fs::chown(d, Some(base), Some(base)).expect("chown");
    }
    (u, w, m)
}

fn overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) {
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .expect("mount overlay");
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.uid(), m.gid())
}

/// Forks a child that joins `userns` as `uid`/`gid` (ids inside) and runs `f`, whose
/// return value is the exit code. `f` must be async-signal-safe (prepare paths before).
fn in_userns(userns: &OwnedFd, uid: u32, gid: u32, f: impl FnOnce() -> i32) -> i32 {
    let ns = userns.as_raw_fd();
    // SAFETY: the child only makes syscalls (setns, setres[ug]id, setgroups, what `f`
    // does) and _exits; it never returns into the test harness.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            // SAFETY: plain syscalls on a descriptor inherited from the parent.
            unsafe {
                if libc::setns(ns, libc::CLONE_NEWUSER) != 0 {
                    libc::_exit(101);
                }
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    libc::_exit(102);
                }
                libc::_exit(f())
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("child ended with {other:?}"),
            }
        }
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("nul")
}

fn ns_ino(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd).expect("fstat").st_ino
}

#[test]
fn two_groups_get_disjoint_ranges_and_namespaces_they_own() {
    if !root() {
        return;
    }
    let owned = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    let a = userns::create_with(IdRange::group(BASE_A), owned).expect("userns a");
    let b = userns::create_with(IdRange::group(BASE_B), owned).expect("userns b");
    assert_ne!(ns_ino(&a.user), ns_ino(&b.user));
    for (ns, base) in [(&a, BASE_A), (&b, BASE_B)] {
        assert_eq!(ns.owned.len(), 3);
        for (kind, fd) in &ns.owned {
            let owner = userns::owner(fd).expect("owner");
            assert_eq!(
                ns_ino(&owner),
                ns_ino(&ns.user),
                "{kind} not owned by the userns"
            );
        }
        // The maps as a process inside reads them.
        let dir = scratch();
        let out = dir.path().join("maps");
        let file = std::fs::File::create(&out).expect("out");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let fd = file.as_raw_fd();
        let code = in_userns(&ns.user, 0, 0, || {
            let mut buf = [0u8; 256];
            // SAFETY: raw reads and writes of live buffers and descriptors.
            unsafe {
                for p in [c"/proc/self/uid_map", c"/proc/self/gid_map"] {
                    let m = libc::open(p.as_ptr(), libc::O_RDONLY);
                    let n = libc::read(m, buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 {
                        return 1;
                    }
                    libc::write(fd, buf.as_ptr().cast(), n as usize);
                }
            }
            0
        });
        assert_eq!(code, 0);
        let text = std::fs::read_to_string(&out).expect("read maps");
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "0",
                &base.to_string(),
                "65536",
                "0",
                &base.to_string(),
                "65536"
            ]
        );
    }
    assert!(
        userns::create(IdRange {
            base: u32::MAX - 10,
            len: 65536
        })
        .is_err()
    );
    // Host root configures the userns-owned namespaces from a thread, as the shim will:
    // lo up in the netns, the hostname in the uts ns.
    let net = a.owned[0].1.try_clone().expect("dup");
    let uts = a.owned[2].1.try_clone().expect("dup");
    let (host_hostname, group_hostname) = std::thread::spawn(move || {
        let before = nix::unistd::gethostname().expect("hostname");
        nix::sched::setns(&net, CloneFlags::CLONE_NEWNET).expect("setns net");
        nix::sched::setns(&uts, CloneFlags::CLONE_NEWUTS).expect("setns uts");
        eci_netns::loopback::up().expect("lo up");
        nix::unistd::sethostname("group-a").expect("sethostname");
        (before, nix::unistd::gethostname().expect("hostname"))
    })
    .join()
    .expect("thread");
    assert_eq!(group_hostname, "group-a");
    assert_eq!(nix::unistd::gethostname().expect("hostname"), host_hostname);
    assert!(userns::create(IdRange { base: 5, len: 0 }).is_err());
}

#[test]
fn one_idmapped_layer_serves_two_groups_with_their_own_ids() {
    if !root() {
        return;
    }
    let dir = scratch();
    let d = dir.path().to_path_buf();
    in_private_mounts(move || {
        let l = layer(&d);
        let ua = userns::create(IdRange::group(BASE_A)).expect("userns a");
        let ub = userns::create(IdRange::group(BASE_B)).expect("userns b");
        // Group A: idmapped layer attached at a path, classic lowerdir= overlay.
        let lower_a = d.join("a-lower");
        std::fs::create_dir(&lower_a).expect("mkdir");
        idmap::bind(&l, &lower_a, ua.as_fd(), true).expect("idmapped bind a");
        let (ua_up, ua_work, ma) = upper_work(&d, "a", BASE_A);
        overlay(&lower_a, &ua_up, &ua_work, &ma);
        // Group B: idmapped layer kept detached, given to overlayfs by descriptor.
        let tree_b = idmap::idmapped_tree(&l, ub.as_fd(), true).expect("idmapped tree b");
        let (ub_up, ub_work, mb) = upper_work(&d, "b", BASE_B);
        idmap::overlay_from_fds(&[tree_b], &ub_up, &ub_work, &mb).expect("overlay from fds");

        assert_eq!(owner(&lower_a.join("etc/os-release")), (BASE_A, BASE_A));
        for (m, base) in [(&ma, BASE_A), (&mb, BASE_B)] {
            assert_eq!(owner(&m.join("etc")), (base, base), "{}", m.display());
            assert_eq!(owner(&m.join("etc/os-release")), (base, base));
            assert_eq!(owner(&m.join("user-file")), (base + 1000, base + 1000));
            assert_eq!(
                std::fs::read_to_string(m.join("user-file")).expect("read"),
                "mine\n"
            );
        }
        // The layer itself is untouched on disk.
        assert_eq!(owner(&l.join("etc/os-release")), (0, 0));
        assert_eq!(owner(&l.join("user-file")), (1000, 1000));
        // Read-only: even host root cannot write through the idmapped layer mount.
        assert!(std::fs::write(lower_a.join("x"), "x").is_err());
    });
}

#[test]
fn a_process_in_the_userns_writes_as_the_groups_root() {
    if !root() {
        return;
    }
    let dir = scratch();
    let d = dir.path().to_path_buf();
    in_private_mounts(move || {
        let l = layer(&d);
        let ns = userns::create(IdRange::group(BASE_A)).expect("userns");
        let lower = d.join("lower");
        std::fs::create_dir(&lower).expect("mkdir");
        idmap::bind(&l, &lower, ns.as_fd(), true).expect("idmapped bind");
        let (up, work, m) = upper_work(&d, "a", BASE_A);
        overlay(&lower, &up, &work, &m);
        let new = cstr(&m.join("new-file"));
        let lower_file = cstr(&m.join("etc/os-release"));
        let user_file = cstr(&m.join("user-file"));
        let code = in_userns(&ns, 0, 0, || {
            // SAFETY: raw syscalls on NUL-terminated paths prepared before the fork.
            unsafe {
                let fd = libc::open(new.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                if fd < 0 || libc::write(fd, b"hi".as_ptr().cast(), 2) != 2 {
                    return 10;
                }
                libc::close(fd);
                // Copy-ups of a root-owned and a 1000-owned layer file.
                for (i, p) in [&lower_file, &user_file].into_iter().enumerate() {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
                    if fd < 0 || libc::write(fd, b"more".as_ptr().cast(), 4) != 4 {
                        return 11 + i as i32;
                    }
                    libc::close(fd);
                }
                // Root inside is not root on the host: host-owned files stay closed.
                let hostfd = libc::open(c"/etc/shadow".as_ptr(), libc::O_RDONLY);
                if hostfd >= 0 {
                    return 20;
                }
            }
            0
        });
        assert_eq!(code, 0, "child step failed");
        assert_eq!(owner(&m.join("new-file")), (BASE_A, BASE_A));
        assert_eq!(owner(&up.join("new-file")), (BASE_A, BASE_A));
        assert_eq!(owner(&up.join("etc/os-release")), (BASE_A, BASE_A));
        assert_eq!(owner(&up.join("user-file")), (BASE_A + 1000, BASE_A + 1000));
        assert_eq!(
            std::fs::read_to_string(l.join("user-file")).expect("read"),
            "mine\n"
        );
        assert_eq!(owner(&l.join("user-file")), (1000, 1000));
    });
}

/// `security.capability` bytes: CAP_NET_RAW permitted and effective; v3 with `rootid`.
fn cap_xattr(rootid: Option<u32>) -> Vec<u8> {
    const CAP_NET_RAW: u32 = 13;
    let magic: u32 = if rootid.is_some() {
        0x0300_0000
    } else {
        0x0200_0000
    } | 1;
    let mut v = Vec::new();
    for word in [magic, 1 << CAP_NET_RAW, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    if let Some(r) = rootid {
        v.extend_from_slice(&r.to_le_bytes());
    }
    v
}

fn set_xattr(p: &Path, name: &std::ffi::CStr, value: &[u8]) {
    let c = cstr(p);
    // SAFETY: NUL-terminated path and name, a live value buffer with its length.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn xattr_len(p: &Path) -> isize {
    let c = cstr(p);
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated path and name, a live buffer with its length.
    unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    }
}

/// Runs `prog /proc/self/status` inside `ns` as `uid` and returns the status text.
fn status_of(ns: &OwnedFd, uid: u32, prog: &Path, out: &Path) -> String {
    let file = std::fs::File::create(out).expect("out");
    let fd = file.as_raw_fd();
    let prog_c = cstr(prog);
    let arg1 = CString::new("/proc/self/status").expect("c");
    let argv = [prog_c.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    let code = in_userns(ns, uid, uid, || {
        // SAFETY: argv/envp are NULL-terminated arrays of C strings made before fork.
        unsafe {
            libc::dup2(fd, 1);
            libc::execve(prog_c.as_ptr(), argv.as_ptr(), envp.as_ptr());
            *libc::__errno_location() + 30
        }
    });
    if code != 0 {
        return format!("exec failed: errno {}", code - 30);
    }
    std::fs::read_to_string(out).expect("read status")
}

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn layer_setuid_and_file_caps_work_for_mapped_users() {
    if !root() {
        return;
    }
    let dir = scratch();
    let d = dir.path().to_path_buf();
    in_private_mounts(move || {
        let l = layer(&d);
        let cat = Path::new("/usr/bin/cat");
        for (name, x) in [
            ("capcat2", Some(None)),
            ("capcat3", Some(Some(0))),
            ("capcat3b", Some(Some(BASE_A))),
            ("suidcat", None),
            ("plaincat", None),
        ] {
            let p = l.join(name);
            std::fs::copy(cat, &p).expect("copy");
            let mode = if name == "suidcat" { 0o4755 } else { 0o755 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some(rootid) = x {
                set_xattr(&p, c"security.capability", &cap_xattr(rootid));
            }
            eprintln!("{name}: on-disk xattr len {}", xattr_len(&p));
        }
        let ns = userns::create(IdRange::group(BASE_A)).expect("userns");
        let lower = d.join("lower");
        std::fs::create_dir(&lower).expect("mkdir");
        idmap::bind(&l, &lower, ns.as_fd(), true).expect("idmapped bind");
        let (up, work, m) = upper_work(&d, "a", BASE_A);
        overlay(&lower, &up, &work, &m);
        for (where_, base) in [("lower", &lower), ("merged", &m)] {
            let run = |name: &str| status_of(&ns, 1000, &base.join(name), &d.join("out"));
            // v2 (and v3 with rootid 0, which the kernel stores as v2) written by host
            // root: the capability is granted to a mapped non-root user.
            for name in ["capcat2", "capcat3"] {
                let s = run(name);
                assert_eq!(
                    field(&s, "Uid:"),
                    "1000 1000 1000 1000",
                    "{name} via {where_}"
                );
                assert_eq!(
                    field(&s, "CapEff:"),
                    "0000000000002000",
                    "{name} via {where_}"
                );
            }
            // setuid root of the image: euid is the group's root, full caps in the userns.
            let s = run("suidcat");
            assert_eq!(field(&s, "Uid:"), "1000 0 0 0", "suidcat via {where_}");
            assert_eq!(
                field(&s, "CapEff:"),
                "000001ffffffffff",
                "suidcat via {where_}"
            );
            let s = run("plaincat");
            assert_eq!(field(&s, "CapEff:"), "0000000000000000");
            // v3 with a host rootid: through the idmapping the rootid is no root the
            // process knows, so no capability (directly: ignored; through overlayfs:
            // exec fails with EOVERFLOW). The unpacker must store caps as v2.
            let s = run("capcat3b");
            assert!(
                s.starts_with("exec failed") || field(&s, "CapEff:") == "0000000000000000",
                "capcat3b via {where_}: {s}"
            );
            eprintln!("capcat3b via {where_}: {}", s.lines().next().unwrap_or(""));
        }
        // Host root reads the v2 xattr through the idmapped mount as v3 with rootid base.
        assert_eq!(xattr_len(&l.join("capcat2")), 20);
        assert_eq!(xattr_len(&lower.join("capcat2")), 24);
    });
}

#[test]
fn container_mounts_sysctls_and_ports_work_inside_the_userns() {
    if !root() {
        return;
    }
    let dir = scratch();
    let d = dir.path().to_path_buf();
    in_private_mounts(move || {
        let l = layer(&d);
        let ns = userns::create_with(
            IdRange::group(BASE_A),
            CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
        )
        .expect("userns");
        let lower = d.join("lower");
        std::fs::create_dir(&lower).expect("mkdir");
        idmap::bind(&l, &lower, ns.user.as_fd(), true).expect("idmapped bind");
        let (up, work, _m) = upper_work(&d, "a", BASE_A);
        let (up2, work2, _m2) = upper_work(&d, "b", BASE_A);
        let names = [
            "proc",
            "sys",
            "dev",
            "pts",
            "mq",
            "cg",
            "ov-userxattr",
            "ov-plain",
            "ov-rawlayer",
            "null",
        ];
        for n in &names[..9] {
            std::fs::create_dir(d.join(n)).expect("mkdir");
        }
        std::fs::write(d.join("null"), "").expect("file");
        let ov = |lowerdir: &Path, u: &Path, w: &Path, extra: &str| {
            CString::new(format!(
                "lowerdir={},upperdir={},workdir={}{extra}",
                lowerdir.display(),
                u.display(),
                w.display()
            ))
            .expect("c")
        };
        let (up3, work3, _m3) = upper_work(&d, "c", BASE_A);
        let datas = [
            ov(&lower, &up, &work, ",userxattr"),
            ov(&lower, &up2, &work2, ""),
            ov(&l, &up3, &work3, ",userxattr"),
        ];
        let tgt: Vec<CString> = names.iter().map(|n| cstr(&d.join(n))).collect();
        let out = d.join("out");
        let file = std::fs::File::create(&out).expect("out");
        let fd = file.as_raw_fd();
        let net = ns.owned[0].1.as_raw_fd();
        let ipc = ns.owned[1].1.as_raw_fd();
        let uts = ns.owned[2].1.as_raw_fd();
        let code = in_userns(&ns.user, 0, 0, || {
            // SAFETY: raw syscalls on strings prepared before the fork.
            unsafe {
                if libc::setns(net, libc::CLONE_NEWNET) != 0
                    || libc::setns(ipc, libc::CLONE_NEWIPC) != 0
                    || libc::setns(uts, libc::CLONE_NEWUTS) != 0
                {
                    return 50;
                }
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWCGROUP)
                    != 0
                {
                    return 51;
                }
                let pid = libc::fork();
                if pid > 0 {
                    let mut st = 0;
                    libc::waitpid(pid, &mut st, 0);
                    return 0;
                }
                let mut res = [0i32; 12];
                let mut m = |i: usize,
                             src: &std::ffi::CStr,
                             t: &CString,
                             ty: &std::ffi::CStr,
                             fl: libc::c_ulong,
                             data: *const libc::c_void| {
                    res[i] = if libc::mount(src.as_ptr(), t.as_ptr(), ty.as_ptr(), fl, data) == 0 {
                        0
                    } else {
                        *libc::__errno_location()
                    };
                };
                m(0, c"proc", &tgt[0], c"proc", 0, std::ptr::null());
                m(1, c"sysfs", &tgt[1], c"sysfs", 0, std::ptr::null());
                m(2, c"tmpfs", &tgt[2], c"tmpfs", 0, std::ptr::null());
                m(
                    3,
                    c"devpts",
                    &tgt[3],
                    c"devpts",
                    0,
                    c"newinstance,ptmxmode=0666".as_ptr().cast(),
                );
                m(4, c"mqueue", &tgt[4], c"mqueue", 0, std::ptr::null());
                m(
                    5,
                    c"cgroup",
                    &tgt[5],
                    c"cgroup",
                    0,
                    c"memory".as_ptr().cast(),
                );
                m(
                    6,
                    c"overlay",
                    &tgt[6],
                    c"overlay",
                    0,
                    datas[0].as_ptr().cast(),
                );
                m(
                    7,
                    c"overlay",
                    &tgt[7],
                    c"overlay",
                    0,
                    datas[1].as_ptr().cast(),
                );
                m(
                    8,
                    c"overlay",
                    &tgt[8],
                    c"overlay",
                    0,
                    datas[2].as_ptr().cast(),
                );
                m(
                    9,
                    c"/dev/null",
                    &tgt[9],
                    c"",
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                let node = CString::from(c"/dev/shm/eci-userns-probe-node");
                res[10] = if libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3))
                    == 0
                {
                    libc::unlink(node.as_ptr());
                    0
                } else {
                    *libc::__errno_location()
                };
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = 80u16.to_be();
                res[11] = if libc::bind(
                    s,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                ) == 0
                {
                    0
                } else {
                    *libc::__errno_location()
                };
                let mut more = [0i32; 3];
                for (i, (p, v)) in [
                    (c"/proc/sys/net/ipv4/ip_unprivileged_port_start", c"0"),
                    (c"/proc/sys/kernel/shmmni", c"4000"),
                ]
                .into_iter()
                .enumerate()
                {
                    let f = libc::open(p.as_ptr(), libc::O_WRONLY);
                    more[i] = if f >= 0 && libc::write(f, v.as_ptr().cast(), 1 + i * 3) > 0 {
                        0
                    } else {
                        *libc::__errno_location()
                    };
                }
                more[2] = if libc::sethostname(c"g".as_ptr(), 1) == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                libc::write(fd, res.as_ptr().cast(), std::mem::size_of_val(&res));
                libc::write(fd, more.as_ptr().cast(), std::mem::size_of_val(&more));
                libc::write(fd, res.as_ptr().cast(), std::mem::size_of_val(&res));
                libc::_exit(0);
            }
        });
        assert_eq!(code, 0);
        let bytes = std::fs::read(&out).expect("read");
        let labels = [
            "proc",
            "sysfs",
            "tmpfs",
            "devpts",
            "mqueue",
            "cgroup v1 memory",
            "overlay userxattr over idmapped lower",
            "overlay (no userxattr) over idmapped lower",
            "overlay userxattr over raw layer",
            "bind /dev/null",
            "mknod",
            "bind port 80",
            "sysctl net ip_unprivileged_port_start",
            "sysctl kernel.shmmni",
            "sethostname",
        ];
        let bytes: Vec<u8> = bytes[..12 * 4]
            .iter()
            .chain(&bytes[12 * 4..])
            .copied()
            .collect();
        for (i, lab) in labels.iter().enumerate() {
            let e = i32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4"));
            // Device nodes cannot be made in a user namespace: bind the host's instead.
            let want = if *lab == "mknod" { libc::EPERM } else { 0 };
            assert_eq!(e, want, "{lab}: {}", std::io::Error::from_raw_os_error(e));
        }
    });
}

/// The order proposed for `eci-shim init` (docs/userns.md): new mount namespace and
/// `pivot_root` into the overlay as host root, then enter the group userns last. Root
/// inside writes as the group's root and cannot mount or unmount anything.
#[test]
fn the_proposed_init_order_works() {
    if !root() {
        return;
    }
    let dir = scratch();
    let d = dir.path().to_path_buf();
    in_private_mounts(move || {
        let l = layer(&d);
        let ns = userns::create(IdRange::group(BASE_A)).expect("userns");
        let tree = idmap::idmapped_tree(&l, ns.as_fd(), true).expect("tree");
        let (up, work, m) = upper_work(&d, "a", BASE_A);
        idmap::overlay_from_fds(&[tree], &up, &work, &m).expect("overlay");
        let merged = cstr(&m);
        let userns_fd = ns.as_raw_fd();
        // SAFETY: the child only makes raw syscalls on data prepared before the fork.
        let code = match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => unsafe {
                let step = |ok: bool, code: i32| {
                    if !ok {
                        libc::_exit(code)
                    }
                };
                step(libc::unshare(libc::CLONE_NEWNS) == 0, 1);
                step(
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == 0,
                    2,
                );
                step(libc::chdir(merged.as_ptr()) == 0, 3);
                step(
                    libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0,
                    4,
                );
                step(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0, 5);
                step(libc::chdir(c"/".as_ptr()) == 0, 6);
                step(libc::setns(userns_fd, libc::CLONE_NEWUSER) == 0, 7);
                step(
                    libc::setresgid(0, 0, 0) == 0 && libc::setresuid(0, 0, 0) == 0,
                    8,
                );
                let fd = libc::open(
                    c"/written-inside".as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY,
                    0o600,
                );
                step(fd >= 0, 9);
                libc::close(fd);
                // The mount namespace belongs to the initial userns: no mounts for root inside.
                step(libc::umount2(c"/".as_ptr(), libc::MNT_DETACH) != 0, 10);
                step(
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        c"/etc".as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    ) != 0,
                    11,
                );
                step(libc::unshare(libc::CLONE_NEWNS) == 0, 12); // its own, owned by the userns: allowed
                libc::_exit(0)
            },
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("child ended with {other:?}"),
                }
            }
        };
        assert_eq!(code, 0, "failed at step {code}");
        assert_eq!(owner(&m.join("written-inside")), (BASE_A, BASE_A));
        assert_eq!(owner(&m.join("etc/os-release")), (BASE_A, BASE_A));
    });
}
