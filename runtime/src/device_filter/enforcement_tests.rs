//! The program on a real cgroup v2: a test cgroup gets it, a forked child moves itself
//! in and opens devices. A control child outside the cgroup opens the same devices, so
//! an EPERM inside is the program's doing. Works on a hybrid host too (this machine's
//! v2 mount is `/sys/fs/cgroup/unified`): the kernel runs the programs of a process's
//! v2 cgroup whatever the v1 devices controller says.
//!
//! The children make raw syscalls only: the test binary has other threads.

use std::ffi::{CStr, CString};
use std::io::Error;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{attach, attached};
use crate::host::CgroupMode;

/// A test cgroup, removed on drop even when the test fails.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The reaped child may still be leaving it for a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("could not remove test cgroup {}", self.0.display());
    }
}

/// The cgroup v2 mount of this host, if any.
fn v2_root() -> Option<PathBuf> {
    match CgroupMode::detect(Path::new("/sys/fs/cgroup")).ok()? {
        CgroupMode::Unified => Some("/sys/fs/cgroup".into()),
        CgroupMode::Hybrid => Some("/sys/fs/cgroup/unified".into()),
        CgroupMode::Legacy => None,
    }
}

/// A block device root can open here: the one holding `/` if possible, else the first
/// in `/sys/block` (on this machine the environment itself forbids opening the root
/// disk, so a loop device is used). Probed through nodes in `dir`.
fn openable_block_device(dir: &Path) -> (u32, u32) {
    let parse = |s: &str| -> Option<(u32, u32)> {
        let (a, b) = s.trim().split_once(':')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .and_then(|f| parse(f[2]));
    let others = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .filter_map(|e| parse(&std::fs::read_to_string(e.path().join("dev")).ok()?));
    root.into_iter()
        .chain(others)
        .enumerate()
        .find(|&(i, (major, minor))| {
            let node = cstr(&dir.join(format!("probe-{i}")));
            // SAFETY: a NUL-terminated path that outlives the call.
            let made = unsafe {
                libc::mknod(
                    node.as_ptr(),
                    libc::S_IFBLK | 0o600,
                    libc::makedev(major, minor),
                )
            };
            made == 0 && std::fs::File::open(dir.join(format!("probe-{i}"))).is_ok()
        })
        .map(|(_, dev)| dev)
        .expect("a block device root can open")
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL")
}

/// Everything the child needs, built before fork.
struct Plan {
    procs: Option<CString>,
    null_node: CString,
    kmsg_node: CString,
    disk_node: CString,
    disk: (u32, u32),
}

/// What a child found, in order; `true` means the open succeeded.
const STEPS: &[&str] = &[
    "join the cgroup",
    "open /dev/null rw",
    "mknod c 1:3",
    "open the 1:3 node rw",
    "mknod c 1:11 (kmsg)",
    "open the 1:11 node",
    "open /dev/kmsg",
    "mknod b (a disk)",
    "open the disk node",
];

/// Exit code: 0, or 1 + the first step whose outcome differed from `expect_denied`'s.
fn child(plan: &Plan, expect_denied: bool) -> i32 {
    let ok = |ret: i32| ret >= 0;
    let denied = |ret: i32| ret < 0 && Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    let open = |path: &CStr, flags: i32| {
        // SAFETY: a NUL-terminated path that outlives the call; the fd is closed.
        unsafe {
            let fd = libc::open(path.as_ptr(), flags | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::close(fd);
            }
            fd
        }
    };
    let mknod = |path: &CStr, kind: libc::mode_t, (major, minor): (u32, u32)| {
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::mknod(path.as_ptr(), kind | 0o600, libc::makedev(major, minor)) }
    };
    let join = || match &plan.procs {
        None => 0,
        Some(procs) => {
            // SAFETY: a NUL-terminated path; writing "0" moves the writer itself.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return -1;
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n == 1 { 0 } else { -1 }
            }
        }
    };
    let blocked = |ret: i32| if expect_denied { denied(ret) } else { ok(ret) };
    let results = [
        ok(join()),
        ok(open(c"/dev/null", libc::O_RDWR)),
        ok(mknod(&plan.null_node, libc::S_IFCHR, (1, 3))),
        ok(open(&plan.null_node, libc::O_RDWR)),
        ok(mknod(&plan.kmsg_node, libc::S_IFCHR, (1, 11))),
        blocked(open(&plan.kmsg_node, libc::O_RDONLY)),
        blocked(open(c"/dev/kmsg", libc::O_RDONLY)),
        ok(mknod(&plan.disk_node, libc::S_IFBLK, plan.disk)),
        blocked(open(&plan.disk_node, libc::O_RDONLY)),
    ];
    results.iter().position(|r| !r).map_or(0, |i| i as i32 + 1)
}

/// Forks, runs [`child`], returns the failed step.
fn run(plan: &Plan, expect_denied: bool) -> Result<(), String> {
    // SAFETY: the child makes raw syscalls only and leaves through _exit.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", Error::last_os_error())),
        0 => {
            let code = child(plan, expect_denied);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waits for our own child; status is a live i32.
            if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
                return Err(format!("waitpid: {}", Error::last_os_error()));
            }
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => Ok(()),
                (true, n) => Err(format!("step failed: {}", STEPS[n as usize - 1])),
                _ => Err(format!("child died: wait status {status:#x}")),
            }
        }
    }
}

fn plan(dir: &Path, procs: Option<&Path>, disk: (u32, u32)) -> Plan {
    Plan {
        procs: procs.map(cstr),
        null_node: cstr(&dir.join("null")),
        kmsg_node: cstr(&dir.join("kmsg")),
        disk_node: cstr(&dir.join("disk")),
        disk,
    }
}

#[test]
fn refuses_devices_outside_the_list() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to create cgroups and device nodes");
        return;
    }
    let Some(root) = v2_root() else {
        eprintln!("skipped: no cgroup v2 mount");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (outside, inside) = (tmp.path().join("outside"), tmp.path().join("inside"));
    for d in [&outside, &inside] {
        std::fs::create_dir(d).expect("node dir");
    }
    let disk = openable_block_device(tmp.path());
    eprintln!("block device {}:{}", disk.0, disk.1);

    run(&plan(&outside, None, disk), false).expect("control child, outside the cgroup");

    let cg = TestCgroup(root.join(format!("eci-device-filter-test-{}", std::process::id())));
    std::fs::create_dir(&cg.0).expect("create the test cgroup");
    attach(&cg.0).expect("attach");
    // Attaching again replaces the program instead of stacking a second one.
    attach(&cg.0).expect("attach again");
    let dir = std::fs::File::open(&cg.0).expect("open cgroup").into();
    assert_eq!(attached(&dir).expect("query").len(), 1);

    let procs = cg.0.join("cgroup.procs");
    run(&plan(&inside, Some(&procs), disk), true).expect("child in the filtered cgroup");
}
