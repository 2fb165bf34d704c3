//! Privileged proof of issue 14's building blocks: group user namespaces with disjoint
//! ranges, idmapped layers under an overlay, and a process in the namespace writing
//! through it. Skipped unless root; see `common` for how mounts are cleaned up.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

use common::*;
use eci_runtime::idmap;
use eci_runtime::userns::{self, IdRange};
use nix::sched::CloneFlags;

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
    // Pinned by path, the namespaces outlive their descriptors (a restarted shim reopens
    // them); the pins live in a private mount namespace so nothing leaks on failure.
    let user_ino = ns_ino(&a.user);
    let net_ino = ns_ino(&a.owned[0].1);
    let pins = scratch();
    let p = pins.path().to_path_buf();
    let a_user = a.user.try_clone().expect("dup");
    let a_net = a.owned[0].1.try_clone().expect("dup");
    in_private_mounts(move || {
        userns::pin(&a_user, &p.join("user")).expect("pin user");
        userns::pin(&a_net, &p.join("net")).expect("pin net");
        drop((a_user, a_net));
        let user = OwnedFd::from(std::fs::File::open(p.join("user")).expect("open pin"));
        let net = OwnedFd::from(std::fs::File::open(p.join("net")).expect("open pin"));
        assert_eq!(ns_ino(&user), user_ino);
        assert_eq!(ns_ino(&net), net_ino);
        assert_eq!(ns_ino(&userns::owner(&net).expect("owner")), user_ino);
    });
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
    in_scratch_mounts(move |d| {
        let l = layer(&d);
        let ua = userns::create(IdRange::group(BASE_A)).expect("userns a");
        let ub = userns::create(IdRange::group(BASE_B)).expect("userns b");
        // Group A: idmapped layer attached at a path, classic lowerdir= overlay.
        let (lower_a, ma) = idmapped_root(&d, &l, &ua, "a", BASE_A);
        // Group B: idmapped layers kept detached, given to overlayfs by descriptor, top
        // first: a second layer on top replaces one file and adds one owned by 33.
        let top = d.join("top-layer");
        std::fs::create_dir(&top).expect("top");
        std::fs::write(top.join("user-file"), "top\n").expect("file");
        std::fs::write(top.join("www"), "w\n").expect("file");
        std::os::unix::fs::chown(top.join("www"), Some(33), Some(33)).expect("chown");
        let trees_b = [
            idmap::idmapped_tree(&top, ub.as_fd(), true).expect("idmapped tree b top"),
            idmap::idmapped_tree(&l, ub.as_fd(), true).expect("idmapped tree b"),
        ];
        let (ub_up, ub_work, mb) = upper_work(&d, "b", BASE_B);
        idmap::overlay_from_fds(&trees_b, &ub_up, &ub_work, &mb).expect("overlay from fds");
        assert_eq!(
            std::fs::read_to_string(mb.join("user-file")).expect("read"),
            "top\n"
        );
        assert_eq!(owner(&mb.join("user-file")), (BASE_B, BASE_B));
        assert_eq!(owner(&mb.join("www")), (BASE_B + 33, BASE_B + 33));
        assert_eq!(owner(&mb.join("etc/os-release")), (BASE_B, BASE_B));

        assert_eq!(owner(&lower_a.join("etc/os-release")), (BASE_A, BASE_A));
        assert_eq!(owner(&ma.join("etc")), (BASE_A, BASE_A));
        assert_eq!(owner(&ma.join("etc/os-release")), (BASE_A, BASE_A));
        assert_eq!(owner(&ma.join("user-file")), (BASE_A + 1000, BASE_A + 1000));
        assert_eq!(
            std::fs::read_to_string(ma.join("user-file")).expect("read"),
            "mine\n"
        );
        // The layer itself is untouched on disk.
        assert_eq!(owner(&l.join("etc/os-release")), (0, 0));
        assert_eq!(owner(&l.join("user-file")), (1000, 1000));
        // Read-only: even host root cannot write through the idmapped layer mount.
        assert!(std::fs::write(lower_a.join("x"), "x").is_err());
    });
}

