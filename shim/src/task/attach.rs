//! One connection on the attach socket (protocol: `eci_runtime::attach`): the hello,
//! then output to the attacher and input and resizes from it, until the process exits
//! (an `Exit` frame) or the attacher goes (detach: the process runs on).
//!
//! The connection needs only an [`Attachable`] of the container: the namespaced
//! service's process, or a vm-mode shim's record of a process in the guest.

use std::sync::Arc;
use std::time::Duration;

use eci_runtime::attach::{Frame, Hello, MAX_LINE, Welcome};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::TaskService;
use super::exits::unreachable_exit;
use super::procs::Proc;
use crate::attach::{Hub, Subscription};

/// How long a connection may take to say which container it wants.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What attaching needs of a container's first process.
pub trait Attachable: Send + Sync {
    /// Its attach point; None: it cannot be attached to.
    fn hub(&self) -> Option<Arc<Hub>>;
    /// Its exit, once known.
    fn exited(&self) -> watch::Receiver<Option<super::ExitRecord>>;
    /// Resizes its terminal, if it has one (best effort).
    fn resize(&self, rows: u16, cols: u16);
}

impl Attachable for Proc {
    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<super::ExitRecord>> {
        self.exited.subscribe()
    }

    fn resize(&self, rows: u16, cols: u16) {
        let pty = self.pty.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pty.as_ref() {
            let _ = p.resize(rows, cols);
        }
    }
}

impl TaskService {
    /// Serves one attach connection.
    pub async fn serve_attach(self: Arc<Self>, conn: UnixStream) {
        serve(conn, |id| {
            self.get(id, "").ok().map(|p| p as Arc<dyn Attachable>)
        })
        .await
    }
}

/// Serves one attach connection to the container `find` gives for the hello's name.
pub async fn serve(conn: UnixStream, find: impl Fn(&str) -> Option<Arc<dyn Attachable>>) {
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
    let (target, welcome) = match serde_json::from_slice::<Hello>(&line) {
        Ok(hello) => admit(find(&hello.container), &hello),
        Err(e) => (None, refused(format!("attach hello: {e}"))),
    };
    let mut json = serde_json::to_vec(&welcome).unwrap_or_default();
    json.push(b'\n');
    let Some((target, hub)) = target else {
        let _ = w.write_all(&json).await;
        return;
    };
    // Subscribed before the welcome: nothing written after it is missed.
    let sub = hub.subscribe();
    if w.write_all(&json).await.is_err() {
        return;
    }
    tracing::info!(attachers = hub.attachers(), "attached");
    tokio::select! {
        _ = output(sub, target.exited(), w) => {}
        _ = input(r, target.as_ref(), &hub) => {}
    }
    tracing::info!(attachers = hub.attachers().saturating_sub(1), "detached");
}

/// Checks the hello: the container exists, runs, and has a stdin when one is wanted.
#[allow(clippy::type_complexity)]
fn admit(
    target: Option<Arc<dyn Attachable>>,
    hello: &Hello,
) -> (Option<(Arc<dyn Attachable>, Arc<Hub>)>, Welcome) {
    let Some(target) = target else {
        return (
            None,
            refused(format!("container {:?} not found", hello.container)),
        );
    };
    let Some(hub) = target.hub() else {
        return (None, refused("this process cannot be attached to".into()));
    };
    if target.exited().borrow().is_some() {
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
    (Some((target, hub)), welcome)
}

fn refused(error: String) -> Welcome {
    Welcome {
        error,
        ..Default::default()
    }
}

/// Output to the attacher until the process exits (then what is queued, then `Exit`)
/// or the attacher stops reading.
async fn output(
    mut sub: Subscription,
    mut exited: watch::Receiver<Option<super::ExitRecord>>,
    mut w: OwnedWriteHalf,
) {
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
async fn input(mut r: BufReader<OwnedReadHalf>, target: &dyn Attachable, hub: &Hub) {
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
                    if let Err(e) = hub.write_stdin(&data).await {
                        tracing::info!(error = %e, "attach input");
                        return;
                    }
                }
                Frame::Resize { rows, cols } => target.resize(rows, cols),
                _ => {}
            }
        }
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
