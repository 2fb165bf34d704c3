//! ecictl: the operator CLI of the ECI node agent. Talks gRPC to the agent's local Unix
//! socket (root or the socket group), or to its TCP port with a client certificate.

mod attach;
mod conn;
mod groups;
mod images;
mod node;
mod output;
mod streams;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ecictl",
    version,
    about = "Operate the ECI node agent on this host"
)]
struct Cli {
    #[command(flatten)]
    conn: conn::ConnArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a group from a file, or update it when it exists (YAML or JSON, camelCase).
    Apply {
        /// Group spec file; "-" reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List groups, or show one.
    Get {
        name: Option<String>,
        /// Output: json, yaml or wide (default: a table).
        #[arg(short = 'o', long = "output")]
        output: Option<output::Format>,
        /// Label selector: "app=web,tier!=db".
        #[arg(short = 'l', long = "selector", default_value = "")]
        selector: String,
        /// After listing, keep printing changes.
        #[arg(short = 'w', long = "watch")]
        watch: bool,
    },
    /// Show a group in detail, with its events.
    Describe { name: String },
    /// Delete a group: preStop, SIGTERM, grace period, SIGKILL, teardown.
    Delete {
        name: String,
        /// Seconds between SIGTERM and SIGKILL (overrides the spec).
        #[arg(long, allow_negative_numbers = true)]
        grace_period: Option<i64>,
        /// Kill at once, skipping preStop and the grace period.
        #[arg(long)]
        force: bool,
        /// Return only when the group is gone.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Restart every container of a group.
    Restart { name: String },
    /// Print a container's logs.
    Logs {
        name: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        /// Last N lines.
        #[arg(long)]
        tail: Option<i64>,
        /// Only lines newer than this ("10s", "5m", "1h").
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        #[arg(long)]
        timestamps: bool,
        /// The previous run of a restarted container.
        #[arg(short = 'p', long)]
        previous: bool,
    },
    /// Run a command in a running container.
    Exec {
        /// Pass standard input.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Allocate a terminal.
        #[arg(short = 't', long)]
        tty: bool,
        name: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Attach to a container's main process: its output, and with -i its input
    /// (the container needs stdin: true). With -it, ctrl-p ctrl-q detaches; detaching
    /// leaves the container running.
    Attach {
        /// Send standard input.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// The local terminal is raw (for a container with tty: true).
        #[arg(short = 't', long)]
        tty: bool,
        name: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
    },
    /// CPU and memory of groups and their containers.
    Top { name: Option<String> },
    /// Events of the node (all groups), oldest first.
    Events {
        /// Keep printing new events.
        #[arg(short = 'w', long = "watch")]
        watch: bool,
        /// Only this group's events.
        #[arg(long)]
        group: Option<String>,
    },
    /// Images in the node's content store.
    Images {
        #[command(subcommand)]
        cmd: images::ImagesCmd,
    },
    /// Image caches.
    Cache {
        #[command(subcommand)]
        cmd: images::CacheCmd,
    },
    /// The node: capacity, allocatable, in use, versions.
    Node {
        #[arg(short = 'o', long = "output")]
        output: Option<output::Format>,
    },
    /// Wait for a condition on a group: --for phase=Running, or --for delete.
    Wait {
        name: String,
        #[arg(long = "for")]
        condition: String,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // A blocked read of standard input (exec -i) must not keep the process alive.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", output::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ch = conn::connect(&cli.conn).await?;
    match cli.cmd {
        Cmd::Apply { file } => groups::apply(ch, &file).await,
        Cmd::Get {
            name,
            output,
            selector,
            watch,
        } => groups::get(ch, name, output, &selector, watch).await,
        Cmd::Describe { name } => groups::describe(ch, &name).await,
        Cmd::Delete {
            name,
            grace_period,
            force,
            wait,
            timeout,
        } => groups::delete(ch, &name, grace_period, force, wait.then_some(timeout)).await,
        Cmd::Restart { name } => groups::restart(ch, &name).await,
        Cmd::Wait {
            name,
            condition,
            timeout,
        } => groups::wait(ch, &name, &condition, timeout).await,
        Cmd::Logs {
            name,
            container,
            follow,
            tail,
            since,
            timestamps,
            previous,
        } => {
            let req = eci_api::v1::LogsRequest {
                group: name,
                container: container.unwrap_or_default(),
                tail_lines: tail.unwrap_or(-1),
                since_seconds: since.map_or(0, |d| d.as_secs() as i64),
                follow,
                timestamps,
                previous,
            };
            streams::logs(ch, req).await
        }
        Cmd::Exec {
            stdin,
            tty,
            name,
            container,
            command,
        } => streams::exec(ch, name, container.unwrap_or_default(), command, stdin, tty).await,
        Cmd::Attach {
            stdin,
            tty,
            name,
            container,
        } => attach::attach(ch, name, container.unwrap_or_default(), stdin, tty).await,
        Cmd::Top { name } => streams::top(ch, name).await,
        Cmd::Events { watch, group } => streams::events(ch, group.unwrap_or_default(), watch).await,
        Cmd::Images { cmd } => images::images(ch, cmd).await,
        Cmd::Cache { cmd } => images::cache(ch, cmd).await,
        Cmd::Node { output } => node::node(ch, output).await,
    }
}
