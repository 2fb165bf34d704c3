//! The generated program, run by a tiny interpreter of the instructions it uses, against
//! every kind of request: proves the encoding and the jump offsets without root.

use super::*;

/// Runs `prog` on a `bpf_cgroup_dev_ctx`; the returned R0.
fn run(prog: &[Insn], access: u32, kind: u32, major: u32, minor: u32) -> u64 {
    let ctx = [access << 16 | kind, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        let imm = i.imm as i64 as u64;
        pc += 1;
        match i.code {
            op::LDX_MEM_W => {
                assert_eq!(src, R1 as usize, "loads only from the context");
                r[dst] = u64::from(ctx[i.off as usize / 4]);
            }
            op::ALU64_AND_K => r[dst] &= imm,
            op::ALU64_RSH_K => r[dst] >>= imm,
            op::ALU64_MOV_K => r[dst] = imm,
            op::ALU64_MOV_X => r[dst] = r[src],
            op::JMP_JNE_K if r[dst] != imm => pc += i.off as usize,
            op::JMP_JNE_X if r[dst] != r[src] => pc += i.off as usize,
            op::JMP_JNE_K | op::JMP_JNE_X => {}
            op::JMP_EXIT => return r[0],
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

const RW: u32 = abi::ACC_READ | abi::ACC_WRITE;
const CHR: u32 = abi::DEV_CHAR;
const BLK: u32 = abi::DEV_BLOCK;

#[test]
fn allows_exactly_the_default_devices() {
    let p = program(ALLOWED_DEVICES);
    let allowed = |access, kind, major, minor| run(&p, access, kind, major, minor) == 1;
    for d in ALLOWED_DEVICES {
        let minor = d.minor.unwrap_or(7);
        assert!(allowed(RW, CHR, d.major, minor), "{d:?} rw");
        assert!(allowed(abi::ACC_READ, CHR, d.major, minor), "{d:?} r");
        assert!(allowed(abi::ACC_MKNOD, CHR, d.major, minor), "{d:?} m");
        // The same numbers as a block device are another device.
        assert!(
            !allowed(abi::ACC_READ, BLK, d.major, minor),
            "{d:?} as block"
        );
    }
    assert!(allowed(RW, CHR, 136, 4095), "every pts");
    // Outside the list: /dev/kmsg, /dev/mem, /dev/net/tun, a disk, fuse.
    for (kind, major, minor) in [(CHR, 1, 11), (CHR, 1, 1), (CHR, 10, 200), (BLK, 254, 0)] {
        assert!(
            !allowed(abi::ACC_READ, kind, major, minor),
            "{major}:{minor} r"
        );
        assert!(
            !allowed(abi::ACC_WRITE, kind, major, minor),
            "{major}:{minor} w"
        );
        assert!(
            !allowed(RW | abi::ACC_MKNOD, kind, major, minor),
            "{major}:{minor} rwm"
        );
        // Creating the node is fine; opening it is what is refused.
        assert!(
            allowed(abi::ACC_MKNOD, kind, major, minor),
            "{major}:{minor} m"
        );
    }
    // Neighbours of listed numbers.
    assert!(!allowed(abi::ACC_READ, CHR, 1, 4));
    assert!(!allowed(abi::ACC_READ, CHR, 5, 3));
    assert!(!allowed(abi::ACC_READ, CHR, 137, 0));
}

#[test]
fn encodes_registers_and_jumps() {
    let p = program(&[]);
    // Six loads, two mknod rules of 6 instructions each, the refusal.
    assert_eq!(p.len(), 6 + 2 * 6 + 2);
    assert_eq!(p[0], insn(op::LDX_MEM_W, TYPE, R1, 0, 0));
    assert_eq!(p[0].regs, 0x12, "src R1 high nibble, dst R2 low nibble");
    // The first jump of the first rule skips the rest of its block.
    assert_eq!(p[6].off, 5);
    assert_eq!(std::mem::size_of::<Insn>(), 8);
    assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
}
