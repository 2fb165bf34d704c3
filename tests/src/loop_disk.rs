//! Block devices for the disk-volume tests: a loop device over a sparse file, blank
//! until a test writes it.

use std::process::Command;

use crate::text;

/// A loop device over a sparse file; detached (and unmounted wherever the agent left
/// it mounted) on drop.
pub struct LoopDisk {
    /// The device node, `/dev/loopN`.
    pub dev: String,
    _dir: tempfile::TempDir,
}

impl LoopDisk {
    /// A blank device of `mib` MiB.
    pub fn new(mib: u64) -> LoopDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("disk.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(mib << 20))
            .expect("sparse file");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .expect("losetup");
        assert!(out.status.success(), "{}", text(&out));
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        LoopDisk { dev, _dir: dir }
    }

    /// Where the device is mounted now.
    pub fn mounts(&self) -> Vec<String> {
        let rdev =
            std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&self.dev).expect("dev"));
        let want = format!(
            "{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        );
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(2) == Some(want.as_str()))
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect()
    }

    /// Writes `bytes` at `offset` of the device, synced.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.dev)
            .expect("open device");
        f.seek(std::io::SeekFrom::Start(offset)).expect("seek");
        f.write_all(bytes).expect("write");
        f.sync_all().expect("sync");
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        for m in self.mounts() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
