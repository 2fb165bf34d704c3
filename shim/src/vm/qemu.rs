//! The QEMU [`Vmm`]: a `microvm` machine (virtio-mmio, no PCI, no firmware option
//! ROMs), the guest kernel booted directly (PVH), virtio-serial with the two ports on
//! Unix sockets QEMU listens on, one read-only virtio-blk disk per image layer, and
//! virtio-net on the tap the net helper opened in the group netns.
//!
//! QEMU is started from a thread of its own that lives as long as the VM: QEMU gets
//! `PR_SET_PDEATHSIG(SIGKILL)`, which fires when the *thread* that forked it ends, so a
//! VM started from a pool thread would die with that thread; with a keeper thread it
//! dies with the shim (or when [`QemuVm`] is dropped), never outliving it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::vmm::{BootSpec, RunningVm, Vmm, VmmError, kernel_cmdline};

/// The descriptor number the tap queue has in QEMU (`-netdev tap,fd=3`).
pub const TAP_FD: i32 = 3;

/// How long a stale QEMU (from a shim that died) may take to go after SIGKILL.
const STALE_KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// QEMU as the VMM.
#[derive(Debug, Default)]
pub struct Qemu;

/// A running QEMU.
pub struct QemuVm {
    pid: i32,
    /// Dropping it ends the keeper thread, and so QEMU (see the module comment).
    _keeper: std::sync::mpsc::Sender<()>,
}

impl RunningVm for QemuVm {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn kill(&self) {
        crate::kill::sigkill(self.pid);
    }
}

/// Escapes a value for QEMU's `key=value,key=value` option syntax.
fn opt(v: &Path) -> String {
    v.display().to_string().replace(',', ",,")
}

/// QEMU's arguments (after the binary) for `spec`; the tap, if any, is descriptor
/// [`TAP_FD`].
pub fn argv(spec: &BootSpec<'_>) -> Result<Vec<String>, VmmError> {
    let c = spec.config;
    let p = spec.paths;
    // The id lands in QEMU's option syntax (`-name`) and the kernel command line.
    if spec.id.is_empty()
        || !spec
            .id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        return Err(VmmError::Invalid(format!("group id {:?}", spec.id)));
    }
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("eci-{}", spec.id),
        "-M".into(),
        // rtc=on: the guest's wall clock (as helper "guest" measured the image).
        "microvm,x-option-roms=off,rtc=on".into(),
        "-accel".into(),
        c.accel.as_str().into(),
        "-cpu".into(),
        match c.accel {
            super::config::Accel::Kvm => "host",
            super::config::Accel::Tcg => "max",
        }
        .into(),
        // QEMU's own seccomp filter: no exec/fork, no privilege changes, no obsolete
        // calls, no scheduler or resource changes. With the empty capability bounding
        // set (see `spawn`), a guest that escapes into QEMU is a process without
        // capabilities and without those calls (docs/security.md, "The vm sandbox").
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        // A guest that reboots or panics (panic=-1) ends QEMU: the shim sees it exit.
        "-no-reboot".into(),
        "-smp".into(),
        c.vcpus.to_string(),
        "-m".into(),
        format!("{}M", c.memory_mib),
        "-kernel".into(),
        c.kernel.display().to_string(),
        "-initrd".into(),
        c.initrd.display().to_string(),
        "-append".into(),
        kernel_cmdline(spec)?,
        // QEMU's stdout: a pipe the shim copies into `console.log`, bounded (see
        // `super::console`): the guest kernel is the tenant's and may print for ever.
        "-chardev".into(),
        "stdio,id=console,signal=off".into(),
        "-serial".into(),
        "chardev:console".into(),
        "-device".into(),
        "virtio-serial-device".into(),
    ];
    for (id, sock, name) in [
        ("ctl", &p.ctl, crate::guest_proto::CTL_PORT),
        ("io", &p.io, crate::guest_proto::IO_PORT),
    ] {
        a.push("-chardev".into());
        a.push(format!(
            "socket,id={id},path={},server=on,wait=off",
            opt(sock)
        ));
        a.push("-device".into());
        a.push(format!("virtserialport,chardev={id},name={name}"));
    }
    for (i, l) in c.layers.iter().enumerate() {
        a.push("-drive".into());
        a.push(format!(
            "if=none,id=layer{i},readonly=on,format=raw,file={}",
            opt(&l.erofs)
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-blk-device,drive=layer{i},serial={}",
            l.serial()
        ));
    }
    // The group's disk volumes, read-write, bypassing the host page cache (the guest's
    // own cache and flushes decide what is durable).
    for (i, d) in c.disks.iter().enumerate() {
        a.push("-drive".into());
        a.push(format!(
            "if=none,id=disk{i},format=raw,cache=none,file={}",
            opt(&d.device)
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-blk-device,drive=disk{i},serial={}",
            d.serial
        ));
    }
    if let Some(n) = &spec.net {
        if !n.mac.chars().all(|ch| ch.is_ascii_hexdigit() || ch == ':') {
            return Err(VmmError::Invalid(format!("guest MAC {:?}", n.mac)));
        }
        a.push("-netdev".into());
        a.push(format!("tap,id=net0,fd={TAP_FD}"));
        a.push("-device".into());
        a.push(format!("virtio-net-device,netdev=net0,mac={}", n.mac));
    }
    Ok(a)
}

