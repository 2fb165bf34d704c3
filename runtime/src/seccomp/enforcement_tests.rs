//! The compiled profile, loaded for real: a forked child sets `no_new_privs`, loads the
//! programs and makes syscalls; the number of the first check that fails is its exit
//! code. The test process is root with every capability, so an EPERM here comes from
//! the filter, not from the kernel's own permission checks.
//!
//! The child runs only raw syscalls between fork and exit: the test binary has other
//! threads, and the child must not take a lock one of them held.

use std::io::Error;

use libc::{c_long, c_void};
use seccompiler::BpfProgram;

use super::build;

type Check = (&'static str, fn() -> bool);

fn errno() -> i32 {
    Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn fails(ret: c_long, err: i32) -> bool {
    ret == -1 && errno() == err
}

fn getpid() -> bool {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::getpid() > 0 }
}

fn socket(domain: c_long) -> c_long {
    // SAFETY: socket takes integers only; a returned descriptor is closed at once.
    unsafe {
        let fd = libc::syscall(libc::SYS_socket, domain, libc::SOCK_STREAM, 0);
        if fd >= 0 {
            libc::close(fd as i32);
        }
        fd
    }
}

fn inet_socket() -> bool {
    socket(libc::AF_INET.into()) >= 0
}

fn vsock_socket() -> bool {
    fails(socket(libc::AF_VSOCK.into()), libc::EPERM)
}

fn alg_socket() -> bool {
    fails(socket(libc::AF_ALG.into()), libc::EPERM)
}

/// The kernel reads the family as an `int`: garbage in the upper half is still AF_VSOCK.
fn vsock_socket_upper_bits() -> bool {
    fails(
        socket((1 << 32) | c_long::from(libc::AF_VSOCK)),
        libc::EPERM,
    )
}

fn raw_clone(flags: c_long) -> c_long {
    // SAFETY: with no new stack, clone behaves like fork: the child continues on a copy
    // of this stack and leaves at once through _exit; the parent reaps it.
    unsafe {
        let pid = libc::syscall(
            libc::SYS_clone,
            flags | c_long::from(libc::SIGCHLD),
            0,
            0,
            0,
            0,
        );
        if pid == 0 {
            libc::_exit(0);
        }
        if pid > 0 {
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
        }
        pid
    }
}

fn clone_plain() -> bool {
    raw_clone(0) > 0
}

fn clone_newns() -> bool {
    fails(raw_clone(libc::CLONE_NEWNS.into()), libc::EPERM)
}

fn clone3(err: i32) -> bool {
    // SAFETY: a null clone_args of size 0 is refused before the kernel reads memory.
    fails(
        unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<c_void>(), 0) },
        err,
    )
}

fn clone3_enosys() -> bool {
    clone3(libc::ENOSYS)
}

/// With CAP_SYS_ADMIN the filter lets clone3 through to the kernel, which refuses the
/// empty argument.
fn clone3_reaches_kernel() -> bool {
    clone3(libc::EINVAL)
}

fn unshare(flags: i32) -> i32 {
    // SAFETY: unshare takes flags only; it changes this short-lived child alone.
    unsafe { libc::unshare(flags) }
}

fn unshare_user() -> bool {
    fails(unshare(libc::CLONE_NEWUSER).into(), libc::EPERM)
}

fn unshare_uts() -> bool {
    unshare(libc::CLONE_NEWUTS) == 0
}

fn personality(p: u64) -> c_long {
    // SAFETY: personality takes an integer; the child exits right after.
    unsafe { libc::syscall(libc::SYS_personality, p) }
}

fn personality_no_randomize() -> bool {
    fails(personality(libc::ADDR_NO_RANDOMIZE as u64), libc::EPERM)
}

fn personality_query() -> bool {
    personality(0xffff_ffff) >= 0
}

fn keyctl() -> bool {
    // SAFETY: KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3) reads integers.
    fails(
        unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) },
        libc::EPERM,
    )
}

fn add_key() -> bool {
    let (kind, desc, data) = (c"user", c"eci-test", b"x");
    // SAFETY: NUL-terminated strings and a one-byte payload that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            data.as_ptr(),
            1,
            -3,
        )
    };
    fails(ret, libc::EPERM)
}

fn mount() -> bool {
    let (src, target, fs) = (c"none", c"/", c"tmpfs");
    // SAFETY: NUL-terminated strings that outlive the call; refused before use.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    fails(ret.into(), libc::EPERM)
}

fn process_vm_readv() -> c_long {
    let src = [7u8; 8];
    let mut dst = [0u8; 8];
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: src.as_ptr() as *mut c_void,
        iov_len: src.len(),
    };
    // SAFETY: both iovecs describe live buffers of this process of the stated lengths.
    unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) as c_long }
}

/// containerd allows it to every container on kernels from 4.8.
fn process_vm_readv_allowed() -> bool {
    process_vm_readv() == 8
}

