//! Reading back what a group's network namespace really has, so the status the agent
//! reports is observed rather than copied from the spec: an address a spec asked for but
//! the kernel does not hold is never shown as the group's.

use std::net::IpAddr;
use std::path::Path;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// Errors reading a namespace's links.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Netns(#[from] crate::enter::EnterError),
    #[error("listing interface addresses")]
    List(#[source] nix::Error),
    #[error("reading the plug record of a vm group")]
    Vm(#[source] Box<crate::vm::VmNetError>),
}

/// One address held by a non-loopback link of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress {
    /// The link's name inside the namespace (`eth0`).
    pub link: String,
    pub address: IpAddr,
    /// Whether the link is up: an address on a down link is not reachable.
    pub up: bool,
}

/// The addresses of every non-loopback link in the namespace pinned at `netns`.
///
/// Runs on a thread of its own that enters the namespace and ends there, so no thread of
/// the caller (a tokio worker, say) is ever left inside a tenant's namespace.
///
/// A vm group's netns, once plugged ([`crate::vm::plug`]), holds no address of the
/// group's: its guest does. Those are read from the plug record and reported on `eth0`,
/// up while the bridge is.
pub fn addresses(netns: &Path) -> Result<Vec<LinkAddress>, ObserveError> {
    let (mut out, bridge_up) = crate::enter::run_in(netns, "eci-observe", list_here)?;
    if let Some(up) = bridge_up
        && let Some(guest) =
            crate::vm::guest_of(netns).map_err(|e| ObserveError::Vm(Box::new(e)))?
    {
        out.extend(guest.addrs.iter().map(|a| LinkAddress {
            link: crate::attach::ETH0.into(),
            address: a.addr(),
            up,
        }));
    }
    Ok(out)
}

/// The non-loopback addresses of the calling thread's namespace, and whether it has a
/// vm bridge (up or not).
fn list_here() -> Result<(Vec<LinkAddress>, Option<bool>), ObserveError> {
    let mut out = Vec::new();
    let mut bridge_up = None;
    for ifa in getifaddrs().map_err(ObserveError::List)? {
        if ifa.interface_name == crate::vm::BRIDGE {
            bridge_up = Some(ifa.flags.contains(InterfaceFlags::IFF_UP));
        }
        // A vm group's br0 holds only the host-only probe source: not an address of
        // the group.
        if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            || ifa.interface_name == crate::vm::BRIDGE
        {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let address = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        out.push(LinkAddress {
            link: ifa.interface_name,
            address,
            up: ifa.flags.contains(InterfaceFlags::IFF_UP),
        });
    }
    Ok((out, bridge_up))
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use nix::sched::CloneFlags;
    use std::os::fd::AsRawFd;

    use nix::mount::{MntFlags, MsFlags, mount, umount2};

    use super::*;

    /// Creates a tun link named `name` with `addr` in the calling thread's namespace and
    /// returns its fd (the link lives while the fd is open). Needs root.
    fn tun_with_address(name: &str, addr: [u8; 4]) -> File {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("/dev/net/tun");
        // SAFETY: all-zero is a valid ifreq.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the valid ifreq `req`; the fd is open.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("socket");
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in the sockaddr member; both are plain C structs.
        unsafe {
            std::ptr::write(
                &mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut libc::sockaddr_in,
                sin,
            );
        }
        // SAFETY: SIOCSIFADDR reads the valid ifreq `req`.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) };
        assert_eq!(rc, 0, "SIOCSIFADDR: {}", std::io::Error::last_os_error());
        tun
    }

    #[test]
    fn reads_the_addresses_of_another_namespace_only() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pin = dir.path().join("net");
        File::create(&pin).expect("pin file");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let pin2 = pin.clone();
        let holder = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            mount(
                Some("/proc/thread-self/ns/net"),
                &pin2,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("pin");
            let _tun = tun_with_address("ecitest0", [10, 201, 3, 4]);
            ready_tx.send(()).expect("ready");
            let _ = done_rx.recv();
        });
        ready_rx.recv().expect("namespace ready");
        let seen = addresses(&pin);
        done_tx.send(()).expect("done");
        holder.join().expect("holder");
        umount2(&pin, MntFlags::MNT_DETACH).expect("unpin");
        let seen = seen.expect("addresses");
        assert_eq!(
            seen,
            vec![LinkAddress {
                link: "ecitest0".into(),
                address: "10.201.3.4".parse().expect("ip"),
                up: false,
            }]
        );
        let (host, _) = list_here().expect("host addresses");
        assert!(host.iter().all(|a| a.link != "ecitest0"), "{host:?}");
    }
}
