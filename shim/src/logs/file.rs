//! One container run's log file: appending whole records, size-based rotation with a
//! number of kept files, optional gzip of older rotated files, and the "unfinished log"
//! marker.
//!
//! Names, newest first: `<path>` (being written), `<path>.1`, `<path>.2[.gz]`, … up to
//! `max_files - 1` rotated files. `<path>.1` is never compressed: a reader following
//! the log may still be finishing it after a rotation (kubelet keeps its newest rotated
//! file uncompressed for the same reason). Rotation renames `<path>` away only after
//! every write to it returned, so a reader holding it open reads it to its end, then
//! goes on with the new `<path>` from its start: no gap, no repeat.
//!
//! Unfinished logs: while a run's output is being copied, `<path>.writing` exists; it is
//! removed when the copy reaches EOF on both pipes. A shim that is killed leaves it
//! behind, and the next time a shim starts logging in that directory (the container's
//! next run), it appends a marker record to that log, so that a reader sees that the
//! output may end early, never a silent end.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::SystemTime;

/// Errors writing a log file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("creating log directory {path}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening log file {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing log file {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rotating log file {path}")]
    Rotate {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How a log is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before the file would grow past this many bytes; 0: never.
    pub max_bytes: u64,
    /// Files kept, the one being written included (kubelet's `containerLogMaxFiles`);
    /// below 2 counts as 2, since rotating into nothing would drop a whole file.
    pub max_files: u32,
    /// Gzip rotated files other than the newest.
    pub compress: bool,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 10 << 20,
            max_files: 2,
            compress: false,
        }
    }
}

/// Suffix of the "being written" sentinel next to a log file.
pub const WRITING: &str = ".writing";

/// Logs this shim is writing now: not "unfinished" even though their sentinel exists
/// (a container's previous run may still be copying a daemon's output).
static ACTIVE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn active() -> std::sync::MutexGuard<'static, Option<HashSet<PathBuf>>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// `<path><suffix>`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The record a reader finds where a run's log ended unexpectedly.
pub fn marker_record() -> Vec<u8> {
    let ts = humantime::format_rfc3339_nanos(SystemTime::now());
    format!(
        "{ts} stderr F [eci-shim: the log of this run ends here unexpectedly: the shim \
         was stopped while copying the output; output after this point is lost]\n"
    )
    .into_bytes()
}

/// The record written where output was dropped because the log could not be written.
pub fn dropped_record(bytes: u64, error: &str) -> Vec<u8> {
    let ts = humantime::format_rfc3339_nanos(SystemTime::now());
    format!(
        "{ts} stderr F [eci-shim: {bytes} bytes of output were dropped here: writing the log \
         failed: {error}]\n"
    )
    .into_bytes()
}

/// The log file of one run.
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    compressing: Option<JoinHandle<()>>,
}

