//! The plumbing shared by the link-layer verbs: a dedicated OS thread with its own
//! current-thread runtime and route-netlink sockets bound to the host netns and, when
//! asked, to a group's netns; and small typed helpers over `rtnetlink` requests.
//!
//! Why a thread per call: `setns` changes only the calling thread, and a netlink socket
//! binds to the namespace of the thread that creates it. The thread opens the host socket
//! first, then enters the group's namespace and opens the second one, does the work and
//! ends, so no thread of the caller (a tokio worker, say) is ever left inside a tenant's
//! namespace.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{
    BridgePortState, InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::eni::MacAddress;

/// Errors setting up the network thread, shared by the link, attach and bridge verbs.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error("opening network namespace {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("opening a route-netlink socket in {netns}")]
    Socket {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("starting the network thread's runtime")]
    Runtime(#[source] io::Error),
    #[error("starting the network thread")]
    Spawn(#[source] io::Error),
    #[error("the network thread panicked")]
    Panicked,
}

/// What the network thread hands the work: a socket in the host netns and, when a
/// group netns was named (and exists), one in it plus its open file (for moves).
pub(crate) struct Sockets {
    pub host: Handle,
    /// The host netns, opened by the thread before it left it (a move target).
    pub host_ns: File,
    pub group: Option<Group>,
}

/// The group side of [`Sockets`].
pub(crate) struct Group {
    pub handle: Handle,
    pub ns: File,
    pub path: String,
}

/// Which group netns the thread should open.
pub(crate) enum Target<'a> {
    None,
    /// Must exist.
    Required(&'a Path),
    /// May be missing (a pin already removed, or no longer a mounted nsfs file): the
    /// work then gets `group: None`.
    Optional(&'a Path),
}

/// Runs `work` on a dedicated OS thread with the sockets of [`Sockets`], and returns
/// its result. Blocking.
pub(crate) fn run<T, E, F, Fut>(target: Target<'_>, work: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<ThreadError> + Send + 'static,
    F: FnOnce(Sockets) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
{
    let (path, required): (Option<PathBuf>, bool) = match target {
        Target::None => (None, false),
        Target::Required(p) => (Some(p.to_path_buf()), true),
        Target::Optional(p) => (Some(p.to_path_buf()), false),
    };
    let group_file = match &path {
        None => None,
        Some(p) => match File::open(p) {
            Ok(f) => Some((f, p.display().to_string())),
            Err(e) if !required && e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ThreadError::Open {
                    path: p.display().to_string(),
                    source,
                }
                .into());
            }
        },
    };
    std::thread::Builder::new()
        .name("eci-netlink".into())
        .spawn(move || -> Result<T, E> {
            let host_ns =
                File::open("/proc/thread-self/ns/net").map_err(|source| ThreadError::Open {
                    path: "/proc/thread-self/ns/net".into(),
                    source,
                })?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ThreadError::Runtime)?;
            rt.block_on(async move {
                let host = connect("the host network namespace")?;
                let group = match group_file {
                    None => None,
                    Some((ns, path)) => match setns(&ns, CloneFlags::CLONE_NEWNET) {
                        Ok(()) => Some(Group {
                            handle: connect(&path)?,
                            ns,
                            path,
                        }),
                        // Not (or no longer) a network namespace file: an unmounted pin.
                        Err(nix::Error::EINVAL) if !required => None,
                        Err(source) => return Err(ThreadError::Enter { path, source }.into()),
                    },
                };
                work(Sockets {
                    host,
                    host_ns,
                    group,
                })
                .await
            })
        })
        .map_err(ThreadError::Spawn)?
        .join()
        .map_err(|_| ThreadError::Panicked)?
}

