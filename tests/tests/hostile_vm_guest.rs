//! Hostile tenant against `sandbox: vm` (issue 15; docs/security.md, "The vm sandbox").
//!
//! - Inside a vm container: only the group's processes, none of the guest's runtime
//!   (`eci-guest`) or the host's; a minimal `/dev`; the guest's block devices (the
//!   layer disks, read-only), its virtio ports (`eci.ctl`, `eci.io`), its serial
//!   console, `/dev/mem` and `/dev/kmsg` cannot be opened even after `mknod` (the
//!   guest applies the same device rules as the host); no host filesystem is shared
//!   into the guest; writes to the image land in the writable layer and the host's
//!   erofs images stay byte for byte the same. QEMU itself runs with no capability,
//!   `no_new_privs` and its seccomp filter.
//! - On the dev bridge: a vm container with `CAP_NET_RAW` writes forged frames from
//!   the guest (another source IP the victim trusts, another source MAC, gratuitous
//!   ARP for the gateway and the victim, router advertisements): the port guard drops them (a genuine frame
//!   over the same raw path arrives), the victim's neighbour entry keeps the gateway's
//!   MAC, the victim's closed port stays closed and the metadata service is out of
//!   reach while an ordinary address behind the host answers; `ip addr add`/`ip link
//!   set address` are refused (no `NET_ADMIN` in the guest either).
//! - The io channel: containers writing as fast as they can (lines, and one endless
//!   line without a newline) do not stall exec in the same group, a quiet container of
//!   the same group, another group, or the agent; their logs rotate within the limits.
//! - Capabilities the namespaced kind refuses are refused for `sandbox: vm` too.
//!
//! Needs root and the guest image (`ECI_TEST_GUEST_DIR`, see `vm_sandbox.rs`); skipped
//! without it unless `CI` is set. Under TCG everything in the guest is slow: long waits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use eci_tests::netspec::{Net, SgRule, group_netns, wait_ip_addresses};
use eci_tests::scenario::{attack_agent_with, busybox_agent_with, group, group_id, logs};
use eci_tests::vm::{VM_WAIT, delete_vm, guest_dir, qemu_of, vm_toml, wait_log_vm, wait_vm_usable};
use eci_tests::vpc::{BannerServer, DevNet, Netns, host_link, ip, links_in, next_seq};
use eci_tests::{Agent, text, wait_for};

fn apply_ok(agent: &Agent, name: &str, spec: &str) {
    let out = agent.apply(name, spec);
    assert!(out.status.success(), "apply {name}: {}", text(&out));
}

/// Every layer's erofs image of the agent's state, with its bytes.
fn erofs_images(agent: &Agent) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = agent.root().join("var/lib/eci/layers");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "erofs"))
        .map(|p| {
            let b = std::fs::read(&p).expect("erofs image");
            (p, b)
        })
        .collect();
    out.sort();
    out
}

/// Lines of `log` starting with `prefix`, the prefix cut.
fn tagged<'a>(log: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    log.lines().filter_map(move |l| l.strip_prefix(prefix))
}

/// What the container tries, as a shell script: every line it prints is either data
/// the test checks (`procs:`, `comm:`, `dev:`, `ro:`) or `tried:<what>` followed, when
/// the attack worked, by `BREACH:<what>`.
const INSIDE: &str = r#"
echo "procs:$(ls /proc | grep -c '^[0-9]')"
for p in /proc/[0-9]*; do echo "comm:$(cat $p/comm 2>/dev/null)"; done
for d in /dev/*; do echo "dev:${d#/dev/}"; done
for b in /sys/block/*; do [ -e "$b/ro" ] && echo "ro:${b##*/}=$(cat $b/ro)"; done
echo "fs:$(grep -c -E ' (9p|virtiofs|nfs|nfs4|fuse[.a-z]*) ' /proc/mounts)"
# The guest's disks (the layer images), by their numbers in /proc/partitions.
tail -n +3 /proc/partitions | while read maj min blocks name; do
  [ -n "$name" ] || continue
  echo "tried:blk-$name"
  for at in /tmp /dev; do
    mknod $at/blk-x b $maj $min 2>/dev/null || continue
    head -c 512 $at/blk-x >/dev/null 2>&1 && echo "BREACH:blk-read-$name-$at"
    (echo x > $at/blk-x) 2>/dev/null && echo "BREACH:blk-write-$name-$at"
    rm -f $at/blk-x
  done
