//! The rootfs benchmark mode (`eci.bench=erofs:<serial>` or `eci.bench=virtiofs:<tag>`
//! on the kernel command line), used by `eci-rootfsbench` to compare the two ways of
//! giving a guest its image layers (issue 15): mount the source read-only, put an
//! overlay with a tmpfs upper on it as a container's rootfs would be, read every
//! regular file of the tree once, and print one line with the timings to the console.
//! The guest then idles a moment, so that the host can sample its memory, and the caller
//! powers it off. Nothing here runs unless the command line asks for it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

/// The line prefix the host waits for on the console.
pub const BENCH_LINE: &str = "ECI-BENCH";
/// How long the guest stays idle after the line (the host samples memory meanwhile),
/// unless `eci.bench_idle=<seconds>` (at most [`MAX_IDLE_S`]) says otherwise.
const IDLE: Duration = Duration::from_secs(3);
const MAX_IDLE_S: u64 = 60;
/// How long the disk with the serial may take to appear after the drivers load.
const DISK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest tag or serial accepted (both are short: 20 hex, a virtiofs tag ≤ 36 bytes).
const MAX_NAME: usize = 64;

const LOWER: &str = "/bench/lower";
const RW: &str = "/bench/rw";
const ROOT: &str = "/bench/root";

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("eci.bench: expected erofs:<serial> or virtiofs:<tag>, got {0:?}")]
    Spec(String),
    #[error("eci.bench: no virtio-blk disk with serial {0}")]
    NoDisk(String),
    #[error("mounting {what}: {source}")]
    Mount {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the rootfs comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An erofs image on the virtio-blk disk with this serial.
    Erofs(String),
    /// A virtiofs share with this tag.
    Virtiofs(String),
}

/// The `eci.bench=` value of a command line, if any.
pub fn requested(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("eci.bench="))
}

/// The idle time after the line: `eci.bench_idle=<seconds>`, bounded, else [`IDLE`].
pub fn idle(cmdline: &str) -> Duration {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("eci.bench_idle="))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(IDLE, |s| Duration::from_secs(s.min(MAX_IDLE_S)))
}

/// Parses `erofs:<serial>` / `virtiofs:<tag>`.
pub fn parse(spec: &str) -> Result<Source, BenchError> {
    let bad = || BenchError::Spec(spec.chars().take(MAX_NAME * 2).collect());
    let (kind, name) = spec.split_once(':').ok_or_else(bad)?;
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        return Err(bad());
    }
    match kind {
        "erofs" => Ok(Source::Erofs(name.to_string())),
        "virtiofs" => Ok(Source::Virtiofs(name.to_string())),
        _ => Err(bad()),
    }
}

/// What a run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    /// Mounting the source and the overlay on it.
    pub mount: Duration,
    /// Walking the overlay and reading every regular file.
    pub walk: Duration,
    pub files: u64,
    pub bytes: u64,
}

impl Report {
    /// The console line (`ECI-BENCH mount_us=… walk_us=… files=… bytes=…`).
    pub fn line(&self) -> String {
        format!(
            "{BENCH_LINE} mount_us={} walk_us={} files={} bytes={}",
            self.mount.as_micros(),
            self.walk.as_micros(),
            self.files,
            self.bytes
        )
    }
}

