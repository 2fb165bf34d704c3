//! Group operations: the domain side of the ContainerGroups API.
//!
//! Each operation is one store transaction, so validation, admission against the node's
//! capacity and the resulting events commit together or not at all. Sandboxes are not run
//! yet: an admitted group waits in `Pending` with a reason saying so, and nothing reports
//! `Running` that is not running.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use eci_api::phase;
use eci_api::v1::{
    ContainerGroup, ContainerStatus, Event, GroupSpec, GroupStatus, NormalizedResources,
};

use crate::clock;
use crate::error::{Error, Result};
use crate::id_ranges::UserNamespaces;
use crate::images::pull::Puller;
use crate::images::{ImageRecord, ImageStore, Reference};
use crate::node::Node;
use crate::quantity::{
    format_cpu, format_memory, human_memory, parse_cpu_millis, parse_memory_bytes,
};
use crate::selector::Selector;
use crate::sizes::Size;
use crate::store::{Store, WriteTx};
use crate::validate::{self, ValidSpec};
use eci_runtime::SandboxKind;

/// Status message of an admitted group whose sandbox is being prepared.
const ADMITTED: &str = "admitted; preparing the sandbox";

/// Resources held by admitted, unfinished groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size: Size,
    pub gpus: u32,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            size: Size {
                cpu_millis: 0,
                memory_bytes: 0,
            },
            gpus: 0,
        }
    }
}

/// The group operations, shared by the API handlers and background tasks.
pub struct Groups {
    store: Arc<Store>,
    node: Node,
    images: Arc<ImageStore>,
    /// Registry pulls into `images` (defaults until [`Groups::with_puller`]).
    puller: Arc<Puller>,
    /// Id ranges for groups (off unless [`Groups::with_user_namespaces`] says otherwise).
    userns: UserNamespaces,
    /// ENIs and the dev bridge (no dev bridge unless [`Groups::with_network`]).
    network: Arc<crate::network::NetworkPlan>,
    /// Which block devices disk volumes may use (none unless [`Groups::with_disks`]).
    disks: crate::sandbox::disk::DiskPolicy,
    /// The vm sandbox (unavailable unless [`Groups::with_vm`]).
    vm: Arc<crate::vm::VmSandbox>,
}

/// Event type names.
pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

pub fn event(group: &str, kind: &str, reason: &str, message: impl Into<String>) -> Event {
    let now = clock::now();
    Event {
        group: group.into(),
        r#type: kind.into(),
        reason: reason.into(),
        message: message.into(),
        count: 1,
        first_timestamp: now.clone(),
        last_timestamp: now,
        ..Default::default()
    }
}

/// An event about one container of a group.
pub fn container_event(
    group: &str,
    kind: &str,
    reason: &str,
    message: impl Into<String>,
    container: impl Into<String>,
) -> Event {
    Event {
        container: container.into(),
        ..event(group, kind, reason, message)
    }
}

fn describe_size(s: Size) -> String {
    format!(
        "{} vCPU / {}",
        format_cpu(s.cpu_millis),
        human_memory(s.memory_bytes)
    )
}

/// The normalized size recorded in a stored group's status.
fn normalized_of(g: &ContainerGroup) -> Size {
    let n = g
        .status
        .as_ref()
        .and_then(|s| s.normalized_resources.as_ref());
    Size {
        cpu_millis: n.and_then(|n| parse_cpu_millis(&n.cpu).ok()).unwrap_or(0),
        memory_bytes: n
            .and_then(|n| parse_memory_bytes(&n.memory).ok())
            .unwrap_or(0),
    }
}

fn phase_of(g: &ContainerGroup) -> &str {
    g.status.as_ref().map_or("", |s| s.phase.as_str())
}

fn name_of(g: &ContainerGroup) -> &str {
    g.spec.as_ref().map_or("", |s| s.name.as_str())
}