done
# The guest's virtio ports (eci.ctl, eci.io): their char device major from /proc/devices.
maj=$(awk '$2 ~ /virtio-portsdev/ {print $1}' /proc/devices)
echo "ports-major:$maj"
for min in 0 1 2 3; do
  [ -n "$maj" ] || break
  mknod /tmp/port-$min c $maj $min 2>/dev/null || { echo "mknod-port:$?"; continue; }
  echo "tried:port-$min"
  (echo '{"kind":"ready"}' > /tmp/port-$min) 2>/dev/null && echo "BREACH:port-write-$min"
  timeout 2 head -c 1 /tmp/port-$min >/dev/null 2>&1 && echo "BREACH:port-read-$min"
  rm -f /tmp/port-$min
done
# The serial console (ttyS0), the hypervisor console, memory and the kernel log.
for n in "ttyS0 4 64" "hvc0 229 0" "mem 1 1" "kmem 1 2" "port 1 4" "kmsg 1 11" "vsock 10 121"; do
  set -- $n
  mknod /tmp/$1 c $2 $3 2>/dev/null || continue
  echo "tried:$1"
  (echo x > /tmp/$1) 2>/dev/null && echo "BREACH:write-$1"
  timeout 2 head -c 1 /tmp/$1 >/dev/null 2>&1 && echo "BREACH:read-$1"
  rm -f /tmp/$1
done
# Writes to the image: they must land in the writable layer only.
echo pwned > /bin/pwned-by-tenant && rm -f /bin/ls && echo "tried:image-write"
echo inside-done
exec sleep 3600
"#;

#[test]
fn a_vm_container_reaches_nothing_of_its_guest_or_the_host() {
    let Some(dir) = guest_dir() else { return };
    let agent = busybox_agent_with(&vm_toml(&dir));
    wait_vm_usable(&agent);
    let images_before = erofs_images(&agent);
    apply_ok(
        &agent,
        "inside",
        &group("inside", "Always", &[("app", INSIDE)], "sandbox: vm\n"),
    );
    let log = wait_log_vm(&agent, "inside", "app", "inside-done");

    // Attacks that worked, if any.
    let breaches: Vec<_> = tagged(&log, "BREACH:").collect();
    assert!(breaches.is_empty(), "{breaches:?}\n{log}");
    // The attacks ran: every disk of the guest and both ports were tried.
    let tried: Vec<_> = tagged(&log, "tried:").collect();
    assert!(
        tried.iter().any(|t| t.starts_with("blk-vd")),
        "no layer disk was tried:\n{log}"
    );
    assert!(
        tried.iter().filter(|t| t.starts_with("port-")).count() >= 2,
        "the virtio ports were not tried:\n{log}"
    );
    for t in ["ttyS0", "mem", "kmsg", "image-write"] {
        assert!(tried.contains(&t), "{t} not tried:\n{log}");
    }

    // Only the group's own processes.
    let procs: u32 = tagged(&log, "procs:")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("procs");
    assert!(procs <= 5, "more than the container's processes: {log}");
    for c in tagged(&log, "comm:") {
        for host in [
            "eci-guest",
            "init",
            "eci-agent",
            "eci-shim",
            "qemu-system-x86",
            "kthreadd",
            "systemd",
        ] {
            assert_ne!(c.trim(), host, "a process of the guest or the host: {log}");
        }
    }
    // A minimal /dev: none of the guest's devices.
    let devs: Vec<_> = tagged(&log, "dev:").collect();
    for d in &devs {
        for bad in [
            "vd", "vport", "hvc", "ttyS", "mem", "kmem", "kmsg", "port", "vsock", "vhost", "kvm",
            "sd", "nvme", "loop", "virtio", "rtc", "hwrng", "cpu", "mapper",
        ] {
            assert!(!d.starts_with(bad), "/dev/{d} in the container: {devs:?}");
        }
    }
    assert!(devs.contains(&"null"), "{devs:?}");
    // The layer disks are read-only in the guest (QEMU's `readonly=on`).
    let ro: Vec<_> = tagged(&log, "ro:")
        .filter(|r| r.starts_with("vd"))
        .collect();
    assert!(!ro.is_empty(), "no layer disk in /sys/block: {log}");
    assert!(ro.iter().all(|r| r.ends_with("=1")), "{ro:?}");
    // No host filesystem shared into the guest.
    assert_eq!(tagged(&log, "fs:").next(), Some("0"), "{log}");

    // An exec sees the same: the group's processes only.
    let out = agent.ctl(&[
        "exec",
        "inside",
        "-c",
        "app",
        "--",
        "sh",
        "-c",
        "cat /proc/[0-9]*/comm",
    ]);
    assert!(out.status.success(), "exec: {}", text(&out));
    let comms = String::from_utf8_lossy(&out.stdout).into_owned();
    // (The script's `timeout` watchers linger as zombies of its `sleep`.)
    for c in comms.lines().filter(|c| *c != "timeout") {
        assert!(
            ["sh", "sleep", "cat"].contains(&c.trim()),
            "a process of the guest or the host: {comms}"
        );
    }

    // QEMU itself, the next wall, holds no capability and runs under its seccomp filter.
    let id = group_id(&agent, "inside");
    let qemu = qemu_of(&id);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", qemu[0])).expect("status");
    for want in [
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapInh:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(status.contains(want), "QEMU: no {want:?} in\n{status}");
    }

    // The host's erofs images are byte for byte what they were; the tenant's writes
    // are in the writable layer on the host, not in the layer directory.
    let images_after = erofs_images(&agent);
    assert!(!images_after.is_empty(), "no erofs image was made");
    for (p, b) in &images_after {
        if let Some((_, before)) = images_before.iter().find(|(q, _)| q == p) {
            assert!(before == b, "{} changed", p.display());
        }
    }
    let layers = agent.root().join("var/lib/eci/layers");
    for e in std::fs::read_dir(&layers).expect("layers").flatten() {
        assert!(
            !e.path().join("bin/pwned-by-tenant").exists(),
            "a tenant's write reached the layer {}",
            e.path().display()
        );
    }
    delete_vm(&agent, "inside");
}

