//! Splitting a stream's bytes into CRI log records:
//! `<RFC3339Nano> <stdout|stderr> <F|P> <text>\n`.
//!
//! `F` ends a line (the text is the line without its `\n`); `P` is part of a line that
//! continues in the next record of the same stream. So the bytes a process wrote are its
//! records' texts joined, with a `\n` after each `F` — whatever the bytes are (NUL,
//! invalid UTF-8): nothing here looks at them except for `\n`.
//!
//! A line longer than [`MAX_LINE`] is cut into `MAX_LINE`-byte `P` records and a last
//! `F` one, as before. A line that a read ends in the middle of is carried to the next
//! read, so lines are not cut at read boundaries; the caller flushes a carried part as
//! `P` at EOF, when the process exits, or when the pipe stays idle (a prompt without a
//! newline must not wait forever).

/// Longest text of one record; longer lines are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// Which of a process's output streams records belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Record splitter for one stream; holds the unfinished line between reads.
#[derive(Debug)]
pub struct Splitter {
    stream: Stream,
    carry: Vec<u8>,
}

impl Splitter {
    pub fn new(stream: Stream) -> Self {
        Splitter {
            stream,
            carry: Vec::new(),
        }
    }

    /// Whether an unfinished line is held.
    pub fn has_partial(&self) -> bool {
        !self.carry.is_empty()
    }

    /// Appends the records of `data` (read at time `ts`) to `out`; a trailing part of a
    /// line stays carried, unless it exceeds [`MAX_LINE`].
    pub fn push(&mut self, ts: &str, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let (line, after) = (&rest[..i], &rest[i + 1..]);
            if self.carry.is_empty() {
                self.line(ts, line, true, out);
            } else {
                let mut whole = std::mem::take(&mut self.carry);
                whole.extend_from_slice(line);
                self.line(ts, &whole, true, out);
                whole.clear();
                self.carry = whole;
            }
            rest = after;
        }
        self.carry.extend_from_slice(rest);
        // Keep at most MAX_LINE carried: a line of exactly MAX_LINE bytes still ends in
        // one `F` record when its newline comes.
        if self.carry.len() > MAX_LINE {
            let cut = (self.carry.len() - 1) / MAX_LINE * MAX_LINE;
            let head: Vec<u8> = self.carry.drain(..cut).collect();
            for chunk in head.chunks(MAX_LINE) {
                self.record(ts, chunk, false, out);
            }
        }
    }

    /// Writes the carried part of a line as `P` records (EOF, exit, idle pipe).
    pub fn flush(&mut self, ts: &str, out: &mut Vec<u8>) {
        if self.carry.is_empty() {
            return;
        }
        let carry = std::mem::take(&mut self.carry);
        self.line(ts, &carry, false, out);
        self.carry = carry;
        self.carry.clear();
    }

    /// Records of one line (`full`: it ended with a newline).
    fn line(&self, ts: &str, body: &[u8], full: bool, out: &mut Vec<u8>) {
        if body.is_empty() {
            if full {
                self.record(ts, body, true, out);
            }
            return;
        }
        let last = (body.len() - 1) / MAX_LINE;
        for (i, chunk) in body.chunks(MAX_LINE).enumerate() {
            self.record(ts, chunk, full && i == last, out);
        }
    }

    fn record(&self, ts: &str, text: &[u8], full: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.stream.name().as_bytes());
        out.extend_from_slice(if full { b" F " } else { b" P " });
        out.extend_from_slice(text);
        out.push(b'\n');
    }
}

/// A CRI record parsed back: (timestamp, stream, full, text).
pub type Parsed<'a> = (&'a [u8], &'a [u8], bool, &'a [u8]);

