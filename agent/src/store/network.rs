//! What the agent holds of the host's network for its groups (issue 8).
//!
//! - **ENIs.** Before an ENI leaves the host netns, its record (original name, ifindex,
//!   MAC, MTU) is committed here, keyed by the holding group's id; it is removed only
//!   after the ENI is back on the host. So whatever crashes between the two — agent,
//!   shim, host — the record says where the ENI came from, and cleanup (which finds
//!   groups by id, even those the store forgot) gives it back before the group's netns
//!   is released.
//! - **Dev addresses.** A group without an ENI gets an IPv4 address of the dev bridge's
//!   subnet, taken in the transaction that admits the group and given back in the one
//!   that removes its record ([`WriteTx::delete_group`]), as id ranges are.

use std::net::Ipv4Addr;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError, WriteTx, db_err};

/// Group id → JSON [`HeldEni`].
pub(super) const ENIS: TableDefinition<&str, &[u8]> = TableDefinition::new("enis");
/// IPv4 address (as u32) → group name.
pub(super) const DEV_ADDRESSES: TableDefinition<u32, &str> = TableDefinition::new("dev_addresses");

/// An ENI a group holds (or is being given), as it was on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldEni {
    /// The holding group's name (for `ecictl node`).
    pub group: String,
    pub mac: String,
    /// Its name in the host netns, which it gets back.
    pub original_name: String,
    /// Its ifindex, which moving between namespaces keeps (the tenant cannot change it).
    pub index: u32,
    pub mtu: u32,
}

fn decode_eni(id: &str, bytes: &[u8]) -> Result<HeldEni> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
        key: id.to_string(),
        source,
    })
}

impl WriteTx<'_> {
    /// Records that group `id` is about to hold `eni` (replacing an earlier record).
    pub fn hold_eni(&mut self, id: &str, eni: &HeldEni) -> Result<()> {
        let bytes = serde_json::to_vec(eni).map_err(|source| StoreError::Json {
            key: id.to_string(),
            source,
        })?;
        let mut t = self.tx.open_table(ENIS).map_err(db_err)?;
        t.insert(id, bytes.as_slice()).map_err(db_err)?;
        Ok(())
    }

    /// Forgets group `id`'s ENI (it is back on the host).
    pub fn release_eni(&mut self, id: &str) -> Result<()> {
        let mut t = self.tx.open_table(ENIS).map_err(db_err)?;
        t.remove(id).map_err(db_err)?;
        Ok(())
    }

    /// Every held ENI, by group id.
    pub fn held_enis(&self) -> Result<Vec<(String, HeldEni)>> {
        let t = self.tx.open_table(ENIS).map_err(db_err)?;
        collect_enis(&t)
    }

    /// Takes the lowest free address of `hosts` (the usable addresses of the dev subnet,
    /// the gateway excluded) for `group`; None when all are taken. A group that holds one
    /// keeps it.
    pub fn allocate_dev_address(
        &mut self,
        group: &str,
        hosts: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<Ipv4Addr>> {
        if let Some(a) = self.dev_address_of(group)? {
            return Ok(Some(a));
        }
        let mut t = self.tx.open_table(DEV_ADDRESSES).map_err(db_err)?;
        let mut next = *hosts.start();
        for item in t.range(hosts.clone()).map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            if k.value() != next {
                break;
            }
            next += 1;
        }
        if !hosts.contains(&next) {
            return Ok(None);
        }
        t.insert(next, group).map_err(db_err)?;
        Ok(Some(Ipv4Addr::from(next)))
    }

    /// The dev address `group` holds, if any.
    pub fn dev_address_of(&self, group: &str) -> Result<Option<Ipv4Addr>> {
        let t = self.tx.open_table(DEV_ADDRESSES).map_err(db_err)?;
        dev_address_in(&t, group)
    }

    /// Gives back the dev address `group` holds (none is fine).
    pub fn free_dev_address_of(&mut self, group: &str) -> Result<()> {
        if let Some(a) = self.dev_address_of(group)? {
            let mut t = self.tx.open_table(DEV_ADDRESSES).map_err(db_err)?;
            t.remove(u32::from(a)).map_err(db_err)?;
        }
        Ok(())
    }
}

impl Store {
    /// Every held ENI, by group id.
    pub fn held_enis(&self) -> Result<Vec<(String, HeldEni)>> {
        self.read(|tx| {
            let t = tx.open_table(ENIS).map_err(db_err)?;
            collect_enis(&t)
        })
    }

    /// The ENI group `id` holds, if any.
    pub fn held_eni(&self, id: &str) -> Result<Option<HeldEni>> {
        self.read(|tx| {
            let t = tx.open_table(ENIS).map_err(db_err)?;
            let v = t.get(id).map_err(db_err)?;
            v.map(|v| decode_eni(id, v.value())).transpose()
        })
    }

    /// The dev address `group` holds, if any.
    pub fn dev_address_of(&self, group: &str) -> Result<Option<Ipv4Addr>> {
        self.read(|tx| {
            let t = tx.open_table(DEV_ADDRESSES).map_err(db_err)?;
            dev_address_in(&t, group)
        })
    }
}

fn dev_address_in(
    t: &impl ReadableTable<u32, &'static str>,
    group: &str,
) -> Result<Option<Ipv4Addr>> {
    for item in t.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        if v.value() == group {
            return Ok(Some(Ipv4Addr::from(k.value())));
        }
    }
    Ok(None)
}

fn collect_enis(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, HeldEni)>> {
    let mut out = Vec::new();
    for item in t.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        out.push((k.value().to_string(), decode_eni(k.value(), v.value())?));
    }
    Ok(out)
}
