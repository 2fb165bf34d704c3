//! Which group holds each host block device named by a `disk` volume (issue 9).
//!
//! One table, device path (resolved, as `/dev/...`) → group name. A hold is taken in
//! the write transaction that admits the group (or stores an update that names a new
//! disk) and given back in the one that removes its record
//! ([`WriteTx::delete_group`]), as id ranges are. Admission refuses a device held by
//! another group that is not finished; a finished group's hold no longer counts (its
//! sandbox, and with it the mount, went when it finished).

use redb::{ReadableTable, TableDefinition};

use super::{Result, Store, WriteTx, db_err};

/// Device path → group name.
pub(super) const DISKS: TableDefinition<&str, &str> = TableDefinition::new("disks");

impl WriteTx<'_> {
    /// Records that `group` holds `device` (replacing an earlier holder).
    pub fn hold_disk(&mut self, device: &str, group: &str) -> Result<()> {
        let mut t = self.tx.open_table(DISKS).map_err(db_err)?;
        t.insert(device, group).map_err(db_err)?;
        Ok(())
    }

    /// The group holding `device`, if any.
    pub fn disk_holder(&self, device: &str) -> Result<Option<String>> {
        let t = self.tx.open_table(DISKS).map_err(db_err)?;
        let v = t.get(device).map_err(db_err)?;
        Ok(v.map(|v| v.value().to_string()))
    }

    /// Gives back every device `group` holds.
    pub fn release_disks_of(&mut self, group: &str) -> Result<()> {
        let mut t = self.tx.open_table(DISKS).map_err(db_err)?;
        let mine: Vec<String> = collect(&t)?
            .into_iter()
            .filter(|(_, g)| g == group)
            .map(|(d, _)| d)
            .collect();
        for d in mine {
            t.remove(d.as_str()).map_err(db_err)?;
        }
        Ok(())
    }
}

impl Store {
    /// Every held device and its group.
    pub fn held_disks(&self) -> Result<Vec<(String, String)>> {
        self.read(|tx| {
            let t = tx.open_table(DISKS).map_err(db_err)?;
            collect(&t)
        })
    }
}

fn collect(t: &impl ReadableTable<&'static str, &'static str>) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in t.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        out.push((k.value().to_string(), v.value().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use eci_api::v1::{ContainerGroup, GroupSpec};

    use super::super::{Store, StoreError};

    fn group(name: &str) -> ContainerGroup {
        ContainerGroup {
            spec: Some(GroupSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_hold_lasts_until_the_group_record_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("state.redb")).expect("open");
        s.write(|tx| {
            tx.insert_group(&mut group("a"))?;
            tx.hold_disk("/dev/vdb", "a")?;
            tx.hold_disk("/dev/vdc", "a")?;
            tx.insert_group(&mut group("b"))?;
            tx.hold_disk("/dev/vdd", "b")
        })
        .expect("hold");
        assert_eq!(s.held_disks().expect("held").len(), 3);
        // Survives a reopen (durable), then goes with the record, in its transaction.
        drop(s);
        let s = Store::open(&dir.path().join("state.redb")).expect("reopen");
        s.write(|tx| {
            assert_eq!(tx.disk_holder("/dev/vdb")?.as_deref(), Some("a"));
            tx.delete_group("a").map(drop)
        })
        .expect("delete");
        assert_eq!(
            s.held_disks().expect("held"),
            [("/dev/vdd".to_string(), "b".to_string())]
        );
        let none: Result<Option<String>, StoreError> = s.write(|tx| tx.disk_holder("/dev/vdb"));
        assert_eq!(none.expect("read"), None);
    }
}