fn rule(proto: &str, port: u16, cidr: &str) -> SgRule {
    SgRule {
        direction: "ingress".into(),
        protocol: proto.into(),
        port_range: format!("{port}/{port}"),
        cidr: cidr.into(),
        policy: "accept".into(),
        priority: 1,
    }
}

/// Links made by a test, deleted when it ends.
struct Links(Vec<String>);

impl Drop for Links {
    fn drop(&mut self) {
        for l in &self.0 {
            let _ = ip(&["link", "del", l]);
        }
    }
}

/// A "metadata service" behind the host: a namespace reached from the host over a veth
/// carrying `169.254.<n>.0/30` and an ordinary `198.18.<n>.0/30`; a banner server in it.
struct Metadata {
    _ns: Netns,
    _links: Links,
    _server: BannerServer,
    n: u32,
    port: u16,
}

fn metadata_service() -> Metadata {
    let md = Netns::new("vmd").expect("netns");
    let n = (std::process::id().wrapping_mul(17).wrapping_add(next_seq())) % 250 + 1;
    let host_end = format!(
        "hv{:05}{:x}",
        std::process::id() % 100_000,
        next_seq() & 0xff
    );
    let links = Links(vec![host_end.clone()]);
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "pm", "netns", &md.name,
    ])
    .expect("veth");
    for (a, b) in [
        (format!("169.254.{n}.1/30"), format!("169.254.{n}.2/30")),
        (format!("198.18.{n}.1/30"), format!("198.18.{n}.2/30")),
    ] {
        ip(&["addr", "add", &a, "dev", &host_end]).expect("addr");
        md.ip(&["addr", "add", &b, "dev", "pm"]).expect("addr");
    }
    ip(&["link", "set", &host_end, "up"]).expect("up");
    md.ip(&["link", "set", "pm", "up"]).expect("up");
    md.ip(&["route", "add", "default", "via", &format!("198.18.{n}.1")])
        .expect("route");
    let server = BannerServer::start(
        Some(&md.path()),
        SocketAddr::from(([0, 0, 0, 0], 0)),
        "md-banner",
    )
    .expect("server");
    let port = server.addr.port();
    Metadata {
        _ns: md,
        _links: links,
        _server: server,
        n,
        port,
    }
}

