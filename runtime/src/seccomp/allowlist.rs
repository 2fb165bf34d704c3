//! Syscalls containerd's default profile allows to every container, whatever its
//! capabilities (`contrib/seccomp/seccomp_default.go`), on the two architectures we build
//! for. containerd lists names for every ABI and libseccomp drops the names an
//! architecture lacks; here each name is a number, so the names of the 32-bit ABIs
//! (`chown32`, `_llseek`, `*_time64`, `socketcall`, ...) are left out and the names only
//! the x86_64 table has are in [`ARCH_ONLY`].

use libc::c_long;

/// Numbers of syscalls newer than the `libc` crate's tables. From 424 on, x86_64 and
/// aarch64 share one numbering (the kernel's `scripts/syscall.tbl`).
pub(super) mod nr {
    use libc::c_long;

    pub const CACHESTAT: c_long = 451;
    pub const FCHMODAT2: c_long = 452;
    pub const MAP_SHADOW_STACK: c_long = 453;
    pub const FUTEX_WAKE: c_long = 454;
    pub const FUTEX_WAIT: c_long = 455;
    pub const FUTEX_REQUEUE: c_long = 456;
    pub const STATMOUNT: c_long = 457;
    pub const LISTMOUNT: c_long = 458;
    pub const LSM_GET_SELF_ATTR: c_long = 459;
    pub const LSM_SET_SELF_ATTR: c_long = 460;
    pub const LSM_LIST_MODULES: c_long = 461;
    pub const SETXATTRAT: c_long = 463;
    pub const GETXATTRAT: c_long = 464;
    pub const LISTXATTRAT: c_long = 465;
    pub const REMOVEXATTRAT: c_long = 466;

    /// Below 424 the tables differ.
    #[cfg(target_arch = "x86_64")]
    pub const IO_PGETEVENTS: c_long = 333;
    #[cfg(target_arch = "aarch64")]
    pub const IO_PGETEVENTS: c_long = 292;
    /// x86_64 only.
    #[cfg(target_arch = "x86_64")]
    pub const URETPROBE: c_long = 335;
}

