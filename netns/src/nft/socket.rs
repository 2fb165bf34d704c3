//! A `NETLINK_NETFILTER` socket: sends a batch and checks every ACK, or runs a dump.
//! The socket belongs to the network namespace of the thread that opened it, for life.

use std::collections::HashMap;
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::NftError;
use super::batch::{Batch, next_seq, nft_type, put_message};
use super::consts::*;

/// How long to wait for the kernel's answer: it answers at once; this only bounds a bug.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const RECV_BUF: usize = 256 * 1024;

pub(crate) struct NfSocket(Socket);

/// One netlink message from a reply.
struct Reply<'a> {
    ty: u16,
    seq: u32,
    payload: &'a [u8],
}

fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Reply<'_>, NftError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        if buf.len() < 16 {
            buf = &[];
            return Some(Err(NftError::Malformed("short netlink header")));
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            buf = &[];
            return Some(Err(NftError::Malformed("bad netlink message length")));
        }
        let reply = Reply {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[16..len],
        };
        buf = &buf[super::attr::align4(len).min(buf.len())..];
        Some(Ok(reply))
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 for an ACK).
fn error_code(payload: &[u8]) -> Result<i32, NftError> {
    let b: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(NftError::Malformed("short error message"))?;
    Ok(-i32::from_ne_bytes(b))
}

impl NfSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Self, NftError> {
        let mut s = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
        s.bind_auto().map_err(NftError::Socket)?;
        setsockopt(
            &s,
            sockopt::ReceiveTimeout,
            &TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0),
        )
        .map_err(|e| NftError::Socket(e.into()))?;
        Ok(NfSocket(s))
    }

    fn recv(&self, buf: &mut Vec<u8>) -> Result<(), NftError> {
        buf.clear();
        buf.reserve(RECV_BUF);
        self.0.recv(buf, 0).map_err(NftError::Recv)?;
        Ok(())
    }

    /// Sends `batch` and waits for the ACK of each of its messages. The first refusal is
    /// returned with the description of the refused message; the kernel then applied none.
    pub(crate) fn apply(&self, batch: Batch) -> Result<(), NftError> {
        let batch = batch.finish();
        let mut pending: HashMap<u32, String> = batch.pending.into_iter().collect();
        let sent = self.0.send(&batch.buf, 0).map_err(NftError::Send)?;
        if sent != batch.buf.len() {
            return Err(NftError::Malformed("short send of a batch"));
        }
        let mut buf = Vec::with_capacity(RECV_BUF);
        while !pending.is_empty() {
            self.recv(&mut buf)?;
            for m in messages(&buf) {
                let m = m?;
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(m.payload)?;
                let what = pending.remove(&m.seq);
                if code != 0 {
                    return Err(NftError::Kernel {
                        what: what.unwrap_or_else(|| "the batch".into()),
                        source: std::io::Error::from_raw_os_error(code),
                    });
                }
            }
        }
        Ok(())
    }

    /// Dumps objects of nf_tables message type `msg` in `family`, filtered by `attrs`
    /// (table name, say). Returns each reply's attributes (after the `nfgenmsg`).
    pub(crate) fn dump(
        &self,
        msg: u16,
        family: u8,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>, NftError> {
        let seq = next_seq(1);
        let mut req = Vec::new();
        put_message(
            &mut req,
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
            attrs,
        );
        self.0.send(&req, 0).map_err(NftError::Send)?;
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            self.recv(&mut buf)?;
            for m in messages(&buf) {
                let m = m?;
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(m.payload)?;
                        if code != 0 {
                            return Err(NftError::Kernel {
                                what: "dumping".into(),
                                source: std::io::Error::from_raw_os_error(code),
                            });
                        }
                    }
                    _ if m.payload.len() >= 4 => out.push(m.payload[4..].to_vec()),
                    _ => return Err(NftError::Malformed("dump reply without nfgenmsg")),
                }
            }
        }
    }
}
