//! The offered instance sizes and normalization of a request up to one of them.
//!
//! A request that matches no offered size is billed and run as the smallest offered size
//! whose vCPU and memory are both at least the request (seed 004: 7 vCPU / 13 GiB runs as
//! 8 vCPU / 16 GiB).

const GIB: u64 = 1 << 30;

/// (vCPU, GiB) pairs offered, from PRODUCT.md.
pub const OFFERED: &[(u64, u64)] = &[
    (1, 2),
    (1, 4),
    (2, 4),
    (2, 8),
    (2, 16),
    (4, 8),
    (4, 16),
    (4, 32),
    (8, 16),
    (8, 32),
    (8, 64),
    (12, 24),
    (12, 48),
    (16, 32),
    (16, 64),
    (32, 64),
    (32, 128),
    (64, 128),
    (64, 256),
];

/// An offered size, in the units the runtime enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// The smallest offered size holding the request, or None when the request is larger
/// than every offered size. Ties on vCPU go to less memory, so cost is minimal.
pub fn normalize(cpu_millis: u64, memory_bytes: u64) -> Option<Size> {
    OFFERED
        .iter()
        .map(|&(cpu, gib)| Size {
            cpu_millis: cpu * 1000,
            memory_bytes: gib * GIB,
        })
        .filter(|s| s.cpu_millis >= cpu_millis && s.memory_bytes >= memory_bytes)
        .min_by_key(|s| (s.cpu_millis, s.memory_bytes))
}

/// The largest offered size, for error messages.
pub fn largest() -> Size {
    let (cpu, gib) = OFFERED[OFFERED.len() - 1];
    Size {
        cpu_millis: cpu * 1000,
        memory_bytes: gib * GIB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_up() {
        assert_eq!(
            normalize(7000, 13 * GIB),
            Some(Size {
                cpu_millis: 8000,
                memory_bytes: 16 * GIB
            })
        );
        assert_eq!(
            normalize(500, 512 << 20),
            Some(Size {
                cpu_millis: 1000,
                memory_bytes: 2 * GIB
            })
        );
        assert_eq!(
            normalize(1000, 2 * GIB),
            Some(Size {
                cpu_millis: 1000,
                memory_bytes: 2 * GIB
            })
        );
        // Memory drives the vCPU up: 1 vCPU with 10 GiB → 2 vCPU / 16 GiB.
        assert_eq!(
            normalize(1000, 10 * GIB),
            Some(Size {
                cpu_millis: 2000,
                memory_bytes: 16 * GIB
            })
        );
        assert_eq!(normalize(65_000, GIB), None);
        assert_eq!(normalize(1000, 257 * GIB), None);
    }
}
