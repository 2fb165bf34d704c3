//! Reading a container run's CRI log files back, across rotations.
//!
//! The shim writes `<run>.log` and rotates it to `<run>.log.1`, `.2[.gz]`, … (see
//! `eci_shim::logs::file`). Records are joined back into lines per stream: `P` records
//! are parts of a line the next `F` record of the same stream ends. A [`LogEntry`]'s
//! `line` holds the line's bytes as written — any bytes, a trailing `\n` when the line
//! had one — so concatenating the entries of a stream gives back its output exactly.
//!
//! Following: the file being written is held open; when `<run>.log` names another file
//! (a rotation), the held one is read to its end (the shim renames it only after its
//! last write), then the file that came after it is opened and read from its start —
//! no gap, no repeat. A follower more than `log_max_files - 1` rotations behind finds
//! its next file deleted; it goes on with the oldest file still there.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use eci_api::v1::LogEntry;

/// Errors reading log files.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error("reading log file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogReadError + '_ {
    move |source| LogReadError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The rotated files of `path` that exist, oldest first.
pub fn rotated(path: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for k in 1.. {
        let plain = with_suffix(path, &format!(".{k}"));
        let packed = with_suffix(path, &format!(".{k}.gz"));
        if plain.exists() {
            files.push(plain);
        } else if packed.exists() {
            files.push(packed);
        } else {
            break;
        }
    }
    files.reverse();
    files
}

/// The bytes of a log file, gunzipped when it is a `.gz`.
fn read_whole(path: &Path) -> Result<Vec<u8>, LogReadError> {
    let mut bytes = Vec::new();
    let f = File::open(path).map_err(read_err(path))?;
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut bytes)
            .map_err(read_err(path))?;
    } else {
        let mut f = f;
        f.read_to_end(&mut bytes).map_err(read_err(path))?;
    }
    Ok(bytes)
}

/// Turns record bytes into entries, holding an unfinished record and per-stream parts
/// of lines between calls.
#[derive(Debug, Default)]
pub struct Joiner {
    /// Bytes of a record not ended by `\n` yet (a write in progress).
    tail: Vec<u8>,
    stdout: Option<LogEntry>,
    stderr: Option<LogEntry>,
}

impl Joiner {
    /// Feeds bytes in file order; complete lines go to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<LogEntry>) {
        let mut rest = bytes;
        if !self.tail.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let mut rec = std::mem::take(&mut self.tail);
                    rec.extend_from_slice(&rest[..i]);
                    self.record(&rec, out);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.tail.extend_from_slice(rest);
                    return;
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', rest) {
            self.record(&rest[..i], out);
            rest = &rest[i + 1..];
        }
        self.tail.extend_from_slice(rest);
    }

    /// The end of the log: lines left without their end go out as they are.
    pub fn finish(&mut self, out: &mut Vec<LogEntry>) {
        self.tail.clear();
        out.extend(self.stdout.take());
        out.extend(self.stderr.take());
    }

    fn record(&mut self, rec: &[u8], out: &mut Vec<LogEntry>) {
        let mut parts = rec.splitn(4, |b| *b == b' ');
        let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let text = parts.next().unwrap_or_default();
        let full = match tag {
            b"F" => true,
            b"P" => false,
            _ => return,
        };
        let slot = match stream {
            b"stdout" => &mut self.stdout,
            b"stderr" => &mut self.stderr,
            _ => return,
        };
        let e = slot.get_or_insert_with(|| LogEntry {
            timestamp: String::from_utf8_lossy(ts).into_owned(),
            stream: String::from_utf8_lossy(stream).into_owned(),
            line: Vec::new(),
        });
        e.line.extend_from_slice(text);
        if full {
            e.line.push(b'\n');
            out.extend(slot.take());
        }
    }
}

/// Every line of a finished (or not followed) run: rotated files, then the current one.
pub fn read_all(path: &Path) -> Result<Vec<LogEntry>, LogReadError> {
    let mut out = Vec::new();
    let mut j = Joiner::default();
    for f in rotated(path) {
        // A file rotated away (or compressed) while we list is skipped, not an error.
        if let Ok(bytes) = read_whole(&f) {
            j.feed(&bytes, &mut out);
        }
    }
    match read_whole(path) {
        Ok(bytes) => j.feed(&bytes, &mut out),
        Err(LogReadError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
        }
        Err(e) => return Err(e),
    }
    j.finish(&mut out);
    Ok(out)
}

/// (device, inode) of a file: which file a name refers to now.
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// Reads a run's log as it grows, across rotations.
pub struct Follower {
    path: PathBuf,
    file: Option<(File, (u64, u64))>,
    joiner: Joiner,
    buf: Vec<u8>,
}

impl Follower {
    /// Opens the log at `path` and returns every line so far.
    pub fn open(path: &Path) -> Result<(Self, Vec<LogEntry>), LogReadError> {
        let mut f = Follower {
            path: path.to_path_buf(),
            file: None,
            joiner: Joiner::default(),
            buf: vec![0u8; 256 * 1024],
        };
        let mut out = Vec::new();
        // The current file first, so that a rotation while the older ones are read
        // cannot make us read it twice (it is skipped among them by identity).
        if let Ok(cur) = File::open(path) {
            let id = identity(&cur.metadata().map_err(read_err(path))?);
            for old in rotated(path) {
                let same = std::fs::metadata(&old).is_ok_and(|m| identity(&m) == id);
                if !same && let Ok(bytes) = read_whole(&old) {
                    f.joiner.feed(&bytes, &mut out);
                }
            }
            f.file = Some((cur, id));
        }
        f.poll(&mut out)?;
        Ok((f, out))
    }

