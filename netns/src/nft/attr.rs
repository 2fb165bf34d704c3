//! Netlink attributes: a writer with nesting, and a reader that walks a buffer of them.

use super::consts::{NLA_F_NESTED, NLA_TYPE_MASK};

/// Netlink aligns every attribute to 4 bytes.
pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A growing buffer of attributes.
#[derive(Debug, Default)]
pub(crate) struct AttrWriter {
    pub(crate) buf: Vec<u8>,
}

impl AttrWriter {
    pub(crate) fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// A NUL-terminated string, as the kernel's `NLA_STRING` policies expect.
    pub(crate) fn put_str(&mut self, ty: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.put(ty, &data);
    }

    /// nf_tables integers are big-endian (`NLA_BE32`).
    pub(crate) fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Writes a nested attribute whose content `f` writes.
    pub(crate) fn nest(&mut self, ty: u16, f: impl FnOnce(&mut AttrWriter)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        f(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }
}

/// Iterates over `(type, payload)` of the attributes in `buf`; stops at the first
/// malformed one (the kernel never sends one).
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let data = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((ty, data))
    })
}

/// The payload of the first attribute of type `ty` in `buf`.
pub(crate) fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

/// A big-endian u64 attribute payload.
pub(crate) fn be64(data: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(data.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_nested_attributes() {
        let mut w = AttrWriter::default();
        w.put_str(1, "abc");
        w.nest(2, |w| {
            w.put_be32(1, 7);
            w.put(2, &[1, 2, 3, 4, 5]);
        });
        // "abc\0" → 8 bytes; nest header 4 + (8 + 12) = 24.
        assert_eq!(w.buf.len(), 8 + 24);
        let top: Vec<_> = attrs(&w.buf).collect();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (1, &b"abc\0"[..]));
        let inner = find(&w.buf, 2).expect("nest");
        assert_eq!(find(inner, 1), Some(&7u32.to_be_bytes()[..]));
        assert_eq!(find(inner, 2), Some(&[1, 2, 3, 4, 5][..]));
    }
}
