//! Container stdout/stderr to a CRI-format log file
//! (`<RFC3339Nano> stdout|stderr F|P <text>`), rotated at a maximum size.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Longest line written as one record; longer lines are split into `P` records.
const MAX_LINE: usize = 16 * 1024;

/// Copies both streams into `path` until both pipes close. Returns when done.
pub async fn copy(
    stdout: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    stderr: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    path: PathBuf,
    max_bytes: u64,
) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
    let a = tokio::spawn(read_stream(stdout, "stdout", tx.clone()));
    let b = tokio::spawn(read_stream(stderr, "stderr", tx));
    if let Err(e) = write_all(rx, &path, max_bytes).await {
        tracing::error!(path = %path.display(), error = %e, "writing container log");
    }
    let _ = a.await;
    let _ = b.await;
}

async fn read_stream(
    r: impl tokio::io::AsyncRead + Unpin,
    stream: &'static str,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let full = buf.ends_with(b"\n");
        let body = if full {
            &buf[..buf.len() - 1]
        } else {
            &buf[..]
        };
        let chunks: Vec<&[u8]> = if body.is_empty() {
            vec![&[][..]]
        } else {
            body.chunks(MAX_LINE).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let tag = if i == last && full { "F" } else { "P" };
            let ts = humantime::format_rfc3339_nanos(SystemTime::now());
            let mut rec = format!("{ts} {stream} {tag} ").into_bytes();
            rec.extend_from_slice(chunk);
            rec.push(b'\n');
            if tx.send(rec).await.is_err() {
                return;
            }
        }
    }
}

async fn open(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

async fn write_all(
    mut rx: mpsc::Receiver<Vec<u8>>,
    path: &Path,
    max_bytes: u64,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut file = open(path).await?;
    let mut size = file.metadata().await?.len();
    while let Some(rec) = rx.recv().await {
        if max_bytes > 0 && size + rec.len() as u64 > max_bytes && size > 0 {
            // Keep one rotated file: <name>.1.
            file.flush().await?;
            let mut rotated = path.as_os_str().to_owned();
            rotated.push(".1");
            tokio::fs::rename(path, &rotated).await?;
            file = open(path).await?;
            size = 0;
        }
        file.write_all(&rec).await?;
        size += rec.len() as u64;
    }
    file.flush().await
}
