//! The devices a container may open. One list for both cgroup versions: v1 writes it as
//! `devices.allow` rules ([`crate::cgroup`]), v2 compiles it into a BPF program
//! ([`crate::device_filter`]). Any device may be created with mknod (as in Docker, so
//! that image unpacking and package installs work); only these may be opened.

/// A character device a container may read, write and mknod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharDevice {
    pub major: u32,
    /// `None`: every minor of the major.
    pub minor: Option<u32>,
}

const fn char_device(major: u32, minor: u32) -> CharDevice {
    CharDevice {
        major,
        minor: Some(minor),
    }
}

/// `/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`, `console`, `ptmx` and every
/// `/dev/pts/N`: what runc and Docker give a container by default.
pub const ALLOWED_DEVICES: &[CharDevice] = &[
    char_device(1, 3),
    char_device(1, 5),
    char_device(1, 7),
    char_device(1, 8),
    char_device(1, 9),
    char_device(5, 0),
    char_device(5, 1),
    char_device(5, 2),
    CharDevice {
        major: 136,
        minor: None,
    },
];
