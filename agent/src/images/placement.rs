//! Where the filesystem puts the inodes of unpacked layers.
//!
//! Unpacking an image creates thousands of inodes (the Debian benchmark image: ~16,700
//! files in four layers). ext4 puts a new directory's inode near its parent's block group
//! unless the parent is the root or carries the "top of directory hierarchy" flag
//! (`FS_TOPDIR_FL`, `chattr +T`), in which case it spreads new directories over groups with
//! room (the Orlov allocator); files then go to their directory's group. An ext4 without a
//! journal also skips, on every inode it creates, each free inode of that group deleted in
//! the last seconds (`recently_deleted` in fs/ext4/ialloc.c), reading its inode table
//! block. A state directory in a busy tree (`/tmp`, a group that other work fills and
//! empties) thus made each create scan thousands of inodes: 16,000 creates took 4.5–6.5 s
//! of system time there, 0.25 s under a `+T` directory (measured on the test machine;
//! docs/benchmark.md). The layers directory is marked `+T`: each layer tree is unrelated
//! to the others, which is what the flag says. It is a placement hint only; filesystems
//! without it (or refusing it) are left as they are.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `FS_TOPDIR_FL` of linux/fs.h.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Asks the filesystem to spread the directories created in `dir` (see the module
/// comment). Errors are logged and otherwise ignored: a filesystem without inode flags
/// works as well, only its placement is its own.
pub(super) fn spread_subdirectories(dir: &Path) {
    if let Err(e) = set_topdir(dir) {
        tracing::debug!(path = %dir.display(), error = %e, "no top-directory hint on the layers directory");
    }
}

fn set_topdir(dir: &Path) -> std::io::Result<()> {
    let f = File::open(dir)?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int (the kernel's inode flags are an int whatever
    // the ioctl number's declared size) to the valid, exclusively borrowed `flags`; `f`
    // is an open descriptor for the call's duration.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(());
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from the valid `flags`; `f` is open.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a filesystem with inode flags (ext4, the test machine's root) the flag is set
    /// and stays; elsewhere (tmpfs) the call is a no-op that does not fail.
    #[test]
    fn marks_a_directory_top_or_leaves_it_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        spread_subdirectories(dir.path());
        let f = File::open(dir.path()).expect("open");
        let mut flags: libc::c_int = 0;
        // SAFETY: as in `set_topdir`.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
        if r == 0 && flags != 0 {
            assert_ne!(flags & FS_TOPDIR_FL, 0, "flags {flags:#x}");
        }
        // Twice is fine.
        spread_subdirectories(dir.path());
    }
}
