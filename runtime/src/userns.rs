//! A group's user namespace: uids and gids `0..len` inside are host `base..base+len`, so
//! root in a container is an unprivileged, group-private uid on the host (issue 14).
//!
//! A user namespace cannot be entered or created by one thread of a multi-threaded
//! process (`unshare(CLONE_NEWUSER)` and `setns` both refuse), so a short-lived child
//! is cloned straight into a new user namespace. It waits while the parent writes its
//! `uid_map`/`gid_map` (the parent is root in the initial namespace, so any range may
//! be mapped, without `newuidmap`), optionally creates more namespaces *owned by* the
//! new user namespace (a group's net/ipc/uts, so container root's capabilities act on
//! them and on nothing of the host), and exits once the parent has opened
//! `/proc/<child>/ns/*`. The descriptors keep the namespaces alive; no holder process
//! remains.
//!
//! The child runs only `read`, `write`, `unshare` and `_exit` between clone and exit:
//! it is a copy of a possibly multi-threaded process and may not allocate.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sched::CloneFlags;

/// Errors creating a user namespace; each names the step and the path or child.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("id range of {len} ids at host id {base} does not fit in 32 bits")]
    Range { base: u32, len: u32 },
    #[error("id range length must be at least 1")]
    EmptyRange,
    #[error("{step} {path}")]
    Step {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the namespace holder child (pid {pid}) failed to unshare {kinds:?}")]
    Unshare {
        pid: i32,
        kinds: Vec<&'static str>,
        #[source]
        source: std::io::Error,
    },
}

/// A host id range: ids `0..len` inside map to `base..base+len` on the host, for uids
/// and gids alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub base: u32,
    pub len: u32,
}

impl IdRange {
    /// The size every group gets: the 16-bit id space images are built for.
    pub const GROUP_LEN: u32 = 65_536;

    /// A range of [`Self::GROUP_LEN`] ids at `base`.
    pub fn group(base: u32) -> Self {
        Self {
            base,
            len: Self::GROUP_LEN,
        }
    }

    /// The host id of `inside`, if `inside` is in the range.
    pub fn host_id(&self, inside: u32) -> Option<u32> {
        (inside < self.len).then(|| self.base + inside)
    }

    fn check(&self) -> Result<(), UsernsError> {
        if self.len == 0 {
            return Err(UsernsError::EmptyRange);
        }
        // The last host id must be below u32::MAX (-1 is "no id" to the kernel).
        if self
            .base
            .checked_add(self.len)
            .is_none_or(|end| end == u32::MAX)
        {
            return Err(UsernsError::Range {
                base: self.base,
                len: self.len,
            });
        }
        Ok(())
    }

    /// The line written to `uid_map` and `gid_map`.
    fn map_line(&self) -> String {
        format!("0 {} {}\n", self.base, self.len)
    }
}

/// Namespaces that [`create_with`] can create owned by the new user namespace.
pub const OWNED_KINDS: &[(&str, CloneFlags)] = &[
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
];

