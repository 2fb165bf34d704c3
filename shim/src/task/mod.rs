//! The containerd shim v2 Task API over ttrpc, for the containers of one group, split
//! by concern:
//!
//! - [`service`]: the Task API handlers (create, start, wait, kill, delete, exec…).
//! - [`procs`]: the process table (containers and execs, by id and exec id).
//! - [`exits`]: following a process to its exit and recording how it ended.
//! - [`io`]: a process's stdio (log pipes, FIFOs, a terminal) and starting it.
//! - [`bundle`]: what the OCI bundle says (rootfs overlay, cgroup limits).
//! - [`attach`]: a connection on the attach socket (a container's stdio).

mod attach;
mod bundle;
mod exits;
mod io;
mod procs;
mod service;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use ttrpc::{Code, Error as TtrpcError, Status as RpcStatus};

use crate::reaper::Reaper;
use crate::seccomp_profiles::SeccompProfiles;

pub use attach::{Attachable, serve as serve_attach};
pub(crate) use exits::write_durably;
pub use exits::{EXIT_FILE, ExitRecord};
use procs::Proc;

fn err(code: Code, msg: impl Into<String>) -> TtrpcError {
    TtrpcError::RpcStatus(RpcStatus {
        code: EnumOrUnknown::new(code),
        message: msg.into(),
        ..Default::default()
    })
}

fn timestamp(rfc3339: &str) -> MessageField<Timestamp> {
    let t = humantime::parse_rfc3339(rfc3339).unwrap_or(SystemTime::UNIX_EPOCH);
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

/// Group-wide settings of this shim.
pub struct GroupConfig {
    pub dir: PathBuf,
    pub cgroup: String,
    pub seccomp: SeccompProfiles,
    /// Rotation of the containers' log files.
    pub log_rotation: crate::logs::Rotation,
    /// The group's user namespace range, when it has one (pinned at `ns/user`).
    pub userns: Option<eci_runtime::userns::IdRange>,
}

/// The Task service.
pub struct TaskService {
    group: GroupConfig,
    reaper: Reaper,
    procs: Mutex<HashMap<(String, String), Arc<Proc>>>,
    pub shutdown: tokio::sync::Notify,
}

impl TaskService {
    pub fn new(group: GroupConfig, reaper: Reaper) -> Self {
        TaskService {
            group,
            reaper,
            procs: Mutex::new(HashMap::new()),
            shutdown: tokio::sync::Notify::new(),
        }
    }
}