/// The `lladdr` of `addr` in `ip -j neigh` output, if any.
fn neigh_mac(json: &str, addr: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.as_array()?
        .iter()
        .find(|n| n["dst"] == addr)
        .and_then(|n| n["lladdr"].as_str().map(str::to_string))
}

#[test]
fn a_vm_guest_cannot_spoof_or_reach_what_its_network_forbids() {
    let Some(dir) = guest_dir() else { return };
    let md = metadata_service();
    let dev = DevNet::new();
    let agent = attack_agent_with(&format!("{}{}", dev.config(), vm_toml(&dir)));
    wait_vm_usable(&agent);
    let gw = dev.gateway.clone();
    // The victim, a namespaced group: UDP 9000 trusted from the gateway only, 9001 from
    // the subnet; TCP 9002 serves but its security group keeps it closed. It pings the
    // gateway, so it holds a neighbour entry for it.
    let victim = format!(
        "/eci-attack udp-listen 9000 & /eci-attack udp-listen 9001 & \
         nc -ll -p 9002 -e echo hello-closed & \
         while true; do ping -c 1 -W 1 {gw} >/dev/null 2>&1; sleep 0.5; done"
    );
    let rules = Net {
        rules: vec![
            rule("udp", 9000, &format!("{gw}/32")),
            rule("udp", 9001, &dev.subnet),
        ],
        ..Default::default()
    }
    .yaml();
    apply_ok(
        &agent,
        "victim",
        &group("victim", "Always", &[("app", &victim)], &rules),
    );
    let vip = wait_ip_addresses(&agent, "victim")
        .first()
        .cloned()
        .expect("victim address");
    let vns = group_netns(&agent, &group_id(&agent, "victim"));
    let vmac = links_in(Some(&vns))
        .expect("links")
        .into_iter()
        .find(|l| l.name == "eth0")
        .expect("eth0")
        .mac;
    let br_mac = host_link(&dev.bridge).expect("bridge").mac;

    let (n, port) = (md.n, md.port);
    let attack = format!(
        "until nc -w 2 198.18.{n}.2 {port} </dev/null | grep -q md-banner; do sleep 0.5; done; \
         echo control-reached; \
         for c in 'addr add 10.99.0.9/32 dev eth0' 'link set eth0 address 02:00:00:00:00:99' \
                  'link set eth0 down' 'route del default'; do \
           ip $c 2>/dev/null; echo \"ip $c: rc=$?\"; done; \
         i=0; while [ $i -lt 6 ]; do \
         /eci-attack spoof-udp self self {vip} {vmac} 9001 genuine; \
         /eci-attack spoof-udp {gw} self {vip} {vmac} 9000 spoofed-ip; \
         /eci-attack spoof-udp self 02:ec:de:ad:be:ef {vip} {vmac} 9001 spoofed-mac; \
         /eci-attack spoof-udp {vip} {vmac} {gw} ff:ff:ff:ff:ff:ff 9 stolen-mac; \
         /eci-attack spoof-arp {gw}; /eci-attack spoof-arp {vip}; \
         /eci-attack spoof-ra fd66:6666:6666:6666:: | sed 's/^sent$/ra-sent/'; \
         nc -w 2 {vip} 9002 </dev/null | grep -q hello-closed && echo closed-port-reached; \
         nc -w 2 169.254.{n}.2 {port} </dev/null | grep -q md-banner && echo metadata-reached; \
         i=$((i+1)); sleep 0.5; done; echo spoof-done; exec sleep 3600"
    );
    apply_ok(
        &agent,
        "attacker",
        &group("attacker", "Always", &[("app", &attack)], "sandbox: vm\n"),
    );
    let aip = wait_ip_addresses(&agent, "attacker")
        .first()
        .cloned()
        .expect("attacker address");
    let alog = wait_log_vm(&agent, "attacker", "app", "spoof-done");
    let vlog = logs(&agent, "victim", "app");

    assert!(alog.contains("control-reached"), "{alog}");
    // No NET_ADMIN in the guest: the guest's own eth0 stays as configured.
    let ip_tries: Vec<_> = alog.lines().filter(|l| l.starts_with("ip ")).collect();
    assert_eq!(ip_tries.len(), 4, "{alog}");
    assert!(
        ip_tries.iter().all(|l| !l.ends_with("rc=0")),
        "an ip change worked: {alog}"
    );
    // The raw path works from the guest: the genuine frame arrives.
    assert!(
        alog.contains("sent") && !alog.contains("spoof-udp:") && !alog.contains("spoof-arp:"),
        "{alog}"
    );
    assert!(
        vlog.contains(&format!("got genuine from {aip}")),
        "the genuine datagram never arrived:\n{vlog}\n{alog}"
    );
    assert!(!vlog.contains("spoofed-ip"), "IP spoofing worked:\n{vlog}");
    assert!(
        !vlog.contains("spoofed-mac"),
        "MAC spoofing worked:\n{vlog}"
    );
    assert!(!alog.contains("closed-port-reached"), "{alog}");
    assert!(!alog.contains("metadata-reached"), "{alog}");
    // Router advertisements from the guest give the victim no route and no address.
    assert!(alog.contains("ra-sent"), "{alog}");
    let v6 = |args: &[&str]| {
        let o = std::process::Command::new("nsenter")
            .arg(format!("--net={}", vns.display()))
            .args(args)
            .output()
            .expect("nsenter");
        text(&o)
    };
    let routes = v6(&["ip", "-6", "route", "show"]);
    assert!(
        !routes.contains("proto ra"),
        "a route from the guest: {routes}"
    );
    let addrs = v6(&["ip", "-6", "addr", "show", "dev", "eth0"]);
    assert!(
        !addrs.contains("fd66:"),
        "an address from the guest: {addrs}"
    );
    // The victim still knows the gateway by the bridge's MAC.
    let neigh = std::process::Command::new("nsenter")
        .arg(format!("--net={}", vns.display()))
        .args(["ip", "-j", "neigh"])
        .output()
        .expect("nsenter");
    let got = neigh_mac(&String::from_utf8_lossy(&neigh.stdout), &gw);
    assert!(
        got.is_none() || got.as_deref() == Some(br_mac.as_str()),
        "the victim's neighbour entry for the gateway is {got:?}, not {br_mac}"
    );
    // The host's neighbour entry for the victim keeps the victim's MAC.
    let host = std::process::Command::new("ip")
        .args(["-j", "neigh", "show", "dev", &dev.bridge])
        .output()
        .expect("ip neigh");
    let got = neigh_mac(&String::from_utf8_lossy(&host.stdout), &vip);
    assert!(
        got.is_none() || got.as_deref() == Some(vmac.as_str()),
        "the host's neighbour entry for the victim is {got:?}, not {vmac}"
    );
    delete_vm(&agent, "attacker");
}

