//! Serving one `Logs` call: a run's lines from its log files (see
//! [`crate::logfiles`]), filtered by `since`, cut to `tail`, and with `follow` the
//! lines written later, across rotations and into the container's next runs.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use eci_api::v1::LogEntry;
use tokio::sync::mpsc;
use tonic::Status;

use super::Shared;
use crate::logfiles::{self, Follower};

/// How long a follower waits when the log has nothing new.
const IDLE: Duration = Duration::from_millis(100);

/// The sending side of one `Logs` call.
pub(super) struct LogStream {
    pub sup: Shared,
    pub group: String,
    pub container: String,
    /// The run (restart count) whose log is read first.
    pub run: u32,
    pub since: Option<SystemTime>,
    pub timestamps: bool,
    pub tx: mpsc::Sender<Result<LogEntry, Status>>,
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{e}"))
}

impl LogStream {
    /// Sends the lines; returns when done, or when the client went away.
    pub async fn serve(mut self, path: PathBuf, tail: i64, follow: bool) {
        let first = if follow {
            let p = path.clone();
            tokio::task::spawn_blocking(move || Follower::open(&p))
                .await
                .map_err(internal)
                .and_then(|r| r.map_err(internal))
                .map(|(f, lines)| (Some(f), lines))
        } else {
            let p = path.clone();
            tokio::task::spawn_blocking(move || logfiles::read_all(&p))
                .await
                .map_err(internal)
                .and_then(|r| r.map_err(internal))
                .map(|lines| (None, lines))
        };
        let (follower, mut lines) = match first {
            Ok(x) => x,
            Err(e) => {
                let _ = self.tx.send(Err(e)).await;
                return;
            }
        };
        if tail >= 0 {
            let skip = lines.len().saturating_sub(tail as usize);
            lines.drain(..skip);
        }
        if !self.send(lines).await {
            return;
        }
        if let Some(f) = follower {
            self.follow(f).await;
        }
    }

    /// Sends lines (filtered by `since`); false when the client is gone.
    async fn send(&self, lines: Vec<LogEntry>) -> bool {
        for mut e in lines {
            if let Some(s) = self.since
                && humantime::parse_rfc3339(&e.timestamp).is_ok_and(|t| t < s)
            {
                continue;
            }
            if !self.timestamps {
                e.timestamp.clear();
            }
            if self.tx.send(Ok(e)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Reads on as the log grows; moves to the container's next run when it restarts;
    /// stops when the group is gone or the client leaves.
    async fn follow(&mut self, mut f: Follower) {
        loop {
            let polled = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let r = f.poll(&mut out);
                (f, out, r)
            })
            .await;
            let Ok((back, lines, r)) = polled else { return };
            f = back;
            let any = match r {
                Ok(any) => any,
                Err(e) => {
                    let _ = self.tx.send(Err(internal(e))).await;
                    return;
                }
            };
            if !self.send(lines).await || self.tx.is_closed() {
                return;
            }
            if any {
                continue;
            }
            tokio::time::sleep(IDLE).await;
            let Some(current) = self.current_run().await else {
                return;
            };
            if current != self.run {
                // The old run is over: its last lines, then the new run from its start.
                let (done, next) = {
                    let group_id = self.group_id().await;
                    let Some(id) = group_id else { return };
                    let next = self.sup.log_file(&id, &self.container, current);
                    tokio::task::spawn_blocking(move || {
                        let mut out = Vec::new();
                        f.finish(&mut out);
                        (out, Follower::open(&next))
                    })
                    .await
                    .map_or_else(|_| (Vec::new(), None), |(out, n)| (out, n.ok()))
                };
                if !self.send(done).await {
                    return;
                }
                let Some((nf, lines)) = next else { return };
                self.run = current;
                if !self.send(lines).await {
                    return;
                }
                f = nf;
            }
        }
    }

    /// The group as stored now; None when it is gone.
    async fn group(&self) -> Option<eci_api::v1::ContainerGroup> {
        let g = self.sup.groups().clone();
        let n = self.group.clone();
        tokio::task::spawn_blocking(move || g.get(&n))
            .await
            .ok()?
            .ok()
    }

    /// The container's restart count now; None when the group is gone.
    async fn current_run(&self) -> Option<u32> {
        let status = self.group().await?.status.unwrap_or_default();
        Some(
            status
                .container_statuses
                .iter()
                .chain(&status.init_container_statuses)
                .find(|s| s.name == self.container)
                .map_or(self.run, |s| s.restart_count),
        )
    }

    async fn group_id(&self) -> Option<String> {
        Some(self.group().await?.id)
    }
}
