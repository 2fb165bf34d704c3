//! A simulated VPC for the network tests (issue 8): a "vpc" network namespace holding a
//! Linux bridge with the router's addresses, and host-side links that act as ENIs —
//! veth ends left in the host namespace (with a chosen MAC) whose peers are ports of the
//! vpc bridge. This kernel has no `dummy`, `ipvlan` or `vlan` links, so a veth end is the
//! closest thing to a cloud ENI: a host link with a MAC, wired into a shared L2 segment.
//!
//! Everything is named uniquely (pid + counter; link names ≤ 15 bytes) so tests run in
//! parallel, and [`Vpc`]'s `Drop` removes the namespace, the bridge and every ENI wherever
//! it went (deleting a veth peer in the vpc namespace destroys the pair, so an ENI left in
//! a group's namespace goes too). Tests may use `ip` here; the product may not.
//!
//! Anything that enters a namespace does so on a thread of its own ([`in_netns`]), never
//! on a tokio worker.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A number unique in this process (names add the pid).
pub fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Runs `ip ARGS`; its stdout, or an error with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a new OS thread that has joined the network namespace at `netns` (a
/// `/run/netns/NAME` file or `/proc/PID/ns/net`). Sockets it makes stay in that
/// namespace after the thread ends.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(netns).with_context(|| format!("{}", netns.display()))?;
    let path = netns.to_path_buf();
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", path.display()))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {} panicked", netns.display()))?
}

/// Whether a TCP connection to `addr` from the namespace `netns` succeeds within `timeout`.
pub fn connect_tcp_in(netns: &Path, addr: SocketAddr, timeout: Duration) -> bool {
    in_netns(netns, move || {
        TcpStream::connect_timeout(&addr, timeout).is_ok()
    })
    .unwrap_or(false)
}

/// What a server at `addr` sends before closing (read for at most `timeout`), from the
/// namespace `netns`; None when the connection fails.
pub fn banner_in(netns: &Path, addr: SocketAddr, timeout: Duration) -> Option<String> {
    in_netns(netns, move || -> Option<String> {
        let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while buf.len() < 4096 {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) if !buf.is_empty() => break,
                Err(_) => return None,
            }
        }
        Some(String::from_utf8_lossy(&buf).trim().to_string())
    })
    .ok()
    .flatten()
}

/// Polls [`banner_in`] until it returns `want` or `timeout` passes; returns the last
/// answer (None when nothing ever answered).
pub fn wait_banner_in(
    netns: &Path,
    addr: SocketAddr,
    want: &str,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let got = banner_in(netns, addr, Duration::from_secs(1));
        if got.as_deref() == Some(want) {
            return got;
        }
        if got.is_some() {
            last = got;
        }
        if Instant::now() > deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP server that writes `banner` and a newline to every client, then closes; it
/// listens in a given namespace and stops when dropped.
pub struct BannerServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BannerServer {
    /// Listens on `addr` inside `netns` (None: this thread's namespace).
    pub fn start(netns: Option<&Path>, addr: SocketAddr, banner: &str) -> Result<Self> {
        let listener = match netns {
            Some(ns) => in_netns(ns, move || TcpListener::bind(addr))??,
            None => TcpListener::bind(addr)?,
        };
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let line = format!("{banner}\n");
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(line.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(BannerServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for BannerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `eci-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("eci-{tag}-{}-{}", std::process::id(), next_seq());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A link as `ip -j addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub mac: String,
    /// The `UP` flag (administratively up).
    pub up: bool,
    pub mtu: u64,
    /// Addresses with prefix, link-local ones left out.
    pub addresses: Vec<String>,
}

/// The links of the namespace at `netns` (None: the host's), through `nsenter` + `ip`.
pub fn links_in(netns: Option<&Path>) -> Result<Vec<LinkInfo>> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let out = cmd
        .args(["-j", "addr", "show"])
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip -j addr: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|l| LinkInfo {
            name: l["ifname"].as_str().unwrap_or_default().to_string(),
            mac: l["address"].as_str().unwrap_or_default().to_string(),
            up: l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            mtu: l["mtu"].as_u64().unwrap_or_default(),
            addresses: l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["scope"] != "link")
                .map(|a| {
                    format!(
                        "{}/{}",
                        a["local"].as_str().unwrap_or_default(),
                        a["prefixlen"]
                    )
                })
                .collect(),
        })
        .collect())
}