/// Allowed with any arguments, on both architectures.
#[rustfmt::skip]
pub(super) const COMMON: &[c_long] = &[
    libc::SYS_accept, libc::SYS_accept4, libc::SYS_adjtimex, libc::SYS_bind, libc::SYS_brk,
    nr::CACHESTAT, libc::SYS_capget, libc::SYS_capset, libc::SYS_chdir,
    libc::SYS_clock_adjtime, libc::SYS_clock_getres, libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep, libc::SYS_close, libc::SYS_close_range, libc::SYS_connect,
    libc::SYS_copy_file_range, libc::SYS_dup, libc::SYS_dup3, libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2, libc::SYS_eventfd2,
    libc::SYS_execve, libc::SYS_execveat, libc::SYS_exit, libc::SYS_exit_group,
    libc::SYS_faccessat, libc::SYS_faccessat2, libc::SYS_fadvise64, libc::SYS_fallocate,
    libc::SYS_fanotify_mark, libc::SYS_fchdir, libc::SYS_fchmod, libc::SYS_fchmodat,
    nr::FCHMODAT2, libc::SYS_fchown, libc::SYS_fchownat, libc::SYS_fcntl, libc::SYS_fdatasync,
    libc::SYS_fgetxattr, libc::SYS_flistxattr, libc::SYS_flock, libc::SYS_fremovexattr,
    libc::SYS_fsetxattr, libc::SYS_fstat, libc::SYS_fstatfs, libc::SYS_fsync,
    libc::SYS_ftruncate, libc::SYS_futex, nr::FUTEX_REQUEUE, nr::FUTEX_WAIT,
    libc::SYS_futex_waitv, nr::FUTEX_WAKE, libc::SYS_getcpu, libc::SYS_getcwd,
    libc::SYS_getdents64, libc::SYS_getegid, libc::SYS_geteuid, libc::SYS_getgid,
    libc::SYS_getgroups, libc::SYS_getitimer, libc::SYS_getpeername, libc::SYS_getpgid,
    libc::SYS_getpid, libc::SYS_getppid, libc::SYS_getpriority, libc::SYS_getrandom,
    libc::SYS_getresgid, libc::SYS_getresuid, libc::SYS_getrlimit, libc::SYS_get_robust_list,
    libc::SYS_getrusage, libc::SYS_getsid, libc::SYS_getsockname, libc::SYS_getsockopt,
    libc::SYS_gettid, libc::SYS_gettimeofday, libc::SYS_getuid, libc::SYS_getxattr,
    nr::GETXATTRAT, libc::SYS_inotify_add_watch, libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch, libc::SYS_io_cancel, libc::SYS_ioctl, libc::SYS_io_destroy,
    libc::SYS_io_getevents, nr::IO_PGETEVENTS, libc::SYS_ioprio_get, libc::SYS_ioprio_set,
    libc::SYS_io_setup, libc::SYS_io_submit, libc::SYS_kill, libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset, libc::SYS_landlock_restrict_self, libc::SYS_lgetxattr,
    libc::SYS_linkat, libc::SYS_listen, nr::LISTMOUNT, libc::SYS_listxattr, nr::LISTXATTRAT,
    libc::SYS_llistxattr, libc::SYS_lremovexattr, libc::SYS_lseek, libc::SYS_lsetxattr,
    nr::LSM_GET_SELF_ATTR, nr::LSM_LIST_MODULES, nr::LSM_SET_SELF_ATTR, libc::SYS_madvise,
    libc::SYS_membarrier, libc::SYS_memfd_create, libc::SYS_memfd_secret, libc::SYS_mincore,
    libc::SYS_mkdirat, libc::SYS_mknodat, libc::SYS_mlock, libc::SYS_mlock2,
    libc::SYS_mlockall, nr::MAP_SHADOW_STACK, libc::SYS_mmap, libc::SYS_mprotect,
    libc::SYS_mq_getsetattr, libc::SYS_mq_notify, libc::SYS_mq_open,
    libc::SYS_mq_timedreceive, libc::SYS_mq_timedsend, libc::SYS_mq_unlink, libc::SYS_mremap,
    libc::SYS_mseal, libc::SYS_msgctl, libc::SYS_msgget, libc::SYS_msgrcv, libc::SYS_msgsnd,
    libc::SYS_msync, libc::SYS_munlock, libc::SYS_munlockall, libc::SYS_munmap,
    libc::SYS_name_to_handle_at, libc::SYS_nanosleep, libc::SYS_newfstatat, libc::SYS_openat,
    libc::SYS_openat2, libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal, libc::SYS_pipe2,
    libc::SYS_pkey_alloc, libc::SYS_pkey_free, libc::SYS_pkey_mprotect, libc::SYS_ppoll,
    libc::SYS_prctl, libc::SYS_pread64, libc::SYS_preadv, libc::SYS_preadv2,
    libc::SYS_prlimit64, libc::SYS_process_mrelease, libc::SYS_pselect6, libc::SYS_pwrite64,
    libc::SYS_pwritev, libc::SYS_pwritev2, libc::SYS_read, libc::SYS_readahead,
    libc::SYS_readlinkat, libc::SYS_readv, libc::SYS_recvfrom, libc::SYS_recvmmsg,
    libc::SYS_recvmsg, libc::SYS_remap_file_pages, libc::SYS_removexattr, nr::REMOVEXATTRAT,
    libc::SYS_renameat, libc::SYS_renameat2, libc::SYS_restart_syscall, libc::SYS_rseq,
    libc::SYS_rt_sigaction, libc::SYS_rt_sigpending, libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigqueueinfo, libc::SYS_rt_sigreturn, libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait, libc::SYS_rt_tgsigqueueinfo, libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr, libc::SYS_sched_getparam, libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min, libc::SYS_sched_getscheduler,
    libc::SYS_sched_rr_get_interval, libc::SYS_sched_setaffinity, libc::SYS_sched_setattr,
    libc::SYS_sched_setparam, libc::SYS_sched_setscheduler, libc::SYS_sched_yield,
    libc::SYS_seccomp, libc::SYS_semctl, libc::SYS_semget, libc::SYS_semop,
    libc::SYS_semtimedop, libc::SYS_sendfile, libc::SYS_sendmmsg, libc::SYS_sendmsg,
    libc::SYS_sendto, libc::SYS_setfsgid, libc::SYS_setfsuid, libc::SYS_setgid,
    libc::SYS_setgroups, libc::SYS_setitimer, libc::SYS_setpgid, libc::SYS_setpriority,
    libc::SYS_setregid, libc::SYS_setresgid, libc::SYS_setresuid, libc::SYS_setreuid,
    libc::SYS_setrlimit, libc::SYS_set_robust_list, libc::SYS_setsid, libc::SYS_setsockopt,
    libc::SYS_set_tid_address, libc::SYS_setuid, libc::SYS_setxattr, nr::SETXATTRAT,
    libc::SYS_shmat, libc::SYS_shmctl, libc::SYS_shmdt, libc::SYS_shmget, libc::SYS_shutdown,
    libc::SYS_sigaltstack, libc::SYS_signalfd4, libc::SYS_socketpair, libc::SYS_splice,
    libc::SYS_statfs, nr::STATMOUNT, libc::SYS_statx, libc::SYS_symlinkat, libc::SYS_sync,
    libc::SYS_sync_file_range, libc::SYS_syncfs, libc::SYS_sysinfo, libc::SYS_tee,
    libc::SYS_tgkill, libc::SYS_timer_create, libc::SYS_timer_delete,
    libc::SYS_timer_getoverrun, libc::SYS_timer_gettime, libc::SYS_timer_settime,
    libc::SYS_timerfd_create, libc::SYS_timerfd_gettime, libc::SYS_timerfd_settime,
    libc::SYS_times, libc::SYS_tkill, libc::SYS_truncate, libc::SYS_umask, libc::SYS_uname,
    libc::SYS_unlinkat, libc::SYS_utimensat, libc::SYS_vmsplice, libc::SYS_wait4,
    libc::SYS_waitid, libc::SYS_write, libc::SYS_writev,
];

