//! A whole table as values (chains with hooks, rules with expressions) and the batch that
//! replaces it atomically.

use super::attr::AttrWriter;
use super::batch::Batch;
use super::consts::*;
use super::expr::{Expr, Verdict};

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hook {
    /// `NF_INET_*`.
    pub num: u32,
    pub priority: i32,
    /// "filter" or "nat".
    pub kind: &'static str,
    pub policy: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NftRule {
    pub exprs: Vec<Expr>,
    /// Stored as the rule's comment (`NFTNL_UDATA_RULE_COMMENT`) so `nft list ruleset`
    /// shows it and counters can be matched back to the rule.
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub name: &'static str,
    pub hook: Hook,
    pub rules: Vec<NftRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    /// Owned: the port guards' tables are named after their port.
    pub name: String,
    /// `NFPROTO_*`.
    pub family: u8,
    pub chains: Vec<Chain>,
}

/// The userdata TLV holding `comment`, as libnftnl writes it (NUL included in the length).
pub(crate) fn comment_userdata(comment: &str) -> Vec<u8> {
    let bytes = &comment.as_bytes()[..comment.len().min(127)];
    let mut out = vec![UDATA_RULE_COMMENT, (bytes.len() + 1) as u8];
    out.extend_from_slice(bytes);
    out.push(0);
    out
}

/// The comment in a rule's userdata, if any.
pub(crate) fn userdata_comment(mut data: &[u8]) -> Option<&str> {
    while data.len() >= 2 {
        let (ty, len) = (data[0], data[1] as usize);
        let value = data.get(2..2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            let value = value.strip_suffix(&[0]).unwrap_or(value);
            return std::str::from_utf8(value).ok();
        }
        data = &data[2 + len..];
    }
    None
}

/// Adds to `batch` the messages that delete table `name` if it exists: adding it first
/// (a no-op when present) makes the delete succeed when it is absent, all in one
/// transaction, on kernels without `DESTROYTABLE` too.
pub(crate) fn delete_table(batch: &mut Batch, family: u8, name: &str) {
    let mut w = AttrWriter::default();
    w.put_str(NFTA_TABLE_NAME, name);
    batch.push(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE,
        family,
        &w.buf,
        format!("ensuring table {name}"),
    );
    batch.push(
        NFT_MSG_DELTABLE,
        0,
        family,
        &w.buf,
        format!("deleting table {name}"),
    );
}

/// Adds to `batch` the messages that create `table` with its chains and rules.
pub(crate) fn add_table(batch: &mut Batch, table: &Table) {
    let mut w = AttrWriter::default();
    w.put_str(NFTA_TABLE_NAME, &table.name);
    batch.push(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE,
        table.family,
        &w.buf,
        format!("adding table {}", table.name),
    );
    for chain in &table.chains {
        let mut w = AttrWriter::default();
        w.put_str(NFTA_CHAIN_TABLE, &table.name);
        w.put_str(NFTA_CHAIN_NAME, chain.name);
        w.nest(NFTA_CHAIN_HOOK, |w| {
            w.put_be32(NFTA_HOOK_HOOKNUM, chain.hook.num);
            w.put_be32(NFTA_HOOK_PRIORITY, chain.hook.priority as u32);
        });
        w.put_be32(
            NFTA_CHAIN_POLICY,
            match chain.hook.policy {
                Verdict::Accept => NF_ACCEPT,
                Verdict::Drop => NF_DROP,
            },
        );
        w.put_str(NFTA_CHAIN_TYPE, chain.hook.kind);
        batch.push(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            table.family,
            &w.buf,
            format!("adding chain {} {}", table.name, chain.name),
        );
        for (n, rule) in chain.rules.iter().enumerate() {
            let mut w = AttrWriter::default();
            w.put_str(NFTA_RULE_TABLE, &table.name);
            w.put_str(NFTA_RULE_CHAIN, chain.name);
            w.nest(NFTA_RULE_EXPRESSIONS, |w| {
                for e in &rule.exprs {
                    e.encode(w);
                }
            });
            if let Some(c) = &rule.comment {
                w.put(NFTA_RULE_USERDATA, &comment_userdata(c));
            }
            let what = match &rule.comment {
                Some(c) => format!("adding rule {n} ({c}) to chain {}", chain.name),
                None => format!("adding rule {n} to chain {}", chain.name),
            };
            batch.push(
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                table.family,
                &w.buf,
                what,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip() {
        let u = comment_userdata("eci-sg rule 3");
        assert_eq!(u[0], 0);
        assert_eq!(u[1] as usize, "eci-sg rule 3".len() + 1);
        assert_eq!(userdata_comment(&u), Some("eci-sg rule 3"));
        assert_eq!(userdata_comment(&[1, 2, 9, 9]), None);
        assert_eq!(userdata_comment(&[0, 50, 1]), None);
    }
}
