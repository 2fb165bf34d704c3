//! The channel benchmark (`eci.vsock_port=<port>` on the kernel command line), used by
//! `eci-chanbench` to compare virtio-serial with vsock as the host↔guest channel
//! (issue 15, docs/benchmark.md): besides the `eci.ctl` port, the same Task service is
//! served by a second ttrpc server on the vsock listener `<port>`, and `<port>+1` is a
//! byte source: each connection gets [`SOURCE_BYTES`] bytes, then EOF (the stream
//! throughput of vsock without the container stdio path around it). When the VM also has
//! a virtio-serial port named [`RAW_PORT`], the same source serves it (one byte from the
//! host asks for the next [`SOURCE_BYTES`]): the raw virtio-serial channel, to set
//! against vsock without the stdio path on either side. Nothing here runs
//! unless the command line asks for it; production guests only use virtio-serial.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use containerd_shim_protos::shim_async::{Task, create_task};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept, bind, listen, socket,
};

/// Bytes the source port sends per connection (64 MiB, as the stdio benchmark).
pub const SOURCE_BYTES: usize = 64 << 20;
/// The optional virtio-serial port of the raw source (benchmark only).
pub const RAW_PORT: &str = "eci.bench";
/// How long the raw port may take to appear (it is there at boot, if at all).
const RAW_PORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// `VMADDR_CID_ANY`: listen on the guest's own CID, whatever the host assigned.
const CID_ANY: u32 = u32::MAX;

/// Errors starting the benchmark listeners.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock listener on port {port}: {source}")]
    Listen {
        port: u32,
        #[source]
        source: nix::Error,
    },
    #[error("starting the source thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Port(crate::ports::PortError),
    #[error("ttrpc on vsock port {port}: {source}")]
    Ttrpc {
        port: u32,
        #[source]
        source: ttrpc::Error,
    },
}

/// The vsock port `eci.vsock_port=` names, if the command line has one (1024..u32::MAX-1).
pub fn requested(cmdline: &str) -> Option<u32> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("eci.vsock_port="))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|p| (1024..u32::MAX - 1).contains(p))
}

/// Serves `task` over ttrpc on vsock `port` and the byte source on `port + 1`. The
/// returned server must be kept (dropping it stops the listener).
pub async fn start<T: Task + Send + Sync + 'static>(
    task: Arc<T>,
    port: u32,
) -> Result<ttrpc::asynchronous::Server, VsockError> {
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("vsock://-1:{port}"))
        .map_err(|source| VsockError::Ttrpc { port, source })?
        .register_service(create_task(task));
    server
        .start()
        .await
        .map_err(|source| VsockError::Ttrpc { port, source })?;
    let source_port = port + 1;
    let listener = vsock_listener(source_port)?;
    std::thread::Builder::new()
        .name("vsock-source".into())
        .spawn(move || serve_source(listener))
        .map_err(VsockError::Thread)?;
    if crate::ports::find(RAW_PORT).is_some() {
        let raw = crate::ports::open(RAW_PORT, RAW_PORT_TIMEOUT).map_err(VsockError::Port)?;
        std::thread::Builder::new()
            .name("serial-source".into())
            .spawn(move || serve_raw_port(raw))
            .map_err(VsockError::Thread)?;
    }
    tracing::info!(port, "benchmark: Task API and byte source on vsock");
    Ok(server)
}

fn vsock_listener(port: u32) -> Result<OwnedFd, VsockError> {
    let err = |source| VsockError::Listen { port, source };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    bind(fd.as_raw_fd(), &VsockAddr::new(CID_ANY, port)).map_err(err)?;
    listen(&fd, Backlog::new(4).map_err(err)?).map_err(err)?;
    Ok(fd)
}

/// One connection at a time: write [`SOURCE_BYTES`] zero bytes, close.
fn serve_source(listener: OwnedFd) {
    let chunk = vec![0u8; 64 * 1024];
    loop {
        let fd = match accept(listener.as_raw_fd()) {
            Ok(fd) => fd,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "vsock source accept");
                return;
            }
        };
        // SAFETY: `accept` just returned this descriptor; nothing else owns it.
        let mut conn = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut left = SOURCE_BYTES;
        while left > 0 {
            let n = left.min(chunk.len());
            if conn.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
        drop(conn);
    }
}

/// The raw virtio-serial source: every byte the host sends asks for [`SOURCE_BYTES`]
/// more (the port reads EOF while no host is connected: poll).
fn serve_raw_port(mut port: std::fs::File) {
    use std::io::Read;
    let chunk = vec![0u8; 64 * 1024];
    let mut req = [0u8; 1];
    loop {
        match port.read(&mut req) {
            Ok(0) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "raw bench port");
                return;
            }
        }
        let mut left = SOURCE_BYTES;
        while left > 0 {
            let n = left.min(chunk.len());
            if port.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_only_when_asked() {
        assert_eq!(requested("console=ttyS0 eci.id=g"), None);
        assert_eq!(requested("eci.vsock_port=1024 quiet"), Some(1024));
        assert_eq!(requested("eci.vsock_port=80"), None);
        assert_eq!(requested("eci.vsock_port=x"), None);
    }
}