#[test]
fn a_process_in_the_userns_writes_as_the_groups_root() {
    in_scratch_mounts(move |d| {
        let l = layer(&d);
        let ns = userns::create(IdRange::group(BASE_A)).expect("userns");
        let (_lower, m) = idmapped_root(&d, &l, &ns, "a", BASE_A);
        let up = d.join("a-upper");
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

/// The order proposed for `eci-shim init` (docs/userns.md): new mount namespace and
/// `pivot_root` into the overlay as host root, then enter the group userns last. Root
/// inside writes as the group's root and cannot mount or unmount anything.
#[test]
fn the_proposed_init_order_works() {
    in_scratch_mounts(move |d| {
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

#[test]
fn the_probe_accepts_ext4_and_refuses_what_cannot_idmap() {
    if !root() {
        return;
    }
    let dir = scratch();
    idmap::probe(dir.path(), IdRange::group(BASE_A)).expect("ext4 idmaps");
    // procfs does not support idmapped mounts.
    let err = idmap::probe(std::path::Path::new("/proc/self"), IdRange::group(BASE_A))
        .expect_err("procfs cannot idmap");
    assert!(err.to_string().contains("/proc/self"), "{err}");
    assert!(idmap::probe(dir.path(), IdRange { base: 1, len: 0 }).is_err());
}

/// Start-latency cost, printed (`--ignored --nocapture`): a group userns with its
/// net/ipc/uts versus today's unshare on a thread, and one idmapped layer copy.
#[test]
#[ignore]
fn timing() {
    if !root() {
        return;
    }
    let n = 50;
    let t = std::time::Instant::now();
    for i in 0..n {
        let owned = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
        userns::create_with(IdRange::group(BASE_A + i * IdRange::GROUP_LEN), owned).expect("ns");
    }
    let userns_each = t.elapsed() / n;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::thread::spawn(|| {
            let owned =
                CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
            nix::sched::unshare(owned).expect("unshare");
        })
        .join()
        .expect("thread");
    }
    let thread_each = t.elapsed() / n;
    let dir = scratch();
    let ns = userns::create(IdRange::group(BASE_A)).expect("ns");
    let t = std::time::Instant::now();
    for _ in 0..n {
        idmap::idmapped_tree(dir.path(), ns.as_fd(), true).expect("tree");
    }
    let tree_each = t.elapsed() / n;
    eprintln!(
        "userns+net/ipc/uts by clone: {userns_each:?}; net/ipc/uts on a thread: {thread_each:?}; idmapped layer copy: {tree_each:?}"
    );
}

/// The container mounts of the proposed order, made as host root in a mount and pid
/// namespace of the initial userns, for a group whose net/ipc/uts are owned by its
/// userns: proc, sysfs (of the group netns), a `/dev` tmpfs and devpts whose id options
/// are host ids of the range, a device node made by `mknod` — then the process enters
/// the userns and sees them owned by its own root (and `tty` for a pty of its devpts).
#[test]
fn the_proposed_init_order_mounts_proc_sys_and_dev_as_host_root() {
    in_scratch_mounts(move |d| {
        let l = layer(&d);
        for sub in ["proc", "sys", "dev"] {
            std::fs::create_dir(l.join(sub)).expect("mkdir");
        }
        let owned = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
        let ns = userns::create_with(IdRange::group(BASE_A), owned).expect("userns");
        let tree = idmap::idmapped_tree(&l, ns.user.as_fd(), true).expect("tree");
        let (up, work, m) = upper_work(&d, "a", BASE_A);
        idmap::overlay_from_fds(&[tree], &up, &work, &m).expect("overlay");
        let c = |s: &str| std::ffi::CString::new(s).expect("c");
        let (proc_, sys, dev, pts, null) = (
            cstr(&m.join("proc")),
            cstr(&m.join("sys")),
            cstr(&m.join("dev")),
            cstr(&m.join("dev/pts")),
            cstr(&m.join("dev/null")),
        );
        let dev_opts = c(&format!("mode=755,uid={BASE_A},gid={BASE_A}"));
        let pts_opts = c(&format!(
            "newinstance,ptmxmode=0666,mode=620,gid={}",
            BASE_A + 5
        ));
        let merged = cstr(&m);
        let out = d.join("out");
        let file = std::fs::File::create(&out).expect("out");
        let (fd, userfd) = (file.as_raw_fd(), ns.user.as_raw_fd());
        let joins: Vec<(i32, i32)> = ns
            .owned
            .iter()
            .zip([libc::CLONE_NEWNET, libc::CLONE_NEWIPC, libc::CLONE_NEWUTS])
            .map(|((_, f), k)| (f.as_raw_fd(), k))
            .collect();
        // SAFETY: the children only make raw syscalls on data prepared before the fork.
        let code = match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => unsafe {
                let step = |ok: bool, code: i32| {
                    if !ok {
                        libc::_exit(code)
                    }
                };
                for (f, k) in &joins {
                    step(libc::setns(*f, *k) == 0, 1);
                }
                step(
                    libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID) == 0,
                    2,
                );
                let pid = libc::fork();
                if pid > 0 {
                    let mut st = 0;
                    libc::waitpid(pid, &mut st, 0);
                    libc::_exit(if libc::WIFEXITED(st) {
                        libc::WEXITSTATUS(st)
                    } else {
                        3
                    });
                }
                let mnt = |src: &std::ffi::CStr,
                           t: &std::ffi::CString,
                           ty: &std::ffi::CStr,
                           data: *const libc::c_char| {
                    libc::mount(
                        src.as_ptr(),
                        t.as_ptr(),
                        ty.as_ptr(),
                        libc::MS_NOSUID,
                        data.cast(),
                    ) == 0
                };
                step(mnt(c"proc", &proc_, c"proc", std::ptr::null()), 10);
                step(mnt(c"sysfs", &sys, c"sysfs", std::ptr::null()), 11);
                step(mnt(c"tmpfs", &dev, c"tmpfs", dev_opts.as_ptr()), 12);
                step(
                    libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) == 0,
                    13,
                );
                // mknod applies the umask: 0666 again (owned by host root, so the
                // container's root gets no more than "other" on it).
                step(libc::chmod(null.as_ptr(), 0o666) == 0, 13);
                step(libc::mkdir(pts.as_ptr(), 0o755) == 0, 14);
                step(mnt(c"devpts", &pts, c"devpts", pts_opts.as_ptr()), 15);
                step(libc::chdir(merged.as_ptr()) == 0, 16);
                step(
                    libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0,
                    17,
                );
                step(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0, 18);
                step(libc::chdir(c"/".as_ptr()) == 0, 19);
                step(libc::setns(userfd, libc::CLONE_NEWUSER) == 0, 20);
                step(
                    libc::setresgid(0, 0, 0) == 0 && libc::setresuid(0, 0, 0) == 0,
                    21,
                );
                // What the container sees: ids inside, and its own kernel interfaces.
                let mut st: libc::stat = std::mem::zeroed();
                step(
                    libc::stat(c"/dev".as_ptr(), &mut st) == 0 && st.st_uid == 0 && st.st_gid == 0,
                    30,
                );
                let n = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                step(n >= 0 && libc::write(n, b"x".as_ptr().cast(), 1) == 1, 33);
                step(
                    libc::access(c"/sys/class/net/lo".as_ptr(), libc::F_OK) == 0,
                    34,
                );
                step(libc::getpid() == 1, 35);
                let m = libc::open(c"/proc/self/uid_map".as_ptr(), libc::O_RDONLY);
                let mut buf = [0u8; 128];
                let r = libc::read(m, buf.as_mut_ptr().cast(), buf.len());
                step(r > 0, 36);
                libc::write(fd, buf.as_ptr().cast(), r as usize);
                // A pty from the container's own devpts instance: its slave has the
                // `tty` group inside (the mount's host gid base+5).
                let ptm = libc::open(c"/dev/pts/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
                step(ptm >= 0 && libc::unlockpt(ptm) == 0, 37);
                let mut num: libc::c_uint = 99;
                step(
                    libc::ioctl(ptm, libc::TIOCGPTN, &mut num) == 0 && num == 0,
                    38,
                );
                step(
                    libc::stat(c"/dev/pts/0".as_ptr(), &mut st) == 0
                        && st.st_gid == 5
                        && st.st_uid == 0,
                    39,
                );
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
        let map = std::fs::read_to_string(&out).expect("read");
        assert_eq!(
            map.split_whitespace().collect::<Vec<_>>(),
            ["0", &BASE_A.to_string(), "65536"]
        );
    });
}

/// The exec path of the proposed design: into a running container (PID 1 of its pid
/// namespace, rooted in an idmapped overlay, inside the group userns), a helper opens
/// all of the container's namespace files first, joins ipc/uts/net/pid/mnt as host
/// root, the userns last, and forks; the forked process is in the container's pid
/// namespace and writes as the group's root.
#[test]
fn exec_joins_the_userns_last() {
    in_scratch_mounts(move |d| {
        let l = layer(&d);
        let owned = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
        let ns = userns::create_with(IdRange::group(BASE_A), owned).expect("userns");
        let tree = idmap::idmapped_tree(&l, ns.user.as_fd(), true).expect("tree");
        let (up, work, m) = upper_work(&d, "a", BASE_A);
        idmap::overlay_from_fds(&[tree], &up, &work, &m).expect("overlay");
        let merged = cstr(&m);
        let (pid_r, pid_w) = nix::unistd::pipe().expect("pipe");
        let (hold_r, hold_w) = nix::unistd::pipe().expect("pipe");
        let (pid_w_raw, hold_r_raw, hold_w_raw) =
            (pid_w.as_raw_fd(), hold_r.as_raw_fd(), hold_w.as_raw_fd());
        let userfd = ns.user.as_raw_fd();
        let joins: Vec<(i32, i32)> = ns
            .owned
            .iter()
            .zip([libc::CLONE_NEWNET, libc::CLONE_NEWIPC, libc::CLONE_NEWUTS])
            .map(|((_, f), k)| (f.as_raw_fd(), k))
            .collect();
        // The container: A makes the namespaces, B is its PID 1.
        // SAFETY: the children only make raw syscalls on data prepared before the fork.
        let a = match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => unsafe {
                let step = |ok: bool, code: i32| {
                    if !ok {
                        libc::_exit(code)
                    }
                };
                libc::close(hold_w_raw);
                for (f, k) in &joins {
                    step(libc::setns(*f, *k) == 0, 1);
                }
                step(
                    libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID) == 0,
                    2,
                );
                let b = libc::fork();
                if b > 0 {
                    libc::write(pid_w_raw, (&b as *const i32).cast(), 4);
                    let mut st = 0;
                    libc::waitpid(b, &mut st, 0);
                    libc::_exit(0);
                }
                step(libc::chdir(merged.as_ptr()) == 0, 3);
                step(
                    libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0,
                    4,
                );
                step(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0, 5);
                step(libc::chdir(c"/".as_ptr()) == 0, 6);
                step(libc::setns(userfd, libc::CLONE_NEWUSER) == 0, 7);
                step(
                    libc::setresgid(0, 0, 0) == 0 && libc::setresuid(0, 0, 0) == 0,
                    8,
                );
                // Runs until the test closes the hold pipe (or dies).
                let mut byte = 0u8;
                while libc::read(hold_r_raw, (&mut byte as *mut u8).cast(), 1) > 0 {}
                libc::_exit(0)
            },
            nix::unistd::ForkResult::Parent { child } => child,
        };
        drop((pid_w, hold_r));
        let mut buf = [0u8; 4];
        nix::unistd::read(&pid_r, &mut buf).expect("container pid");
        let b = i32::from_ne_bytes(buf);
        // Wait until B is in the userns (its uid_map is the group's from our view too,
        // but its user ns link changes only after setns).
        let init_user = std::fs::read_link("/proc/self/ns/user").expect("readlink");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{b}/ns/user")).ok() == Some(init_user.clone()) {
            assert!(
                std::time::Instant::now() < deadline,
                "container never entered the userns"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The exec helper: every namespace file opened before joining any.
        let kinds = [
            ("ipc", libc::CLONE_NEWIPC),
            ("uts", libc::CLONE_NEWUTS),
            ("net", libc::CLONE_NEWNET),
            ("pid", libc::CLONE_NEWPID),
            ("mnt", libc::CLONE_NEWNS),
            ("user", libc::CLONE_NEWUSER),
        ];
        let files: Vec<(std::fs::File, i32)> = kinds
            .iter()
            .map(|(k, f)| {
                (
                    std::fs::File::open(format!("/proc/{b}/ns/{k}")).expect(k),
                    *f,
                )
            })
            .collect();
        let nsfds: Vec<(i32, i32)> = files.iter().map(|(f, k)| (f.as_raw_fd(), *k)).collect();
        let out = d.join("out");
        let outf = std::fs::File::create(&out).expect("out");
        let outfd = outf.as_raw_fd();
        // SAFETY: as above.
        let code = match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => unsafe {
                let step = |ok: bool, code: i32| {
                    if !ok {
                        libc::_exit(code)
                    }
                };
                for (i, (f, k)) in nsfds.iter().enumerate() {
                    step(libc::setns(*f, *k) == 0, 20 + i as i32);
                }
                step(
                    libc::setresgid(0, 0, 0) == 0 && libc::setresuid(0, 0, 0) == 0,
                    30,
                );
                let f = libc::fork();
                if f > 0 {
                    let mut st = 0;
                    libc::waitpid(f, &mut st, 0);
                    libc::_exit(if libc::WIFEXITED(st) {
                        libc::WEXITSTATUS(st)
                    } else {
                        31
                    });
                }
                let fd = libc::open(
                    c"/exec-file".as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY,
                    0o644,
                );
                step(fd >= 0, 32);
                let me = libc::getpid();
                libc::write(outfd, (&me as *const i32).cast(), 4);
                libc::_exit(0)
            },
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("exec helper ended with {other:?}"),
                }
            }
        };
        drop(hold_w);
        nix::sys::wait::waitpid(a, None).expect("reap container");
        assert_eq!(code, 0, "exec helper failed at step {code}");
        assert_eq!(owner(&m.join("exec-file")), (BASE_A, BASE_A));
        let inner = i32::from_ne_bytes(
            std::fs::read(&out).expect("read")[..4]
                .try_into()
                .expect("4"),
        );
        assert!(
            inner > 1 && inner < 100,
            "pid {inner} is not in the container's pid ns"
        );
    });
}
