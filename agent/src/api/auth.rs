//! Who may use the local socket: root, or members of the configured group. Checked from
//! the peer's kernel credentials (SO_PEERCRED) on every call, on top of the socket's file
//! mode, so a mis-set mode does not open the agent to every local user.

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// Builds the interceptor for the Unix-socket server.
pub fn peer_check(
    allowed_gid: Option<u32>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or_else(|| Status::permission_denied("peer credentials unavailable"))?;
        if cred.uid() == 0 {
            return Ok(req);
        }
        if let Some(gid) = allowed_gid
            && (cred.gid() == gid || cred.pid().is_some_and(|pid| in_group(pid, gid)))
        {
            return Ok(req);
        }
        Err(Status::permission_denied(format!(
            "uid {} is neither root nor a member of the agent's socket group",
            cred.uid()
        )))
    }
}

/// Supplementary groups of a process, from /proc (SO_PEERCRED has only the primary gid).
fn in_group(pid: i32, gid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
    })
}
