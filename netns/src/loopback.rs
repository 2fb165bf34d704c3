//! Bringing up `lo` in the calling thread's network namespace.

use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Errors setting the loopback link up.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("opening a control socket")]
    Socket(#[source] nix::Error),
    #[error("{0} on lo")]
    Ioctl(&'static str, #[source] std::io::Error),
}

/// Sets IFF_UP on `lo`. A new network namespace starts with it down.
pub fn up() -> Result<(), LoopbackError> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(LoopbackError::Socket)?;
    // SAFETY: ifreq is a plain C struct for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`, a valid ifreq
    // that lives across the call; the socket fd is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(LoopbackError::Ioctl(
            "SIOCGIFFLAGS",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the flags member of the union is the one SIOCGIFFLAGS just filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(LoopbackError::Ioctl(
            "SIOCSIFFLAGS",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
