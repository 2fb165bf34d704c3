//! Id ranges of groups (issue 14): which slot of the user-namespace pool each group holds.
//!
//! One table, slot → group name. A slot is taken in the write transaction that stores
//! the group and given back in the one that removes the group record
//! ([`WriteTx::delete_group`]), so redb's atomic commits are the whole crash-consistency
//! story: a slot is either held by a stored group or free, and two live groups never
//! share one. The pool is small (the config's `user_namespaces.ranges`), so finding the
//! lowest free slot or a group's slot scans the table.

use redb::{ReadableTable, TableDefinition};

use super::{Result, Store, WriteTx, db_err};

/// Slot → group name.
pub(super) const ID_RANGES: TableDefinition<u32, &str> = TableDefinition::new("id_ranges");

impl WriteTx<'_> {
    /// Takes the lowest free slot below `pool` for `group`; None when every slot is held.
    /// A group that already holds a slot keeps it.
    pub fn allocate_range(&mut self, group: &str, pool: u32) -> Result<Option<u32>> {
        if let Some(slot) = self.range_of(group)? {
            return Ok(Some(slot));
        }
        let mut t = self.tx.open_table(ID_RANGES).map_err(db_err)?;
        let mut next = 0u32;
        for item in t.iter().map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            if k.value() != next {
                break;
            }
            next += 1;
        }
        if next >= pool {
            return Ok(None);
        }
        t.insert(next, group).map_err(db_err)?;
        Ok(Some(next))
    }

    /// The slot `group` holds, if any.
    pub fn range_of(&self, group: &str) -> Result<Option<u32>> {
        let t = self.tx.open_table(ID_RANGES).map_err(db_err)?;
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if v.value() == group {
                return Ok(Some(k.value()));
            }
        }
        Ok(None)
    }

    /// Gives back the slot `group` holds (none is fine); returns it.
    pub fn free_range_of(&mut self, group: &str) -> Result<Option<u32>> {
        let slot = self.range_of(group)?;
        if let Some(slot) = slot {
            let mut t = self.tx.open_table(ID_RANGES).map_err(db_err)?;
            t.remove(slot).map_err(db_err)?;
        }
        Ok(slot)
    }

    /// Every held slot and its group, lowest slot first.
    pub fn ranges(&self) -> Result<Vec<(u32, String)>> {
        let t = self.tx.open_table(ID_RANGES).map_err(db_err)?;
        collect(&t)
    }
}

impl Store {
    /// Every held slot and its group, lowest slot first.
    pub fn ranges(&self) -> Result<Vec<(u32, String)>> {
        self.read(|tx| {
            let t = tx.open_table(ID_RANGES).map_err(db_err)?;
            collect(&t)
        })
    }
}

fn collect(t: &impl ReadableTable<u32, &'static str>) -> Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for item in t.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        out.push((k.value(), v.value().to_string()));
    }
    Ok(out)
}
