//! Privileged: what a process inside a group user namespace can do — setuid and
//! file-capability binaries of a shared layer, the mounts a container needs, sysctls,
//! ports. Skipped unless root; see `common` for how mounts are cleaned up.

mod common;

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use eci_runtime::idmap;
use eci_runtime::userns::{self, IdRange};
use nix::sched::CloneFlags;

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
    in_scratch_mounts(move |d| {
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
        }
        // Host root's v3 with rootid 0 is stored as v2; with another rootid as v3.
        assert_eq!(xattr_len(&l.join("capcat3")), 20);
        assert_eq!(xattr_len(&l.join("capcat3b")), 24);
        let ns = userns::create(IdRange::group(BASE_A)).expect("userns");
        let (lower, m) = idmapped_root(&d, &l, &ns, "a", BASE_A);
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
        }
        // Host root reads the v2 xattr through the idmapped mount as v3 with rootid base.
        assert_eq!(xattr_len(&l.join("capcat2")), 20);
        assert_eq!(xattr_len(&lower.join("capcat2")), 24);
    });
}

#[test]
fn container_mounts_sysctls_and_ports_work_inside_the_userns() {
    in_scratch_mounts(move |d| {
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
                // PID 1 of the new pid namespace does the mounts (proc needs it).
                let pid = libc::fork();
                if pid > 0 {
                    let mut st = 0;
                    libc::waitpid(pid, &mut st, 0);
                    return if libc::WIFEXITED(st) {
                        libc::WEXITSTATUS(st)
                    } else {
                        52
                    };
                }
                let mut res = [0i32; 15];
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
                for (i, (p, v)) in [
                    (c"/proc/sys/net/ipv4/ip_unprivileged_port_start", c"0"),
                    (c"/proc/sys/kernel/shmmni", c"4000"),
                ]
                .into_iter()
                .enumerate()
                {
                    let f = libc::open(p.as_ptr(), libc::O_WRONLY);
                    res[12 + i] = if f >= 0 && libc::write(f, v.as_ptr().cast(), 1 + i * 3) > 0 {
                        0
                    } else {
                        *libc::__errno_location()
                    };
                }
                res[14] = if libc::sethostname(c"g".as_ptr(), 1) == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                let n = std::mem::size_of_val(&res);
                libc::_exit(if libc::write(fd, res.as_ptr().cast(), n) == n as isize {
                    0
                } else {
                    53
                });
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
        assert_eq!(bytes.len(), labels.len() * 4);
        for (i, lab) in labels.iter().enumerate() {
            let e = i32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4"));
            // Device nodes cannot be made in a user namespace: bind the host's instead.
            let want = if *lab == "mknod" { libc::EPERM } else { 0 };
            assert_eq!(e, want, "{lab}: {}", std::io::Error::from_raw_os_error(e));
        }
    });
}

/// Runs Debian's `ping` (CAP_NET_RAW in its `security.capability`) as uid 1000 inside
/// the group userns, rooted (`pivot_root`) in an overlay over the idmapped rootfs, in a
/// netns owned by the userns; returns (exit code, output). With `no_new_privs` the file
/// capability is not granted, which shows it is what makes ping work.
fn ping_inside(rootfs: &Path, d: &Path, no_new_privs: bool) -> (i32, String) {
    let ns = userns::create_with(IdRange::group(BASE_A), CloneFlags::CLONE_NEWNET).expect("userns");
    let net = ns.owned[0].1.try_clone().expect("dup");
    std::thread::spawn(move || {
        nix::sched::setns(&net, CloneFlags::CLONE_NEWNET).expect("setns net");
        eci_netns::loopback::up().expect("lo up");
    })
    .join()
    .expect("thread");
    let tree = idmap::idmapped_tree(rootfs, ns.user.as_fd(), true).expect("tree");
    let name = if no_new_privs { "nnp" } else { "caps" };
    let (up, work, m) = upper_work(d, name, BASE_A);
    idmap::overlay_from_fds(&[tree], &up, &work, &m).expect("overlay");
    let out = d.join(format!("{name}.out"));
    let file = std::fs::File::create(&out).expect("out");
    let (fd, netfd, userfd) = (
        file.as_raw_fd(),
        ns.owned[0].1.as_raw_fd(),
        ns.user.as_raw_fd(),
    );
    let merged = cstr(&m);
    let argv = [
        c"ping".as_ptr(),
        c"-c1".as_ptr(),
        c"-W2".as_ptr(),
        c"127.0.0.1".as_ptr(),
        std::ptr::null(),
    ];
    let envp = [c"PATH=/usr/bin:/bin".as_ptr(), std::ptr::null()];
    // SAFETY: the child only makes raw syscalls on data prepared before the fork.
    let code = match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => unsafe {
            let step = |ok: bool, code: i32| {
                if !ok {
                    libc::_exit(code)
                }
            };
            step(libc::unshare(libc::CLONE_NEWNS) == 0, 101);
            step(libc::setns(netfd, libc::CLONE_NEWNET) == 0, 102);
            step(libc::chdir(merged.as_ptr()) == 0, 103);
            step(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0,
                104,
            );
            step(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0, 105);
            step(libc::chdir(c"/".as_ptr()) == 0, 106);
            step(libc::setns(userfd, libc::CLONE_NEWUSER) == 0, 107);
            step(
                libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setresgid(0, 0, 0) == 0
                    && libc::setresuid(0, 0, 0) == 0
                    && libc::setresgid(1000, 1000, 1000) == 0
                    && libc::setresuid(1000, 1000, 1000) == 0,
                108,
            );
            if no_new_privs {
                step(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, 109);
            }
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            libc::execve(c"/bin/ping".as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(110)
        },
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("child ended with {other:?}"),
            }
        }
    };
    (code, std::fs::read_to_string(&out).unwrap_or_default())
}