/// A user namespace and namespaces owned by it, as open `/proc/<pid>/ns/*` files.
#[derive(Debug)]
pub struct Namespaces {
    pub user: OwnedFd,
    /// `(kind, fd)` for each kind asked of [`create_with`], in [`OWNED_KINDS`] order.
    pub owned: Vec<(&'static str, OwnedFd)>,
}

/// Creates a user namespace mapping `range` and returns it as an open nsfs file.
pub fn create(range: IdRange) -> Result<OwnedFd, UsernsError> {
    Ok(create_with(range, CloneFlags::empty())?.user)
}

/// Creates a user namespace mapping `range` (uids and gids), then the namespaces in
/// `owned` (a union of [`OWNED_KINDS`] flags) as its children.
///
/// `setgroups` is left allowed: the mapping is written by a privileged parent, and
/// container root needs `setgroups` for `su`, `login` and the like.
pub fn create_with(range: IdRange, owned: CloneFlags) -> Result<Namespaces, UsernsError> {
    range.check()?;
    let kinds: Vec<(&'static str, CloneFlags)> = OWNED_KINDS
        .iter()
        .filter(|(_, f)| owned.contains(*f))
        .copied()
        .collect();
    let flags = kinds.iter().fold(CloneFlags::empty(), |a, (_, f)| a | *f);
    let (go_r, go_w) = pipe()?;
    let (ack_r, ack_w) = pipe()?;
    let flags_bits = flags.bits();
    let child_fds = HolderFds {
        go: go_r.as_raw_fd(),
        ack: ack_w.as_raw_fd(),
        close: [go_w.as_raw_fd(), ack_r.as_raw_fd()],
    };
    let mut pidfd: libc::c_int = -1;
    // SAFETY: a raw clone without CLONE_VM and with a null stack behaves as fork: the
    // child gets a copy of the address space and continues here on its copy of the
    // stack. The child branch below only calls async-signal-safe syscalls (read,
    // unshare, write, _exit) on descriptors it owns and never returns. With
    // CLONE_PIDFD the kernel writes the child's pidfd to `pidfd` (x86-64 argument
    // order: flags, stack, parent_tid, child_tid, tls), a live local.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    if pid == 0 {
        // SAFETY: see above; the child ends in _exit and never returns.
        unsafe { holder(&child_fds, flags_bits) }
    }
    if pid < 0 {
        return Err(UsernsError::Step {
            step: "cloning a child into a new user namespace",
            path: "clone".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let pid = pid as i32;
    // SAFETY: the clone succeeded, so `pidfd` is a fresh descriptor owned by nothing else.
    let child = Child(unsafe { OwnedFd::from_raw_fd(pidfd) });
    drop(go_r);
    drop(ack_w);
    let proc = format!("/proc/{pid}");
    for file in ["uid_map", "gid_map"] {
        write_file(&format!("{proc}/{file}"), &range.map_line())?;
    }
    let user = open_ns(&proc, "user")?;
    let mut go = std::fs::File::from(go_w);
    let mut ack = std::fs::File::from(ack_r);
    go.write_all(&[1]).map_err(|e| UsernsError::Step {
        step: "waking the namespace holder",
        path: proc.clone(),
        source: e,
    })?;
    let mut status = [0u8; 4];
    ack.read_exact(&mut status).map_err(|e| UsernsError::Step {
        step: "waiting for the namespace holder",
        path: proc.clone(),
        source: e,
    })?;
    let errno = i32::from_ne_bytes(status);
    if errno != 0 {
        return Err(UsernsError::Unshare {
            pid,
            kinds: kinds.iter().map(|(k, _)| *k).collect(),
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    let owned = kinds
        .iter()
        .map(|(k, _)| open_ns(&proc, k).map(|fd| (*k, fd)))
        .collect::<Result<Vec<_>, _>>()?;
    // Still the same process (by pidfd, immune to pid reuse) after the last open: the
    // files opened are its namespaces. Then EOF on the go pipe lets it exit.
    child.alive(pid)?;
    drop(go);
    drop(child);
    Ok(Namespaces { user, owned })
}

/// Descriptors of the holder child: the pipe ends it uses, and its copies of the
/// parent's ends, which it closes so that the parent closing its `go` end (or dying)
/// is an EOF the child sees.
struct HolderFds {
    go: i32,
    ack: i32,
    close: [i32; 2],
}

/// The cloned child: waits for its maps, unshares `flags`, reports, waits for EOF.
///
/// # Safety
/// Only to be called in the child of the raw clone in [`create_with`].
unsafe fn holder(fds: &HolderFds, flags: i32) -> ! {
    let mut byte = 0u8;
    // SAFETY: the descriptors are this child's copies of the pipe ends; the buffers are
    // live locals. Only async-signal-safe calls follow.
    unsafe {
        for fd in fds.close {
            libc::close(fd);
        }
        // Gone with the thread that cloned it, whatever happens to the pipes.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::read(fds.go, (&mut byte as *mut u8).cast(), 1) != 1 {
            libc::_exit(1);
        }
        let err: i32 = if flags != 0 && libc::unshare(flags) != 0 {
            *libc::__errno_location()
        } else {
            0
        };
        let bytes = err.to_ne_bytes();
        libc::write(fds.ack, bytes.as_ptr().cast(), bytes.len());
        // Blocks until the parent has opened our namespaces and closed its end.
        while libc::read(fds.go, (&mut byte as *mut u8).cast(), 1) > 0 {}
        libc::_exit(0)
    }
}

/// The holder child by pidfd: killed (if still running) and reaped when dropped, so
/// no path leaves a process behind. A pidfd, not a pid: the shim is a subreaper whose
/// reaping loop may collect the child first, and then a pid could name another process.
struct Child(OwnedFd);

impl Child {
    fn signal(&self, sig: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with a null siginfo only reads the descriptor.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn alive(&self, pid: i32) -> Result<(), UsernsError> {
        self.signal(0).map_err(|e| UsernsError::Step {
            step: "checking the namespace holder is still running",
            path: format!("/proc/{pid}"),
            source: e,
        })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Its namespaces are open by now (or setup failed): it has nothing left to do.
        let _ = self.signal(libc::SIGKILL);
        // SAFETY: waitid writes into a zeroed siginfo_t that lives across the call.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PIDFD,
                self.0.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            );
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), UsernsError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| UsernsError::Step {
        step: "creating a pipe",
        path: "pipe2".into(),
        source: e.into(),
    })
}

fn write_file(path: &str, text: &str) -> Result<(), UsernsError> {
    // One write(2): the kernel takes a map only in a single write.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| UsernsError::Step {
            step: "opening",
            path: path.into(),
            source: e,
        })?;
    let n = f.write(text.as_bytes()).map_err(|e| UsernsError::Step {
        step: "writing",
        path: path.into(),
        source: e,
    })?;
    if n != text.len() {
        return Err(UsernsError::Step {
            step: "writing (short write)",
            path: path.into(),
            source: std::io::Error::from(std::io::ErrorKind::WriteZero),
        });
    }
    Ok(())
}

fn open_ns(proc: &str, kind: &str) -> Result<OwnedFd, UsernsError> {
    let path = format!("{proc}/ns/{kind}");
    std::fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(|e| UsernsError::Step {
            step: "opening",
            path,
            source: e,
        })
}

/// Pins the namespace `ns` at `path` (created as an empty file when missing) by
/// bind-mounting its nsfs file there, as `namespaces` pins a group's namespaces: it then
/// outlives every descriptor and process, and a restarted shim finds it by path.
/// Unpin with `umount2(path, MNT_DETACH)` (`namespaces::remove` does it by kind).
pub fn pin(ns: &OwnedFd, path: &std::path::Path) -> Result<(), UsernsError> {
    let step = |step: &'static str| {
        move |e: std::io::Error| UsernsError::Step {
            step,
            path: path.display().to_string(),
            source: e,
        }
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(step("creating"))?;
    let src = format!("/proc/self/fd/{}", ns.as_raw_fd());
    nix::mount::mount(
        Some(src.as_str()),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| step("pinning a namespace at")(e.into()))
}

/// The user namespace that owns the namespace `ns` (`NS_GET_USERNS`).
pub fn owner(ns: &OwnedFd) -> Result<OwnedFd, UsernsError> {
    // NS_GET_USERNS = _IO(0xb7, 0x1).
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return Err(UsernsError::Step {
            step: "NS_GET_USERNS on",
            path: format!("fd {}", ns.as_raw_fd()),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_before_anything_is_created() {
        assert!(matches!(
            create(IdRange { base: 5, len: 0 }),
            Err(UsernsError::EmptyRange)
        ));
        for base in [u32::MAX - 65_535, u32::MAX - 65_536, u32::MAX] {
            assert!(matches!(
                create(IdRange::group(base)),
                Err(UsernsError::Range { .. })
            ));
        }
        assert!(IdRange::group(u32::MAX - 65_537).check().is_ok());
        assert_eq!(IdRange::group(100_000).host_id(1000), Some(101_000));
        assert_eq!(IdRange::group(100_000).host_id(65_536), None);
        assert_eq!(IdRange::group(7).map_line(), "0 7 65536\n");
    }
}