    /// Reads what was written since the last call; false when nothing was.
    pub fn poll(&mut self, out: &mut Vec<LogEntry>) -> Result<bool, LogReadError> {
        if self.file.is_none() {
            // Not created yet (the container has not started writing).
            match File::open(&self.path) {
                Ok(f) => {
                    let id = identity(&f.metadata().map_err(read_err(&self.path))?);
                    self.file = Some((f, id));
                }
                Err(_) => return Ok(false),
            }
        }
        let mut any = self.read_held(out)?;
        // At the end of the held file: has it been rotated away?
        let Some((_, held)) = self.file.as_ref().map(|(f, id)| (f, *id)) else {
            return Ok(any);
        };
        let now = match std::fs::metadata(&self.path) {
            Ok(m) => identity(&m),
            // Between the rename and the new file: look again later.
            Err(_) => return Ok(any),
        };
        if now == held {
            return Ok(any);
        }
        // Rotated: the held file is complete; finish it, then go to its successor.
        any |= self.read_held(out)?;
        let next = self.successor(held);
        self.file = match next.and_then(|p| File::open(&p).ok()) {
            Some(f) => {
                let id = identity(&f.metadata().map_err(read_err(&self.path))?);
                Some((f, id))
            }
            None => None,
        };
        any |= self.read_held(out)?;
        Ok(any)
    }

    /// The plain file written after the one identified by `held`: the next newer name,
    /// or (if `held` is gone) the oldest plain file there is.
    fn successor(&self, held: (u64, u64)) -> Option<PathBuf> {
        let mut names: Vec<PathBuf> = rotated(&self.path)
            .into_iter()
            .filter(|p| p.extension().is_none_or(|e| e != "gz"))
            .collect();
        names.push(self.path.clone());
        let ids: Vec<Option<(u64, u64)>> = names
            .iter()
            .map(|p| std::fs::metadata(p).ok().map(|m| identity(&m)))
            .collect();
        match ids.iter().position(|id| *id == Some(held)) {
            Some(i) => names.get(i + 1).cloned(),
            None => names.into_iter().next(),
        }
    }

    fn read_held(&mut self, out: &mut Vec<LogEntry>) -> Result<bool, LogReadError> {
        let Some((f, _)) = self.file.as_mut() else {
            return Ok(false);
        };
        let mut any = false;
        loop {
            let n = f.read(&mut self.buf).map_err(read_err(&self.path))?;
            if n == 0 {
                return Ok(any);
            }
            any = true;
            self.joiner.feed(&self.buf[..n], out);
        }
    }

    /// The run ended: reads the rest and returns lines left without their end.
    pub fn finish(mut self, out: &mut Vec<LogEntry>) {
        let _ = self.poll(out);
        self.joiner.finish(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(stream: &str, tag: &str, text: &[u8]) -> Vec<u8> {
        let mut r = format!("2024-01-01T00:00:00.000000000Z {stream} {tag} ").into_bytes();
        r.extend_from_slice(text);
        r.push(b'\n');
        r
    }

    #[test]
    fn joins_parts_per_stream_and_keeps_bytes() {
        let mut log = Vec::new();
        log.extend(rec("stdout", "P", b"a\0\xff"));
        log.extend(rec("stderr", "F", b"err"));
        log.extend(rec("stdout", "F", b"b"));
        log.extend(rec("stdout", "P", b"no newline"));
        let mut out = Vec::new();
        let mut j = Joiner::default();
        // Fed in odd pieces, as a follower reads a file being written.
        for piece in log.chunks(7) {
            j.feed(piece, &mut out);
        }
        j.finish(&mut out);
        let lines: Vec<(&str, &[u8])> = out
            .iter()
            .map(|e| (e.stream.as_str(), e.line.as_slice()))
            .collect();
        assert_eq!(
            lines,
            vec![
                ("stderr", &b"err\n"[..]),
                ("stdout", &b"a\0\xffb\n"[..]),
                ("stdout", &b"no newline"[..]),
            ]
        );
    }

    #[test]
    fn follows_across_rotations_without_gap_or_repeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let write = |i: u32| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open");
            f.write_all(&rec("stdout", "F", i.to_string().as_bytes()))
                .expect("write");
        };
        let rotate = || {
            let name = |k: u32| with_suffix(&path, &format!(".{k}"));
            let _ = std::fs::remove_file(name(2));
            let _ = std::fs::rename(name(1), name(2));
            std::fs::rename(&path, name(1)).expect("rotate");
        };
        write(0);
        let (mut f, mut out) = Follower::open(&path).expect("open");
        let mut i = 1;
        for round in 0..6 {
            for _ in 0..5 {
                write(i);
                i += 1;
            }
            // One or two rotations between polls.
            rotate();
            if round % 2 == 1 {
                write(i);
                i += 1;
                rotate();
            }
            write(i);
            i += 1;
            while f.poll(&mut out).expect("poll") {}
        }
        f.finish(&mut out);
        let got: Vec<u32> = out
            .iter()
            .map(|e| {
                std::str::from_utf8(&e.line)
                    .expect("utf-8")
                    .trim()
                    .parse()
                    .expect("number")
            })
            .collect();
        assert_eq!(got, (0..i).collect::<Vec<_>>());
    }
}