/// The `cgroup.procs` files of `rel` in every hierarchy where it exists (written in the
/// child before exec: QEMU is in its cgroup before it allocates guest memory).
fn cgroup_procs_files(rel: &str) -> Vec<CString> {
    let root = Path::new("/sys/fs/cgroup");
    let unified = root.join(rel).join("cgroup.procs");
    if unified.is_file() && !root.join("memory").exists() {
        return CString::new(unified.as_os_str().as_encoded_bytes())
            .into_iter()
            .collect();
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for c in eci_runtime::cgroup::CONTROLLERS {
        let Ok(h) = std::fs::canonicalize(root.join(c)) else {
            continue;
        };
        if !seen.insert(h.clone()) {
            continue;
        }
        let procs = h.join(rel).join("cgroup.procs");
        if procs.is_file()
            && let Ok(s) = CString::new(procs.as_os_str().as_encoded_bytes())
        {
            out.push(s);
        }
    }
    out
}

/// Kills a QEMU left by an earlier shim of this group: the pid in `pid_file`, if that
/// process is a QEMU named `eci-<id>` (a reused pid belongs to someone else).
pub fn kill_stale(pid_file: &Path, id: &str) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    if pid <= 1 || !is_ours(pid, id) {
        return;
    }
    tracing::warn!(pid, "killing the QEMU an earlier shim of this group left");
    crate::kill::sigkill(pid);
    let until = std::time::Instant::now() + STALE_KILL_WAIT;
    while is_ours(pid, id) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether `pid` runs with `-name eci-<id>` (a zombie has an empty cmdline: not ours).
pub fn is_ours(pid: i32, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = format!("eci-{id}");
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| {
        w[0] == b"-name"
            && (w[1] == want.as_bytes() || w[1].starts_with(format!("{want},").as_bytes()))
    })
}

/// `_LINUX_CAPABILITY_VERSION_3` (two 32-bit words per set).
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

struct Prepared {
    binary: PathBuf,
    args: Vec<String>,
    netns: OwnedFd,
    tap: Option<OwnedFd>,
    cgroup_files: Vec<CString>,
    console: std::fs::File,
}

