//! TCP connections made from inside a group's network namespace, for probes and hooks:
//! the socket is created on a thread of its own that enters the namespace and ends there,
//! and a socket keeps the namespace it was created in, so the caller can use the stream
//! anywhere (a tokio worker never enters a tenant's namespace).

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Errors connecting from inside a namespace.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("opening network namespace {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("dial tcp {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the namespace thread panicked")]
    Thread,
}

/// A TCP connection to `addr` made inside the namespace pinned at `netns`, within
/// `timeout`. Blocking (the connect and a short-lived thread): call it from the
/// blocking pool.
pub fn tcp(netns: &Path, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let file = File::open(netns).map_err(|source| ConnectError::Open {
        path: netns.display().to_string(),
        source,
    })?;
    let path = netns.display().to_string();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|source| ConnectError::Enter { path, source })?;
        TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ConnectError::Connect { addr, source })
    })
    .join()
    .map_err(|_| ConnectError::Thread)?
}
