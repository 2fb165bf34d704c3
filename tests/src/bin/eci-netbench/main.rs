//! Per-group network setup benchmark (issue 8): for 1 group and for 20 groups at once,
//! the time from nothing to a group namespace with its network ready — namespace created
//! (`lo` up), interface in it as `eth0` with IPv4 and IPv6 addresses and default routes,
//! the security-group nftables table loaded — and back (teardown, namespace removed),
//! done by
//!
//! 1. ours: `eci-netns` moving a simulated ENI (a veth end whose peer sits on a "vpc"
//!    bridge, tests/src/vpc.rs) into the namespace and loading the table over netlink
//!    ([`ours::setup_ours`]);
//! 2. the Debian `containernetworking-plugins` `bridge` + `host-local`, and
//! 3. `macvlan` (on a veth parent) + `host-local`, each invoked exactly as a CNI runtime
//!    does (binary, `CNI_*` environment, configuration on stdin), followed by the same
//!    table loaded with `nft -f` inside the namespace.
//!
//! Both sides create the namespace with the same in-process code (`netns.rs`). Rounds
//! alternate the order of the three; one warm-up round per group count is not counted
//! (it also lets the `bridge` plugin make its bridge). Prints per-group mean and median
//! with the median of each step, and ratios ours / CNI (goal ≤ 0.3), also against the
//! CNI plugin alone (netns + ADD, no table).
//!
//! Run (root, `apt-get install containernetworking-plugins`):
//! `eci-netbench [--rounds N] [--groups 1,20] [--dad]` (default 10 rounds; `--dad` leaves
//! IPv6 duplicate address detection on in the group namespaces, as a CNI runtime gets it
//! by default — the agent never waits for it).

mod cni;
mod netns;
mod ours;
mod ruleset;

use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eci_netns::security_group::Rule;
use eci_tests::vpc::{Eni, Vpc, ip};

use cni::CniNet;
use ours::{Attached, GroupNet};

/// The goal: ours at most this fraction of CNI's time per group.
const GOAL: f64 = 0.3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Bridge,
    Macvlan,
}

impl Side {
    const ALL: [Side; 3] = [Side::Ours, Side::Bridge, Side::Macvlan];

    fn label(self) -> &'static str {
        match self {
            Side::Ours => "ours (eci-netns)",
            Side::Bridge => "cni bridge",
            Side::Macvlan => "cni macvlan",
        }
    }
}

/// What the benchmark sets up once and removes at the end, whatever happens.
struct Setup {
    vpc: Vpc,
    enis: Vec<Eni>,
    bridge: CniNet,
    macvlan: CniNet,
    bridge_name: String,
    macvlan_parent: String,
    _data_dir: tempfile::TempDir,
    rules: Vec<Rule>,
    nft: String,
    /// Leave IPv6 DAD on in the group namespaces.
    dad: bool,
}

impl Setup {
    fn new(max_groups: usize, dad: bool) -> Result<Self> {
        let pid = std::process::id();
        let vpc = Vpc::new()?;
        let enis = (0..max_groups)
            .map(|_| vpc.eni())
            .collect::<Result<Vec<_>>>()?;
        let data_dir = tempfile::Builder::new().prefix("eci-netbench-").tempdir()?;
        let bridge_name = format!("cnb{}", pid % 100_000);
        let macvlan_parent = format!("mvp{}", pid % 100_000);
        let rules = ruleset::rules();
        let nft = ruleset::nft_text(&rules);
        let setup = Setup {
            bridge: CniNet::bridge(
                "eci-bench-bridge",
                &bridge_name,
                240,
                &data_dir.path().join("bridge"),
            ),
            macvlan: CniNet::macvlan(
                "eci-bench-macvlan",
                &macvlan_parent,
                241,
                &data_dir.path().join("macvlan"),
            ),
            vpc,
            enis,
            bridge_name,
            macvlan_parent,
            _data_dir: data_dir,
            rules,
            nft,
            dad,
        };
        // The macvlan parent: a veth whose peer is a port of the vpc bridge.
        let peer = format!("mvq{}", pid % 100_000);
        ip(&[
            "link",
            "add",
            &setup.macvlan_parent,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &setup.vpc.ns.name,
        ])?;
        ip(&["link", "set", &setup.macvlan_parent, "up"])?;
        setup
            .vpc
            .ns
            .ip(&["link", "set", &peer, "master", "br0", "up"])?;
        Ok(setup)
    }

    fn cni(&self, side: Side) -> &CniNet {
        if side == Side::Macvlan {
            &self.macvlan
        } else {
            &self.bridge
        }
    }

