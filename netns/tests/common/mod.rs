//! Helpers for the privileged link-layer tests: unique names, netns pins and links that
//! clean up on drop (even when a test fails), and running code inside a netns.
//! Tests may shell out to `ip`; the product never does.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the test may touch the kernel (we are root); prints why it skips otherwise.
pub fn root() -> bool {
    let ok = nix::unistd::geteuid().is_root();
    if !ok {
        eprintln!("skipped: needs root");
    }
    ok
}

/// A unique number for this process and call, for names that stay unique across
/// parallel tests and test binaries.
pub fn unique() -> u32 {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    ((std::process::id() & 0xffff) << 8) | (n & 0xff)
}

/// A unique link name `<prefix><6 hex>` (prefix at most 3 characters: fits IFNAMSIZ).
pub fn name(prefix: &str, u: u32) -> String {
    format!("{prefix}{u:06x}")
}

/// Runs `ip args…`; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip args…` and ignores the outcome (cleanup).
pub fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// `ip -j args…` parsed.
pub fn ip_json(args: &[&str]) -> serde_json::Value {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    let out = ip(&a);
    if out.trim().is_empty() {
        return serde_json::Value::Array(vec![]);
    }
    serde_json::from_str(&out).expect("ip -j output")
}

/// A named netns (`ip netns add`), pinned at /run/netns/<name>; deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = format!("eci-t-{}", self::name(prefix, unique()));
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        }
    }

    /// `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip_json(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip_quiet(&["netns", "del", &self.name]);
    }
}

/// A host link deleted on drop, wherever it is not (a missing link is fine).
pub struct HostLinkGuard(pub String);

impl Drop for HostLinkGuard {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.0]);
    }
}

/// Runs `f` on a thread inside the netns pinned at `path`.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(path).expect("netns pin");
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A TCP listener bound inside the netns at `path` on `addr` (port 0), accepting one
/// connection in the background and answering "pong"; returns the bound address.
pub fn serve_once(path: Option<&Path>, addr: std::net::IpAddr) -> std::net::SocketAddr {
    use std::io::Write;
    let bind = move || std::net::TcpListener::bind((addr, 0)).expect("bind");
    let listener = match path {
        Some(p) => in_netns(p, bind),
        None => bind(),
    };
    let local = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"pong");
        }
    });
    local
}

/// Connects from inside the netns at `path` to `to` and reads the answer.
pub fn call(path: &Path, to: std::net::SocketAddr) -> Result<String, String> {
    use std::io::Read;
    in_netns(path, move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    })
}
