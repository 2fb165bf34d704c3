//! The nf_tables expressions this crate uses, as values (so the compilation can be tested
//! without a kernel) and their netlink encoding. Every expression that loads data writes
//! the first data register and every compare reads it, as `nft` itself does for simple
//! matches.

use super::attr::AttrWriter;
use super::consts::*;

/// Where a `payload` expression reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base {
    /// The Ethernet header (bridge and netdev families).
    Link,
    Network,
    Transport,
}

/// A `meta` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaKey {
    /// The netfilter family of the packet: IPv4 or IPv6 (1 byte).
    NfProto,
    /// The transport protocol number (1 byte).
    L4Proto,
    /// Input link name (16 bytes, zero padded).
    IifName,
    /// Output link name (16 bytes, zero padded).
    OifName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    Drop,
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `meta KEY` into the register.
    Meta(MetaKey),
    /// `ct state` (a host-endian u32 of `CT_STATE_*` bits) into the register.
    CtState,
    /// `len` bytes at `offset` of the header `base` into the register.
    Payload { base: Base, offset: u32, len: u32 },
    /// register = (register & mask) ^ xor, over `mask.len()` bytes.
    Bitwise { mask: Vec<u8>, xor: Vec<u8> },
    /// Ends the rule unless register == data (or != when `!eq`).
    Cmp { eq: bool, data: Vec<u8> },
    /// Ends the rule unless from <= register <= to (big-endian compare).
    Range { from: Vec<u8>, to: Vec<u8> },
    /// Counts packets and bytes that reach it.
    Counter,
    /// Sets the verdict.
    Verdict(Verdict),
    /// Source NAT to the output link's address.
    Masquerade,
}

impl Expr {
    pub(crate) fn cmp_eq(data: &[u8]) -> Self {
        Expr::Cmp {
            eq: true,
            data: data.to_vec(),
        }
    }

    pub(crate) fn cmp_ne(data: &[u8]) -> Self {
        Expr::Cmp {
            eq: false,
            data: data.to_vec(),
        }
    }

    /// Writes the expression as one `NFTA_LIST_ELEM` of `NFTA_RULE_EXPRESSIONS`.
    pub(crate) fn encode(&self, w: &mut AttrWriter) {
        w.nest(NFTA_LIST_ELEM, |w| match self {
            Expr::Meta(key) => {
                let key = match key {
                    MetaKey::NfProto => NFT_META_NFPROTO,
                    MetaKey::L4Proto => NFT_META_L4PROTO,
                    MetaKey::IifName => NFT_META_IIFNAME,
                    MetaKey::OifName => NFT_META_OIFNAME,
                };
                w.put_str(NFTA_EXPR_NAME, "meta");
                w.nest(NFTA_EXPR_DATA, |w| {
                    w.put_be32(NFTA_META_KEY, key);
                    w.put_be32(NFTA_META_DREG, NFT_REG_1);
                });
            }
            Expr::CtState => {
                w.put_str(NFTA_EXPR_NAME, "ct");
                w.nest(NFTA_EXPR_DATA, |w| {
                    w.put_be32(NFTA_CT_KEY, NFT_CT_STATE);
                    w.put_be32(NFTA_CT_DREG, NFT_REG_1);
                });
            }
            Expr::Payload { base, offset, len } => {
                let base = match base {
                    Base::Link => NFT_PAYLOAD_LL_HEADER,
                    Base::Network => NFT_PAYLOAD_NETWORK_HEADER,
                    Base::Transport => NFT_PAYLOAD_TRANSPORT_HEADER,
                };
                w.put_str(NFTA_EXPR_NAME, "payload");
                w.nest(NFTA_EXPR_DATA, |w| {
                    w.put_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
                    w.put_be32(NFTA_PAYLOAD_BASE, base);
                    w.put_be32(NFTA_PAYLOAD_OFFSET, *offset);
                    w.put_be32(NFTA_PAYLOAD_LEN, *len);
                });
            }
            Expr::Bitwise { mask, xor } => {
                w.put_str(NFTA_EXPR_NAME, "bitwise");
                w.nest(NFTA_EXPR_DATA, |w| {
                    w.put_be32(NFTA_BITWISE_SREG, NFT_REG_1);
                    w.put_be32(NFTA_BITWISE_DREG, NFT_REG_1);
                    w.put_be32(NFTA_BITWISE_LEN, mask.len() as u32);
                    w.nest(NFTA_BITWISE_MASK, |w| w.put(NFTA_DATA_VALUE, mask));
                    w.nest(NFTA_BITWISE_XOR, |w| w.put(NFTA_DATA_VALUE, xor));
                });
            }
            Expr::Cmp { eq, data } => {
                w.put_str(NFTA_EXPR_NAME, "cmp");
                w.nest(NFTA_EXPR_DATA, |w| {
                    w.put_be32(NFTA_CMP_SREG, NFT_REG_1);
                    w.put_be32(NFTA_CMP_OP, if *eq { NFT_CMP_EQ } else { NFT_CMP_NEQ });
                    w.nest(NFTA_CMP_DATA, |w| w.put(NFTA_DATA_VALUE, data));
                });
            }
            Expr::Range { from, to } => {
                w.put_str(NFTA_EXPR_NAME, "range");
                w.nest(NFTA_EXPR_DATA, |w| {
                    w.put_be32(NFTA_RANGE_SREG, NFT_REG_1);
                    w.put_be32(NFTA_RANGE_OP, NFT_RANGE_EQ);
                    w.nest(NFTA_RANGE_FROM_DATA, |w| w.put(NFTA_DATA_VALUE, from));
                    w.nest(NFTA_RANGE_TO_DATA, |w| w.put(NFTA_DATA_VALUE, to));
                });
            }
            Expr::Counter => {
                w.put_str(NFTA_EXPR_NAME, "counter");
                w.nest(NFTA_EXPR_DATA, |w| {
                    w.put(NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
                    w.put(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
                });
            }
            Expr::Verdict(v) => {
                let code = match v {
                    Verdict::Accept => NF_ACCEPT,
                    Verdict::Drop => NF_DROP,
                };
                w.put_str(NFTA_EXPR_NAME, "immediate");
                w.nest(NFTA_EXPR_DATA, |w| {
                    w.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                    w.nest(NFTA_IMMEDIATE_DATA, |w| {
                        w.nest(NFTA_DATA_VERDICT, |w| w.put_be32(NFTA_VERDICT_CODE, code));
                    });
                });
            }
            Expr::Masquerade => {
                w.put_str(NFTA_EXPR_NAME, "masq");
            }
        });
    }
}