/// A real Debian rootfs (unpacked with xattrs, e.g. `mmdebstrap --variant=minbase
/// --include=iputils-ping bookworm x.tar` then `tar --xattrs --xattrs-include='*' -xpf`)
/// named by `ECI_TEST_DEBIAN_ROOTFS`; skipped without it. The rootfs is only read.
#[test]
fn debian_ping_with_file_caps_works_inside_the_userns() {
    if !root() {
        return;
    }
    let Some(rootfs) = std::env::var_os("ECI_TEST_DEBIAN_ROOTFS") else {
        eprintln!("skipped: set ECI_TEST_DEBIAN_ROOTFS to an unpacked Debian rootfs");
        return;
    };
    let rootfs = std::path::PathBuf::from(rootfs);
    let dir = scratch();
    let d = dir.path().to_path_buf();
    in_private_mounts(move || {
        let (code, out) = ping_inside(&rootfs, &d, false);
        assert_eq!(code, 0, "ping with its file capability: {out}");
        assert!(out.contains("1 received"), "{out}");
        let (code, out) = ping_inside(&rootfs, &d, true);
        assert_ne!(code, 0, "ping without its file capability worked: {out}");
    });
}

/// CapEff of a child that joins `ns` and sets uid 1000, going through uid 0 or not.
fn cap_eff_after_setuid(ns: &OwnedFd, via_root: bool, out: &Path) -> String {
    let file = std::fs::File::create(out).expect("out");
    let (fd, nsfd) = (file.as_raw_fd(), ns.as_raw_fd());
    // SAFETY: the child only makes raw syscalls on data prepared before the fork.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => unsafe {
            let ok = libc::setns(nsfd, libc::CLONE_NEWUSER) == 0
                && (!via_root || libc::setresgid(0, 0, 0) == 0 && libc::setresuid(0, 0, 0) == 0)
                && libc::setresgid(1000, 1000, 1000) == 0
                && libc::setresuid(1000, 1000, 1000) == 0;
            if !ok {
                libc::_exit(1);
            }
            let mut buf = [0u8; 4096];
            let st = libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY);
            let n = libc::read(st, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                libc::_exit(2);
            }
            libc::write(fd, buf.as_ptr().cast(), n as usize);
            libc::_exit(0)
        },
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).expect("waitpid");
            assert!(
                matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                "{st:?}"
            );
        }
    }
    field(&std::fs::read_to_string(out).expect("read"), "CapEff:")
}

/// A pitfall for `confine` after `setns(userns)`: the process still has host root's
/// ids (unmapped: 65534 inside), and the kernel drops capabilities on a uid change only
/// when the old ids include the *userns'* root. So `setresuid(1000)` straight from host
/// root keeps every capability of the userns, and even a `no_new_privs` exec keeps
/// them as far as a file's capabilities reach. Going through uid 0 first drops them.
#[test]
fn a_uid_change_straight_from_host_root_keeps_userns_caps() {
    if !root() {
        return;
    }
    let dir = scratch();
    let ns = userns::create(IdRange::group(BASE_A)).expect("userns");
    let out = dir.path().join("status");
    assert_eq!(cap_eff_after_setuid(&ns, false, &out), "000001ffffffffff");
    assert_eq!(cap_eff_after_setuid(&ns, true, &out), "0000000000000000");
}
