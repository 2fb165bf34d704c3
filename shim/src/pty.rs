//! Terminals for exec'd processes: a pty pair whose slave is the process's stdio and
//! whose master the shim copies to and from the caller's FIFOs.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// A terminal being served for one process.
pub struct Pty {
    master: File,
}

/// Errors setting up or resizing a terminal.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("opening a pty")]
    Open(#[source] nix::Error),
    #[error("copying the pty master")]
    Dup(#[source] std::io::Error),
    #[error("resizing the terminal")]
    Resize(#[source] std::io::Error),
}

impl Pty {
    /// Opens a pair of `size` (rows, cols) when given; returns the terminal and the
    /// slave for the process.
    pub fn open(size: Option<(u16, u16)>) -> Result<(Self, OwnedFd), PtyError> {
        let ws = size.map(|(rows, cols)| nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let p = nix::pty::openpty(ws.as_ref(), None).map_err(PtyError::Open)?;
        Ok((
            Pty {
                master: File::from(p.master),
            },
            p.slave,
        ))
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
