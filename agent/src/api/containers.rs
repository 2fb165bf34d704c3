//! Containers service: logs from the CRI log files the shims write; exec through the
//! shim's Task API; attach through the shim's attach socket.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use eci_api::v1::containers_server::Containers;
use eci_api::v1::*;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::log_stream::LogStream;
use super::status::to_status;
use super::{Shared, blocking};
use crate::supervisor::ExecSession;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct ContainersApi {
    sup: Shared,
}

impl ContainersApi {
    pub fn new(sup: Shared) -> Self {
        ContainersApi { sup }
    }
}

#[tonic::async_trait]
impl Containers for ContainersApi {
    type LogsStream = BoxStream<LogEntry>;
    type ExecStream = BoxStream<ExecResponse>;
    type AttachStream = BoxStream<ExecResponse>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let g = self.sup.groups().clone();
        let name = r.group.clone();
        let group = blocking(move || g.get(&name)).await?;
        let spec = group.spec.clone().unwrap_or_default();
        let all: Vec<String> = spec
            .init_containers
            .iter()
            .chain(&spec.containers)
            .map(|c| c.name.clone())
            .collect();
        let container = match (r.container.as_str(), spec.containers.len()) {
            ("", 1) => spec.containers[0].name.clone(),
            ("", n) => {
                return Err(Status::invalid_argument(format!(
                    "container: the group has {n} containers ({}); name one",
                    all.join(", ")
                )));
            }
            (c, _) if all.iter().any(|n| n == c) => c.to_string(),
            (c, _) => {
                return Err(Status::not_found(format!(
                    "container {c:?} is not in group {:?}",
                    r.group
                )));
            }
        };
        let status = group.status.clone().unwrap_or_default();
        let restarts = status
            .container_statuses
            .iter()
            .chain(&status.init_container_statuses)
            .find(|s| s.name == container)
            .map_or(0, |s| s.restart_count);
        let run = if r.previous {
            restarts.checked_sub(1).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "container {container:?} has not restarted: there is no previous run"
                ))
            })?
        } else {
            restarts
        };
        let path = self.sup.log_file(&group.id, &container, run);
        let since = (r.since_seconds > 0)
            .then(|| SystemTime::now() - Duration::from_secs(r.since_seconds as u64));
        let (tx, rx) = mpsc::channel(256);
        let follow = r.follow && !r.previous;
        let reader = LogStream {
            sup: self.sup.clone(),
            group: r.group.clone(),
            container,
            run,
            since,
            timestamps: r.timestamps,
            tx,
        };
        tokio::spawn(reader.serve(path, r.tail_lines, follow));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn exec(
        &self,
        req: Request<Streaming<ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = req.into_inner();
        let missing = || Status::invalid_argument("start: the first message must carry it");
        let start = input
            .message()
            .await?
            .and_then(|m| m.start)
            .ok_or_else(missing)?;
        if start.command.is_empty() {
            return Err(Status::invalid_argument("start.command: required"));
        }
        let g = self.sup.groups().clone();
        let name = start.group.clone();
        let group = blocking(move || g.get(&name)).await?;
        let spec = group.spec.unwrap_or_default();
        let container = match (start.container.as_str(), spec.containers.len()) {
            ("", 1) => spec.containers[0].name.clone(),
            ("", n) => {
                return Err(Status::invalid_argument(format!(
                    "container: the group has {n} containers; name one"
                )));
            }
            (c, _) => c.to_string(),
        };
        let session = self
            .sup
            .exec(
                &start.group,
                &container,
                start.command,
                start.stdin,
                start.tty,
                start.initial_size.map(|s| (s.rows, s.cols)),
            )
            .await
            .map_err(to_status)?;
        let (tx, rx) = mpsc::channel(64);
        let ExecSession {
            stdout,
            stderr,
            mut stdin,
            resize,
            exit,
        } = session;
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // Input and terminal resizes, until the client stops sending. Dropping
            // `stdin` closes the process's input.
            while let Ok(Some(msg)) = input.message().await {
                if let (Some(r), Some(size)) = (&resize, msg.resize) {
                    let _ = r.to(size.rows, size.cols).await;
                }
                if let Some(w) = stdin.as_mut()
                    && !msg.stdin.is_empty()
                    && w.write_all(&msg.stdin).await.is_err()
                {
                    stdin = None;
                }
                if msg.close_stdin {
                    stdin = None;
                }
            }
        });
        tokio::spawn(async move {
            let a = tokio::spawn(pump(stdout, tx.clone(), false));
            let b = stderr.map(|e| tokio::spawn(pump(e, tx.clone(), true)));
            let _ = a.await;
            if let Some(b) = b {
                let _ = b.await;
            }
            let last = match exit.wait().await {
                Ok(code) => Ok(ExecResponse {
                    exit_code: Some(code),
                    ..Default::default()
                }),
                Err(e) => Err(to_status(e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn attach(
        &self,
        req: Request<Streaming<AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut requests = req.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("group: the first message must name it"))?;
        let g = self.sup.groups().clone();
        let name = first.group.clone();
        let group = blocking(move || g.get(&name)).await?;
        let spec = group.spec.unwrap_or_default();
        let container = match (first.container.as_str(), spec.containers.len()) {
            ("", 1) => spec.containers[0].name.clone(),
            ("", n) => {
                return Err(Status::invalid_argument(format!(
                    "container: the group has {n} containers; name one"
                )));
            }
            (c, _) => c.to_string(),
        };
        let wants_stdin = first.want_stdin || !first.stdin.is_empty();
        let attached = self
            .sup
            .attach(&first.group, &container, wants_stdin)
            .await
            .map_err(to_status)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(attach_session(attached, first, requests, container, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Runs one attach until the process exits, the client goes (detach) or sends input a
/// container without stdin cannot take. Dropping the connection to the shim detaches.
async fn attach_session(
    attached: crate::sandbox::attach::Attached,
    first: AttachRequest,
    mut requests: Streaming<AttachRequest>,
    container: String,
    tx: mpsc::Sender<Result<ExecResponse, Status>>,
) {
    use eci_runtime::attach::Frame;
    let crate::sandbox::attach::Attached {
        tty,
        stdin: has_stdin,
        mut output,
        mut input,
    } = attached;
    let resize = |s: TerminalSize| Frame::Resize {
        rows: s.rows.min(u16::MAX as u32) as u16,
        cols: s.cols.min(u16::MAX as u32) as u16,
    };
    let inbound = async {
        let mut next = Some(first);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match requests.message().await {
                    Ok(Some(m)) => m,
                    // The client stopped sending: output goes on (an output-only
                    // attacher sends nothing after its first message).
                    _ => return std::future::pending::<Option<Status>>().await,
                },
            };
            if let (true, Some(size)) = (tty, msg.resize) {
                let _ = input.send(&resize(size)).await;
            }
            if !msg.stdin.is_empty() {
                if !has_stdin {
                    return Some(to_status(crate::supervisor::no_stdin(&container)));
                }
                if input.send(&Frame::Stdin(msg.stdin)).await.is_err() {
                    return None;
                }
            }
        }
    };
    let out = tx.clone();
    let outbound = async move {
        loop {
            let m = match output.next().await {
                Ok(Some(Frame::Stdout(d))) => ExecResponse {
                    stdout: d,
                    ..Default::default()
                },
                Ok(Some(Frame::Stderr(d))) => ExecResponse {
                    stderr: d,
                    ..Default::default()
                },
                Ok(Some(Frame::Notice(n))) => ExecResponse {
                    notice: n,
                    ..Default::default()
                },
                Ok(Some(Frame::Exit(code))) => {
                    let _ = out
                        .send(Ok(ExecResponse {
                            exit_code: Some(code),
                            ..Default::default()
                        }))
                        .await;
                    return;
                }
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(e) => {
                    let _ = out
                        .send(Err(Status::unavailable(format!("attach: {e}"))))
                        .await;
                    return;
                }
            };
            if out.send(Ok(m)).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        refused = inbound => {
            if let Some(st) = refused {
                let _ = tx.send(Err(st)).await;
            }
        }
        _ = outbound => {}
        _ = tx.closed() => {}
    }
}

/// Copies one output pipe of an exec into response messages until it closes.
async fn pump(
    mut r: tokio::net::unix::pipe::Receiver,
    tx: mpsc::Sender<Result<ExecResponse, Status>>,
    stderr: bool,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let m = if stderr {
                    ExecResponse {
                        stderr: data,
                        ..Default::default()
                    }
                } else {
                    ExecResponse {
                        stdout: data,
                        ..Default::default()
                    }
                };
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
        }
    }
}