    fn group<'a>(&'a self, i: usize, netns: &'a std::path::Path) -> GroupNet<'a> {
        let e = &self.enis[i];
        GroupNet {
            netns,
            mac: &e.mac,
            ipv4: &e.ipv4,
            ipv4_gateway: &e.gateway_v4,
            ipv6: &e.ipv6,
            ipv6_gateway: &e.gateway_v6,
            rules: &self.rules,
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge_name]);
        let _ = ip(&["link", "del", &self.macvlan_parent]);
    }
}

/// One group's setup, split into its steps.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    netns: Duration,
    /// Interface moved/made and configured (ours: with the table).
    net: Duration,
    /// The table alone (CNI side; ours loads it inside `net`).
    nft: Duration,
    total: Duration,
}

#[derive(Debug, Default)]
struct Figures {
    add: Vec<Sample>,
    del: Vec<Duration>,
    wall: Vec<Duration>,
}

/// What the teardown of one group needs.
struct Made {
    path: PathBuf,
    id: String,
    attached: Option<Attached>,
}

fn setup_one(s: &Setup, side: Side, i: usize, name: &str) -> (Result<Sample>, Option<Made>) {
    let t0 = Instant::now();
    let path = match netns::create(name, s.dad) {
        Ok(p) => p,
        Err(e) => return (Err(e), None),
    };
    let t1 = Instant::now();
    let mut made = Made {
        path,
        id: name.to_string(),
        attached: None,
    };
    let step = |made: &mut Made| -> Result<Sample> {
        let mut sample = Sample {
            netns: t1 - t0,
            ..Default::default()
        };
        match side {
            Side::Ours => {
                made.attached = Some(ours::setup_ours(&s.group(i, &made.path))?);
                sample.net = t1.elapsed();
            }
            Side::Bridge | Side::Macvlan => {
                s.cni(side).add(&made.id, &made.path)?;
                let t2 = Instant::now();
                sample.net = t2 - t1;
                cni::load_nft(&made.path, &s.nft)?;
                sample.nft = t2.elapsed();
            }
        }
        sample.total = t0.elapsed();
        Ok(sample)
    };
    let r = step(&mut made);
    (r, Some(made))
}

fn teardown_one(s: &Setup, side: Side, i: usize, made: Made) -> Result<Duration> {
    let t0 = Instant::now();
    let r = match (side, made.attached) {
        (Side::Ours, Some(a)) => ours::teardown_ours(&s.group(i, &made.path), a),
        (Side::Ours, None) => Ok(()),
        _ => s.cni(side).del(&made.id, &made.path),
    };
    let gone = netns::delete(&made.path);
    r?;
    gone?;
    Ok(t0.elapsed())
}

