//! Syscalls containerd's default profile allows only when the container's bounding set
//! holds a capability: without the capability the kernel would refuse them anyway, and
//! refusing them earlier keeps a kernel bug in them out of reach.

use libc::c_long;

/// One capability and the syscalls it unlocks.
pub(super) struct CapabilityRule {
    /// Name without the `CAP_` prefix, as `oci-spec` prints it.
    pub cap: &'static str,
    pub syscalls: &'static [c_long],
}

/// Port I/O exists on x86 only.
#[cfg(target_arch = "x86_64")]
const RAWIO: &[c_long] = &[libc::SYS_iopl, libc::SYS_ioperm];
#[cfg(target_arch = "aarch64")]
const RAWIO: &[c_long] = &[];

/// In containerd's order. The position of a rule is its bit in [`super::file_name`], so
/// append new rules at the end.
pub(super) const RULES: &[CapabilityRule] = &[
    CapabilityRule {
        cap: "DAC_READ_SEARCH",
        syscalls: &[libc::SYS_open_by_handle_at],
    },
    CapabilityRule {
        cap: "SYS_ADMIN",
        // `umount` (the one-argument form) is not in the x86_64 and aarch64 tables.
        syscalls: &[
            libc::SYS_bpf,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fanotify_init,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fsopen,
            libc::SYS_fspick,
            libc::SYS_lookup_dcookie,
            libc::SYS_mount,
            libc::SYS_mount_setattr,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_perf_event_open,
            libc::SYS_quotactl,
            libc::SYS_quotactl_fd,
            libc::SYS_setdomainname,
            libc::SYS_sethostname,
            libc::SYS_setns,
            libc::SYS_syslog,
            libc::SYS_umount2,
            libc::SYS_unshare,
        ],
    },
    CapabilityRule {
        cap: "SYS_BOOT",
        syscalls: &[libc::SYS_reboot],
    },
    CapabilityRule {
        cap: "SYS_CHROOT",
        syscalls: &[libc::SYS_chroot],
    },
    CapabilityRule {
        cap: "SYS_MODULE",
        syscalls: &[
            libc::SYS_delete_module,
            libc::SYS_init_module,
            libc::SYS_finit_module,
        ],
    },
    CapabilityRule {
        cap: "SYS_PACCT",
        syscalls: &[libc::SYS_acct],
    },
    CapabilityRule {
        cap: "SYS_PTRACE",
        syscalls: &[
            libc::SYS_kcmp,
            libc::SYS_pidfd_getfd,
            libc::SYS_process_madvise,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_ptrace,
        ],
    },
    CapabilityRule {
        cap: "SYS_RAWIO",
        syscalls: RAWIO,
    },
    CapabilityRule {
        // `stime` and `clock_settime64` are 32-bit ABI names.
        cap: "SYS_TIME",
        syscalls: &[libc::SYS_settimeofday, libc::SYS_clock_settime],
    },
    CapabilityRule {
        cap: "SYS_TTY_CONFIG",
        syscalls: &[libc::SYS_vhangup],
    },
    CapabilityRule {
        cap: "SYS_NICE",
        syscalls: &[
            libc::SYS_get_mempolicy,
            libc::SYS_mbind,
            libc::SYS_set_mempolicy,
            libc::SYS_set_mempolicy_home_node,
        ],
    },
    CapabilityRule {
        cap: "SYSLOG",
        syscalls: &[libc::SYS_syslog],
    },
    CapabilityRule {
        cap: "BPF",
        syscalls: &[libc::SYS_bpf],
    },
    CapabilityRule {
        cap: "PERFMON",
        syscalls: &[libc::SYS_perf_event_open],
    },
];

/// Bit `i` is set when the set holds `RULES[i].cap`. Names may carry the `CAP_` prefix
/// or not, in any case; names that gate nothing are ignored.
pub(super) fn mask(caps: &[String]) -> u32 {
    let mut mask = 0;
    for name in caps {
        let up = name.to_ascii_uppercase();
        let bare = up.strip_prefix("CAP_").unwrap_or(&up);
        if let Some(i) = RULES.iter().position(|r| r.cap == bare) {
            mask |= 1 << i;
        }
    }
    mask
}

/// Bit of `cap` in [`mask`]; the capability must be one of [`RULES`].
pub(super) fn bit(cap: &str) -> u32 {
    RULES
        .iter()
        .position(|r| r.cap == cap)
        .map_or(0, |i| 1 << i)
}
