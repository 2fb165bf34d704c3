//! Helpers of the privileged user-namespace tests. Every mount is made in a private
//! mount namespace of a dedicated thread, so all of them go when the thread ends, even
//! on panic; temp dirs are removed afterwards from the test's own namespace, where
//! nothing is mounted.
#![allow(dead_code)] // each test file uses a part

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use eci_runtime::userns::IdRange;
use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;

pub const BASE_A: u32 = 1_500_000_000;
pub const BASE_B: u32 = BASE_A + IdRange::GROUP_LEN;

pub fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root");
    false
}

/// Runs `f` on a thread with its own private mount namespace; panics propagate.
pub fn in_private_mounts<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // One at a time: these tests fork from a multi-threaded harness and exec binaries
    // whose file capabilities they check; under a loaded CI machine, tests of the same
    // binary running side by side made one read back an empty status once.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
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

/// Runs a privileged test body (skipped unless root) on a scratch dir, in private mounts
/// (see [`in_private_mounts`]); the dir is removed afterwards from the test's namespace.
pub fn in_scratch_mounts(f: impl FnOnce(PathBuf) + Send + 'static) {
    if !root() {
        return;
    }
    let dir = scratch();
    let d = dir.path().to_path_buf();
    in_private_mounts(move || f(d));
}

/// A group's root: `layer` bound idmapped to `userns` at `<dir>/<name>-lower`, under an
/// overlay whose upper dir belongs to `base`. Returns (lower, merged).
pub fn idmapped_root(
    dir: &Path,
    layer: &Path,
    userns: &OwnedFd,
    name: &str,
    base: u32,
) -> (PathBuf, PathBuf) {
    let lower = dir.join(format!("{name}-lower"));
    std::fs::create_dir(&lower).expect("mkdir lower");
    eci_runtime::idmap::bind(layer, &lower, userns.as_fd(), true).expect("idmapped bind");
    let (up, work, merged) = upper_work(dir, name, base);
    overlay(&lower, &up, &work, &merged);
    (lower, merged)
}

/// A temp dir others may traverse (ids of a user namespace must reach the mounts).
pub fn scratch() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// An image layer as the unpacker leaves it: owned by host root, one file by 1000.
pub fn layer(dir: &Path) -> PathBuf {
    let l = dir.join("layer");
    std::fs::create_dir_all(l.join("etc")).expect("layer");
    std::fs::write(l.join("etc/os-release"), "ID=test\n").expect("file");
    std::fs::write(l.join("user-file"), "mine\n").expect("file");
    std::os::unix::fs::chown(l.join("user-file"), Some(1000), Some(1000)).expect("chown");
    l
}

/// Upper and work dirs of one group, owned by the group's root.
pub fn upper_work(dir: &Path, name: &str, base: u32) -> (PathBuf, PathBuf, PathBuf) {
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

pub fn overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) {
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

pub fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.uid(), m.gid())
}

/// Forks a child that joins `userns` as `uid`/`gid` (ids inside) and runs `f`, whose
/// return value is the exit code. `f` must be async-signal-safe (prepare paths before).
/// The ids go through the userns' root first: only a change *from* its root drops the
/// capabilities (see `a_uid_change_straight_from_host_root_keeps_userns_caps`).
pub fn in_userns(userns: &OwnedFd, uid: u32, gid: u32, f: impl FnOnce() -> i32) -> i32 {
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
                    || libc::setresgid(0, 0, 0) != 0
                    || libc::setresuid(0, 0, 0) != 0
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

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("nul")
}

pub fn ns_ino(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd).expect("fstat").st_ino
}
