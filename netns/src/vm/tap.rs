//! The tap QEMU serves: created by opening `/dev/net/tun` in the group's netns, so the
//! device lives there and goes away when the last descriptor (QEMU's) closes.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Opens a queue of tap `name` (IFF_TAP | IFF_NO_PI: raw Ethernet frames, no packet
/// information header, no virtio-net header), creating the device in the calling
/// thread's network namespace if it does not exist. The descriptor is close-on-exec:
/// whoever hands it to QEMU clears that in the child.
pub(crate) fn open(name: &str) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is a plain C struct for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back the name of) `req`, a valid ifreq that
    // lives across the call; the fd is an open /dev/net/tun.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}
