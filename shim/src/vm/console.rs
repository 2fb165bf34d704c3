//! The guest's serial console on the host: QEMU writes it (and its own messages) to a
//! pipe; a thread copies the pipe into `<V>/console.log`, bounded.
//!
//! The guest kernel is the tenant's (a compromised one prints what it likes, as fast as
//! it likes), so the log may not grow without bound on the host's disk: past
//! [`CONSOLE_MAX`] bytes the file is renamed to `console.log.1` (replacing the older
//! one) and a new one begins, so at most twice that stays on disk. The pipe is always
//! drained: a guest printing fast is slowed by its own serial port, never by the host.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes of console output per file (two files at most).
pub const CONSOLE_MAX: u64 = 1024 * 1024;

/// Copies `from` into `path` until EOF (QEMU exited), rotating at `max` bytes; runs on
/// a thread of its own.
pub fn spawn_copier(from: File, path: PathBuf, max: u64) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("vm-console".into())
        .spawn(move || copy(from, &path, max))?;
    Ok(())
}

fn open(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

fn copy(mut from: File, path: &Path, max: u64) {
    let mut out = open(path);
    let mut written = out
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if written + n as u64 > max {
            let mut old = path.as_os_str().to_owned();
            old.push(".1");
            drop(out.take());
            let _ = std::fs::rename(path, PathBuf::from(old));
            out = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)
                .ok();
            written = 0;
        }
        // A chunk larger than the whole budget keeps only its end.
        let keep = &buf[n.saturating_sub(max as usize)..n];
        if let Some(f) = out.as_mut()
            && f.write_all(keep).is_ok()
        {
            written += keep.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_printing_for_ever_fills_two_files_at_most() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("console.log");
        let (r, w) = nix::unistd::pipe().expect("pipe");
        spawn_copier(File::from(r), log.clone(), 4096).expect("copier");
        let mut w = File::from(w);
        for i in 0..2000 {
            writeln!(w, "[{i:8}] a guest kernel that never stops printing").expect("write");
        }
        writeln!(w, "the last line").expect("write");
        drop(w);
        let old = dir.path().join("console.log.1");
        let done = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            std::fs::read_to_string(&log).is_ok_and(|s| s.ends_with("the last line\n"))
        });
        assert!(done, "the copier never caught up");
        let (a, b) = (
            std::fs::metadata(&log).expect("log").len(),
            std::fs::metadata(&old).expect("rotated").len(),
        );
        assert!(a <= 4096 && b <= 4096, "{a} {b}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