/// Sizes of the files in a container's log directory.
fn log_files(agent: &Agent, name: &str, container: &str) -> Vec<(String, u64)> {
    let dir = agent
        .root()
        .join("var/log/eci/groups")
        .join(group_id(agent, name))
        .join(container);
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok()?.len();
            n.contains(".log").then_some((n, len))
        })
        .collect()
}

/// The highest `tick-N` in a log.
fn last_tick(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("tick-")?.parse().ok())
        .max()
}

#[test]
fn a_flood_of_output_from_the_guest_stalls_nothing_and_rotates() {
    let Some(dir) = guest_dir() else { return };
    const MAX: u64 = 256 * 1024;
    let agent = busybox_agent_with(&format!(
        "[runtime]\nlog_max_size = \"256Ki\"\nlog_max_files = 2\n{}",
        vm_toml(&dir)
    ));
    wait_vm_usable(&agent);
    let tick = "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done";
    apply_ok(
        &agent,
        "flood",
        &group(
            "flood",
            "Always",
            &[
                (
                    "lines",
                    "yes 0123456789abcdef0123456789abcdef0123456789abcdef",
                ),
                ("longline", "tr '\\0' x < /dev/zero"),
                ("quiet", tick),
            ],
            "sandbox: vm\n",
        ),
    );
    // Another group, on the host, while the VM floods.
    apply_ok(
        &agent,
        "other",
        &group("other", "Always", &[("app", tick)], ""),
    );
    wait_log_vm(&agent, "flood", "quiet", "tick-3");
    // Both floods are running and their logs have rotated.
    let rotated = wait_for(VM_WAIT, || {
        let l = log_files(&agent, "flood", "lines");
        let ll = log_files(&agent, "flood", "longline");
        (l.iter().any(|(n, _)| n.ends_with(".1")) && ll.iter().any(|(n, _)| n.ends_with(".1")))
            .then_some(())
    });
    assert!(
        rotated.is_some(),
        "the floods never rotated: {:?} {:?}",
        log_files(&agent, "flood", "lines"),
        log_files(&agent, "flood", "longline")
    );

    // Under the flood, for 30 s: the quiet container and the other group keep logging,
    // the agent answers, and an exec in the flooding container completes.
    let q0 = last_tick(&logs(&agent, "flood", "quiet")).expect("ticks");
    let o0 = last_tick(&logs(&agent, "other", "app")).unwrap_or(0);
    let t = Instant::now();
    let out = agent.ctl(&["exec", "flood", "-c", "lines", "--", "echo", "alive"]);
    let exec_took = t.elapsed();
    assert!(out.status.success(), "exec under the flood: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alive");
    assert!(
        exec_took < Duration::from_secs(60),
        "exec took {exec_took:?}"
    );
    let mut slowest = Duration::ZERO;
    while t.elapsed() < Duration::from_secs(30) {
        let s = Instant::now();
        let g = agent.ctl(&["get", "flood", "-o", "json"]);
        assert!(g.status.success(), "{}", text(&g));
        slowest = slowest.max(s.elapsed());
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        slowest < Duration::from_secs(5),
        "the agent took {slowest:?}"
    );
    let q1 = last_tick(&logs(&agent, "flood", "quiet")).expect("ticks");
    let o1 = last_tick(&logs(&agent, "other", "app")).expect("ticks");
    assert!(q1 >= q0 + 10, "the quiet container stalled: {q0} → {q1}");
    assert!(o1 >= o0 + 20, "the other group stalled: {o0} → {o1}");

    // The logs stay within their limits: the live file and one rotated file, each at
    // most the configured size (plus one partial record).
    for c in ["lines", "longline"] {
        let files = log_files(&agent, "flood", c);
        // `0.log.writing` is the copier's empty marker of a run in progress.
        let logs = files.iter().filter(|(n, _)| !n.ends_with(".writing"));
        assert!(logs.count() <= 2, "{c}: {files:?}");
        for (n, len) in &files {
            assert!(*len <= MAX + 64 * 1024, "{c}: {n} is {len} bytes");
        }
    }
    delete_vm(&agent, "flood");
}