/// Opens a route-netlink socket in the calling thread's netns and drives it on the
/// current runtime.
fn connect(netns: &str) -> Result<Handle, ThreadError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| ThreadError::Socket {
        netns: netns.to_string(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The kernel's errno of a failed request as an `io::Error`, so messages read
/// "File exists (os error 17)" rather than a netlink dump.
pub(crate) fn io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// One link as read from the kernel.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddress>,
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<String>,
    /// IFLA_LINK: for a veth, its peer's ifindex (in the peer's netns).
    pub peer: Option<u32>,
    /// IFLA_MASTER: the bridge a port is enslaved to.
    pub master: Option<u32>,
    pub loopback: bool,
    /// IFLA_IFALIAS: free text the kernel keeps with the link (a plug record, say).
    pub alias: Option<String>,
    /// A bridge port in the forwarding state (IFLA_BRPORT_STATE).
    pub forwarding: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            peer: None,
            master: None,
            loopback: m.header.flags.contains(LinkFlags::Loopback),
            alias: None,
            forwarding: false,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => {
                    if let Ok(b) = <[u8; 6]>::try_from(a.as_slice()) {
                        link.mac = Some(MacAddress(b));
                    }
                }
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Link(i) => link.peer = Some(*i),
                LinkAttribute::Controller(i) => link.master = Some(*i),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                link.forwarding = port.iter().any(|p| {
                                    matches!(p, InfoBridgePort::State(BridgePortState::Forwarding))
                                });
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

/// Every link of the socket's netns.
pub(crate) async fn links(h: &Handle) -> io::Result<Vec<Link>> {
    let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await.map_err(io)?;
    Ok(msgs.iter().map(Link::from_message).collect())
}

/// The link whose ifindex is `index` and MAC `mac`, else the one with MAC `mac`.
pub(crate) fn by_index_or_mac(links: &[Link], index: u32, mac: MacAddress) -> Option<&Link> {
    links
        .iter()
        .find(|l| l.index == index && l.mac == Some(mac))
        .or_else(|| links.iter().find(|l| l.mac == Some(mac) && !l.loopback))
}

/// Applies a link change.
pub(crate) async fn set(h: &Handle, msg: LinkMessage) -> io::Result<()> {
    h.link().set(msg).execute().await.map_err(io)
}

/// A change of the link with ifindex `index`.
pub(crate) fn change(index: u32) -> LinkMessageBuilder<LinkUnspec> {
    LinkUnspec::new_with_index(index)
}

/// Moves link `index` into the netns open as `ns`, named `name` there (the kernel renames
/// it during the move: a moved link arrives down).
pub(crate) async fn move_to(h: &Handle, index: u32, ns: RawFd, name: &str) -> io::Result<()> {
    set(h, change(index).setns_by_fd(ns).name(name).build()).await
}

/// Puts link `index` down, then renames it (the kernel refuses to rename a link that is up).
pub(crate) async fn rename(h: &Handle, link: &Link, name: &str) -> io::Result<()> {
    if link.up {
        set(h, change(link.index).down().build()).await?;
    }
    set(h, change(link.index).name(name).build()).await
}

/// An address of a link: the IP and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr {
    pub ip: IpAddr,
    pub prefix: u8,
}

fn addr_of(m: &AddressMessage) -> Option<Addr> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
    // elsewhere. Prefer LOCAL when present, as iproute2 does.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    local.or(address).map(|ip| Addr {
        ip,
        prefix: m.header.prefix_len,
    })
}

/// The addresses of link `index`, with the messages needed to delete them.
pub(crate) async fn addresses(h: &Handle, index: u32) -> io::Result<Vec<(Addr, AddressMessage)>> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(io)?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| addr_of(&m).map(|a| (a, m)))
        .collect())
}

/// Deletes every address of link `index`.
pub(crate) async fn flush(h: &Handle, index: u32) -> io::Result<()> {
    for (_, msg) in addresses(h, index).await? {
        match h.address().del(msg).execute().await.map_err(io) {
            // Deleting the primary IPv4 address also removes its secondaries.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            r => r?,
        }
    }
    Ok(())
}

pub(crate) fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// Makes link `index` hold exactly `want` (plus its IPv6 link-local address): removes
/// the others and adds what is missing, IPv6 ones with IFA_F_NODAD so they are usable at
/// once instead of after duplicate address detection.
pub(crate) async fn converge_addresses(h: &Handle, index: u32, want: &[Addr]) -> io::Result<()> {
    let have = addresses(h, index).await?;
    for (a, msg) in &have {
        if !is_link_local(a.ip) && !want.contains(a) {
            match h.address().del(msg.clone()).execute().await.map_err(io) {
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                r => r?,
            }
        }
    }
    for w in want {
        if have.iter().any(|(a, _)| a == w) {
            continue;
        }
        let mut req = h.address().add(index, w.ip, w.prefix);
        if w.ip.is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.replace().execute().await.map_err(io)?;
    }
    Ok(())
}

/// Adds or replaces the default route via `gw` out of link `index`; `onlink` when the
/// gateway is outside the link's prefixes.
pub(crate) async fn default_route(
    h: &Handle,
    index: u32,
    gw: IpAddr,
    onlink: bool,
) -> io::Result<()> {
    let msg = match gw {
        IpAddr::V4(gw) => {
            let b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index);
            if onlink { b.onlink() } else { b }.build()
        }
        IpAddr::V6(gw) => {
            let b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index);
            if onlink { b.onlink() } else { b }.build()
        }
    };
    h.route().add(msg).replace().execute().await.map_err(io)
}

/// The raw fd of an open netns file, for IFLA_NET_NS_FD.
pub(crate) fn fd(f: &File) -> RawFd {
    f.as_raw_fd()
}

/// A veth pair: `name` in the socket's netns, its peer named `peer` created directly in
/// the netns open as `peer_ns`, so there is never a moment where the peer sits in the
/// host under a temporary name.
pub(crate) async fn add_veth(
    h: &Handle,
    name: &str,
    peer: &str,
    peer_ns: RawFd,
    peer_mac: Option<MacAddress>,
) -> io::Result<()> {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth};
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .setns_by_fd(peer_ns);
    if let Some(mac) = peer_mac {
        peer_msg = peer_msg.address(mac.0.to_vec());
    }
    let peer_msg = peer_msg.build();
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    h.link().add(msg).execute().await.map_err(io)
}

