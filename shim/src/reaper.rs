//! The shim is a child subreaper: container processes (reparented to it when their
//! `init` parent exits) are reaped here, and their exit statuses handed to whoever
//! waits for that pid. An exit that arrives before anyone asks is kept until asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended: exit code, or 128 + signal as shells report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub signal: Option<i32>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, Exit>,
}

/// Exit statuses by pid.
#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD.
    pub fn start() -> std::io::Result<Self> {
        let r = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                me.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(r)
    }

    fn reap_all(&self) {
        loop {
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit { code, signal: None }),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    Exit {
                        code: 128 + sig as i32,
                        signal: Some(sig as i32),
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let (pid, exit) = exit;
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match st.waiting.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    st.unclaimed.insert(pid.as_raw(), exit);
                }
            }
        }
    }

    /// A future that resolves when `pid` exits (at once if it already did).
    pub fn subscribe(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.unclaimed.remove(&pid) {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => {
                st.waiting.insert(pid, tx);
            }
        }
        rx
    }

    /// Forgets an exit nobody will ask about (the short-lived init helper).
    pub fn forget(&self, pid: i32) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.unclaimed.remove(&pid).is_none() {
            let (tx, _rx) = oneshot::channel();
            st.waiting.insert(pid, tx);
        }
    }
}
