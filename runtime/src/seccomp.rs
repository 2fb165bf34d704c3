//! containerd's default seccomp profile, compiled to BPF for a capability set and loaded
//! into every container process just before exec.
//!
//! Which syscalls a container may make depends on its capabilities (a container with
//! CAP_SYS_PTRACE may use `kcmp`, one with CAP_SYS_ADMIN may `mount` and `unshare`), so
//! the shim compiles one program file per distinct bounding set ([`file_name`],
//! [`write_profile`]) and each container's init reads ([`read`]) and [`load`]s its own.
//! Unlisted syscalls fail with EPERM, as in containerd and Docker.
//!
//! The tables are for x86_64 and aarch64; elsewhere [`supported`] says no, and the agent
//! refuses to start rather than run containers unconfined.

use std::path::Path;

use seccompiler::BpfProgram;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod allowlist;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod capability_rules;
#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod enforcement_tests;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod profile;

/// Errors building or loading the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("loading the seccomp filter")]
    Load(#[source] seccompiler::Error),
    #[error("loading the seccomp filter without no_new_privs")]
    LoadPrivileged(#[source] std::io::Error),
    #[error("seccomp profiles exist for x86_64 and aarch64, not {0}")]
    Arch(&'static str),
    #[error("the kernel has no seccomp filter support")]
    Kernel(#[source] std::io::Error),
    #[error("seccomp program file {0}")]
    File(String, #[source] std::io::Error),
    #[error("seccomp program file {0} is corrupt")]
    Corrupt(String),
}

/// Whether containers can be confined here: the architecture has syscall tables and the
/// kernel has seccomp filters. The agent calls this at start.
pub fn supported() -> Result<(), SeccompError> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Err(SeccompError::Arch(std::env::consts::ARCH));
    }
    // SAFETY: PR_GET_SECCOMP takes no pointers; it only reports the calling thread's
    // mode, and fails with EINVAL on a kernel built without seccomp.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP) } < 0 {
        return Err(SeccompError::Kernel(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Name of the program file for a capability set (names with or without `CAP_`). Sets
/// that differ only in capabilities that gate no syscall share a file.
pub fn file_name(caps: &[String]) -> String {
    format!("seccomp-{:04x}.bpf", mask(caps))
}

/// The programs for a process whose bounding set is `caps`, in load order.
pub fn build(caps: &[String]) -> Result<Vec<BpfProgram>, SeccompError> {
    supported()?;
    compile(mask(caps))
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn mask(caps: &[String]) -> u32 {
    capability_rules::mask(caps)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn mask(_caps: &[String]) -> u32 {
    0
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn compile(mask: u32) -> Result<Vec<BpfProgram>, SeccompError> {
    profile::programs(mask, kernel_at_least(4, 8))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn compile(_mask: u32) -> Result<Vec<BpfProgram>, SeccompError> {
    Err(SeccompError::Arch(std::env::consts::ARCH))
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
/// True when the running kernel is `major.minor` or newer; false when unknown (the
/// stricter answer).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(uts) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = uts.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

/// Compiles the profile for `caps` and writes it to `path`, so that the containers
/// with the same capabilities load one compiled program instead of compiling their own.
/// Written to a temporary name and renamed: an init reading the file sees it whole.
pub fn write_profile(path: &Path, caps: &[String]) -> Result<(), SeccompError> {
    let mut out = Vec::new();
    for p in build(caps)? {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        for f in &p {
            out.extend_from_slice(&f.code.to_le_bytes());
            out.push(f.jt);
            out.push(f.jf);
            out.extend_from_slice(&f.k.to_le_bytes());
        }
    }
    let file_err = |e| SeccompError::File(path.display().to_string(), e);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, out).map_err(file_err)?;
    std::fs::rename(&tmp, path).map_err(file_err)
}

/// Reads programs written by [`write_profile`].
pub fn read(path: &Path) -> Result<Vec<BpfProgram>, SeccompError> {
    let bytes =
        std::fs::read(path).map_err(|e| SeccompError::File(path.display().to_string(), e))?;
    let bad = || SeccompError::Corrupt(path.display().to_string());
    let mut rest = &bytes[..];
    let mut programs = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        let body = tail.get(..len * 8).ok_or_else(bad)?;
        programs.push(
            body.chunks_exact(8)
                .map(|c| seccompiler::sock_filter {
                    code: u16::from_le_bytes([c[0], c[1]]),
                    jt: c[2],
                    jf: c[3],
                    k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect(),
        );
        rest = &tail[len * 8..];
    }
    Ok(programs)
}

/// Loads programs into the calling thread. Sets `no_new_privs` (seccompiler does, and
/// an unprivileged process needs it) and should be the last step before exec.
pub fn load(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(SeccompError::Load)?;
    }
    Ok(())
}

/// Loads programs into the calling thread *without* setting `no_new_privs`, for a
/// process that may gain privileges at exec (setuid binaries, file capabilities:
/// `allowPrivilegeEscalation`). The kernel then requires `CAP_SYS_ADMIN` in the
/// caller's user namespace, so the caller raises it in its effective set first and
/// drops it right after, through calls the filter allows (`capset`, `prctl`).
pub fn load_keeping_privileges(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        let prog = libc::sock_fprog {
            len: p.len() as u16,
            filter: p.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `p`'s instructions (seccompiler's `sock_filter` has
        // the kernel's layout), both live across the call; the kernel copies them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::LoadPrivileged(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn compiles_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = caps(crate::capabilities::DEFAULT);
        let path = dir.path().join(file_name(&set));
        write_profile(&path, &set).expect("write");
        let p = read(&path).expect("read");
        assert_eq!(p.len(), 2, "allowlist and the clone3 answer");
        assert!(p[0].len() > 1000 && p[0].len() < 4096, "{}", p[0].len());
        assert_eq!(p, build(&set).expect("build"));
    }

    #[test]
    fn capabilities_change_the_program() {
        let base = caps(crate::capabilities::DEFAULT);
        let mut ptrace = base.clone();
        ptrace.push("CAP_SYS_PTRACE".into());
        assert_ne!(build(&base).expect("base"), build(&ptrace).expect("ptrace"));
        assert_ne!(file_name(&base), file_name(&ptrace));
        // Prefix and case do not matter; capabilities that gate nothing do not either.
        assert_eq!(
            file_name(&ptrace),
            file_name(&{
                let mut v = base.clone();
                v.push("sys_ptrace".into());
                v.push("CAP_NET_ADMIN".into());
                v
            })
        );
        // CAP_SYS_ADMIN allows clone3 outright: no ENOSYS program.
        let admin = build(&caps(&["SYS_ADMIN"])).expect("admin");
        assert_eq!(admin.len(), 1);
    }

    #[test]
    fn kernel_version_compare() {
        assert!(kernel_at_least(3, 0));
        assert!(!kernel_at_least(999, 0));
    }

    #[test]
    fn corrupt_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.bpf");
        std::fs::write(&path, [9, 0, 0, 0, 1, 2]).expect("write");
        assert!(matches!(read(&path), Err(SeccompError::Corrupt(_))));
    }
}
