//! User namespaces for groups (issue 14), agent side: the pool of host id ranges, the
//! start probe, and what `Node.Info` says about them.
//!
//! A group gets a slot of the pool when it is admitted (see [`crate::store`]'s
//! `id_ranges` table); slot `n` is host ids `first_host_id + n * 65536` onwards, 65536 of
//! them. The shim runs the group's containers in a user namespace mapping that range;
//! `Node.Info` says `enforced: true` only while new groups get one (mode `on`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use eci_api::v1::{ContainerGroup, GroupUserNamespace, NodeUserNamespaces};
use eci_runtime::userns::IdRange;

use crate::config::UserNamespacesConfig;
use crate::error::{Error, Result};
use crate::groups::Groups;

/// Why `enforced` is false when the mode is not `on`.
pub const NOT_ENFORCED: &str = "new groups run without a user namespace: container root is host root, held back by capabilities, seccomp and mounts";

/// Whether groups get id ranges on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Enabled in the config and the probe passed: admitted groups get a range.
    On,
    /// Disabled in the config.
    Off,
    /// Enabled, but the kernel or the layers' filesystem cannot do what is needed; the
    /// reason names the failing step. Groups get no range.
    Unsupported(String),
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::On => "on",
            Mode::Off => "off",
            Mode::Unsupported(_) => "unsupported",
        }
    }
}

/// The configured pool and the mode the agent found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespaces {
    pub config: UserNamespacesConfig,
    pub mode: Mode,
}

impl Default for UserNamespaces {
    /// Off: what a [`crate::groups::Groups`] built without a config does.
    fn default() -> Self {
        UserNamespaces {
            config: UserNamespacesConfig {
                enabled: false,
                ..Default::default()
            },
            mode: Mode::Off,
        }
    }
}

impl UserNamespaces {
    /// The mode for `config`: off when disabled, else the result of
    /// [`eci_runtime::idmap::probe`] on `layers` with the pool's first range (a user
    /// namespace, then an idmapped read-only copy of the directory, dropped at once). A
    /// failure is logged once, naming the step, and reported as `unsupported`.
    pub fn probe(config: &UserNamespacesConfig, layers: &Path) -> Self {
        let mode = if !config.enabled {
            Mode::Off
        } else {
            match eci_runtime::idmap::probe(layers, IdRange::group(config.first_host_id)) {
                Ok(()) => Mode::On,
                Err(e) => {
                    let reason = crate::error::chain(&e);
                    tracing::error!(
                        error = %reason,
                        "user namespaces are enabled but unsupported here; groups get no id range (set user_namespaces.enabled = false to silence this)"
                    );
                    Mode::Unsupported(reason)
                }
            }
        };
        UserNamespaces {
            config: config.clone(),
            mode,
        }
    }

    /// The pool size when admitted groups get ranges (mode `on`).
    pub fn pool(&self) -> Option<u32> {
        (self.mode == Mode::On).then_some(self.config.ranges)
    }

    /// The range of slot `slot`; None when it does not fit in the id space (a slot held
    /// from an earlier, larger pool: the config check covers the current pool only).
    pub fn range(&self, slot: u32) -> Option<GroupUserNamespace> {
        let size = UserNamespacesConfig::RANGE;
        let base = slot
            .checked_mul(size)
            .and_then(|o| o.checked_add(self.config.first_host_id))?;
        base.checked_add(size - 1)
            .filter(|last| *last < u32::MAX)
            .map(|_| GroupUserNamespace {
                host_id_base: base,
                size,
            })
    }

    /// What `Node.Info` says, given the slots held now.
    pub fn report(&self, held: &[(u32, String)]) -> NodeUserNamespaces {
        let total = self.config.ranges;
        let used = held.iter().filter(|(s, _)| *s < total).count() as u32;
        NodeUserNamespaces {
            mode: self.mode.as_str().into(),
            reason: match &self.mode {
                Mode::On => String::new(),
                Mode::Off => "disabled in the config (user_namespaces.enabled = false)".into(),
                Mode::Unsupported(why) => why.clone(),
            },
            ranges_total: total,
            ranges_free: total.saturating_sub(used),
            first_host_id: self.config.first_host_id,
            enforced: self.mode == Mode::On,
            enforced_reason: match &self.mode {
                Mode::On => String::new(),
                _ => NOT_ENFORCED.into(),
            },
        }
    }

    /// The refusal of a Create when every range is held.
    pub fn pool_full(&self) -> String {
        format!(
            "user namespaces: all {} id ranges of the pool are held (user_namespaces.ranges = {}, {} ids each); delete a group or enlarge the pool",
            self.config.ranges,
            self.config.ranges,
            UserNamespacesConfig::RANGE
        )
    }
}

/// What [`Groups::reconcile_id_ranges`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Slots given back because their group is gone: (slot, group).
    pub freed: Vec<(u32, String)>,
}

fn name_of(g: &ContainerGroup) -> &str {
    g.spec.as_ref().map_or("", |s| s.name.as_str())
}