#[test]
fn capabilities_the_namespaced_kind_refuses_are_refused_for_vm() {
    let Some(dir) = guest_dir() else { return };
    let agent = busybox_agent_with(&vm_toml(&dir));
    let refused = [
        "SYS_ADMIN",
        "NET_ADMIN",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_BOOT",
        "SYS_TIME",
        "BPF",
    ];
    let spec = group(
        "greedyvm",
        "Never",
        &[("app", "grep CapEff /proc/self/status; sleep 3600")],
        "sandbox: vm\n",
    )
    .replace(
        "  command:",
        &format!(
            "  securityContext: {{capabilities: {{add: [{}]}}}}\n  command:",
            refused.join(", ")
        ),
    );
    let out = agent.apply("greedyvm", &spec);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    for (i, cap) in refused.iter().enumerate() {
        assert!(
            t.contains(&format!(
                "containers[0].securityContext.capabilities.add[{i}]"
            )) && t.contains(cap),
            "{cap} not named: {t}"
        );
    }
    assert!(!agent.ctl(&["get", "greedyvm"]).status.success());
    // `privileged` is no way around it either.
    let spec = group("privvm", "Never", &[("app", "sleep 3600")], "sandbox: vm\n").replace(
        "  command:",
        "  securityContext: {privileged: true}\n  command:",
    );
    let out = agent.apply("privvm", &spec);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("securityContext.privileged"),
        "privileged accepted: {t}"
    );
}
