//! The default profile as seccompiler filters: the allowlist, the argument filters and
//! the capability rules put together for one capability set.

use std::collections::{BTreeMap, BTreeSet};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SeccompError;
use super::allowlist::{ARCH_ONLY, COMMON, TRACE};
use super::capability_rules::{RULES, bit};

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Namespace flags `clone` may not use without CAP_SYS_ADMIN (containerd's mask). clone's
/// flags are its first argument on x86_64 and aarch64 (s390 swaps the first two).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// personality(2) values containerd allows: PER_LINUX, PER_LINUX32, UNAME26 with each,
/// and 0xffffffff (query). Everything else (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...)
/// would weaken the process's own hardening.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Syscalls allowed only with these arguments, unless a capability rule allows them
/// outright.
type ArgRules = BTreeMap<i64, Vec<SeccompRule>>;

fn cond(
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompRule, SeccompError> {
    let c = SeccompCondition::new(index, len, op, value).map_err(SeccompError::Build)?;
    SeccompRule::new(vec![c]).map_err(SeccompError::Build)
}

/// The argument filters. `socket` and `personality` take an `int`: the kernel ignores the
/// upper half of the register, so only the lower 32 bits are compared (a 64-bit
/// comparison, as libseccomp makes, lets `0x1_0000_0028` through as AF_VSOCK).
fn arg_rules(admin: bool) -> Result<ArgRules, SeccompError> {
    use SeccompCmpArgLen::{Dword, Qword};
    let mut rules = ArgRules::new();
    // Every family but AF_ALG (kernel crypto, a recurring source of kernel bugs) and
    // AF_VSOCK (could reach the host or a VM's host side): below, between, above.
    let (alg, vsock) = (libc::AF_ALG as u64, libc::AF_VSOCK as u64);
    rules.insert(
        libc::SYS_socket,
        vec![
            cond(0, Dword, SeccompCmpOp::Lt, alg)?,
            cond(0, Dword, SeccompCmpOp::Eq, alg + 1)?,
            cond(0, Dword, SeccompCmpOp::Gt, vsock)?,
        ],
    );
    rules.insert(
        libc::SYS_personality,
        PERSONALITIES
            .iter()
            .map(|&p| cond(0, Dword, SeccompCmpOp::Eq, p))
            .collect::<Result<_, _>>()?,
    );
    if !admin {
        rules.insert(
            libc::SYS_clone,
            vec![cond(
                0,
                Qword,
                SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
                0,
            )?],
        );
    }
    Ok(rules)
}

/// The programs for a capability mask (see `capability_rules::mask`), in load order:
/// the allowlist, then (without CAP_SYS_ADMIN) one that answers `clone3` with ENOSYS so
/// that libc falls back to `clone`, whose flags the allowlist can see (clone3 passes
/// them in memory). Stacked filters answer with the strictest result, and an errno from
/// the later program wins over the allowlist's "allow".
pub(super) fn programs(
    mask: u32,
    trace_without_cap: bool,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let admin = mask & bit("SYS_ADMIN") != 0;
    let mut any_args: BTreeSet<i64> = COMMON.iter().chain(ARCH_ONLY).copied().collect();
    if trace_without_cap {
        any_args.extend(TRACE);
    }
    for (i, rule) in RULES.iter().enumerate() {
        if mask & (1 << i) != 0 {
            any_args.extend(rule.syscalls);
        }
    }
    // Without CAP_SYS_ADMIN clone3 must get past the allowlist to reach the ENOSYS answer.
    any_args.insert(libc::SYS_clone3);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        any_args.iter().map(|&nr| (nr, vec![])).collect();
    for (nr, r) in arg_rules(admin)? {
        rules.entry(nr).or_insert(r);
    }
    let allowlist = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        ARCH,
    )
    .map_err(SeccompError::Build)?;
    let mut out = vec![allowlist.try_into().map_err(SeccompError::Build)?];
    if !admin {
        let clone3 = SeccompFilter::new(
            [(libc::SYS_clone3, vec![])].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            ARCH,
        )
        .map_err(SeccompError::Build)?;
        out.push(clone3.try_into().map_err(SeccompError::Build)?);
    }
    Ok(out)
}
