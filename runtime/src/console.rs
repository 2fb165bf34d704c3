//! The terminal of a container's first process (`tty: true`).
//!
//! The pty must belong to the container's own devpts instance (so the process finds
//! its terminal under its `/dev/pts` and `tty` names it), which exists only once the
//! container's root is built. So the container's init opens it, after `pivot_root` and
//! before anything of the tenant runs in its mount namespace, makes the slave its stdio,
//! and sends the master to the shim over a socket with `SCM_RIGHTS` — the shape of
//! runc's console socket. The shim keeps the master: output to the log and attachers,
//! input from attachers, resizes.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::stat::{Mode, SFlag};

/// The console socket's fd in the init process (only with a terminal).
pub const CONSOLE_FD: RawFd = 5;

/// Errors opening, sending or receiving a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("/dev/pts/ptmx of the container is not the multiplexer of a devpts instance")]
    NotPtmx,
    #[error("the container's init sent no terminal")]
    NoFd,
}

fn io(what: &'static str) -> impl FnOnce(nix::Error) -> ConsoleError {
    move |e| ConsoleError::Io(what, e.into())
}

/// In the container's init, after the root is built: opens a pty in the container's
/// devpts instance, makes its slave fds 0, 1 and 2, and sends the master through
/// [`CONSOLE_FD`], which it then closes.
pub fn open_and_send() -> Result<(), ConsoleError> {
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("opening the root"))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let master = openat2(&root, "dev/pts/ptmx", how).map_err(io("opening /dev/pts/ptmx"))?;
    if !is_devpts_ptmx(&master) {
        return Err(ConsoleError::NotPtmx);
    }
    unlock(&master).map_err(|e| ConsoleError::Io("unlocking the pty", e))?;
    let slave = open_peer(&master).map_err(|e| ConsoleError::Io("opening the pty slave", e))?;
    for target in 0..=2 {
        // SAFETY: dup2 onto the stdio numbers; both descriptors are open.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(ConsoleError::Io(
                "making the pty the stdio",
                std::io::Error::last_os_error(),
            ));
        }
    }
    drop(slave);
    // SAFETY: fd CONSOLE_FD was set up by the shim as this process's end of the console
    // socket; nothing else in this process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(CONSOLE_FD) };
    send_fd(&sock, &master)
}

/// Whether `fd` (an `O_PATH` fd is enough) is the multiplexer, `/dev/pts/ptmx`, of a
/// devpts instance: a tenant may plant anything at that path, and only the real
/// multiplexer may be opened for I/O or used.
pub fn is_devpts_ptmx(fd: impl AsFd) -> bool {
    let fd = fd.as_fd();
    let on_devpts = nix::sys::statfs::fstatfs(fd)
        .is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::DEVPTS_SUPER_MAGIC);
    on_devpts
        && nix::sys::stat::fstat(fd).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode) == SFlag::S_IFCHR
                && libc::major(st.st_rdev) == 5
                && libc::minor(st.st_rdev) == 2
        })
}

/// Unlocks the pty of `master` (a new pty starts locked).
pub fn unlock(master: impl AsFd) -> std::io::Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, valid for the call.
    if unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the slave of `master` by the master itself (`TIOCGPTPEER`), never by a path a
/// tenant could have replaced.
pub fn open_peer(master: impl AsFd) -> std::io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd; no memory is passed.
    let slave = unsafe {
        libc::ioctl(
            master.as_fd().as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(slave) })
}

/// Sends `fd` over the Unix socket `sock`.
pub fn send_fd(sock: &OwnedFd, fd: &impl AsFd) -> Result<(), ConsoleError> {
    let fds = [fd.as_fd().as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(b"c")],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(io("sending the terminal to the shim"))?;
    Ok(())
}

/// In the shim: receives the master [`open_and_send`] sent (already queued on the
/// socket once the init reported `Ready`).
pub fn receive(sock: &OwnedFd) -> Result<OwnedFd, ConsoleError> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io("receiving the terminal"))?;
    let mut got = None;
    for c in msg.cmsgs().map_err(io("reading the control message"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel installed this descriptor for us with the message;
                // nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    got.ok_or(ConsoleError::NoFd)
}