/// `groups` groups set up at once, then torn down at once.
fn round(s: &Setup, side: Side, groups: usize, round: usize) -> Result<Figures> {
    let pid = std::process::id();
    let barrier = Barrier::new(groups);
    let started = std::sync::Mutex::new(Vec::new());
    let results: Vec<(Result<Sample>, Option<Made>, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..groups)
            .map(|i| {
                let (barrier, started) = (&barrier, &started);
                scope.spawn(move || {
                    barrier.wait();
                    started.lock().expect("lock").push(Instant::now());
                    let name = format!("enb{pid}-{side:?}-{round}-{i}");
                    let (r, made) = setup_one(s, side, i, &name);
                    (r, made, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("setup thread"))
            .collect()
    });
    let first = started
        .into_inner()
        .expect("lock")
        .into_iter()
        .min()
        .context("no group started")?;
    let last = results
        .iter()
        .map(|r| r.2)
        .max()
        .context("no group ended")?;
    let mut fig = Figures {
        wall: vec![last - first],
        ..Default::default()
    };
    let mut error = None;
    let mut to_remove = Vec::new();
    for (i, (r, made, _)) in results.into_iter().enumerate() {
        match r {
            Ok(sample) => fig.add.push(sample),
            Err(e) => error = error.or(Some(e)),
        }
        if let Some(m) = made {
            to_remove.push((i, m));
        }
    }
    let n = to_remove.len().max(1);
    let barrier = Barrier::new(n);
    let dels: Vec<Result<Duration>> = std::thread::scope(|scope| {
        let handles: Vec<_> = to_remove
            .into_iter()
            .map(|(i, m)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    teardown_one(s, side, i, m)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("teardown thread"))
            .collect()
    });
    if let Some(e) = error {
        return Err(e);
    }
    for d in dels {
        fig.del.push(d?);
    }
    Ok(fig)
}

fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.iter().sum::<Duration>() / v.len() as u32
}

fn p50(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> String {
    if a.is_zero() || b.is_zero() {
        return "n/a".into();
    }
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

struct Args {
    rounds: usize,
    groups: Vec<usize>,
    dad: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        rounds: 10,
        groups: vec![1, 20],
        dad: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => {
                a.rounds = it
                    .next()
                    .context("--rounds needs a number")?
                    .parse()
                    .context("--rounds")?;
                if !(1..=1000).contains(&a.rounds) {
                    bail!("--rounds: 1 to 1000");
                }
            }
            "--groups" => {
                a.groups = it
                    .next()
                    .context("--groups needs a list such as 1,20")?
                    .split(',')
                    .map(|g| g.parse::<usize>().context("--groups"))
                    .collect::<Result<_>>()?;
                if a.groups.iter().any(|g| !(1..=200).contains(g)) {
                    bail!("--groups: each 1 to 200");
                }
            }
            "--dad" => a.dad = true,
            "-h" | "--help" => {
                println!("eci-netbench [--rounds N] [--groups 1,20] [--dad]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("eci-netbench needs root (namespaces, links, nftables)");
    }
    for p in ["bridge", "macvlan", "host-local"] {
        let path = PathBuf::from(cni::CNI_PATH).join(p);
        if !path.exists() {
            bail!(
                "{} is missing: apt-get install containernetworking-plugins",
                path.display()
            );
        }
    }
    let max = args.groups.iter().copied().max().unwrap_or(1);
    let setup = Setup::new(max, args.dad)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "eci-netbench: {} rounds (+1 warm-up) per group count, IPv6 DAD {}, {} cores, load {}",
        args.rounds,
        if args.dad { "on" } else { "off" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut ours_error: Option<String> = None;
    let mut table: Vec<(usize, Side, Figures)> = Vec::new();
    for &groups in &args.groups {
        let mut figs: Vec<Figures> = Side::ALL.iter().map(|_| Figures::default()).collect();
        for r in 0..=args.rounds {
            for k in 0..Side::ALL.len() {
                let idx = (r + k) % Side::ALL.len();
                let side = Side::ALL[idx];
                if side == Side::Ours && ours_error.is_some() {
                    continue;
                }
                match round(&setup, side, groups, r) {
                    Ok(f) if r > 0 => {
                        figs[idx].add.extend(f.add);
                        figs[idx].del.extend(f.del);
                        figs[idx].wall.extend(f.wall);
                    }
                    Ok(_) => {}
                    Err(e) if side == Side::Ours => ours_error = Some(format!("{e:#}")),
                    Err(e) => return Err(e).context(side.label()),
                }
            }
        }
        for (side, f) in Side::ALL.into_iter().zip(figs) {
            table.push((groups, side, f));
        }
    }

    println!(
        "\nper group, ms       groups  add mean  add p50 | netns p50  net p50  nft p50 |  del mean  del p50 | wall p50"
    );
    for (groups, side, f) in &table {
        if f.add.is_empty() {
            println!("{:<18} {groups:>7}  n/a", side.label());
            continue;
        }
        let total: Vec<Duration> = f.add.iter().map(|s| s.total).collect();
        let part = |g: fn(&Sample) -> Duration| p50(&f.add.iter().map(g).collect::<Vec<_>>());
        println!(
            "{:<18} {groups:>7}  {:>8}  {:>7} | {:>9}  {:>7}  {:>7} |  {:>8}  {:>7} | {:>8}",
            side.label(),
            ms(mean(&total)),
            ms(p50(&total)),
            ms(part(|s| s.netns)),
            ms(part(|s| s.net)),
            if *side == Side::Ours {
                "(in net)".to_string()
            } else {
                ms(part(|s| s.nft))
            },
            ms(mean(&f.del)),
            ms(p50(&f.del)),
            ms(p50(&f.wall)),
        );
    }

    println!(
        "\nours / CNI per group (goal <= {GOAL}x)      mean    p50  | vs plugin only (netns + ADD): mean   p50"
    );
    for &groups in &args.groups {
        let of = |side: Side| {
            table
                .iter()
                .find(|(g, s, _)| *g == groups && *s == side)
                .map(|(_, _, f)| f)
        };
        let Some(o) = of(Side::Ours) else { continue };
        let o_total: Vec<Duration> = o.add.iter().map(|s| s.total).collect();
        for side in [Side::Bridge, Side::Macvlan] {
            let Some(c) = of(side) else { continue };
            let total: Vec<Duration> = c.add.iter().map(|s| s.total).collect();
            let plugin: Vec<Duration> = c.add.iter().map(|s| s.netns + s.net).collect();
            println!(
                "{groups:>3} groups, ours / {:<20}  {:>6} {:>6}  |                               {:>6} {:>6}",
                side.label(),
                ratio(mean(&o_total), mean(&total)),
                ratio(p50(&o_total), p50(&total)),
                ratio(mean(&o_total), mean(&plugin)),
                ratio(p50(&o_total), p50(&plugin)),
            );
        }
    }
    if let Some(e) = ours_error {
        println!("\nours: n/a — {e}");
    }
    drop(setup);
    Ok(())
}
