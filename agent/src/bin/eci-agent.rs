//! eci-agent: the node agent daemon. Usually started by systemd (eci-agent.service).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use eci_agent::config::{self, Config};

/// The ECI node agent.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). A missing default file means all defaults.
    #[arg(long, short = 'c', default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Ignore any config file and run on the embedded defaults (plus flags).
    #[arg(long, conflicts_with = "config")]
    no_config: bool,
    /// Relocate every state, run and log path under this directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// API Unix socket (overrides api.socket).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// TCP listen address for mutual-TLS clients (overrides api.tcp_listen).
    #[arg(long)]
    tcp_listen: Option<String>,
    /// Log filter (overrides log.level).
    #[arg(long)]
    log_level: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let explicit = args.config.as_os_str() != config::DEFAULT_PATH;
    let mut cfg = if args.no_config {
        Config::default()
    } else {
        Config::load(&args.config, explicit)?
    };
    if let Some(root) = &args.root {
        cfg.relocate(root);
    }
    if let Some(s) = args.socket {
        cfg.api.socket = s;
    }
    if let Some(t) = args.tcp_listen {
        cfg.api.tcp_listen = t;
    }
    if let Some(l) = args.log_level {
        cfg.log.level = l;
    }
    if args.print_config {
        print!("{}", toml::to_string(&cfg)?);
        return Ok(());
    }
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let res = rt.block_on(eci_agent::daemon::run(cfg));
    if let Err(e) = &res {
        tracing::error!(error = format!("{e:#}"), "agent failed");
    }
    res
}

/// Logs to stderr. Under systemd (JOURNAL_STREAM set) journald adds timestamps and
/// colours are off; `log.format = "json"` gives one JSON object per line.
fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cfg.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        b.json().init();
    } else if journald {
        b.with_ansi(false).without_time().init();
    } else {
        b.with_ansi(false).init();
    }
}