impl Vmm for Qemu {
    fn boot(&self, spec: BootSpec<'_>) -> Result<Box<dyn RunningVm>, VmmError> {
        let io = |what: String| move |source| VmmError::Io { what, source };
        kill_stale(&spec.paths.pid, spec.id);
        std::fs::create_dir_all(&spec.paths.dir)
            .map_err(io(format!("creating {}", spec.paths.dir.display())))?;
        for s in [&spec.paths.ctl, &spec.paths.io] {
            let _ = std::fs::remove_file(s);
        }
        let args = argv(&spec)?;
        let netns: OwnedFd = std::fs::File::open(spec.netns)
            .map_err(io(format!("opening {}", spec.netns.display())))?
            .into();
        eci_runtime::cgroup::create(spec.cgroup, &eci_runtime::cgroup::Limits::default())
            .map_err(|e| VmmError::Invalid(format!("{e}: {:?}", std::error::Error::source(&e))))?;
        let (console_r, console): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| io("a pipe for the console".into())(std::io::Error::from(e)))?;
        super::console::spawn_copier(
            console_r.into(),
            spec.paths.console.clone(),
            super::console::CONSOLE_MAX,
        )
        .map_err(io("starting the console copier".into()))?;
        let console = std::fs::File::from(console);
        let prepared = Prepared {
            binary: spec.config.qemu.clone(),
            args,
            netns,
            tap: spec.net.map(|n| n.tap),
            cgroup_files: cgroup_procs_files(spec.cgroup),
            console,
        };
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let (keep_tx, keep_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("qemu-keeper".into())
            .spawn(move || {
                let spawned = spawn(prepared);
                let ok = spawned.is_ok();
                let _ = pid_tx.send(spawned);
                if ok {
                    // Until the VM is dropped (the sender goes): QEMU's parent thread.
                    let _ = keep_rx.recv();
                }
            })
            .map_err(io("starting the QEMU keeper thread".into()))?;
        let pid = pid_rx
            .recv()
            .map_err(|_| VmmError::Invalid("the QEMU keeper thread ended".into()))??;
        std::fs::write(&spec.paths.pid, pid.to_string())
            .map_err(io(format!("writing {}", spec.paths.pid.display())))?;
        tracing::info!(pid, "QEMU started");
        Ok(Box::new(QemuVm {
            pid,
            _keeper: keep_tx,
        }))
    }
}