/// The host-namespace link named `name`, if there is one.
pub fn host_link(name: &str) -> Option<LinkInfo> {
    links_in(None).ok()?.into_iter().find(|l| l.name == name)
}

/// Whether one ICMP echo from the namespace `netns` to `addr` is answered within 2 s
/// (the host's busybox `ping`, run in that namespace through `nsenter`).
pub fn ping_in(netns: &Path, addr: IpAddr) -> bool {
    let family = if addr.is_ipv6() { "-6" } else { "-4" };
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["busybox", "ping", family, "-c", "1", "-W", "2"])
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The address part of `10.1.0.5/24` (or of an address with no prefix).
pub fn addr_of(cidr: &str) -> IpAddr {
    cidr.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|_| panic!("not an address: {cidr}"))
}

/// One simulated ENI: a host link with a chosen MAC whose peer is a vpc bridge port, and
/// the addresses the test gives the group that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni {
    /// Its name in the host namespace (the name it must come back with).
    pub name: String,
    /// Lowercase `02:ec:…`.
    pub mac: String,
    /// `10.<n>.0.<host>/24`.
    pub ipv4: String,
    pub gateway_v4: String,
    /// `fdec:<n>::<host>/64`.
    pub ipv6: String,
    pub gateway_v6: String,
    /// The peer's name inside the vpc namespace.
    pub peer: String,
}

impl Eni {
    /// The IPv4 address without its prefix.
    pub fn ip4(&self) -> IpAddr {
        addr_of(&self.ipv4)
    }

    /// The IPv6 address without its prefix.
    pub fn ip6(&self) -> IpAddr {
        addr_of(&self.ipv6)
    }
}

/// The simulated VPC: a namespace with bridge `br0` carrying the router addresses
/// `10.<n>.0.1/24` and `fdec:<n>::1/64`, and the ENIs made with [`Vpc::eni`].
pub struct Vpc {
    pub ns: Netns,
    /// The VPC's number: its subnets are `10.<n>.0.0/24` and `fdec:<n>::/64`.
    pub n: u32,
    next_host: AtomicU32,
    enis: Mutex<Vec<Eni>>,
}

