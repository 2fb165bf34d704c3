//! Streaming commands: logs, exec, top, events.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{Context, Result};
use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::containers_client::ContainersClient;
use eci_api::v1::metrics_client::MetricsClient;
use eci_api::v1::node_client::NodeClient;
use eci_api::v1::*;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::output::{self, Table};

pub async fn logs(ch: Channel, req: LogsRequest) -> Result<ExitCode> {
    let timestamps = req.timestamps;
    let mut stream = ContainersClient::new(ch).logs(req).await?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(e) = stream.message().await? {
        if timestamps {
            write!(out, "{} ", e.timestamp)?;
        }
        out.write_all(&e.line)?;
        if !e.line.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Puts the local terminal in raw mode for `exec -t` / `attach -it` and restores it
/// on drop.
pub struct RawMode(Termios);

impl RawMode {
    pub fn enter() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("stdin is not a terminal")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("setting raw mode")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// Sends the terminal's new size (as `msg` makes it) on every SIGWINCH, for `exec -t`
/// and `attach -t`, until the stream's sender side goes.
pub fn forward_resizes<M: Send + 'static>(
    tx: mpsc::Sender<M>,
    msg: impl Fn(TerminalSize) -> M + Send + 'static,
) {
    tokio::spawn(async move {
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(size) = terminal_size()
                && tx.send(msg(size)).await.is_err()
            {
                return;
            }
        }
    });
}

/// The local terminal's size, when stdout is a terminal.
pub fn terminal_size() -> Option<TerminalSize> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass, which is valid and
    // properly aligned for the duration of the call; fd 1 is only read.
    let rc = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then(|| TerminalSize {
        rows: ws.ws_row.into(),
        cols: ws.ws_col.into(),
    })
}

pub async fn exec(
    ch: Channel,
    group: String,
    container: String,
    command: Vec<String>,
    stdin: bool,
    tty: bool,
) -> Result<ExitCode> {
    let (tx, rx) = mpsc::channel::<ExecRequest>(16);
    let start = ExecStart {
        group,
        container,
        command,
        stdin,
        tty,
        initial_size: tty.then(terminal_size).flatten(),
    };
    tx.send(ExecRequest {
        start: Some(start),
        ..Default::default()
    })
    .await?;
    let mut responses = ContainersClient::new(ch)
        .exec(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let _raw = if tty && stdin {
        Some(RawMode::enter()?)
    } else {
        None
    };
    if stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx
                            .send(ExecRequest {
                                close_stdin: true,
                                ..Default::default()
                            })
                            .await;
                        return;
                    }
                    Ok(n) => {
                        let msg = ExecRequest {
                            stdin: buf[..n].to_vec(),
                            ..Default::default()
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        forward_resizes(tx.clone(), |size| ExecRequest {
            resize: Some(size),
            ..Default::default()
        });
    }
    drop(tx);
    let mut code = 0;
    while let Some(r) = responses.message().await? {
        if !r.stdout.is_empty() {
            let mut o = std::io::stdout().lock();
            o.write_all(&r.stdout)?;
            o.flush()?;
        }
        if !r.stderr.is_empty() {
            let mut e = std::io::stderr().lock();
            e.write_all(&r.stderr)?;
            e.flush()?;
        }
        if let Some(c) = r.exit_code {
            code = c;
        }
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

pub async fn top(ch: Channel, name: Option<String>) -> Result<ExitCode> {
    let names = match name {
        Some(n) => vec![n],
        None => {
            let list = ContainerGroupsClient::new(ch.clone())
                .list(ListGroupsRequest::default())
                .await?
                .into_inner();
            list.groups
                .into_iter()
                .filter_map(|g| g.spec.map(|s| s.name))
                .collect()
        }
    };
    let mut m = MetricsClient::new(ch);
    let mut t = Table::new(&["GROUP", "CONTAINER", "CPU(cores)", "MEMORY(working set)"]);
    for n in names {
        let gm = m
            .get_metrics(GetMetricsRequest { group: n.clone() })
            .await?
            .into_inner();
        let cpu = |c: &Option<CpuMetrics>| {
            format!(
                "{}m",
                c.as_ref().map_or(0, |c| c.usage_nano_cores / 1_000_000)
            )
        };
        let mem =
            |x: &Option<MemoryMetrics>| output::bytes(x.as_ref().map_or(0, |x| x.working_set));
        t.row(vec![n.clone(), "*".into(), cpu(&gm.cpu), mem(&gm.memory)]);
        for c in &gm.containers {
            t.row(vec![n.clone(), c.name.clone(), cpu(&c.cpu), mem(&c.memory)]);
        }
        // A vm group: the VM's own memory on the host, apart from the containers'.
        if gm.sandbox_overhead_bytes > 0 {
            t.row(vec![
                n.clone(),
                "(vm overhead)".into(),
                "-".into(),
                output::bytes(gm.sandbox_overhead_bytes),
            ]);
        }
    }
    print!("{}", t.render());
    Ok(ExitCode::SUCCESS)
}

pub async fn events(ch: Channel, group: String, follow: bool) -> Result<ExitCode> {
    let mut client = NodeClient::new(ch);
    let row = |e: Event| {
        let who = if e.container.is_empty() {
            e.group
        } else {
            format!("{}/{}", e.group, e.container)
        };
        vec![
            output::age(&e.last_timestamp),
            e.r#type,
            e.reason,
            who,
            e.count.to_string(),
            e.message,
        ]
    };
    // The history first, as one aligned table.
    let mut past = client
        .events(EventsRequest {
            group: group.clone(),
            follow: false,
        })
        .await?
        .into_inner();
    let mut t = Table::new(&["LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"]);
    let mut last = 0;
    while let Some(e) = past.message().await? {
        last = last.max(e.revision);
        t.row(row(e));
    }
    print!("{}", t.render());
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    // The follow stream replays the history too; skip what was printed.
    let mut stream = client
        .events(EventsRequest {
            group,
            follow: true,
        })
        .await?
        .into_inner();
    while let Some(e) = stream.message().await? {
        if e.revision <= last {
            continue;
        }
        let mut t = Table::new(&[]);
        t.row(row(e));
        print!("{}", t.render_body());
        std::io::stdout().flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