impl Groups {
    /// Brings the id ranges in line with the groups at agent start: a slot whose group
    /// is gone is freed, and a group's status shows the range of its slot. A group
    /// admitted without a range (the mode was not `on`) keeps running without one, and
    /// one admitted with a range keeps it, whatever the mode is now: its sandbox may
    /// already run, and its mode changes only with a new group. Writes nothing when all
    /// is in line, so an agent starts on a full filesystem.
    pub fn reconcile_id_ranges(&self) -> Result<Reconciled> {
        let plan = |groups: &[ContainerGroup], held: &[(u32, String)]| {
            let names: HashSet<&str> = groups.iter().map(name_of).collect();
            let holders: HashMap<&str, u32> = held.iter().map(|(s, n)| (n.as_str(), *s)).collect();
            let orphans: Vec<(u32, String)> = held
                .iter()
                .filter(|(_, n)| !names.contains(n.as_str()))
                .cloned()
                .collect();
            let stale: Vec<String> = groups
                .iter()
                .filter(|g| {
                    let want = holders
                        .get(name_of(g))
                        .and_then(|s| self.user_namespaces().range(*s));
                    let has = g.status.as_ref().and_then(|s| s.user_namespace);
                    want.is_some() && want != has
                })
                .map(|g| name_of(g).to_string())
                .collect();
            (orphans, stale)
        };
        let (groups, _) = self.store().list_groups()?;
        let held = self.store().ranges()?;
        let (orphans, stale) = plan(&groups, &held);
        if orphans.is_empty() && stale.is_empty() {
            return Ok(Reconciled::default());
        }
        self.store().write(|tx| {
            let groups = tx.list_groups()?;
            let held = tx.ranges()?;
            let (orphans, stale) = plan(&groups, &held);
            let mut out = Reconciled::default();
            for (slot, name) in orphans {
                tx.free_range_of(&name)?;
                out.freed.push((slot, name));
            }
            for name in stale {
                let Some(mut g) = tx.get_group(&name)? else {
                    continue;
                };
                let range = tx
                    .range_of(&name)?
                    .and_then(|s| self.user_namespaces().range(s));
                let status = g.status.get_or_insert_with(Default::default);
                if status.user_namespace != range {
                    status.user_namespace = range;
                    tx.update_group(&mut g)?;
                }
            }
            Ok::<_, Error>(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(first: u32, ranges: u32) -> UserNamespaces {
        UserNamespaces {
            config: UserNamespacesConfig {
                enabled: true,
                first_host_id: first,
                ranges,
            },
            mode: Mode::On,
        }
    }

    fn groups_on(dir: &Path, userns: UserNamespaces) -> Groups {
        use std::sync::Arc;
        let store = Arc::new(crate::store::Store::open(&dir.join("state.redb")).expect("store"));
        let images = crate::images::ImageStore::open(dir, store.clone()).expect("images");
        let size = crate::sizes::Size {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
        };
        let node = crate::node::Node {
            hostname: "test".into(),
            gpus: 0,
            capacity: size,
            allocatable: size,
            facts: eci_runtime::HostFacts::probe(Path::new("/sys/fs/cgroup")).expect("facts"),
        };
        Groups::new(store, node, images).with_user_namespaces(userns)
    }

    fn spec(name: &str, cpu: &str) -> eci_api::v1::GroupSpec {
        eci_api::v1::GroupSpec {
            name: name.into(),
            cpu: cpu.into(),
            memory: "2Gi".into(),
            containers: vec![eci_api::v1::Container {
                name: "c".into(),
                image: "busybox".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn base(g: &Groups, name: &str) -> Option<u32> {
        g.get(name)
            .expect("get")
            .status
            .and_then(|s| s.user_namespace)
            .map(|u| u.host_id_base)
    }

    #[test]
    fn admitted_groups_get_disjoint_ranges_that_updates_keep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = groups_on(dir.path(), on(1 << 20, 4));
        g.create(spec("a", "1")).expect("a");
        g.create(spec("b", "1")).expect("b");
        assert_eq!(base(&g, "a"), Some(1 << 20));
        assert_eq!(base(&g, "b"), Some((1 << 20) + 65536));
        g.update(spec("a", "2")).expect("update");
        assert_eq!(base(&g, "a"), Some(1 << 20), "an update keeps the range");
        // Not admitted (too big): holds no range.
        g.create(spec("huge", "64")).expect("huge");
        assert_eq!(base(&g, "huge"), None);
        assert_eq!(g.store().ranges().expect("ranges").len(), 2);
        // Off: no ranges at all.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let off = groups_on(dir2.path(), UserNamespaces::default());
        off.create(spec("a", "1")).expect("a");
        assert_eq!(base(&off, "a"), None);
        assert!(off.store().ranges().expect("ranges").is_empty());
    }

    #[test]
    fn a_full_pool_refuses_the_create_and_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = groups_on(dir.path(), on(1 << 20, 1));
        g.create(spec("a", "1")).expect("a");
        let rev = g.store().revision().expect("rev");
        let err = g.create(spec("b", "1")).expect_err("pool of 1 is full");
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
        assert!(
            err.to_string().contains("user_namespaces.ranges = 1"),
            "{err}"
        );
        assert!(matches!(g.get("b"), Err(Error::NotFound(_))));
        assert_eq!(g.store().revision().expect("rev"), rev, "nothing written");
        assert!(g.store().events(Some("b")).expect("events").is_empty());
    }

    #[test]
    fn a_range_is_reused_only_after_its_group_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = groups_on(dir.path(), on(1 << 20, 1));
        g.create(spec("a", "1")).expect("a");
        g.delete("a", None, false).expect("delete");
        // Terminating: the group's processes may still run in the range.
        let err = g
            .create(spec("b", "1"))
            .expect_err("a still holds the range");
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
        g.finish_delete("a").expect("finish");
        g.create(spec("b", "1")).expect("b after a is gone");
        assert_eq!(base(&g, "b"), Some(1 << 20));
        // Expiry of a finished group frees its range too.
        g.mutate("b", |grp| {
            let st = grp.status.get_or_insert_with(Default::default);
            st.phase = eci_api::phase::FAILED.into();
            st.finished_at = crate::clock::now();
            vec![]
        })
        .expect("fail b");
        assert_eq!(
            g.store().ranges().expect("ranges").len(),
            1,
            "finished, still stored"
        );
        g.collect_finished(std::time::Duration::ZERO)
            .expect("collect");
        assert!(g.store().ranges().expect("ranges").is_empty());
    }

    #[test]
    fn reconcile_frees_orphans_and_leaves_groups_in_the_mode_they_were_admitted_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // Admitted while the mode was off: "old"; a slot row names a group that is gone.
            let g = groups_on(dir.path(), UserNamespaces::default());
            g.create(spec("old", "1")).expect("old");
            g.store()
                .write(|tx| tx.allocate_range("ghost", 8))
                .expect("ghost slot");
        }
        let g = groups_on(dir.path(), on(1 << 20, 8));
        let r = g.reconcile_id_ranges().expect("reconcile");
        assert_eq!(r.freed, [(0, "ghost".to_string())]);
        assert_eq!(base(&g, "old"), None, "its sandbox may run without one");
        g.create(spec("new", "1")).expect("new");
        assert_eq!(base(&g, "new"), Some(1 << 20));
        // In line now: a second run writes nothing.
        let rev = g.store().revision().expect("rev");
        assert_eq!(
            g.reconcile_id_ranges().expect("again"),
            Reconciled::default()
        );
        assert_eq!(g.store().revision().expect("rev"), rev);
        // Mode off later: "new" keeps its range.
        drop(g);
        let g = groups_on(dir.path(), UserNamespaces::default());
        assert_eq!(g.reconcile_id_ranges().expect("off"), Reconciled::default());
        assert_eq!(base(&g, "new"), Some(1 << 20));
    }

    #[test]
    fn slots_map_to_disjoint_aligned_ranges() {
        let u = on(1 << 20, 4);
        let r0 = u.range(0).expect("0");
        let r1 = u.range(1).expect("1");
        assert_eq!((r0.host_id_base, r0.size), (1 << 20, 65536));
        assert_eq!(r1.host_id_base, (1 << 20) + 65536);
        // A slot whose range would reach (uid_t)-1 has none.
        assert!(on(65536, 1).range(65533).is_some());
        assert!(on(65536, 1).range(65534).is_none());
    }

    #[test]
    fn report_counts_only_slots_of_the_pool_and_claims_enforcement_only_when_on() {
        let u = on(1 << 20, 2);
        let r = u.report(&[(0, "a".into()), (5, "old".into())]);
        assert_eq!(
            (r.mode.as_str(), r.ranges_total, r.ranges_free),
            ("on", 2, 1)
        );
        assert!(r.enforced && r.enforced_reason.is_empty());
        let off = UserNamespaces::default().report(&[]);
        assert_eq!(off.mode, "off");
        assert!(!off.enforced);
        assert_eq!(off.enforced_reason, NOT_ENFORCED);
        assert!(
            off.reason.contains("user_namespaces.enabled"),
            "{}",
            off.reason
        );
        assert!(UserNamespaces::default().pool().is_none());
    }

    #[test]
    fn a_probe_of_a_path_that_cannot_be_idmapped_says_unsupported() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let cfg = UserNamespacesConfig::default();
        let u = UserNamespaces::probe(&cfg, Path::new("/proc"));
        let Mode::Unsupported(why) = &u.mode else {
            panic!("procfs cannot be idmapped: {:?}", u.mode);
        };
        assert!(why.contains("/proc"), "{why}");
        assert!(u.pool().is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let u = UserNamespaces::probe(&cfg, dir.path());
        // Where the temp dir's filesystem supports idmapped mounts (ext4, tmpfs, xfs...).
        assert!(matches!(u.mode, Mode::On | Mode::Unsupported(_)));
        let off = UserNamespaces::probe(
            &UserNamespacesConfig {
                enabled: false,
                ..cfg
            },
            dir.path(),
        );
        assert_eq!(off.mode, Mode::Off);
    }
}
