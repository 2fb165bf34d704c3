//! TCP connections made from inside a group's network namespace, for probes and hooks:
//! the socket is created on a thread of its own that enters the namespace and ends there,
//! and a socket keeps the namespace it was created in, so the caller can use the stream
//! anywhere (a tokio worker never enters a tenant's namespace).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::enter::{EnterError, run_in};

/// Errors connecting from inside a namespace.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Netns(#[from] EnterError),
    #[error("dial tcp {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A TCP connection to `addr` made inside the namespace pinned at `netns`, within
/// `timeout`. Blocking (the connect and a short-lived thread): call it from the
/// blocking pool.
pub fn tcp(netns: &Path, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    run_in(netns, "eci-connect", move || {
        TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ConnectError::Connect { addr, source })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_made_in_a_namespace_is_usable_by_the_caller() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            s.write_all(b"hi").expect("write");
        });
        // This process's own namespace (entering it needs root, as the agent has).
        let mut s = match tcp(Path::new("/proc/self/ns/net"), addr, Duration::from_secs(5)) {
            Err(ConnectError::Netns(EnterError::Enter { .. }))
                if !nix::unistd::geteuid().is_root() =>
            {
                return;
            }
            r => r.expect("connect"),
        };
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hi");
        server.join().expect("server");
        let closed = tcp(Path::new("/proc/self/ns/net"), addr, Duration::from_secs(5));
        assert!(
            matches!(closed, Err(ConnectError::Connect { .. })),
            "{closed:?}"
        );
        assert!(matches!(
            tcp(Path::new("/nonexistent/ns"), addr, Duration::from_secs(1)),
            Err(ConnectError::Netns(EnterError::Open { .. }))
        ));
    }
}
