//! Reading the per-rule counters back with a rule dump of the security-group table.

use super::attr::{AttrWriter, attrs, be64, find};
use super::consts::*;
use super::security_groups::{TABLE, index_of};
use super::socket::NfSocket;
use super::table::userdata_comment;
use super::{NftError, RuleCounter};

/// The counters of the spec rules in the socket's namespace, sorted by index.
pub(crate) fn read(s: &NfSocket) -> Result<Vec<RuleCounter>, NftError> {
    let mut w = AttrWriter::default();
    w.put_str(NFTA_RULE_TABLE, TABLE);
    let rules = match s.dump(NFT_MSG_GETRULE, NFPROTO_INET, &w.buf) {
        Ok(r) => r,
        Err(NftError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut out: Vec<RuleCounter> = rules.iter().filter_map(|r| counter_of(r)).collect();
    out.sort_by_key(|c| c.index);
    // A vm group's table holds a rule in the input or output chain and again in the
    // forward chain (once per guest address): one counter per spec rule, the sum.
    out.dedup_by(|b, a| {
        if a.index != b.index {
            return false;
        }
        a.packets += b.packets;
        a.bytes += b.bytes;
        true
    });
    Ok(out)
}

/// The spec index and counter of one dumped rule, if it is a spec rule of ours.
pub(crate) fn counter_of(rule: &[u8]) -> Option<RuleCounter> {
    if find(rule, NFTA_RULE_TABLE)? != format!("{TABLE}\0").as_bytes() {
        return None;
    }
    let index = index_of(userdata_comment(find(rule, NFTA_RULE_USERDATA)?)?)?;
    let exprs = find(rule, NFTA_RULE_EXPRESSIONS)?;
    for (_, e) in attrs(exprs) {
        if find(e, NFTA_EXPR_NAME) == Some(b"counter\0") {
            let data = find(e, NFTA_EXPR_DATA)?;
            return Some(RuleCounter {
                index,
                packets: be64(find(data, NFTA_COUNTER_PACKETS)?)?,
                bytes: be64(find(data, NFTA_COUNTER_BYTES)?)?,
            });
        }
    }
    None
}
