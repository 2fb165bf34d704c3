//! One connection on the attach socket (protocol: `eci_runtime::attach`): the hello,
//! then output to the attacher and input and resizes from it, until the process exits
//! (an `Exit` frame) or the attacher goes (detach: the process runs on).

use std::sync::Arc;
use std::time::Duration;

use eci_runtime::attach::{Frame, Hello, MAX_LINE, Welcome};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::TaskService;
use super::exits::unreachable_exit;
use super::procs::Proc;
use crate::attach::Subscription;

/// How long a connection may take to say which container it wants.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

impl TaskService {
    /// Serves one attach connection.
    pub async fn serve_attach(self: Arc<Self>, conn: UnixStream) {
        let (r, mut w) = conn.into_split();
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            HELLO_TIMEOUT,
            (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line),
        )
        .await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return;
        }
        let (proc_, welcome) = match serde_json::from_slice::<Hello>(&line) {
            Ok(hello) => self.admit(&hello),
            Err(e) => (None, refused(format!("attach hello: {e}"))),
        };
        let mut json = serde_json::to_vec(&welcome).unwrap_or_default();
        json.push(b'\n');
        let Some(proc_) = proc_ else {
            let _ = w.write_all(&json).await;
            return;
        };
        let Some(hub) = proc_.hub.clone() else {
            return;
        };
        // Subscribed before the welcome: nothing written after it is missed.
        let sub = hub.subscribe();
        if w.write_all(&json).await.is_err() {
            return;
        }
        tracing::info!(attachers = hub.attachers(), "attached");
        tokio::select! {
            _ = output(sub, &proc_, w) => {}
            _ = input(r, &proc_) => {}
        }
        tracing::info!(attachers = hub.attachers().saturating_sub(1), "detached");
    }

    /// Checks the hello: the container exists, runs, and has a stdin when one is
    /// wanted.
    fn admit(&self, hello: &Hello) -> (Option<Arc<Proc>>, Welcome) {
        let Ok(proc_) = self.get(&hello.container, "") else {
            return (
                None,
                refused(format!("container {:?} not found", hello.container)),
            );
        };
        let Some(hub) = proc_.hub.as_ref() else {
            return (None, refused("this process cannot be attached to".into()));
        };
        if proc_.exited.borrow().is_some() {
            return (
                None,
                refused(format!(
                    "container {:?} is not running: it exited",
                    hello.container
                )),
            );
        }
        if hello.stdin && !hub.has_stdin() {
            return (
                None,
                refused(format!(
                    "container {:?} has no stdin (it was not created with stdin: true): \
                     attach without input",
                    hello.container
                )),
            );
        }
        let welcome = Welcome {
            error: String::new(),
            tty: hub.tty,
            stdin: hub.has_stdin(),
        };
        (Some(proc_), welcome)
    }
}

fn refused(error: String) -> Welcome {
    Welcome {
        error,
        ..Default::default()
    }
}

/// Output to the attacher until the process exits (then what is queued, then `Exit`)
/// or the attacher stops reading.
async fn output(mut sub: Subscription, proc_: &Proc, mut w: OwnedWriteHalf) {
    let mut exited = proc_.exited.subscribe();
    loop {
        tokio::select! {
            biased;
            f = sub.recv() => match f {
                Some(f) => {
                    if w.write_all(&f.encode()).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            code = exit_code(&mut exited) => {
                // Everything the process wrote was shown to the hub before its exit
                // was reported (the log is drained first).
                while let Some(f) = sub.try_recv() {
                    if w.write_all(&f.encode()).await.is_err() {
                        return;
                    }
                }
                let _ = w.write_all(&Frame::Exit(code).encode()).await;
                let _ = w.shutdown().await;
                return;
            }
        }
    }
}

/// The process's exit code, once it has exited.
async fn exit_code(exited: &mut tokio::sync::watch::Receiver<Option<super::ExitRecord>>) -> i32 {
    match exited.wait_for(Option::is_some).await {
        Ok(rec) => rec.clone().unwrap_or_else(unreachable_exit).exit_code,
        Err(_) => unreachable_exit().exit_code,
    }
}

/// Input and resizes from the attacher, until it closes the connection or sends
/// something malformed.
async fn input(mut r: BufReader<OwnedReadHalf>, proc_: &Proc) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        loop {
            let (frame, n) = match Frame::decode(&buf) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "attach input");
                    return;
                }
            };
            buf.drain(..n);
            match frame {
                Frame::Stdin(data) => {
                    let Some(hub) = proc_.hub.as_ref() else {
                        return;
                    };
                    if let Err(e) = hub.write_stdin(&data).await {
                        tracing::info!(error = %e, "attach input");
                        return;
                    }
                }
                Frame::Resize { rows, cols } => {
                    let pty = proc_.pty.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(p) = pty.as_ref() {
                        let _ = p.resize(rows, cols);
                    }
                }
                _ => {}
            }
        }
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