fn kcmp() -> c_long {
    // SAFETY: KCMP_VM (1) of this process with itself compares integers only.
    unsafe {
        let pid = libc::getpid();
        libc::syscall(libc::SYS_kcmp, pid, pid, 1, 0, 0)
    }
}

fn kcmp_refused() -> bool {
    fails(kcmp(), libc::EPERM)
}

fn kcmp_allowed() -> bool {
    kcmp() == 0
}

fn pidfd_getfd_refused() -> bool {
    // SAFETY: integer arguments only; -1 is not a pidfd.
    fails(
        unsafe { libc::syscall(libc::SYS_pidfd_getfd, -1, 0, 0) },
        libc::EPERM,
    )
}

/// What any container gets, whatever its capabilities (except CAP_SYS_ADMIN).
const BASELINE: &[Check] = &[
    ("getpid succeeds", getpid),
    ("socket(AF_INET) succeeds", inet_socket),
    ("socket(AF_VSOCK) fails EPERM", vsock_socket),
    ("socket(AF_ALG) fails EPERM", alg_socket),
    (
        "socket(1<<32 | AF_VSOCK) fails EPERM",
        vsock_socket_upper_bits,
    ),
    ("clone without namespace flags succeeds", clone_plain),
    ("clone(CLONE_NEWNS) fails EPERM", clone_newns),
    ("clone3 fails ENOSYS", clone3_enosys),
    ("unshare(CLONE_NEWUSER) fails EPERM", unshare_user),
    (
        "personality(ADDR_NO_RANDOMIZE) fails EPERM",
        personality_no_randomize,
    ),
    ("personality(query) succeeds", personality_query),
    ("keyctl fails EPERM", keyctl),
    ("add_key fails EPERM", add_key),
    ("mount fails EPERM", mount),
    ("process_vm_readv succeeds", process_vm_readv_allowed),
];

/// Runs `checks` in a child confined by `programs`; the name of the first failure.
fn run_confined(programs: &[BpfProgram], checks: &[Check]) -> Result<(), String> {
    // SAFETY: the child makes raw syscalls only (see the module comment) and leaves
    // through _exit.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", Error::last_os_error())),
        0 => {
            // SAFETY: prctl with integer arguments, in the child.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                // SAFETY: _exit ends the child without running the parent's destructors.
                unsafe { libc::_exit(100) };
            }
            if super::load(programs).is_err() {
                // SAFETY: as above.
                unsafe { libc::_exit(101) };
            }
            let failed = checks.iter().position(|(_, check)| !check());
            // SAFETY: as above.
            unsafe { libc::_exit(failed.map_or(0, |i| i as i32 + 1)) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waits for our own child; status is a live i32.
            if unsafe { libc::waitpid(child, &mut status, 0) } != child {
                return Err(format!("waitpid: {}", Error::last_os_error()));
            }
            if !libc::WIFEXITED(status) {
                return Err(format!("child died: wait status {status:#x}"));
            }
            match libc::WEXITSTATUS(status) {
                0 => Ok(()),
                100 => Err("prctl(PR_SET_NO_NEW_PRIVS) failed".into()),
                101 => Err("loading the programs failed".into()),
                n => Err(checks
                    .get(n as usize - 1)
                    .map_or(format!("exit {n}"), |c| c.0.to_string())),
            }
        }
    }
}

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root, to tell the filter's EPERM from the kernel's");
    }
    root
}

fn caps(extra: &[&str]) -> Vec<String> {
    crate::capabilities::DEFAULT
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn default_capabilities() {
    if !root() {
        return;
    }
    let programs = build(&caps(&[])).expect("build");
    let mut checks = BASELINE.to_vec();
    checks.push(("kcmp fails EPERM without SYS_PTRACE", kcmp_refused));
    checks.push((
        "pidfd_getfd fails EPERM without SYS_PTRACE",
        pidfd_getfd_refused,
    ));
    run_confined(&programs, &checks).expect("default profile");
}

#[test]
fn with_sys_ptrace() {
    if !root() {
        return;
    }
    let programs = build(&caps(&["CAP_SYS_PTRACE"])).expect("build");
    let mut checks = BASELINE.to_vec();
    checks.push(("kcmp succeeds with SYS_PTRACE", kcmp_allowed));
    run_confined(&programs, &checks).expect("profile with SYS_PTRACE");
}

#[test]
fn with_sys_admin() {
    if !root() {
        return;
    }
    let programs = build(&caps(&["CAP_SYS_ADMIN"])).expect("build");
    let checks: &[Check] = &[
        ("socket(AF_VSOCK) fails EPERM", vsock_socket),
        ("clone3 reaches the kernel (EINVAL)", clone3_reaches_kernel),
        ("unshare(CLONE_NEWUTS) succeeds", unshare_uts),
        ("keyctl fails EPERM", keyctl),
    ];
    run_confined(&programs, checks).expect("profile with SYS_ADMIN");
}