/// Deletes link `index`.
pub(crate) async fn delete(h: &Handle, index: u32) -> io::Result<()> {
    h.link().del(index).execute().await.map_err(io)
}

/// What a group's `eth0` should carry: MTU, addresses and default routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Eth0 {
    pub mtu: Option<u32>,
    pub v4: Option<ipnet::Ipv4Net>,
    pub v4_gw: Option<std::net::Ipv4Addr>,
    pub v6: Option<ipnet::Ipv6Net>,
    pub v6_gw: Option<std::net::Ipv6Addr>,
}

/// Brings link `link` to the state `cfg` describes: MTU, up, exactly the configured
/// addresses, default routes via the gateways. Each step checks or replaces, so running
/// it again after a partial run converges. On error, returns the step that failed.
pub(crate) async fn configure(
    h: &Handle,
    link: &Link,
    cfg: &Eth0,
) -> Result<(), (&'static str, io::Error)> {
    let mut want = Vec::new();
    if let Some(n) = cfg.v4 {
        want.push(Addr {
            ip: IpAddr::V4(n.addr()),
            prefix: n.prefix_len(),
        });
    }
    if let Some(n) = cfg.v6 {
        want.push(Addr {
            ip: IpAddr::V6(n.addr()),
            prefix: n.prefix_len(),
        });
    }
    let mut gws = Vec::new();
    gws.extend(cfg.v4_gw.map(IpAddr::V4));
    gws.extend(cfg.v6_gw.map(IpAddr::V6));
    configure_all(h, link, cfg.mtu, &want, &gws).await
}

/// As [`configure`], with any number of addresses and gateways: MTU, up, exactly `want`
/// (plus the IPv6 link-local address), a default route via each gateway (`onlink` when
/// no address of its family covers it and it is not link-local).
pub(crate) async fn configure_all(
    h: &Handle,
    link: &Link,
    mtu: Option<u32>,
    want: &[Addr],
    gateways: &[IpAddr],
) -> Result<(), (&'static str, io::Error)> {
    let mut b = change(link.index).up();
    if let Some(mtu) = mtu.filter(|m| *m != link.mtu) {
        b = b.mtu(mtu);
    }
    set(h, b.build())
        .await
        .map_err(|e| ("setting MTU and up on", e))?;
    converge_addresses(h, link.index, want)
        .await
        .map_err(|e| ("setting the addresses of", e))?;
    for gw in gateways {
        let covered = want.iter().any(|a| covers(a, *gw));
        let onlink = !covered && !is_link_local(*gw);
        let what = if gw.is_ipv4() {
            "adding the IPv4 default route via"
        } else {
            "adding the IPv6 default route via"
        };
        default_route(h, link.index, *gw, onlink)
            .await
            .map_err(|e| (what, e))?;
    }
    Ok(())
}

/// Whether the prefix of `a` holds `ip`.
fn covers(a: &Addr, ip: IpAddr) -> bool {
    match (a.ip, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            ipnet::Ipv4Net::new(n, a.prefix).is_ok_and(|net| net.contains(&i))
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            ipnet::Ipv6Net::new(n, a.prefix).is_ok_and(|net| net.contains(&i))
        }
        _ => false,
    }
}

/// The links that carry a default route of the main table (IPv4 or IPv6; every next hop
/// of a multipath route), by ifindex: the host's uplinks.
pub(crate) async fn default_route_links(h: &Handle) -> io::Result<Vec<u32>> {
    use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteType};
    let mut out = Vec::new();
    for msg in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut routes = h.route().get(msg).execute();
        while let Some(r) = routes.try_next().await.map_err(io)? {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if r.header.destination_prefix_length != 0
                || table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => out.push(*i),
                    RouteAttribute::MultiPath(hops) => {
                        out.extend(hops.iter().map(|n| n.interface_index))
                    }
                    _ => {}
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The gateways of the main table's default routes out of link `index` (IPv4 and
/// IPv6), in the kernel's order.
pub(crate) async fn default_gateways(h: &Handle, index: u32) -> io::Result<Vec<IpAddr>> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};
    let mut out = Vec::new();
    for msg in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut routes = h.route().get(msg).execute();
        while let Some(r) = routes.try_next().await.map_err(io)? {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if r.header.destination_prefix_length != 0
                || table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || r.header.kind != RouteType::Unicast
                || !r.attributes.contains(&RouteAttribute::Oif(index))
            {
                continue;
            }
            for a in &r.attributes {
                let gw = match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(v4)) => IpAddr::V4(*v4),
                    RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => IpAddr::V6(*v6),
                    _ => continue,
                };
                if !out.contains(&gw) {
                    out.push(gw);
                }
            }
        }
    }
    Ok(out)
}