fn spawn(p: Prepared) -> Result<i32, VmmError> {
    let shim = std::process::id() as libc::pid_t;
    let netns = p.netns.as_raw_fd();
    let tap = p.tap.as_ref().map_or(-1, |t| t.as_raw_fd());
    let files = p.cgroup_files;
    // The highest capability number the kernel knows (read before the fork).
    let last_cap: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    // This thread's capability sets with the inheritable ones cleared, for capset in
    // the child: root's permitted set after exec is (inheritable | file ∩ bounding).
    let mut caps = [CapData::default(); 2];
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capget writes two CapData (version 3) through a valid pointer.
    if unsafe { libc::syscall(libc::SYS_capget, &header, caps.as_mut_ptr()) } != 0 {
        return Err(VmmError::Io {
            what: "capget".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    for c in &mut caps {
        c.inheritable = 0;
    }
    let err_out = p.console.try_clone().map_err(|source| VmmError::Io {
        what: "duplicating the console log".into(),
        source,
    })?;
    let mut cmd = Command::new(&p.binary);
    cmd.args(&p.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(p.console))
        .stderr(Stdio::from(err_out));
    // SAFETY: between fork and exec this calls only async-signal-safe functions
    // (prctl, getppid, setns, open, write, close, capset, dup2, fcntl) on descriptors and
    // strings prepared before the fork, which stay alive until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The shim died between fork and prctl: no one would ever kill this QEMU.
            if libc::getppid() != shim {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for f in &files {
                let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // An empty bounding set: QEMU runs as uid 0 but execs with no
            // capabilities at all (it needs none: the tap, the sockets' directory, the
            // layer images and /dev/kvm are all open to it without one).
            for cap in 0..=last_cap {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::syscall(libc::SYS_capset, &header, caps.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if tap >= 0 {
                if tap == TAP_FD {
                    if libc::fcntl(TAP_FD, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(tap, TAP_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| VmmError::Io {
        what: format!("starting {}", p.binary.display()),
        source,
    })?;
    drop((p.netns, p.tap));
    // The shim's reaper collects it (waitpid(-1)); the Child handle is not waited on.
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::config::{Accel, VmConfig, VmLayer};
    use crate::vm::vmm::{NetPlug, VmPaths};

    fn cfg(accel: Accel) -> VmConfig {
        VmConfig {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            kernel: "/g/vmlinux".into(),
            initrd: "/g/initrd.img".into(),
            accel,
            tsc_khz: 2_400_000,
            vcpus: 2,
            memory_mib: 512,
            layers: vec![VmLayer {
                path: format!("/l/{}", "cd".repeat(32)).into(),
                erofs: "/l/x,y.erofs".into(),
            }],
            disks: vec![crate::vm::config::VmDisk {
                device: "/dev/loop7".into(),
                serial: "disk-0".into(),
                path: "/run/eci/groups/g1/volumes/data".into(),
            }],
        }
    }

    #[test]
    fn argv_has_the_contract_devices() {
        let c = cfg(Accel::Tcg);
        let paths = VmPaths::new(Path::new("/run/eci/groups/g1"));
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        let spec = BootSpec {
            id: "g1",
            group_dir: Path::new("/run/eci/groups/g1"),
            hostname: "web",
            config: &c,
            paths: &paths,
            netns: Path::new("/run/eci/groups/g1/ns/net"),
            cgroup: "eci/g1/vm",
            net: Some(NetPlug {
                tap: r,
                mac: "02:00:00:00:00:05".into(),
                cmdline: "mac=02:00:00:00:00:05;mtu=1500;a=10.0.0.5/24;g=10.0.0.1".into(),
            }),
        };
        let a = argv(&spec).expect("argv").join(" ");
        for want in [
            "-name eci-g1 ",
            "-M microvm,x-option-roms=off,rtc=on -accel tcg -cpu max",
            "-accel tcg",
            "-nodefaults -no-user-config -nographic",
            "-smp 2 -m 512M",
            "tsc_early_khz=2400000 eci.id=g1 eci.dir=/run/eci/groups/g1 eci.host=web eci.net=mac=02:00:00:00:00:05;mtu=1500;a=10.0.0.5/24;g=10.0.0.1",
            "stdio,id=console,signal=off",
            "socket,id=ctl,path=/run/eci/groups/g1/vm/ctl.sock,server=on,wait=off -device virtserialport,chardev=ctl,name=eci.ctl",
            "socket,id=io,path=/run/eci/groups/g1/vm/io.sock,server=on,wait=off -device virtserialport,chardev=io,name=eci.io",
            "if=none,id=layer0,readonly=on,format=raw,file=/l/x,,y.erofs -device virtio-blk-device,drive=layer0,serial=cdcdcdcdcdcdcdcdcdcd",
            "if=none,id=disk0,format=raw,cache=none,file=/dev/loop7 -device virtio-blk-device,drive=disk0,serial=disk-0",
            "-netdev tap,id=net0,fd=3 -device virtio-net-device,netdev=net0,mac=02:00:00:00:00:05",
        ] {
            assert!(a.contains(want), "{want:?} not in {a}");
        }
        let k = cfg(Accel::Kvm);
        let spec = BootSpec {
            config: &k,
            net: None,
            ..spec
        };
        let a = argv(&spec).expect("argv").join(" ");
        assert!(a.contains("-accel kvm") && !a.contains("tsc_early_khz") && !a.contains("netdev"));
        let bad = BootSpec {
            hostname: "a b",
            ..spec
        };
        assert!(argv(&bad).is_err());
        let bad = BootSpec {
            id: "g1,process=x",
            hostname: "web",
            ..bad
        };
        assert!(argv(&bad).is_err());
    }

    #[test]
    fn a_stale_pid_file_of_another_process_kills_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let pid_file = dir.path().join("qemu.pid");
        std::fs::write(&pid_file, std::process::id().to_string()).expect("write");
        kill_stale(&pid_file, "g1");
        assert!(!is_ours(std::process::id() as i32, "g1"));
    }
}