/// The legacy syscalls of the x86_64 table (aarch64 has only their `*at` successors), and
/// containerd's amd64 additions `arch_prctl` and `modify_ldt`.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
pub(super) const ARCH_ONLY: &[c_long] = &[
    libc::SYS_access, libc::SYS_alarm, libc::SYS_arch_prctl, libc::SYS_chmod, libc::SYS_chown,
    libc::SYS_creat, libc::SYS_dup2, libc::SYS_epoll_create, libc::SYS_epoll_ctl_old,
    libc::SYS_epoll_wait, libc::SYS_epoll_wait_old, libc::SYS_eventfd, libc::SYS_fork,
    libc::SYS_futimesat, libc::SYS_getdents, libc::SYS_getpgrp, libc::SYS_get_thread_area,
    libc::SYS_inotify_init, libc::SYS_lchown, libc::SYS_link, libc::SYS_lstat, libc::SYS_mkdir,
    libc::SYS_mknod, libc::SYS_modify_ldt, libc::SYS_open, libc::SYS_pause, libc::SYS_pipe,
    libc::SYS_poll, libc::SYS_readlink, libc::SYS_rename, libc::SYS_rmdir, libc::SYS_select,
    libc::SYS_set_thread_area, libc::SYS_signalfd, libc::SYS_stat, libc::SYS_symlink,
    libc::SYS_time, libc::SYS_unlink, nr::URETPROBE, libc::SYS_utime, libc::SYS_utimes,
    libc::SYS_vfork,
];

/// containerd's arm64 additions (`arm_fadvise64_64`, `breakpoint`, `cacheflush`, `set_tls`,
/// ...) are syscalls of the 32-bit ARM table; the aarch64 table has none of them.
#[cfg(target_arch = "aarch64")]
pub(super) const ARCH_ONLY: &[c_long] = &[];

/// Allowed to everyone on kernels from 4.8, where seccomp runs again after a tracer
/// changes a syscall, so tracing cannot bypass the filter; before 4.8 only with
/// CAP_SYS_PTRACE (containerd's `kernelversion` rule). The kernel's own checks still
/// apply: without CAP_SYS_PTRACE a process can trace only its own user's processes.
pub(super) const TRACE: &[c_long] = &[
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_ptrace,
];
