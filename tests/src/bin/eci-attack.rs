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
                    let _ = writeln!(out, "exe-open {pid} ok");
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
