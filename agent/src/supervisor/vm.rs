//! Launching a vm group's sandbox: the erofs images of its layers and its `vm.json`,
//! before its shim starts (the shim attaches every layer at boot).

use super::containers::Resolved;
use super::start_error::StartError;
use super::{GroupCtx, Supervisor};
use crate::sandbox::external;
use crate::sizes::Size;
use crate::vm::launch::{VmDisk, VmJson, VmLayer};

/// Longest a vm group's start waits for the agent's start probe (a TCG probe boot
/// takes up to 60 s, a KVM one 20 s; both may run).
const PROBE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(90);

impl Supervisor {
    /// Builds what the group's VM needs (erofs images of every layer of every image of
    /// the group, shared with other vm groups) and writes `<group dir>/vm.json`;
    /// returns its path. Records the accelerator in the group's status.
    pub(super) async fn prepare_vm(
        &self,
        ctx: &GroupCtx,
        images: &Resolved,
        size: Size,
    ) -> Result<std::path::PathBuf, StartError> {
        let vm = self.groups.vm().clone();
        // A group admitted before an agent restart may start again while the restarted
        // agent's probe still runs: wait for its verdict rather than fail the group.
        let waited = tokio::time::Instant::now();
        while vm.facts().state == crate::vm::VmState::Probing && waited.elapsed() < PROBE_WAIT_MAX {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let accel = vm.usable().map_err(StartError::Vm)?;
        let image = vm.image().map_err(StartError::Vm)?;
        let groups = self.groups.clone();
        let records: Vec<_> = images.iter().map(|(_, i)| i.clone()).collect();
        let layers = tokio::task::spawn_blocking(move || {
            let mut out: Vec<VmLayer> = Vec::new();
            for r in &records {
                for l in groups.images().erofs_layers(r)? {
                    if !out.iter().any(|o| o.path == l.dir) {
                        out.push(VmLayer {
                            path: l.dir,
                            erofs: l.image,
                        });
                    }
                }
            }
            Ok::<_, crate::images::ImageError>(out)
        })
        .await
        .map_err(|e| StartError::Join("building the layers' erofs images", e))?
        .map_err(StartError::Layers)?;
        crate::failpoint::hit("vm-layers-built");
        let disks = self.vm_disks(ctx).await?;
        let mut json = crate::vm::launch::vm_json(
            &vm.settings,
            &image,
            accel,
            size.cpu_millis,
            size.memory_bytes,
            layers,
        );
        json.disks = disks;
        let root = ctx.dir.root().to_path_buf();
        let path = crate::vm::launch::write(&json, &root).map_err(|source| StartError::Io {
            step: "writing",
            path: root.join("vm.json"),
            source,
        })?;
        crate::failpoint::hit("vm-config-written");
        let name = accel.as_str().to_string();
        self.mutate(&ctx.name, move |g| {
            let st = g.status.get_or_insert_with(Default::default);
            st.accelerator = name.clone();
            Vec::new()
        })
        .await;
        Ok(path)
    }
}

impl Supervisor {
    /// The group's `disk` volumes as the VM attaches them: each device checked against
    /// `[volumes] disk_devices` and the host's mounts again (as for a namespaced group)
    /// and formatted when blank, but not mounted on the host — the guest mounts it at
    /// the path a namespaced group's host mount would have had.
    async fn vm_disks(&self, ctx: &GroupCtx) -> Result<Vec<VmDisk>, StartError> {
        if !ctx.spec.volumes.iter().any(|v| v.disk.is_some()) {
            return Ok(Vec::new());
        }
        let (spec, root, policy) = (
            ctx.spec.clone(),
            ctx.dir.root().to_path_buf(),
            self.cfg.disks.clone(),
        );
        tokio::task::spawn_blocking(move || external::prepare_vm_disks(&spec, &root, &policy))
            .await
            .map_err(|e| StartError::Join("preparing the group's disks", e))?
            .map_err(StartError::Mount)
    }

    /// For a vm group whose shim (and VM) already runs: every layer its images need must
    /// be among the disks its VM booted with (`vm.json`); an image that moved since
    /// (a pull with policy Always) cannot be attached to a running VM.
    pub(super) async fn check_vm_layers(
        &self,
        ctx: &GroupCtx,
        images: &Resolved,
    ) -> Result<(), StartError> {
        let path = ctx.dir.root().join("vm.json");
        let groups = self.groups.clone();
        let records: Vec<_> = images
            .iter()
            .map(|(c, i)| (c.image.clone(), i.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let booted: VmJson = std::fs::read(&path)
                .ok()
                .filter(|b| b.len() < (1 << 20))
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    StartError::Vm(format!("{} is missing or unreadable", path.display()))
                })?;
            for (name, image) in &records {
                for l in &image.layers {
                    let dir = groups.images().layer_dir(&l.diff_id);
                    if !booted.layers.iter().any(|b| b.path == dir) {
                        return Err(StartError::Vm(format!(
                            "image {name:?} now has layer {}, which the group's running VM was not booted with; delete and create the group",
                            l.diff_id
                        )));
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| StartError::Join("checking the VM's layers", e))?
    }
}
