//! Running one probe or lifecycle-hook action and saying how it went: `exec` inside the
//! container through the shim (its namespaces, cgroup, user and env, as `ecictl exec`),
//! `httpGet` and `tcpSocket` over a connection made inside the group's network namespace
//! (on a thread of its own: see `eci_netns::connect`), never from a tokio worker. For a
//! vm group that connection leaves the netns from `br0`'s host-only probe source to the
//! guest (`eci_netns::vm`), so the same code serves both sandboxes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use eci_api::v1::{ExecAction, HttpGetAction, LifecycleHandler, Probe, TcpSocketAction};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{GroupCtx, Supervisor};

/// Most output of an action kept for an event (kubelet keeps 10 KiB).
const OUTPUT_LIMIT: usize = 10 * 1024;

/// One action of a probe or hook.
#[derive(Clone, Copy)]
pub(crate) enum Action<'a> {
    Exec(&'a ExecAction),
    Http(&'a HttpGetAction),
    Tcp(&'a TcpSocketAction),
}

impl<'a> Action<'a> {
    /// The action of a probe (validation makes sure there is exactly one).
    pub(crate) fn of_probe(p: &'a Probe) -> Option<Self> {
        if let Some(e) = &p.exec {
            return Some(Action::Exec(e));
        }
        if let Some(h) = &p.http_get {
            return Some(Action::Http(h));
        }
        p.tcp_socket.as_ref().map(Action::Tcp)
    }

    /// The action of a lifecycle hook.
    pub(crate) fn of_hook(h: &'a LifecycleHandler) -> Option<Self> {
        if let Some(e) = &h.exec {
            return Some(Action::Exec(e));
        }
        h.http_get.as_ref().map(Action::Http)
    }
}

/// How an action went: `output` is what it printed (exec) or why it failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub ok: bool,
    pub output: String,
    /// The action could not run because the group's shim does not answer: no verdict
    /// on the container (kubelet's "unknown"), so probes do not count it.
    pub unknown: bool,
}

impl Outcome {
    fn fail(output: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            output: output.into(),
            unknown: false,
        }
    }
}

impl Supervisor {
    /// Runs `action` for container `container` of the group, within `timeout`.
    pub(crate) async fn run_action(
        &self,
        ctx: &GroupCtx,
        container: &str,
        action: Action<'_>,
        timeout: Duration,
    ) -> Outcome {
        match action {
            Action::Exec(e) => self.run_exec(ctx, container, &e.command, timeout).await,
            Action::Http(h) => {
                let host = match self.target_host(ctx, &h.host) {
                    Ok(ip) => ip,
                    Err(o) => return o,
                };
                let addr = SocketAddr::new(host, h.port as u16);
                let netns = self.netns_of(&ctx.id);
                let https = h.scheme == "HTTPS";
                let work = async {
                    let stream = connect(netns, addr, timeout).await?;
                    if https {
                        https_get(stream, addr, h, timeout).await
                    } else {
                        http_get(stream, addr, h).await
                    }
                };
                let scheme = if https { "https" } else { "http" };
                match tokio::time::timeout(timeout, work).await {
                    Ok(Ok(o)) => o,
                    Ok(Err(msg)) => Outcome::fail(msg),
                    Err(_) => Outcome::fail(format!(
                        "Get \"{scheme}://{addr}{}\": timed out after {}",
                        path_of(h),
                        humantime::format_duration(timeout)
                    )),
                }
            }
            Action::Tcp(t) => {
                let host = match self.target_host(ctx, &t.host) {
                    Ok(ip) => ip,
                    Err(o) => return o,
                };
                let addr = SocketAddr::new(host, t.port as u16);
                match connect(self.netns_of(&ctx.id), addr, timeout).await {
                    Ok(_) => Outcome {
                        ok: true,
                        ..Default::default()
                    },
                    Err(msg) => Outcome::fail(msg),
                }
            }
        }
    }

    /// The address an HTTP or TCP action connects to: its `host` (an IP address), else
    /// the group's first IPv4 address, else loopback (a group with only `lo`; the
    /// connection is made inside the group's namespace, so loopback reaches it).
    ///
    /// A vm group's containers are in the guest: the group netns reaches them only at
    /// the guest's IPv4 addresses (from `br0`'s probe source, `eci_netns::vm`), never
    /// over its own loopback, so a loopback target fails naming why.
    fn target_host(&self, ctx: &GroupCtx, host: &str) -> Result<IpAddr, Outcome> {
        let ip = self.target_host_any(ctx, host)?;
        if ctx.spec.sandbox == "vm" && ip.is_loopback() {
            return Err(Outcome::fail(format!(
                "{ip} is the guest's loopback, which the host cannot reach: a vm group's \
                 httpGet and tcpSocket actions reach the guest at its IPv4 address (the \
                 group needs a network), or use exec"
            )));
        }
        Ok(ip)
    }

