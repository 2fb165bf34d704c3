//! The agent's side of a shim's attach socket (protocol: `eci_runtime::attach`): one
//! connection per attacher. The shim owns the container's stdio, so an attach works the
//! same after an agent restart.

use std::path::Path;
use std::time::Duration;

use eci_runtime::attach::{Frame, FrameError, Hello, MAX_LINE, Welcome};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long the shim may take to answer the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors attaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The shim does not answer on its attach socket (stopped, or older than attach).
    #[error("connecting to the shim's attach socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the shim did not answer the attach within {0:?}")]
    Timeout(Duration),
    #[error("talking to the shim's attach socket")]
    Io(#[source] std::io::Error),
    #[error("the shim's attach answer is malformed")]
    Answer(#[source] serde_json::Error),
    /// The shim refused: its reason.
    #[error("{0}")]
    Refused(String),
    #[error("the shim sent a malformed frame")]
    Frame(#[source] FrameError),
}

/// An attached connection: what the shim said, and the two directions.
pub struct Attached {
    pub tty: bool,
    pub stdin: bool,
    pub output: AttachOutput,
    pub input: AttachInput,
}

/// Frames from the shim.
pub struct AttachOutput {
    r: BufReader<OwnedReadHalf>,
    buf: Vec<u8>,
}

/// Frames to the shim; dropping it (with the output) detaches.
pub struct AttachInput {
    w: OwnedWriteHalf,
}

/// Connects to the attach socket at `socket` for `container`.
pub async fn connect(socket: &Path, container: &str, stdin: bool) -> Result<Attached, AttachError> {
    let conn = UnixStream::connect(socket)
        .await
        .map_err(|source| AttachError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    let hello = Hello {
        container: container.into(),
        stdin,
    };
    let mut line = serde_json::to_vec(&hello).map_err(AttachError::Answer)?;
    line.push(b'\n');
    let answer = async {
        w.write_all(&line).await.map_err(AttachError::Io)?;
        let mut got = Vec::new();
        (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut got)
            .await
            .map_err(AttachError::Io)?;
        serde_json::from_slice::<Welcome>(&got).map_err(AttachError::Answer)
    };
    let welcome = tokio::time::timeout(HELLO_TIMEOUT, answer)
        .await
        .map_err(|_| AttachError::Timeout(HELLO_TIMEOUT))??;
    if !welcome.error.is_empty() {
        return Err(AttachError::Refused(welcome.error));
    }
    Ok(Attached {
        tty: welcome.tty,
        stdin: welcome.stdin,
        output: AttachOutput {
            r,
            buf: Vec::with_capacity(64 * 1024),
        },
        input: AttachInput { w },
    })
}

impl AttachOutput {
    /// The next frame; None when the shim closed the connection.
    pub async fn next(&mut self) -> Result<Option<Frame>, AttachError> {
        loop {
            if let Some((f, n)) = Frame::decode(&self.buf).map_err(AttachError::Frame)? {
                self.buf.drain(..n);
                return Ok(Some(f));
            }
            if self
                .r
                .read_buf(&mut self.buf)
                .await
                .map_err(AttachError::Io)?
                == 0
            {
                return Ok(None);
            }
        }
    }
}

impl AttachInput {
    pub async fn send(&mut self, f: &Frame) -> Result<(), AttachError> {
        self.w.write_all(&f.encode()).await.map_err(AttachError::Io)
    }
}
