//! The node's resources: capacity from the host (or config), allocatable after
//! reservations, and what admitted groups use.

use std::path::Path;

use eci_runtime::HostFacts;

use crate::config::NodeConfig;
use crate::quantity::{parse_cpu_millis, parse_memory_bytes};
use crate::sizes::Size;

/// Errors reading the host's resources.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no MemTotal line in /proc/meminfo")]
    NoMemTotal,
    #[error("config key {key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("probing the host")]
    Host(#[from] eci_runtime::host::HostError),
}

/// What the agent knows about its node, fixed at start.
#[derive(Debug, Clone)]
pub struct Node {
    pub hostname: String,
    /// GPU devices groups may claim.
    pub gpus: u32,
    pub capacity: Size,
    pub allocatable: Size,
    pub facts: HostFacts,
}

impl Node {
    /// Reads the host and applies the `[node]` config.
    pub fn detect(cfg: &NodeConfig) -> Result<Self, NodeError> {
        let cpu = if cfg.cpu.is_empty() {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
            n * 1000
        } else {
            parse_cpu_millis(&cfg.cpu).map_err(|e| NodeError::Config {
                key: "node.cpu",
                message: e.to_string(),
            })?
        };
        let memory = if cfg.memory.is_empty() {
            host_memory()?
        } else {
            parse_memory_bytes(&cfg.memory).map_err(|e| NodeError::Config {
                key: "node.memory",
                message: e.to_string(),
            })?
        };
        let reserved_cpu = parse_cpu_millis(&cfg.reserved_cpu).map_err(|e| NodeError::Config {
            key: "node.reserved_cpu",
            message: e.to_string(),
        })?;
        let reserved_mem =
            parse_memory_bytes(&cfg.reserved_memory).map_err(|e| NodeError::Config {
                key: "node.reserved_memory",
                message: e.to_string(),
            })?;
        let capacity = Size {
            cpu_millis: cpu,
            memory_bytes: memory,
        };
        let allocatable = Size {
            cpu_millis: cpu.saturating_sub(reserved_cpu),
            memory_bytes: memory.saturating_sub(reserved_mem),
        };
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let facts = HostFacts::probe(Path::new("/sys/fs/cgroup"))?;
        let gpus = u32::try_from(cfg.gpus).unwrap_or_else(|_| host_gpus());
        Ok(Node {
            hostname,
            gpus,
            capacity,
            allocatable,
            facts,
        })
    }
}

/// NVIDIA devices: /dev/nvidia0, /dev/nvidia1… (not nvidiactl, nvidia-uvm).
fn host_gpus() -> u32 {
    let Ok(dir) = std::fs::read_dir("/dev") else {
        return 0;
    };
    let is_gpu = |name: &str| {
        name.strip_prefix("nvidia")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    dir.filter_map(Result::ok)
        .filter(|e| is_gpu(&e.file_name().to_string_lossy()))
        .count() as u32
}

fn host_memory() -> Result<u64, NodeError> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|source| NodeError::Read {
        path: "/proc/meminfo",
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or(NodeError::NoMemTotal)
}