/// Runs the benchmark for `spec`, prints its line (or the error) to the console and
/// idles for `idle`; the caller powers off.
pub fn run(spec: &str, idle: Duration) {
    match parse(spec).and_then(|s| measure(&s)) {
        Ok(r) => crate::boot::console(&r.line()),
        Err(e) => crate::boot::console(&format!("{BENCH_LINE} error: {e}")),
    }
    std::thread::sleep(idle);
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

fn mkdirs() -> Result<(), BenchError> {
    for d in [LOWER, RW, ROOT] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    Ok(())
}

fn wait_disk(serial: &str) -> Result<PathBuf, BenchError> {
    let until = Instant::now() + DISK_TIMEOUT;
    loop {
        if let Some(d) = crate::options::disk_with_serial(serial) {
            return Ok(d);
        }
        if Instant::now() > until {
            return Err(BenchError::NoDisk(serial.to_string()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mounts the source and the overlay, then walks it.
pub fn measure(source: &Source) -> Result<Report, BenchError> {
    mkdirs()?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    // The disk appears when virtio_blk probes (already done by the module load); its
    // wait is not part of the mount time.
    let disk = match source {
        Source::Erofs(serial) => Some(wait_disk(serial)?),
        Source::Virtiofs(_) => None,
    };
    let t0 = Instant::now();
    match (source, &disk) {
        (Source::Erofs(_), Some(disk)) => {
            mount(Some(disk.as_path()), LOWER, Some("erofs"), ro, None::<&str>)
        }
        (Source::Virtiofs(tag), _) => mount(
            Some(tag.as_str()),
            LOWER,
            Some("virtiofs"),
            ro,
            None::<&str>,
        ),
        (Source::Erofs(serial), None) => return Err(BenchError::NoDisk(serial.clone())),
    }
    .map_err(|source| BenchError::Mount {
        what: "the lower layer",
        source,
    })?;
    mount(
        Some("tmpfs"),
        RW,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(|source| BenchError::Mount {
        what: "the upper tmpfs",
        source,
    })?;
    for d in ["upper", "work"] {
        let p = Path::new(RW).join(d);
        std::fs::create_dir(&p).map_err(io_err(p.display().to_string()))?;
    }
    let data = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    mount(
        Some("overlay"),
        ROOT,
        Some("overlay"),
        MsFlags::MS_NOSUID,
        Some(data.as_str()),
    )
    .map_err(|source| BenchError::Mount {
        what: "the overlay",
        source,
    })?;
    let mount_time = t0.elapsed();
    let t1 = Instant::now();
    let mut report = Report {
        mount: mount_time,
        ..Report::default()
    };
    walk(Path::new(ROOT), &mut report)?;
    report.walk = t1.elapsed();
    Ok(report)
}

/// Reads every regular file below `dir` (symlinks are not followed), iteratively.
fn walk(dir: &Path, report: &mut Report) -> Result<(), BenchError> {
    let mut stack = vec![dir.to_path_buf()];
    let mut buf = vec![0u8; 128 * 1024];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(io_err(d.display().to_string()))?;
        for e in entries {
            let e = e.map_err(io_err(d.display().to_string()))?;
            let ft = e
                .file_type()
                .map_err(io_err(e.path().display().to_string()))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let path = e.path();
                let mut f =
                    std::fs::File::open(&path).map_err(io_err(path.display().to_string()))?;
                loop {
                    let n = f
                        .read(&mut buf)
                        .map_err(io_err(path.display().to_string()))?;
                    if n == 0 {
                        break;
                    }
                    report.bytes += n as u64;
                }
                report.files += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec() {
        assert_eq!(
            requested("console=ttyS0 eci.bench=erofs:0123456789abcdef0123 quiet"),
            Some("erofs:0123456789abcdef0123")
        );
        assert_eq!(requested("console=ttyS0"), None);
        assert_eq!(
            parse("erofs:0123456789abcdef0123").expect("erofs"),
            Source::Erofs("0123456789abcdef0123".into())
        );
        assert_eq!(
            parse("virtiofs:rootfs").expect("virtiofs"),
            Source::Virtiofs("rootfs".into())
        );
        assert!(parse("nfs:x").is_err());
        assert!(parse("erofs:").is_err());
        assert!(parse("virtiofs:a,b").is_err());
        assert!(parse("virtiofs").is_err());
        assert_eq!(idle("eci.bench_idle=10"), Duration::from_secs(10));
        assert_eq!(
            idle("eci.bench_idle=99999"),
            Duration::from_secs(MAX_IDLE_S)
        );
        assert_eq!(idle("quiet"), IDLE);
    }
}