impl LogFile {
    /// Opens (appends to) `path`, after marking unfinished logs in its directory.
    pub fn open(path: &Path, rotation: Rotation) -> Result<Self, FileError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| FileError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        mark_unfinished(dir);
        active()
            .get_or_insert_with(HashSet::new)
            .insert(path.to_path_buf());
        let open_err = |source| FileError::Open {
            path: path.to_path_buf(),
            source,
        };
        File::create(with_suffix(path, WRITING)).map_err(open_err)?;
        let file = append(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            rotation: Rotation {
                max_files: rotation.max_files.max(2),
                ..rotation
            },
            compressing: None,
        })
    }

    /// Appends whole records (each ending in `\n`), rotating between records when the
    /// file would grow past the maximum size.
    pub fn write(&mut self, mut records: &[u8]) -> Result<(), FileError> {
        let max = self.rotation.max_bytes;
        while !records.is_empty() {
            let room = max.saturating_sub(self.size) as usize;
            let take = if max == 0 || records.len() <= room {
                records.len()
            } else {
                // The records that fit; a record larger than a whole file goes alone
                // into a fresh one.
                match memchr::memrchr(b'\n', &records[..room]) {
                    Some(i) => i + 1,
                    None if self.size == 0 => {
                        memchr::memchr(b'\n', records).map_or(records.len(), |i| i + 1)
                    }
                    None => 0,
                }
            };
            if take > 0 {
                self.file
                    .write_all(&records[..take])
                    .map_err(|source| FileError::Write {
                        path: self.path.clone(),
                        source,
                    })?;
                self.size += take as u64;
                records = &records[take..];
            }
            if !records.is_empty() {
                self.rotate().map_err(|source| FileError::Rotate {
                    path: self.path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// After a failed write (full or failing filesystem): reopens the file (a failed
    /// rotation may have left the handle on a renamed file), takes its real size (a
    /// write may have stopped inside a record), and ends a torn record with a newline,
    /// so that the next record starts on a line of its own.
    pub fn resume(&mut self) -> Result<(), FileError> {
        let io = |source| FileError::Write {
            path: self.path.clone(),
            source,
        };
        self.file = append(&self.path).map_err(io)?;
        self.size = self.file.metadata().map_err(io)?.len();
        if self.size > 0 {
            let mut last = [0u8; 1];
            let mut r = File::open(&self.path).map_err(io)?;
            r.seek(SeekFrom::Start(self.size - 1)).map_err(io)?;
            r.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                self.file.write_all(b"\n").map_err(io)?;
                self.size += 1;
            }
        }
        Ok(())
    }

    /// Shifts the rotated files, renames the current one to `.1`, starts a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(t) = self.compressing.take() {
            let _ = t.join();
        }
        let keep = self.rotation.max_files - 1;
        let name = |k: u32| with_suffix(&self.path, &format!(".{k}"));
        let gz = |k: u32| with_suffix(&self.path, &format!(".{k}.gz"));
        for old in [name(keep), gz(keep)] {
            remove_if_exists(&old)?;
        }
        for k in (1..keep).rev() {
            rename_if_exists(&name(k), &name(k + 1))?;
            rename_if_exists(&gz(k), &gz(k + 1))?;
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = append(&self.path)?;
        self.size = 0;
        if self.rotation.compress && keep >= 2 {
            let (plain, packed) = (name(2), gz(2));
            if plain.exists() {
                self.compressing = Some(std::thread::spawn(move || {
                    if let Err(e) = gzip(&plain, &packed) {
                        tracing::warn!(file = %plain.display(), error = %e, "compressing a rotated log");
                    }
                }));
            }
        }
        Ok(())
    }

    /// The copy reached EOF: the log is complete.
    pub fn finish(mut self) {
        if let Some(t) = self.compressing.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(with_suffix(&self.path, WRITING));
        if let Some(set) = active().as_mut() {
            set.remove(&self.path);
        }
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn remove_if_exists(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `plain` → `packed` (via a temporary name, so a reader never sees half a file), then
/// removes `plain`.
fn gzip(plain: &Path, packed: &Path) -> std::io::Result<()> {
    let tmp = with_suffix(packed, ".tmp");
    let mut src = File::open(plain)?;
    let mut enc = flate2::write::GzEncoder::new(File::create(&tmp)?, flate2::Compression::fast());
    std::io::copy(&mut src, &mut enc)?;
    enc.finish()?.sync_all()?;
    std::fs::rename(&tmp, packed)?;
    std::fs::remove_file(plain)
}

/// Appends the marker record to every log in `dir` whose sentinel a stopped shim left.
fn mark_unfinished(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let sentinel = entry.path();
        let Some(name) = sentinel.to_str() else {
            continue;
        };
        let Some(log) = name.strip_suffix(WRITING).map(PathBuf::from) else {
            continue;
        };
        if active().as_ref().is_some_and(|s| s.contains(&log)) {
            continue;
        }
        if let Err(e) = append_marker(&log) {
            tracing::warn!(log = %log.display(), error = %e, "marking an unfinished log");
        }
        let _ = std::fs::remove_file(&sentinel);
    }
}

/// Ends a torn last record with a newline, then appends the marker.
fn append_marker(log: &Path) -> std::io::Result<()> {
    let mut f = OpenOptions::new().read(true).append(true).open(log)?;
    let len = f.metadata()?.len();
    let mut rec = Vec::new();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            rec.push(b'\n');
        }
    }
    rec.extend_from_slice(&marker_record());
    f.write_all(&rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_after_a_torn_write_starts_the_next_record_on_its_own_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path, Rotation::default()).expect("open");
        log.write(&rec(1)).expect("write");
        // A write that stopped inside a record (the filesystem filled up).
        append(&path)
            .expect("append")
            .write_all(b"2024-01-01T00:00:00Z std")
            .expect("torn");
        log.resume().expect("resume");
        log.write(&rec(2)).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[2].ends_with("line 00002"), "{text}");
        assert_eq!(log.size, text.len() as u64);
    }

    fn rec(i: usize) -> Vec<u8> {
        format!("2024-01-01T00:00:00.000000000Z stdout F line {i:05}\n").into_bytes()
    }

    /// Everything in the rotated files and the current one, oldest first.
    fn all(path: &Path, max_files: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for k in (1..max_files).rev() {
            let plain = with_suffix(path, &format!(".{k}"));
            let packed = with_suffix(path, &format!(".{k}.gz"));
            if let Ok(b) = std::fs::read(&plain) {
                out.extend(b);
            } else if let Ok(f) = File::open(&packed) {
                let mut d = flate2::read::GzDecoder::new(f);
                d.read_to_end(&mut out).expect("gunzip");
            }
        }
        out.extend(std::fs::read(path).unwrap_or_default());
        out
    }

    #[test]
    fn rotation_keeps_max_files_and_loses_nothing_within_them() {
        for compress in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("0.log");
            let rotation = Rotation {
                max_bytes: 1000,
                max_files: 4,
                compress,
            };
            let mut f = LogFile::open(&path, rotation).expect("open");
            let mut want = Vec::new();
            for i in 0..200 {
                let r: Vec<u8> = (0..3).flat_map(|j| rec(i * 3 + j)).collect();
                f.write(&r).expect("write");
                want.extend(r);
            }
            f.finish();
            for k in 1..4 {
                let size = std::fs::metadata(with_suffix(&path, &format!(".{k}")))
                    .map(|m| m.len())
                    .unwrap_or(0);
                assert!(size <= 1000, "file .{k} is {size} bytes");
            }
            assert!(
                with_suffix(&path, ".1").exists(),
                "newest rotated stays plain"
            );
            if compress {
                assert!(with_suffix(&path, ".2.gz").exists());
                assert!(!with_suffix(&path, ".2").exists());
            }
            assert!(!with_suffix(&path, ".4").exists() && !with_suffix(&path, ".4.gz").exists());
            let kept = all(&path, 4);
            assert!(want.ends_with(&kept), "kept files are the tail, in order");
            assert!(kept.len() > 2000, "three rotated files and the current one");
            assert!(!with_suffix(&path, WRITING).exists());
        }
    }

    #[test]
    fn a_log_left_unfinished_gets_a_marker_on_the_next_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = dir.path().join("0.log");
        let mut f = LogFile::open(&first, Rotation::default()).expect("open");
        f.write(&rec(1)).expect("write");
        // A shim killed mid-record: a torn record, the sentinel left behind.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&first)
            .and_then(|mut x| x.write_all(b"2024-01-01T00:00:00.000000000Z stdout P torn"))
            .expect("torn");
        drop(f);
        active().as_mut().map(|s| s.remove(&first));
        let second = LogFile::open(&dir.path().join("1.log"), Rotation::default()).expect("open");
        second.finish();
        let text = std::fs::read(&first).expect("read");
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        assert_eq!(lines.len(), 4, "record, torn record, marker, end");
        let (_, stream, full, msg) = crate::logs::records::parse(lines[2]).expect("a record");
        assert_eq!((stream, full), (&b"stderr"[..], true));
        assert!(String::from_utf8_lossy(msg).contains("ends here unexpectedly"));
        assert!(!with_suffix(&first, WRITING).exists());
    }

    #[test]
    fn a_log_being_written_is_not_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = dir.path().join("0.log");
        let mut f = LogFile::open(&first, Rotation::default()).expect("open");
        f.write(&rec(1)).expect("write");
        LogFile::open(&dir.path().join("1.log"), Rotation::default())
            .expect("open")
            .finish();
        f.finish();
        assert_eq!(std::fs::read(&first).expect("read"), rec(1));
    }
}
