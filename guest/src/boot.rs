//! Bringing the guest userland up as PID 1: off the initramfs onto a tmpfs root, the
//! kernel filesystems, the drivers from the initramfs, cgroup v2 with its controllers.

use std::ffi::CString;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Errors booting.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{step} {path}: {source}")]
    Sys {
        step: &'static str,
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys<'a>(step: &'static str, path: &'a str) -> impl FnOnce(nix::Error) -> BootError + 'a {
    move |source| BootError::Sys {
        step,
        path: path.to_string(),
        source,
    }
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BootError + 'a {
    move |source| BootError::Io {
        step,
        path: path.display().to_string(),
        source,
    }
}

/// Where the initramfs keeps the drivers and their load order.
pub const MODULES_DIR: &str = "/lib/modules";
/// The argument eci-guest re-executes itself with once it runs from the tmpfs root.
pub const SWITCHED_ARG: &str = "pid1";
const NEW_ROOT: &str = "/newroot";

/// Mounts a filesystem at `target`, creating the directory.
fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), BootError> {
    std::fs::create_dir_all(target).map_err(io("creating", Path::new(target)))?;
    mount(Some(source), target, Some(fstype), flags, data).map_err(sys("mounting", target))
}

/// Mounts /proc on the initramfs just to read the command line (the probe answers
/// before anything else happens); [`leave_initramfs`] unmounts it again.
pub fn early_proc() -> Result<(), BootError> {
    mount_at(
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
}

/// Moves the root onto a fresh tmpfs (switch_root style: pivot_root refuses the
/// initramfs `rootfs`, and the containers' pivot_root needs a real mount above them),
/// frees the initramfs copy, and re-executes `/init` there with [`SWITCHED_ARG`].
/// Returns only on failure.
pub fn leave_initramfs() -> BootError {
    match switch() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn switch() -> Result<std::convert::Infallible, BootError> {
    let _ = umount2("/proc", MntFlags::MNT_DETACH);
    mount_at(
        "tmpfs",
        NEW_ROOT,
        "tmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    let new = Path::new(NEW_ROOT);
    let modules = new.join("lib/modules");
    std::fs::create_dir_all(&modules).map_err(io("creating", &modules))?;
    std::fs::copy("/init", new.join("init")).map_err(io("copying", Path::new("/init")))?;
    if let Ok(entries) = std::fs::read_dir(MODULES_DIR) {
        for e in entries.flatten() {
            let to = modules.join(e.file_name());
            std::fs::copy(e.path(), &to).map_err(io("copying", &to))?;
        }
    }
    let dev = new.join("dev");
    std::fs::create_dir_all(&dev).map_err(io("creating", &dev))?;
    // The initramfs copies are garbage from here on: free their memory.
    let _ = std::fs::remove_file("/init");
    let _ = std::fs::remove_dir_all(MODULES_DIR);
    nix::unistd::chdir(new).map_err(sys("chdir", NEW_ROOT))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("moving the root", NEW_ROOT))?;
    nix::unistd::chroot(".").map_err(sys("chroot", NEW_ROOT))?;
    nix::unistd::chdir("/").map_err(sys("chdir", "/"))?;
    let init = c"/init";
    let arg = CString::new(SWITCHED_ARG).map_err(|_| BootError::Sys {
        step: "exec",
        path: "/init".into(),
        source: nix::Error::EINVAL,
    })?;
    nix::unistd::execv(init, &[init, arg.as_c_str()]).map_err(sys("exec", "/init"))
}

/// The kernel filesystems and `/run`, on the tmpfs root.
pub fn mount_kernel_filesystems() -> Result<(), BootError> {
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_at("proc", "/proc", "proc", nse, None)?;
    mount_at("sysfs", "/sys", "sysfs", nse, None)?;
    mount_at(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_at(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount_at(
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_at("cgroup2", "/sys/fs/cgroup", "cgroup2", nse, None)?;
    mount_at(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_at(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=1777"),
    )?;
    Ok(())
}

/// Enables the controllers the containers' cgroups use for the whole tree. A controller
/// the guest kernel lacks is skipped (the runtime reads what exists).
pub fn enable_controllers() {
    let file = "/sys/fs/cgroup/cgroup.subtree_control";
    for c in ["cpu", "memory", "pids", "io"] {
        if let Err(e) = std::fs::write(file, format!("+{c}")) {
            tracing::warn!(controller = c, error = %e, "enabling cgroup controller");
        }
    }
}

/// Loads the initramfs drivers in the order `/lib/modules/order` gives (each after
/// those it needs). A module that fails is reported and skipped: the guest may still be
/// usable (the vsock modules, say, are only for measurements).
pub fn load_modules() -> usize {
    let dir = Path::new(MODULES_DIR);
    let Ok(order) = std::fs::read_to_string(dir.join("order")) else {
        return 0;
    };
    let mut loaded = 0;
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if name.contains('/') {
            continue;
        }
        let path = dir.join(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(module = name, error = %e, "opening module");
                continue;
            }
        };
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => loaded += 1,
            Err(e) => tracing::warn!(module = name, error = %e, "loading module"),
        }
    }
    loaded
}

/// Writes a line to the console, whatever stdio is.
pub fn console(line: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(mut c) => {
            let _ = writeln!(c, "{line}");
        }
        Err(_) => eprintln!("{line}"),
    }
}

/// Before power-off: every process is killed and each read-write disk volume (an ext4
/// or xfs on a virtio-blk disk) is remounted read-only, so its journal is checkpointed
/// and the host finds a clean filesystem on the device. Bounded: about 2 s.
fn settle_disks() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let disks: Vec<(String, String)> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (dev, at, fs, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let rw = opts.split(',').any(|o| o == "rw");
            (dev.starts_with("/dev/vd") && matches!(fs, "ext4" | "xfs") && rw)
                .then(|| (at.replace("\\040", " "), fs.to_string()))
        })
        .collect();
    if disks.is_empty() {
        return;
    }
    // SAFETY: kill(2) with pid -1 from PID 1 signals every other process; no memory
    // is involved.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    for (at, fs) in disks {
        for _ in 0..40 {
            match nix::mount::mount(
                None::<&str>,
                at.as_str(),
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            ) {
                Err(nix::Error::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(50)),
                r => {
                    if let Err(e) = r {
                        console(&format!("eci-guest: remounting {at} ({fs}) read-only: {e}"));
                    }
                    break;
                }
            }
        }
    }
}

/// Powers the guest off (QEMU exits). Falls back to a reboot, which the host's QEMU
/// turns into an exit (`-no-reboot`), should the machine have no power-off.
pub fn power_off() -> ! {
    settle_disks();
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // PID 1 must not return; nothing is left to do.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
