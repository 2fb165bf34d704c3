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
/// How often an idle follower looks whether the container has started a new run.
const RUN_CHECK: Duration = Duration::from_secs(1);

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
    pub async fn serve(self, path: PathBuf, tail: i64, follow: bool) {
        self.serve_inner(path, tail, follow).await;
        // A whole log read into memory (rotated files included) has just been freed.
        crate::memory::release_soon();
    }

    async fn serve_inner(mut self, path: PathBuf, tail: i64, follow: bool) {
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
    ///
    /// One blocking-pool hop per poll, and the group record (which a large spec makes
    /// megabytes to decode) is read at most once per [`RUN_CHECK`], not on every idle
    /// poll: 100 followers cost 1,000 small file reads a second, not 1,000 group
    /// decodes.
    async fn follow(&mut self, mut f: Follower) {
        let mut checked = tokio::time::Instant::now();
        loop {
            let check = checked.elapsed() >= RUN_CHECK;
            let (g, n, container) = (
                self.sup.groups().clone(),
                self.group.clone(),
                self.container.clone(),
            );
            let polled = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let r = f.poll(&mut out);
                // Only when the log is idle: a restart shows as the old file going quiet.
                let run = (check && matches!(r, Ok(false))).then(|| {
                    g.get(&n)
                        .ok()
                        .map(|group| (current_run(&group, &container), group.id))
                });
                (f, out, r, run)
            })
            .await;
            let Ok((back, lines, r, run)) = polled else {
                return;
            };
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
            let Some(run) = run else {
                tokio::time::sleep(IDLE).await;
                continue;
            };
            checked = tokio::time::Instant::now();
            // The group is gone.
            let Some((current, id)) = run else { return };
            let current = current.unwrap_or(self.run);
            if current != self.run {
                // The old run is over: its last lines, then the new run from its start.
                let next = self.sup.log_file(&id, &self.container, current);
                let (done, next) = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    f.finish(&mut out);
                    (out, Follower::open(&next))
                })
                .await
                .map_or_else(|_| (Vec::new(), None), |(out, n)| (out, n.ok()));
                if !self.send(done).await {
                    return;
                }
                let Some((nf, lines)) = next else { return };
                self.run = current;
                if !self.send(lines).await {
                    return;
                }
                f = nf;
            } else {
                tokio::time::sleep(IDLE).await;
            }
        }
    }
}

/// The container's restart count in `group`, when it has a status.
fn current_run(group: &eci_api::v1::ContainerGroup, container: &str) -> Option<u32> {
    let status = group.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(&status.init_container_statuses)
        .find(|s| s.name == container)
        .map(|s| s.restart_count)
}