/// The inverse of what a [`Splitter`] writes (one record without its `\n`).
pub fn parse(record: &[u8]) -> Option<Parsed<'_>> {
    let mut parts = record.splitn(4, |b| *b == b' ');
    let ts = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    match tag {
        b"F" => Some((ts, stream, true, text)),
        b"P" => Some((ts, stream, false, text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2024-01-02T03:04:05.000000006Z";

    /// Rebuilds each stream's bytes from records, checking their shape.
    fn rejoin(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for rec in log.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            let (ts, stream, full, text) = parse(rec).expect("a CRI record");
            assert_eq!(ts, TS.as_bytes());
            assert!(text.len() <= MAX_LINE, "record text over the limit");
            let dst = match stream {
                b"stdout" => &mut out,
                b"stderr" => &mut err,
                other => panic!("stream {:?}", String::from_utf8_lossy(other)),
            };
            dst.extend_from_slice(text);
            if full {
                dst.push(b'\n');
            }
        }
        (out, err)
    }

    fn split_in_reads(data: &[u8], read: usize) -> Vec<u8> {
        let mut s = Splitter::new(Stream::Stdout);
        let mut out = Vec::new();
        for chunk in data.chunks(read.max(1)) {
            s.push(TS, chunk, &mut out);
        }
        s.flush(TS, &mut out);
        out
    }

    fn tags(log: &[u8]) -> String {
        log.split(|b| *b == b'\n')
            .filter(|r| !r.is_empty())
            .map(|r| {
                if parse(r).expect("record").2 {
                    'F'
                } else {
                    'P'
                }
            })
            .collect()
    }

    #[test]
    fn whole_lines_are_full_records() {
        let log = split_in_reads(b"a\n\nbc\n", 100);
        assert_eq!(
            log,
            format!("{TS} stdout F a\n{TS} stdout F \n{TS} stdout F bc\n").into_bytes()
        );
    }

    #[test]
    fn a_line_cut_by_a_read_is_carried_not_split() {
        let log = split_in_reads(b"hello world\nsecond\n", 3);
        assert_eq!(tags(&log), "FF");
        assert_eq!(rejoin(&log).0, b"hello world\nsecond\n");
    }

    #[test]
    fn a_partial_last_line_is_a_p_record() {
        let log = split_in_reads(b"one\nno newline", 4);
        assert_eq!(tags(&log), "FP");
        assert_eq!(rejoin(&log).0, b"one\nno newline");
    }

    #[test]
    fn long_lines_split_at_the_limit() {
        for len in [
            MAX_LINE - 1,
            MAX_LINE,
            MAX_LINE + 1,
            3 * MAX_LINE,
            3 * MAX_LINE + 7,
        ] {
            let mut data = vec![b'x'; len];
            data.push(b'\n');
            data.extend_from_slice(b"next\n");
            for read in [1000, 4096, 65536, 1 << 20] {
                let log = split_in_reads(&data, read);
                assert_eq!(rejoin(&log).0, data, "len {len} read {read}");
                let parts = len.div_ceil(MAX_LINE);
                let want = "P".repeat(parts - 1) + "FF";
                assert_eq!(tags(&log), want, "len {len} read {read}");
            }
        }
    }

    #[test]
    fn nul_and_invalid_utf8_are_kept() {
        let data = b"\0\xff\xfe bad \xc3\x28\n\0\0\n\x80".to_vec();
        for read in [1, 2, 5, 100] {
            assert_eq!(rejoin(&split_in_reads(&data, read)).0, data);
        }
    }

    #[test]
    fn interleaved_streams_rejoin_separately() {
        let mut out_s = Splitter::new(Stream::Stdout);
        let mut err_s = Splitter::new(Stream::Stderr);
        let mut log = Vec::new();
        out_s.push(TS, b"out-1\nout-", &mut log);
        err_s.push(TS, b"err-1\n", &mut log);
        out_s.push(TS, b"2\n", &mut log);
        err_s.push(TS, b"err-", &mut log);
        err_s.flush(TS, &mut log);
        err_s.push(TS, b"2\n", &mut log);
        let (out, err) = rejoin(&log);
        assert_eq!(out, b"out-1\nout-2\n");
        assert_eq!(err, b"err-1\nerr-2\n");
    }

    #[test]
    fn flush_without_carry_writes_nothing() {
        let mut s = Splitter::new(Stream::Stderr);
        let mut out = Vec::new();
        s.push(TS, b"x\n", &mut out);
        let n = out.len();
        s.flush(TS, &mut out);
        assert_eq!(out.len(), n);
        assert!(!s.has_partial());
    }
}
