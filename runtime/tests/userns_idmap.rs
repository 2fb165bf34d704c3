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