    fn target_host_any(&self, ctx: &GroupCtx, host: &str) -> Result<IpAddr, Outcome> {
        if !host.is_empty() {
            return host
                .parse()
                .map_err(|_| Outcome::fail(format!("host {host:?} is not an IP address")));
        }
        let ips = self
            .groups
            .get(&ctx.name)
            .ok()
            .and_then(|g| g.status)
            .map(|s| s.ip_addresses)
            .unwrap_or_default();
        Ok(ips
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .find(IpAddr::is_ipv4)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)))
    }

    /// `command` in the container; success is exit code 0. Past `timeout` the process
    /// is killed and the action failed.
    async fn run_exec(
        &self,
        ctx: &GroupCtx,
        container: &str,
        command: &[String],
        timeout: Duration,
    ) -> Outcome {
        let session = match self
            .start_exec(ctx, container, command.to_vec(), false, false, None)
            .await
        {
            Ok(s) => s,
            Err(e @ crate::error::Error::Unavailable(_)) => {
                return Outcome {
                    unknown: true,
                    ..Outcome::fail(e.to_string())
                };
            }
            Err(e) => return Outcome::fail(e.to_string()),
        };
        let (stdout, stderr, exit) = (session.stdout, session.stderr, session.exit);
        let read = async {
            let (mut a, b) = tokio::join!(read_capped(stdout), async {
                match stderr {
                    Some(r) => read_capped(r).await,
                    None => Vec::new(),
                }
            });
            a.extend(b);
            a
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(bytes) => {
                let output = String::from_utf8_lossy(&bytes).trim_end().to_string();
                match exit.wait().await {
                    Ok(0) => Outcome {
                        ok: true,
                        output,
                        ..Default::default()
                    },
                    Ok(code) => Outcome::fail(if output.is_empty() {
                        format!("command {command:?} exited with {code}")
                    } else {
                        output
                    }),
                    Err(e) => Outcome::fail(e.to_string()),
                }
            }
            Err(_) => {
                exit.kill().await;
                // Reaped in the background: the pipes may be held by a child.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), exit.wait()).await;
                });
                Outcome::fail(format!(
                    "command {command:?} timed out after {}",
                    humantime::format_duration(timeout)
                ))
            }
        }
    }
}

/// Reads `r` to its end, keeping the first [`OUTPUT_LIMIT`] bytes (the rest is read and
/// dropped, so the writer never blocks on a full pipe).
async fn read_capped(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// A TCP connection to `addr` made inside the group's network namespace.
async fn connect(
    netns: std::path::PathBuf,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, String> {
    let std = tokio::task::spawn_blocking(move || eci_netns::connect::tcp(&netns, addr, timeout))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| crate::error::chain(&e))?;
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(std).map_err(|e| e.to_string())
}

fn path_of(h: &HttpGetAction) -> &str {
    if h.path.is_empty() { "/" } else { &h.path }
}

/// The bytes of a `GET` for `h`; a header that would split the request is refused.
fn request(addr: SocketAddr, h: &HttpGetAction) -> Result<String, String> {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: eci-probe/1.0\r\nAccept: */*\r\nConnection: close\r\n",
        path_of(h)
    );
    for hd in &h.http_headers {
        // Validation refuses these; a stored spec from before that rule is not trusted.
        if [&hd.name, &hd.value]
            .iter()
            .any(|s| s.contains(['\r', '\n', '\0']))
        {
            return Err(format!("header {:?} holds a line break", hd.name));
        }
        req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
    }
    req.push_str("\r\n");
    Ok(req)
}

/// One `GET` over `stream`; success is a status from 200 to 399 (as kubelet; redirects
/// are not followed).
async fn http_get(
    mut stream: tokio::net::TcpStream,
    addr: SocketAddr,
    h: &HttpGetAction,
) -> Result<Outcome, String> {
    let req = request(addr, h)?;
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get \"http://{addr}{}\": {e}", path_of(h)))?;
    let body = read_capped(&mut stream).await;
    verdict(&body, addr, h)
}

/// One `GET` over TLS (certificate not verified, as kubelet): see [`super::https`].
async fn https_get(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    h: &HttpGetAction,
    timeout: Duration,
) -> Result<Outcome, String> {
    let req = request(addr, h)?;
    let stream = stream.into_std().map_err(|e| e.to_string())?;
    let body = tokio::task::spawn_blocking(move || {
        super::https::exchange(stream, req.as_bytes(), timeout, OUTPUT_LIMIT)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("Get \"https://{addr}{}\": {e}", path_of(h)))?;
    verdict(&body, addr, h)
}

/// Success for a status from 200 to 399.
fn verdict(body: &[u8], addr: SocketAddr, h: &HttpGetAction) -> Result<Outcome, String> {
    let text = String::from_utf8_lossy(body);
    let code: u16 = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"http://{addr}{}\": no HTTP status line", path_of(h)))?;
    if (200..400).contains(&code) {
        Ok(Outcome {
            ok: true,
            ..Default::default()
        })
    } else {
        Ok(Outcome::fail(format!(
            "HTTP probe failed with statuscode: {code}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_status_decides_and_headers_cannot_split_the_request() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.expect("read");
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /ready HTTP/1.1\r\n"), "{req}");
                assert!(req.contains("X-A: b\r\n"), "{req}");
                let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.expect("write");
            }
        });
        let h = HttpGetAction {
            path: "/ready".into(),
            port: addr.port() as i32,
            http_headers: vec![eci_api::v1::HttpHeader {
                name: "X-A".into(),
                value: "b".into(),
            }],
            ..Default::default()
        };
        let s = tokio::net::TcpStream::connect(addr).await.expect("c");
        assert!(http_get(s, addr, &h).await.expect("get").ok);
        let s = tokio::net::TcpStream::connect(addr).await.expect("c");
        let o = http_get(s, addr, &h).await.expect("get");
        assert!(!o.ok && o.output.contains("503"), "{o:?}");
        server.await.expect("server");
        let mut bad = h.clone();
        bad.http_headers[0].value = "x\r\nEvil: 1".into();
        assert!(request(addr, &bad).is_err());
    }
}
