//! nfnetlink messages and the batch (transaction) that carries nf_tables changes.

use std::sync::atomic::{AtomicU32, Ordering};

use super::consts::*;

/// Sequence numbers of this process; replies carry them back.
static SEQ: AtomicU32 = AtomicU32::new(1);

pub(crate) fn next_seq(n: u32) -> u32 {
    SEQ.fetch_add(n, Ordering::Relaxed)
}

/// Appends one netlink message with an `nfgenmsg` header to `buf`.
pub(crate) fn put_message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(NFNETLINK_V0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(attrs);
}

/// The nf_tables message type `msg` as nfnetlink numbers it.
pub(crate) fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// Messages between `BATCH_BEGIN` and `BATCH_END`: the kernel applies all of them or
/// none. Every message asks for an ACK so each one's outcome is checked.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) buf: Vec<u8>,
    /// Sequence number and description of each message that gets an ACK.
    pub(crate) pending: Vec<(u32, String)>,
}

impl Batch {
    pub(crate) fn new() -> Self {
        let mut b = Batch {
            buf: Vec::new(),
            pending: Vec::new(),
        };
        put_message(
            &mut b.buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            next_seq(1),
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        b
    }

    pub(crate) fn push(&mut self, msg: u16, flags: u16, family: u8, attrs: &[u8], what: String) {
        let seq = next_seq(1);
        put_message(
            &mut self.buf,
            nft_type(msg),
            flags | NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
            attrs,
        );
        self.pending.push((seq, what));
    }

    /// Closes the batch; the bytes are ready to send.
    pub(crate) fn finish(mut self) -> Self {
        put_message(
            &mut self.buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            next_seq(1),
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        self
    }
}