/// A random id; groups re-created under the same name get a new one.
pub(crate) fn new_id() -> String {
    let mut buf = [0u8; 8];
    // Reading the kernel's CSPRNG only fails when /dev is broken; fall back to the clock.
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_err()
    {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        buf = (nanos.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Groups {
    pub fn new(store: Arc<Store>, node: Node, images: ImageStore) -> Self {
        // Starts the thread that gives freed memory back (see `memory`).
        crate::memory::release_soon();
        let images = Arc::new(images);
        let puller = Arc::new(Puller::new(
            images.clone(),
            Default::default(),
            Default::default(),
        ));
        Groups {
            store,
            node,
            images,
            puller,
            userns: UserNamespaces::default(),
            network: Default::default(),
            disks: Default::default(),
            vm: Arc::new(crate::vm::VmSandbox::unavailable(
                crate::vm::VmSettings::from_config(&Default::default(), "/var/lib/eci".as_ref()),
                "the vm sandbox is not set up on this node",
            )),
        }
    }

    /// Sets the vm sandbox (its start probe may still be running).
    pub fn with_vm(mut self, vm: Arc<crate::vm::VmSandbox>) -> Self {
        self.vm = vm;
        self
    }

    pub fn vm(&self) -> &Arc<crate::vm::VmSandbox> {
        &self.vm
    }

    /// The sandbox kinds this node runs now: the host's, and `vm` once its probe
    /// found an accelerator it may use.
    pub fn sandbox_kinds(&self) -> Vec<SandboxKind> {
        let mut kinds: Vec<SandboxKind> = self
            .node
            .facts
            .sandbox_kinds
            .iter()
            .copied()
            .filter(|k| *k != SandboxKind::Vm)
            .collect();
        if self.vm.usable().is_ok() {
            kinds.push(SandboxKind::Vm);
        }
        kinds
    }

    /// Sets which block devices disk volumes may use.
    pub fn with_disks(mut self, disks: crate::sandbox::disk::DiskPolicy) -> Self {
        self.disks = disks;
        self
    }

    /// Sets how groups get their network (the dev bridge, when not a fleet host).
    pub fn with_network(mut self, network: crate::network::NetworkPlan) -> Self {
        self.network = Arc::new(network);
        self
    }

    pub fn network(&self) -> &Arc<crate::network::NetworkPlan> {
        &self.network
    }

    /// Sets the id-range pool and the mode the start probe found.
    pub fn with_user_namespaces(mut self, userns: UserNamespaces) -> Self {
        self.userns = userns;
        self
    }

    pub fn user_namespaces(&self) -> &UserNamespaces {
        &self.userns
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Pulls from registries with the agent's registry settings.
    pub fn with_puller(
        mut self,
        cfg: crate::config::PullConfig,
        registries: std::collections::BTreeMap<String, crate::config::RegistryConfig>,
    ) -> Self {
        self.puller = Arc::new(Puller::new(self.images.clone(), cfg, registries));
        self
    }

    pub fn puller(&self) -> &Arc<Puller> {
        &self.puller
    }

    /// The first unfinished group with a container of this image, if any.
    pub fn image_user(&self, image: &ImageRecord) -> Result<Option<String>> {
        let (groups, _) = self.store.list_groups()?;
        Ok(groups
            .iter()
            .filter(|g| !phase::is_final(phase_of(g)))
            .find(|g| {
                g.spec
                    .iter()
                    .flat_map(|s| s.containers.iter().chain(&s.init_containers))
                    .any(|c| {
                        Reference::parse(&c.image)
                            .is_ok_and(|r| image.references.contains(&r.to_string()))
                    })
            })
            .map(|g| name_of(g).to_string()))
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// What unfinished groups other than `except` hold.
    fn usage(groups: &[ContainerGroup], except: &str) -> Usage {
        groups
            .iter()
            .filter(|g| !phase::is_final(phase_of(g)) && name_of(g) != except)
            .fold(Usage::default(), |u, g| {
                let n = normalized_of(g);
                Usage {
                    size: Size {
                        cpu_millis: u.size.cpu_millis + n.cpu_millis,
                        memory_bytes: u.size.memory_bytes + n.memory_bytes,
                    },
                    gpus: u.gpus + g.spec.as_ref().map_or(0, validate::group_gpus),
                }
            })
    }

    /// All groups and what the unfinished ones hold, from one snapshot.
    pub fn usage_now(&self) -> Result<(Vec<ContainerGroup>, Usage)> {
        let (groups, _) = self.store.list_groups()?;
        let usage = Self::usage(&groups, "");
        Ok((groups, usage))
    }

    /// What the node has left, as a message when `need` (and `gpus`) does not fit.
    fn misfit(
        &self,
        tx: &WriteTx<'_>,
        need: Size,
        gpus: u32,
        except: &str,
    ) -> Result<Option<String>> {
        let Usage {
            size: used,
            gpus: gpus_used,
        } = Self::usage(&tx.list_groups()?, except);
        let alloc = self.node.allocatable;
        let free = Size {
            cpu_millis: alloc.cpu_millis.saturating_sub(used.cpu_millis),
            memory_bytes: alloc.memory_bytes.saturating_sub(used.memory_bytes),
        };
        let gpus_free = self.node.gpus.saturating_sub(gpus_used);
        let mut short = Vec::new();
        if need.cpu_millis > free.cpu_millis {
            short.push("cpu");
        }
        if need.memory_bytes > free.memory_bytes {
            short.push("memory");
        }
        if gpus > gpus_free {
            short.push("gpu");
        }
        Ok((!short.is_empty()).then(|| {
            let gpu_note = if gpus > 0 || gpus_used > 0 {
                format!(", {gpus} GPU needed, {gpus_free} of {} free", self.node.gpus)
            } else {
                String::new()
            };
            format!(
                "insufficient {}: the group needs {}, the node has {} free ({} allocatable, {} in use{gpu_note})",
                short.join(" and "),
                describe_size(need),
                describe_size(free),
                describe_size(alloc),
                describe_size(used)
            )
        }))
    }

    /// Validates, stores and admits a new group.
    pub fn create(&self, spec: GroupSpec) -> Result<ContainerGroup> {
        let valid = validate::validate(&spec)?;
        self.check_sandbox_kind(&spec.sandbox)?;
        let name = spec.name.clone();
        // The ENI must be on this host and free: refused here, nothing is created.
        let eni = match crate::network::admit::selector(&spec) {
            Some(sel) => Some(
                crate::network::admit::find(&sel, &self.store.held_enis()?, self.network())
                    .map_err(Error::FailedPrecondition)?,
            ),
            None => None,
        };
        // Disk devices must exist, be allowed and unused by the host: checked here.
        let disks = crate::disk_holds::resolve(&spec, &self.disks)?;
        self.store.write(|tx| {
            crate::disk_holds::check_free(tx, &disks, &name)?;
            if let Some(eni) = &eni
                && let Some(other) = crate::network::admit::holder(&tx.list_groups()?, eni, &name)
            {
                return Err(Error::FailedPrecondition(format!(
                    "network.eni: {} is named by group {other:?}, which is not finished",
                    eni.name
                )));
            }
            let now = clock::now();
            let mut status = initial_status(&spec, &valid);
            let mut events = vec![];
            match self.misfit(tx, valid.normalized, valid.gpus, "")? {
                Some(why) => {
                    status.phase = phase::SCHEDULE_FAILED.into();
                    status.reason = "InsufficientResources".into();
                    status.message = why.clone();
                    status.finished_at = now.clone();
                    for c in &mut status.container_statuses {
                        c.reason = "Unschedulable".into();
                    }
                    events.push(event(&name, WARNING, "FailedScheduling", why));
                }
                None => {
                    // The group's id range, in the transaction that stores it: a full
                    // pool refuses the Create and nothing is written.
                    if let Some(pool) = self.userns.pool() {
                        let slot = tx
                            .allocate_range(&name, pool)?
                            .ok_or_else(|| Error::ResourceExhausted(self.userns.pool_full()))?;
                        status.user_namespace = self.userns.range(slot);
                    }
                    // A dev address, likewise, for a group without an ENI.
                    if let Some(dev) = &self.network.dev
                        && eni.is_none()
                    {
                        tx.allocate_dev_address(&name, dev.hosts())?
                            .ok_or_else(|| {
                                Error::ResourceExhausted(format!(
                                    "network: no free address left in the dev bridge's subnet {}",
                                    dev.v4
                                ))
                            })?;
                    }
                    crate::disk_holds::hold(tx, &disks, &name)?;
                    status.phase = phase::PENDING.into();
                    status.reason = "Scheduled".into();
                    status.message = ADMITTED.into();
                    events.push(event(
                        &name,
                        NORMAL,
                        "Scheduled",
                        format!(
                            "admitted on {} as {} ({})",
                            self.node.hostname,
                            describe_size(valid.normalized),
                            if valid.requested
                                == (Size {
                                    cpu_millis: 0,
                                    memory_bytes: 0
                                })
                            {
                                "no size requested: the smallest offered size".to_string()
                            } else {
                                format!("requested {}", describe_size(valid.requested))
                            }
                        ),
                    ));
                }
            }
            let mut group = ContainerGroup {
                id: new_id(),
                spec: Some(spec.clone()),
                status: Some(status),
                revision: 0,
                generation: 1,
                created_at: now,
            };
            tx.insert_group(&mut group)?;
            for e in events {
                tx.event(e)?;
            }
            Ok(group)
        })
    }

    pub fn get(&self, name: &str) -> Result<ContainerGroup> {
        self.store
            .get_group(name)?
            .ok_or_else(|| Error::NotFound(name.into()))
    }

    /// Groups matching the selector, and the revision they were read at.
    pub fn list(&self, selector: &str) -> Result<(Vec<ContainerGroup>, u64)> {
        let sel = parse_selector(selector)?;
        let (groups, rev) = self.store.list_groups()?;
        let groups = groups
            .into_iter()
            .filter(|g| {
                sel.matches(
                    &g.spec
                        .as_ref()
                        .map(|s| s.labels.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        Ok((groups, rev))
    }

    /// Refuses a sandbox kind this node cannot really run: running a `vm` request in
    /// namespaces would be a false claim of isolation.
    fn check_sandbox_kind(&self, sandbox: &str) -> Result<()> {
        let kind = match sandbox {
            "vm" => SandboxKind::Vm,
            _ => SandboxKind::Namespaced,
        };
        let kinds = self.sandbox_kinds();
        if kinds.contains(&kind) {
            return Ok(());
        }
        let offered: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        // The vm sandbox says why it is not there (no guest image, TCG not allowed...).
        let why = match (kind, self.vm.usable()) {
            (SandboxKind::Vm, Err(why)) => format!(": {why}"),
            _ => String::new(),
        };
        Err(Error::FailedPrecondition(format!(
            "sandbox: {:?} is not available on this node{why} (available: {})",
            kind.as_str(),
            offered.join(", ")
        )))
    }

    /// Replaces the spec of a group. The ENI and sandbox kind cannot change in place, and
    /// a new size must still fit on the node.
    pub fn update(&self, spec: GroupSpec) -> Result<ContainerGroup> {
        self.update_with(spec).map(|(g, _)| g)
    }

    /// As [`Groups::update`]; also says whether the change applies in place: only the
    /// security-group rules differ, so the containers keep running (and their status)
    /// while the new rules replace the old ones in the group's netns.
    pub fn update_with(&self, spec: GroupSpec) -> Result<(ContainerGroup, bool)> {
        let valid = validate::validate(&spec)?;
        let name = spec.name.clone();
        let disks = crate::disk_holds::resolve(&spec, &self.disks)?;
        self.store.write(|tx| {
            crate::disk_holds::check_free(tx, &disks, &name)?;
            crate::disk_holds::hold(tx, &disks, &name)?;
            let mut group = tx
                .get_group(&name)?
                .ok_or_else(|| Error::NotFound(name.clone()))?;
            let old = group.spec.clone().unwrap_or_default();
            let current = phase_of(&group).to_string();
            if current == phase::TERMINATING || phase::is_final(&current) {
                return Err(Error::FailedPrecondition(format!(
                    "group {name:?} is {current} and can no longer be updated"
                )));
            }
            if old.sandbox != spec.sandbox {
                return Err(Error::FailedPrecondition(
                    "sandbox: the sandbox kind of a group cannot change; delete and create it"
                        .into(),
                ));
            }
            if spec.sandbox == "vm" {
                check_vm_update(&old, &spec, normalized_of(&group), valid.normalized)?;
            }
            if old.network.as_ref().and_then(|n| n.eni.clone())
                != spec.network.as_ref().and_then(|n| n.eni.clone())
            {
                return Err(Error::FailedPrecondition(
                    "network.eni: the ENI of a group cannot change; delete and create it".into(),
                ));
            }
            let net_of = |s: &GroupSpec| {
                let n = s.network.clone().unwrap_or_default();
                (n.ipv4_address, n.ipv6_address)
            };
            let (old_v4, old_v6) = net_of(&old);
            let (new_v4, new_v6) = net_of(&spec);
            for (field, was, now) in [
                ("network.ipv4Address", old_v4, new_v4),
                ("network.ipv6Address", old_v6, new_v6),
            ] {
                if !now.is_empty() && now != was {
                    return Err(Error::FailedPrecondition(format!(
                        "{field}: a group keeps its address for its whole life ({was:?}); delete and create it to change it"
                    )));
                }
            }
            if let Some(why) = self.misfit(tx, valid.normalized, valid.gpus, &name)? {
                return Err(Error::ResourceExhausted(format!("update refused: {why}")));
            }
            let mut spec = spec.clone();
            // The group keeps its addresses across updates.
            if let (Some(new), Some(old)) = (spec.network.as_mut(), old.network.as_ref()) {
                if new.ipv4_address.is_empty() {
                    new.ipv4_address = old.ipv4_address.clone();
                }
                if new.ipv6_address.is_empty() {
                    new.ipv6_address = old.ipv6_address.clone();
                }
            }
            keep_passwords(&mut spec, &old);
            group.generation += 1;
            let in_place =
                current == phase::RUNNING && crate::network::rules_only_change(&old, &spec);
            let mut status = initial_status(&spec, &valid);
            let prev = group.status.take().unwrap_or_default();
            if in_place {
                status = prev.clone();
            }
            status.phase = prev.phase;
            status.reason = prev.reason;
            status.message = prev.message;
            status.ip_addresses = prev.ip_addresses;
            // The id range stays with the group for its whole life.
            status.user_namespace = prev.user_namespace;
            status.network = prev.network;
            status.accelerator = prev.accelerator;
            status.observed_generation = group.generation;
            group.status = Some(status);
            group.spec = Some(spec);
            tx.update_group(&mut group)?;
            tx.event(event(
                &name,
                NORMAL,
                "Updated",
                format!(
                    "spec generation {} stored as {}",
                    group.generation,
                    describe_size(valid.normalized)
                ),
            ))?;
            Ok((group, in_place))
        })
    }

    /// Changes a group's status in one transaction, recording the events `f` returns.
    /// Returns None (and changes nothing) when the group is gone or being deleted, so
    /// the caller stops working on it.
    pub fn mutate(
        &self,
        name: &str,
        f: impl FnOnce(&mut ContainerGroup) -> Vec<Event>,
    ) -> Result<Option<ContainerGroup>> {
        self.store.write(|tx| {
            let Some(mut group) = tx.get_group(name)? else {
                return Ok(None);
            };
            if phase_of(&group) == phase::TERMINATING {
                return Ok(None);
            }
            let events = f(&mut group);
            tx.update_group(&mut group)?;
            for e in events {
                tx.event(e)?;
            }
            Ok(Some(group))
        })
    }

    /// Marks a group Terminating. The caller then runs [`Groups::finish_delete`].
    pub fn delete(&self, name: &str, grace: Option<i64>, force: bool) -> Result<ContainerGroup> {
        if let Some(g) = grace
            && !(0..=validate::limits::MAX_GRACE_SECONDS).contains(&g)
        {
            return Err(Error::BadRequest {
                field: "gracePeriodSeconds",
                message: format!("{g} is outside 0-{}", validate::limits::MAX_GRACE_SECONDS),
            });
        }
        self.store.write(|tx| {
            let mut group = tx
                .get_group(name)?
                .ok_or_else(|| Error::NotFound(name.into()))?;
            if phase_of(&group) == phase::TERMINATING {
                return Ok(group);
            }
            let spec_grace = group
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds);
            let grace = if force {
                0
            } else {
                grace
                    .or(spec_grace)
                    .unwrap_or(validate::limits::DEFAULT_GRACE_SECONDS)
            };
            let status = group.status.get_or_insert_with(Default::default);
            status.phase = phase::TERMINATING.into();
            status.reason = "Deleting".into();
            status.message = format!(
                "delete requested (grace period {grace}s{})",
                if force { ", forced" } else { "" }
            );
            tx.update_group(&mut group)?;
            tx.event(event(
                name,
                NORMAL,
                "Killing",
                format!("stopping group with a grace period of {grace}s"),
            ))?;
            Ok(group)
        })
    }

    /// Tears down what a Terminating group holds and forgets it.
    pub fn finish_delete(&self, name: &str) -> Result<()> {
        self.store.write(|tx| {
            if tx.delete_group(name)?.is_some() {
                tx.event(event(name, NORMAL, "Deleted", "group deleted"))?;
            }
            Ok::<_, Error>(())
        })?;
        // Everything the group's tasks held is freed by now.
        crate::memory::release_soon();
        Ok(())
    }

    /// Brings the store in line after a start: deletes that were cut short are finished.
    pub fn reconcile(&self) -> Result<Vec<String>> {
        let (groups, _) = self.store.list_groups()?;
        let mut finished = Vec::new();
        for g in groups.iter().filter(|g| phase_of(g) == phase::TERMINATING) {
            self.finish_delete(name_of(g))?;
            finished.push(name_of(g).to_string());
        }
        Ok(finished)
    }

    /// Deletes finished groups older than `retention` (seed: failed groups go after about
    /// an hour). Returns the groups removed.
    pub fn collect_finished(&self, retention: Duration) -> Result<Vec<ContainerGroup>> {
        let (groups, _) = self.store.list_groups()?;
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for g in groups.iter().filter(|g| phase::is_final(phase_of(g))) {
            let finished = g.status.as_ref().and_then(|s| clock::parse(&s.finished_at));
            let expired = finished
                .and_then(|f| now.duration_since(f).ok())
                .is_some_and(|age| age >= retention);
            if expired {
                self.store.write(|tx| {
                    tx.delete_group(name_of(g))?;
                    tx.event(event(
                        name_of(g),
                        NORMAL,
                        "Expired",
                        "finished group removed after its retention period",
                    ))
                })?;
                removed.push(g.clone());
            }
        }
        if !removed.is_empty() {
            crate::memory::release_soon();
        }
        Ok(removed)
    }
}

pub(crate) fn parse_selector(s: &str) -> Result<Selector> {
    Selector::parse(s).map_err(|e| Error::BadRequest {
        field: "labelSelector",
        message: e.to_string(),
    })
}

/// The status of a just-admitted spec: every container Waiting.
/// What an Update cannot change in a vm group yet: its VM boots with the disks of its
/// images' layers and with its size, both fixed for the VM's life (the group keeps its
/// sandbox across an Update).
fn check_vm_update(old: &GroupSpec, new: &GroupSpec, was: Size, now: Size) -> Result<()> {
    let images = |s: &GroupSpec| -> Vec<String> {
        s.init_containers
            .iter()
            .chain(&s.containers)
            .map(|c| c.image.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    if images(old) != images(new) {
        return Err(Error::FailedPrecondition(
            "sandbox: vm: an update cannot change a vm group's images yet (its VM boots with their layers as disks); delete and create it".into(),
        ));
    }
    if was != now {
        return Err(Error::FailedPrecondition(format!(
            "sandbox: vm: an update cannot resize a vm group yet (its VM has {} fixed at boot, the update asks for {}); delete and create it",
            describe_size(was),
            describe_size(now)
        )));
    }
    Ok(())
}

fn initial_status(spec: &GroupSpec, valid: &ValidSpec) -> GroupStatus {
    let waiting = |c: &eci_api::v1::Container| ContainerStatus {
        name: c.name.clone(),
        state: "Waiting".into(),
        reason: "ContainerCreating".into(),
        image: c.image.clone(),
        ..Default::default()
    };
    GroupStatus {
        normalized_resources: Some(NormalizedResources {
            cpu: format_cpu(valid.normalized.cpu_millis),
            memory: format_memory(valid.normalized.memory_bytes),
        }),
        container_statuses: spec.containers.iter().map(waiting).collect(),
        init_container_statuses: spec.init_containers.iter().map(waiting).collect(),
        // Read from the group's network namespace once it exists, never from the spec.
        ip_addresses: Vec::new(),
        observed_generation: 1,
        sandbox_kind: if spec.sandbox.is_empty() {
            SandboxKind::Namespaced.as_str().into()
        } else {
            spec.sandbox.clone()
        },
        ..Default::default()
    }
}

/// Keeps the stored password of each registry credential that arrives with an empty one
/// for the same server and username. Reads (`get -o yaml`, list, watch) return passwords
/// empty, so re-applying what a read returned must not wipe them; a credential whose
/// server or username changed takes what it brings.
fn keep_passwords(spec: &mut GroupSpec, old: &GroupSpec) {
    for c in &mut spec.image_registry_credentials {
        if !c.password.is_empty() {
            continue;
        }
        if let Some(prev) = old
            .image_registry_credentials
            .iter()
            .find(|o| o.server == c.server && o.username == c.username)
        {
            c.password.clone_from(&prev.password);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use eci_api::v1::Container;
    use eci_runtime::HostFacts;

    use super::*;

    fn groups(dir: &Path, cpus: u64, gib: u64) -> Groups {
        let store = Arc::new(Store::open(&dir.join("state.redb")).expect("store"));
        let images = ImageStore::open(dir, store.clone()).expect("images");
        let size = Size {
            cpu_millis: cpus * 1000,
            memory_bytes: gib << 30,
        };
        let node = Node {
            hostname: "test".into(),
            gpus: 0,
            capacity: size,
            allocatable: size,
            facts: HostFacts::probe(Path::new("/sys/fs/cgroup")).expect("facts"),
        };
        Groups::new(store, node, images)
    }

    fn spec(name: &str, cpu: &str, memory: &str) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            cpu: cpu.into(),
            memory: memory.into(),
            containers: vec![Container {
                name: "c".into(),
                image: "busybox".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn phase(g: &Groups, name: &str) -> String {
        g.get(name).expect("get").status.expect("status").phase
    }

    #[test]
    fn admission_counts_unfinished_groups_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = groups(dir.path(), 4, 8);
        g.create(spec("a", "2", "4Gi")).expect("a");
        g.create(spec("b", "4", "8Gi")).expect("b");
        assert_eq!(phase(&g, "a"), phase::PENDING);
        assert_eq!(phase(&g, "b"), phase::SCHEDULE_FAILED);
        // b holds nothing, so c fits beside a.
        g.create(spec("c", "2", "4Gi")).expect("c");
        assert_eq!(phase(&g, "c"), phase::PENDING);
        let err = g
            .update(spec("c", "4", "8Gi"))
            .expect_err("no room to grow");
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
        assert_eq!(
            g.get("c").expect("c").generation,
            1,
            "refused update changed nothing"
        );
    }

    #[test]
    fn vm_groups_need_the_sandbox_and_keep_their_images_and_size() {
        use crate::vm::{VmFacts, VmSandbox, VmSettings, VmState, probe::Accel};
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = VmSettings::from_config(&Default::default(), dir.path());
        let mut vm = spec("v", "1", "2Gi");
        vm.sandbox = "vm".into();
        // Unavailable: refused, naming why.
        let g = groups(dir.path(), 4, 8);
        let err = g.create(vm.clone()).expect_err("no vm sandbox");
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("not set up"), "{err}");
        drop(g);
        let g = groups(dir.path(), 4, 8).with_vm(Arc::new(VmSandbox::with_facts(
            settings,
            VmFacts {
                state: VmState::Available { accel: Accel::Tcg },
                guest_kernel: "6.1.0".into(),
                qemu_version: "QEMU 7.2".into(),
            },
        )));
        assert!(g.sandbox_kinds().contains(&SandboxKind::Vm));
        let created = g.create(vm.clone()).expect("vm group");
        assert_eq!(created.status.expect("status").sandbox_kind, "vm");
        let mut other_image = vm.clone();
        other_image.containers[0].image = "busybox:2".into();
        let err = g.update(other_image).expect_err("new image");
        assert!(err.to_string().contains("images"), "{err}");
        let err = g.update(spec_vm("v", "2", "4Gi")).expect_err("resize");
        assert!(err.to_string().contains("resize"), "{err}");
        let mut env_only = vm.clone();
        env_only.containers[0].env = vec![eci_api::v1::EnvVar {
            name: "A".into(),
            value: "1".into(),
        }];
        g.update(env_only).expect("same images and size");
    }

    fn spec_vm(name: &str, cpu: &str, memory: &str) -> GroupSpec {
        GroupSpec {
            sandbox: "vm".into(),
            ..spec(name, cpu, memory)
        }
    }

    #[test]
    fn a_delete_cut_short_is_finished_on_reconcile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = groups(dir.path(), 4, 8);
        g.create(spec("a", "1", "2Gi")).expect("a");
        g.delete("a", None, false).expect("delete");
        assert_eq!(phase(&g, "a"), phase::TERMINATING);
        // As after a crash: a new Groups on the same store.
        drop(g);
        let g = groups(dir.path(), 4, 8);
        assert_eq!(g.reconcile().expect("reconcile"), ["a"]);
        assert!(matches!(g.get("a"), Err(Error::NotFound(_))));
    }

    #[test]
    fn an_update_with_a_blank_password_keeps_the_stored_one() {
        use eci_api::v1::RegistryCredential;
        let cred = |server: &str, user: &str, password: &str| RegistryCredential {
            server: server.into(),
            username: user.into(),
            password: password.into(),
        };
        let stored = |g: &Groups| -> Vec<(String, String)> {
            let spec = g.get("a").expect("a").spec.expect("spec");
            spec.image_registry_credentials
                .into_iter()
                .map(|c| (c.server, c.password))
                .collect()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let g = groups(dir.path(), 4, 8);
        let mut s = spec("a", "1", "2Gi");
        s.image_registry_credentials = vec![
            cred("r1.example", "u", "secret-1"),
            cred("r2.example", "u", "secret-2"),
            cred("r3.example", "u", "secret-3"),
        ];
        g.create(s.clone()).expect("a");
        // What `get -o yaml` shows (passwords blank), with one server's user changed and
        // one new password.
        s.image_registry_credentials = vec![
            cred("r1.example", "u", ""),
            cred("r2.example", "other", ""),
            cred("r3.example", "u", "new-3"),
            cred("r4.example", "u", ""),
        ];
        g.update(s).expect("update");
        assert_eq!(
            stored(&g),
            [
                ("r1.example".to_string(), "secret-1".to_string()),
                ("r2.example".into(), String::new()),
                ("r3.example".into(), "new-3".into()),
                ("r4.example".into(), String::new()),
            ]
        );
    }

    #[test]
    fn finished_groups_expire_after_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = groups(dir.path(), 1, 2);
        g.create(spec("big", "8", "16Gi")).expect("big");
        g.create(spec("ok", "1", "2Gi")).expect("ok");
        assert!(
            g.collect_finished(Duration::from_secs(3600))
                .expect("collect")
                .is_empty()
        );
        let removed = g.collect_finished(Duration::ZERO).expect("collect");
        assert_eq!(removed.iter().map(name_of).collect::<Vec<_>>(), ["big"]);
        assert!(g.get("ok").is_ok(), "unfinished groups stay");
    }
}