impl Vpc {
    pub fn new() -> Result<Self> {
        let ns = Netns::new("vpc")?;
        let n = (std::process::id().wrapping_mul(31).wrapping_add(next_seq())) % 200 + 20;
        let vpc = Vpc {
            ns,
            n,
            next_host: AtomicU32::new(10),
            enis: Mutex::new(Vec::new()),
        };
        vpc.ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        vpc.ns
            .ip(&["addr", "add", &vpc.router_v4_cidr(), "dev", "br0"])?;
        vpc.ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", vpc.router_v6()),
            "dev",
            "br0",
            "nodad",
        ])?;
        vpc.ns.ip(&["link", "set", "br0", "up"])?;
        Ok(vpc)
    }

    /// The router's IPv4 address (every ENI's IPv4 gateway).
    pub fn router_v4(&self) -> String {
        format!("10.{}.0.1", self.n)
    }

    fn router_v4_cidr(&self) -> String {
        format!("{}/24", self.router_v4())
    }

    /// The router's IPv6 address (every ENI's IPv6 gateway).
    pub fn router_v6(&self) -> String {
        format!("fdec:{:x}::1", self.n)
    }

    /// `/run/netns/<vpc>`.
    pub fn path(&self) -> PathBuf {
        self.ns.path()
    }

    /// A new ENI: a host link `en<pid><seq>` with MAC `02:ec:…`, down, whose peer is up on
    /// the bridge; with the next free addresses of the VPC.
    pub fn eni(&self) -> Result<Eni> {
        let seq = next_seq();
        let pid = std::process::id();
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        if host > 250 {
            bail!("vpc {}: out of addresses", self.ns.name);
        }
        let eni = Eni {
            name: format!("en{:05}{:04x}", pid % 100_000, seq & 0xffff),
            mac: format!(
                "02:ec:{:02x}:{:02x}:{:02x}:{:02x}",
                (pid >> 8) & 0xff,
                pid & 0xff,
                (seq >> 8) & 0xff,
                seq & 0xff
            ),
            ipv4: format!("10.{}.0.{host}/24", self.n),
            gateway_v4: self.router_v4(),
            ipv6: format!("fdec:{:x}::{host:x}/64", self.n),
            gateway_v6: self.router_v6(),
            peer: format!("p{seq}"),
        };
        // Recorded first, so Drop removes a half-made pair too.
        self.enis.lock().expect("enis").push(eni.clone());
        ip(&[
            "link",
            "add",
            &eni.name,
            "address",
            &eni.mac,
            "type",
            "veth",
            "peer",
            "name",
            &eni.peer,
            "netns",
            &self.ns.name,
        ])?;
        self.ns
            .ip(&["link", "set", &eni.peer, "master", "br0", "up"])?;
        Ok(eni)
    }

    /// Runs a command inside the vpc namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec")
    }

    /// Whether a client in the vpc namespace connects to `addr:port` within `timeout`.
    pub fn connect_tcp(&self, addr: IpAddr, port: u16, timeout: Duration) -> bool {
        connect_tcp_in(&self.path(), SocketAddr::new(addr, port), timeout)
    }

    /// Polls [`Vpc::connect_tcp`] until it connects or `timeout` passes.
    pub fn wait_connect(&self, addr: IpAddr, port: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.connect_tcp(addr, port, Duration::from_secs(1)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What a server at `addr:port` sends, read from the vpc namespace.
    pub fn banner(&self, addr: IpAddr, port: u16) -> Option<String> {
        banner_in(
            &self.path(),
            SocketAddr::new(addr, port),
            Duration::from_secs(2),
        )
    }

    /// Polls [`Vpc::banner`] until it is `want` (up to `timeout`); returns the last answer.
    pub fn wait_banner(
        &self,
        addr: IpAddr,
        port: u16,
        want: &str,
        timeout: Duration,
    ) -> Option<String> {
        wait_banner_in(&self.path(), SocketAddr::new(addr, port), want, timeout)
    }

    /// Whether the vpc namespace gets an answer to a ping of `addr`.
    pub fn ping(&self, addr: IpAddr) -> bool {
        ping_in(&self.path(), addr)
    }

    /// A [`BannerServer`] in the vpc namespace on every address, port `port`.
    pub fn serve(&self, port: u16, banner: &str) -> Result<BannerServer> {
        BannerServer::start(
            Some(&self.path()),
            SocketAddr::from(([0, 0, 0, 0], port)),
            banner,
        )
    }

    /// Names of the ENIs made so far.
    pub fn enis(&self) -> Vec<Eni> {
        self.enis.lock().expect("enis").clone()
    }
}

impl Drop for Vpc {
    fn drop(&mut self) {
        for eni in self.enis.lock().map(|e| e.clone()).unwrap_or_default() {
            // Deleting the peer destroys the pair wherever the ENI end went (the host, a
            // group's namespace, renamed); deleting by name covers a pair whose peer
            // never reached the vpc namespace.
            let _ = self.ns.ip(&["link", "del", &eni.peer]);
            let _ = ip(&["link", "del", &eni.name]);
        }
        let _ = self.ns.ip(&["link", "del", "br0"]);
        // Netns drops after this and deletes the namespace.
    }
}

/// The agent's dev network for one test: a bridge name and an IPv4 subnet of its own, as
/// agent configuration, and a guard that removes the bridge the agent made (in case the
/// agent did not get to it).
pub struct DevNet {
    pub bridge: String,
    /// `172.<a>.<b>.0/24`.
    pub subnet: String,
    /// The first address of the subnet: the bridge's (the groups' gateway).
    pub gateway: String,
}

impl DevNet {
    pub fn new() -> Self {
        let seq = next_seq();
        let pid = std::process::id();
        let k = (pid.wrapping_mul(7).wrapping_add(seq)) % 3000;
        DevNet {
            bridge: format!("ecid{:05}{:03x}", pid % 100_000, seq & 0xfff),
            subnet: format!("172.{}.{}.0/24", 20 + k / 250, k % 250),
            gateway: format!("172.{}.{}.1", 20 + k / 250, k % 250),
        }
    }

    /// The agent configuration (TOML) that turns dev networking on with this bridge and
    /// subnet. The one place the tests name these keys: keep it equal to
    /// `agent.example.toml`.
    pub fn config(&self) -> String {
        format!(
            "[network]\nfleet_host = false\nbridge = \"{}\"\ndev_subnet = \"{}\"\n",
            self.bridge, self.subnet
        )
    }
}

impl Default for DevNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DevNet {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
