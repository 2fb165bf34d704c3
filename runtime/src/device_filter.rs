//! The devices controller of cgroup v2. v2 has no `devices.allow` file: the kernel runs
//! the `BPF_PROG_TYPE_CGROUP_DEVICE` programs attached to a process's cgroup (and its
//! ancestors) whenever it opens or creates a device node, and refuses with EPERM when
//! one answers 0. runc, crun and youki generate such a program from the device rules;
//! this module does the same for [`ALLOWED_DEVICES`], with a small instruction encoder
//! instead of an eBPF library, since the program is a straight list of compares.
//!
//! The program allows mknod of any character or block device and read/write of the
//! listed character devices, and refuses everything else. It calls no helper function,
//! so the kernel does not ask for a GPL-compatible license.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::devices::{ALLOWED_DEVICES, CharDevice};

#[cfg(test)]
mod enforcement_tests;
#[cfg(test)]
mod interpreter_tests;

/// Errors putting the device program on a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    #[error("opening cgroup directory {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("loading the device program (verifier log: {log:?})")]
    Load {
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("listing the device programs of cgroup {path}")]
    Query {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching the device program to cgroup {path}")]
    Attach {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("detaching an earlier device program from cgroup {path}")]
    Detach {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// `bpf(2)` commands, program and attach types, flags (`linux/bpf.h`).
mod abi {
    pub const BPF_PROG_LOAD: u32 = 5;
    pub const BPF_PROG_ATTACH: u32 = 8;
    pub const BPF_PROG_DETACH: u32 = 9;
    pub const BPF_PROG_GET_FD_BY_ID: u32 = 13;
    pub const BPF_PROG_QUERY: u32 = 16;
    pub const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    pub const BPF_CGROUP_DEVICE: u32 = 6;
    /// Programs of the cgroup and of its ancestors all run; every one must allow.
    pub const BPF_F_ALLOW_MULTI: u32 = 2;

    /// `struct bpf_cgroup_dev_ctx`: `access_type` is `access << 16 | type`.
    pub const CTX_ACCESS_TYPE: i16 = 0;
    pub const CTX_MAJOR: i16 = 4;
    pub const CTX_MINOR: i16 = 8;
    pub const DEV_BLOCK: u32 = 1;
    pub const DEV_CHAR: u32 = 2;
    pub const ACC_MKNOD: u32 = 1;
    pub const ACC_READ: u32 = 2;
    pub const ACC_WRITE: u32 = 4;
}

/// One eBPF instruction, `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one (little endian).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Opcodes used here: class | operation | source.
mod op {
    pub const LDX_MEM_W: u8 = 0x61;
    pub const ALU64_AND_K: u8 = 0x57;
    pub const ALU64_RSH_K: u8 = 0x77;
    pub const ALU64_MOV_K: u8 = 0xb7;
    pub const ALU64_MOV_X: u8 = 0xbf;
    pub const JMP_JNE_K: u8 = 0x55;
    pub const JMP_JNE_X: u8 = 0x5d;
    pub const JMP_EXIT: u8 = 0x95;
}

/// Registers: R0 is the result, R1 the context; R2-R5 hold its fields.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    // `struct bpf_insn` packs dst_reg:4 then src_reg:4: the first bitfield takes the
    // low bits on little-endian targets and the high bits on big-endian ones.
    let regs = if cfg!(target_endian = "little") {
        src << 4 | dst
    } else {
        dst << 4 | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

/// Jump offset placeholder for "to the next rule", patched when the rule is complete.
const NEXT_RULE: i16 = i16::MIN;

/// One rule of the program: device type, numbers (`None`: any) and the access bits it
/// allows; a request matches when its access bits are a subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    kind: u32,
    major: Option<u32>,
    minor: Option<u32>,
    access: u32,
}

/// mknod of anything, then read/write/mknod of each allowed device.
fn rules(devices: &[CharDevice]) -> Vec<Rule> {
    let mut rules: Vec<Rule> = [abi::DEV_CHAR, abi::DEV_BLOCK]
        .into_iter()
        .map(|kind| Rule {
            kind,
            major: None,
            minor: None,
            access: abi::ACC_MKNOD,
        })
        .collect();
    rules.extend(devices.iter().map(|d| Rule {
        kind: abi::DEV_CHAR,
        major: Some(d.major),
        minor: d.minor,
        access: abi::ACC_MKNOD | abi::ACC_READ | abi::ACC_WRITE,
    }));
    rules
}

/// A block of compares that returns 1 when the request matches `rule` and falls
/// through to the next block otherwise. Device numbers are at most 32 bits (majors 12,
/// minors 20), so they fit the signed immediate.
fn rule_block(rule: &Rule) -> Vec<Insn> {
    let mut b = vec![insn(op::JMP_JNE_K, TYPE, 0, NEXT_RULE, rule.kind as i32)];
    // R0 = access & allowed; if R0 != access the request wants more than allowed.
    b.push(insn(op::ALU64_MOV_X, R0, ACCESS, 0, 0));
    b.push(insn(op::ALU64_AND_K, R0, 0, 0, rule.access as i32));
    b.push(insn(op::JMP_JNE_X, R0, ACCESS, NEXT_RULE, 0));
    if let Some(major) = rule.major {
        b.push(insn(op::JMP_JNE_K, MAJOR, 0, NEXT_RULE, major as i32));
    }
    if let Some(minor) = rule.minor {
        b.push(insn(op::JMP_JNE_K, MINOR, 0, NEXT_RULE, minor as i32));
    }
    b.push(insn(op::ALU64_MOV_K, R0, 0, 0, 1));
    b.push(insn(op::JMP_EXIT, 0, 0, 0, 0));
    let len = b.len();
    for (i, ins) in b.iter_mut().enumerate() {
        if ins.off == NEXT_RULE {
            // Jumps count from the instruction after the jump.
            ins.off = (len - i - 1) as i16;
        }
    }
    b
}

/// The program for `devices`: load the context into registers, one block per rule,
/// then refuse.
pub fn program(devices: &[CharDevice]) -> Vec<Insn> {
    let mut p = vec![
        insn(op::LDX_MEM_W, TYPE, R1, abi::CTX_ACCESS_TYPE, 0),
        insn(op::ALU64_AND_K, TYPE, 0, 0, 0xffff),
        insn(op::LDX_MEM_W, ACCESS, R1, abi::CTX_ACCESS_TYPE, 0),
        insn(op::ALU64_RSH_K, ACCESS, 0, 0, 16),
        insn(op::LDX_MEM_W, MAJOR, R1, abi::CTX_MAJOR, 0),
        insn(op::LDX_MEM_W, MINOR, R1, abi::CTX_MINOR, 0),
    ];
    for rule in rules(devices) {
        p.extend(rule_block(&rule));
    }
    p.push(insn(op::ALU64_MOV_K, R0, 0, 0, 0));
    p.push(insn(op::JMP_EXIT, 0, 0, 0, 0));
    p
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`; the kernel treats
/// the fields it is not given as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `union bpf_attr` for BPF_PROG_QUERY, without the fields of later kernels.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Calls `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
///
/// `T` must be the `bpf_attr` layout of `cmd`, and every pointer in it must point to
/// memory that is valid for the kernel to read (or write, for output buffers) for the
/// length stated next to it.
unsafe fn bpf<T>(cmd: u32, attr: &mut T) -> io::Result<i64> {
    // SAFETY: the caller guarantees the layout and the pointers; the size is T's.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a descriptor `bpf` returned.
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// License of the program (the kernel's MODULE_LICENSE strings). Any string does for a
/// program that calls no GPL-only helper.
const LICENSE: &std::ffi::CStr = c"Apache-2.0";

fn prog_load(insns: &[Insn], log: &mut [u8]) -> io::Result<OwnedFd> {
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"eci_devices");
    let mut attr = ProgLoadAttr {
        prog_type: abi::BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    if !log.is_empty() {
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: the PROG_LOAD layout; insns, license and log outlive the call, and their
    // lengths are the ones stated.
    unsafe { bpf(abi::BPF_PROG_LOAD, &mut attr) }.map(owned)
}

/// Loads the program; on failure loads it again with the verifier's log, for the error.
fn load(insns: &[Insn]) -> Result<OwnedFd, DeviceFilterError> {
    prog_load(insns, &mut []).map_err(|source| {
        let mut log = vec![0u8; 64 * 1024];
        let _ = prog_load(insns, &mut log);
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        DeviceFilterError::Load {
            log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
            source,
        }
    })
}

/// Ids of the device programs attached to the cgroup itself (not its ancestors).
fn attached(cgroup: &OwnedFd) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: abi::BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: the PROG_QUERY layout; ids has room for prog_cnt entries and outlives the
    // call.
    unsafe { bpf(abi::BPF_PROG_QUERY, &mut attr) }?;
    let n = (attr.prog_cnt as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}

fn attach_cmd(cmd: u32, cgroup: &OwnedFd, prog: &OwnedFd, flags: u32) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: abi::BPF_CGROUP_DEVICE,
        attach_flags: flags,
        replace_bpf_fd: 0,
    };
    // SAFETY: the PROG_ATTACH/PROG_DETACH layout, integers only.
    unsafe { bpf(cmd, &mut attr) }.map(|_| ())
}

fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: the GET_FD_BY_ID layout, integers only.
    unsafe { bpf(abi::BPF_PROG_GET_FD_BY_ID, &mut attr) }.map(owned)
}

/// Restricts the processes of the cgroup v2 directory `cgroup_dir` to
/// [`ALLOWED_DEVICES`]. Programs attached earlier to the same cgroup (a cgroup created
/// again) are replaced: the new one is attached first, so there is no moment without a
/// filter. The attachment outlives the program's descriptor; it ends with the cgroup.
pub fn attach(cgroup_dir: &Path) -> Result<(), DeviceFilterError> {
    let path = || cgroup_dir.display().to_string();
    let dir: OwnedFd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(cgroup_dir)
        .map_err(|source| DeviceFilterError::Open {
            path: path(),
            source,
        })?
        .into();
    let earlier = attached(&dir).map_err(|source| DeviceFilterError::Query {
        path: path(),
        source,
    })?;
    let prog = load(&program(ALLOWED_DEVICES))?;
    attach_cmd(abi::BPF_PROG_ATTACH, &dir, &prog, abi::BPF_F_ALLOW_MULTI).map_err(|source| {
        DeviceFilterError::Attach {
            path: path(),
            source,
        }
    })?;
    for id in earlier {
        let detach = match prog_by_id(id) {
            Ok(old) => attach_cmd(abi::BPF_PROG_DETACH, &dir, &old, 0),
            // Gone meanwhile: nothing to detach.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => Err(e),
        };
        detach.map_err(|source| DeviceFilterError::Detach {
            path: path(),
            source,
        })?;
    }
    Ok(())
}
