//! Terminals: for exec'd processes, a pty pair whose slave is the process's stdio and
//! whose master the shim copies to and from the caller's FIFOs; for a container's first
//! process, the master its init opened (`eci_runtime::console`), served to the log and
//! attachers (`crate::attach`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use std::path::Path;

/// A terminal being served for one process.
pub struct Pty {
    master: File,
    /// A slave fd kept until the process has exited: a pty master can report EIO
    /// before the last output written by an exiting process reaches it.
    slave: std::sync::Mutex<Option<OwnedFd>>,
}

/// Errors setting up or resizing a terminal.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("the container's /dev/pts/ptmx is not the multiplexer of a devpts instance")]
    NotPtmx,
    #[error("copying the pty master")]
    Dup(#[source] std::io::Error),
    #[error("resizing the terminal")]
    Resize(#[source] std::io::Error),
}

impl Pty {
    /// Opens a pair of `size` (rows, cols) when given, in the devpts instance of the
    /// container whose root is `root` (`/proc/<pid>/root`), so the process sees its
    /// terminal under its own /dev/pts. Returns the terminal and the slave.
    ///
    /// The container owns everything below its root: `dev/pts/ptmx` is resolved inside
    /// that root by fd (a planted symlink cannot lead to the host's `/dev/ptmx`), first
    /// as `O_PATH` so nothing the tenant planted there is ever opened, and only reopened
    /// for I/O once it is known to be the multiplexer of a devpts instance.
    pub fn open(root: &Path, size: Option<(u16, u16)>) -> Result<(Self, OwnedFd), PtyError> {
        let root = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| PtyError::Io("opening the container's root", e.into()))?;
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let path = openat2(&root, "dev/pts/ptmx", how)
            .map_err(|e| PtyError::Io("resolving the container's /dev/pts/ptmx", e.into()))?;
        if !eci_runtime::console::is_devpts_ptmx(&path) {
            return Err(PtyError::NotPtmx);
        }
        let master = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", path.as_raw_fd()))
            .map_err(|e| PtyError::Io("opening the container's /dev/pts/ptmx", e))?;
        eci_runtime::console::unlock(&master).map_err(|e| PtyError::Io("unlocking the pty", e))?;
        let slave = eci_runtime::console::open_peer(&master)
            .map_err(|e| PtyError::Io("opening the pty slave", e))?;
        // Blocking I/O from here on: the copy threads wait on it.
        let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| PtyError::Io("fcntl", e.into()))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| PtyError::Io("fcntl", e.into()))?;
        let keep = slave.try_clone().map_err(PtyError::Dup)?;
        let pty = Pty {
            master,
            slave: std::sync::Mutex::new(Some(keep)),
        };
        if let Some((rows, cols)) = size {
            pty.resize(rows, cols)?;
        }
        Ok((pty, slave))
    }

    /// The terminal of a container's first process, from the master its init sent.
    /// Keeps a slave open until [`Pty::release`] (see `slave`).
    pub fn from_master(master: OwnedFd) -> Result<Self, PtyError> {
        let slave = eci_runtime::console::open_peer(&master)
            .map_err(|e| PtyError::Io("opening the pty slave", e))?;
        Ok(Pty {
            master: File::from(master),
            slave: std::sync::Mutex::new(Some(slave)),
        })
    }

    /// Another descriptor of the master (same open file: same flags).
    pub fn master(&self) -> Result<OwnedFd, PtyError> {
        self.master
            .try_clone()
            .map(OwnedFd::from)
            .map_err(PtyError::Dup)
    }

    /// Copies `input` to the terminal and the terminal to `output`, on two threads,
    /// until the process side closes (reads of the master then fail with EIO).
    pub fn serve(&self, input: Option<File>, mut output: File) -> Result<(), PtyError> {
        let mut from_master = self.master.try_clone().map_err(PtyError::Dup)?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from_master.read(&mut buf) {
                if n == 0 || output.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        if let Some(mut input) = input {
            let mut to_master = self.master.try_clone().map_err(PtyError::Dup)?;
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = input.read(&mut buf) {
                    if n == 0 || to_master.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(())
    }

    /// Lets the output copy finish: call once the process has exited.
    pub fn release(&self) {
        if let Ok(mut s) = self.slave.lock() {
            s.take();
        }
    }

    /// Sets the terminal size (the process gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), PtyError> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the
        // call; the master fd is open for the lifetime of `self`.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(PtyError::Resize(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}
