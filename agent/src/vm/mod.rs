//! The agent's side of `sandbox: vm` (issue 15): whether this node can run it (guest
//! image, QEMU, an accelerator that boots a guest), the `vm.json` a vm group's shim is
//! launched with, and QEMU processes whose group is gone.
//!
//! The VM itself is the shim's (`eci-shim start --sandbox vm`): the agent talks the same
//! Task API to it as to a namespaced group's shim.

pub mod image;
pub mod launch;
pub mod orphans;
pub mod probe;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use crate::config::{AccelChoice, VmConfig};
use image::GuestImage;
use probe::{Accel, AccelCache, BootResult, CacheKey};

/// The child cgroup of a vm group's cgroup that QEMU runs in: its memory is the
/// sandbox's overhead, reported apart from the containers' use.
pub const VM_CGROUP: &str = "vm";

/// What the agent decided about the vm sandbox at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    /// The start probe has not finished: nothing is advertised or accepted yet.
    Probing,
    /// `sandbox: vm` groups run under this accelerator.
    Available { accel: Accel },
    /// Why `sandbox: vm` is refused.
    Unavailable { reason: String },
}

/// The node's vm facts, as `Node.Info` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFacts {
    pub state: VmState,
    /// The guest image's kernel release; empty without an image.
    pub guest_kernel: String,
    /// `qemu --version`; empty when QEMU does not run.
    pub qemu_version: String,
}

/// Settings of the vm sandbox, with defaults applied.
#[derive(Debug, Clone)]
pub struct VmSettings {
    pub guest_dir: PathBuf,
    pub qemu: PathBuf,
    pub allow_tcg: bool,
    pub accel: AccelChoice,
    /// Added to each VM's memory (bytes).
    pub overhead_bytes: u64,
    pub state_dir: PathBuf,
}

impl VmSettings {
    /// From the `[vm]` config (already checked by `Config::check`).
    pub fn from_config(cfg: &VmConfig, state_dir: &Path) -> Self {
        VmSettings {
            guest_dir: cfg.guest_dir(state_dir),
            qemu: cfg.qemu.clone(),
            allow_tcg: cfg.allow_tcg,
            accel: cfg.accel().unwrap_or(AccelChoice::Auto),
            overhead_bytes: cfg.overhead_bytes().unwrap_or(64 << 20),
            state_dir: state_dir.to_path_buf(),
        }
    }
}

/// The vm sandbox of this node: its settings and what the start probe found.
#[derive(Debug)]
pub struct VmSandbox {
    pub settings: VmSettings,
    facts: RwLock<VmFacts>,
}

impl VmSandbox {
    /// A sandbox whose probe has not run yet.
    pub fn new(settings: VmSettings) -> Self {
        VmSandbox {
            settings,
            facts: RwLock::new(VmFacts {
                state: VmState::Probing,
                guest_kernel: String::new(),
                qemu_version: String::new(),
            }),
        }
    }

    /// A sandbox whose facts are already known (tests, tools).
    pub fn with_facts(settings: VmSettings, facts: VmFacts) -> Self {
        let s = VmSandbox::new(settings);
        s.set(facts);
        s
    }

    /// A sandbox known to be unavailable (tests; a node that never probes).
    pub fn unavailable(settings: VmSettings, reason: &str) -> Self {
        let s = VmSandbox::new(settings);
        s.set(VmFacts {
            state: VmState::Unavailable {
                reason: reason.into(),
            },
            guest_kernel: String::new(),
            qemu_version: String::new(),
        });
        s
    }

    pub fn facts(&self) -> VmFacts {
        self.facts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, f: VmFacts) {
        *self.facts.write().unwrap_or_else(PoisonError::into_inner) = f;
    }

    /// The accelerator vm groups run under, or why there is none (the reason a
    /// `sandbox: vm` Create is refused with).
    pub fn usable(&self) -> Result<Accel, String> {
        match self.facts().state {
            VmState::Available { accel } => Ok(accel),
            VmState::Probing => Err(
                "the vm sandbox is still being probed (a probe boot of the guest image); try again shortly"
                    .into(),
            ),
            VmState::Unavailable { reason } => Err(reason),
        }
    }

    /// The guest image, when the sandbox is usable.
    pub fn image(&self) -> Result<GuestImage, String> {
        self.usable()?;
        GuestImage::find(&self.settings.guest_dir)
    }

    /// Runs the start probe (see [`detect`]) and records its outcome.
    pub async fn probe(&self) {
        let facts = detect(&self.settings).await;
        match &facts.state {
            VmState::Available { accel } => tracing::info!(
                accelerator = accel.as_str(),
                guest_kernel = %facts.guest_kernel,
                emulated = *accel == Accel::Tcg,
                "vm sandbox available"
            ),
            VmState::Unavailable { reason } => {
                tracing::info!(%reason, "vm sandbox not available")
            }
            VmState::Probing => {}
        }
        self.set(facts);
    }
}

/// Decides whether vm groups can run here: the guest image is complete, QEMU runs,
/// and an accelerator the config allows boots the probe guest. KVM is tried first (in
/// `auto`); TCG is probed too when KVM fails, so that the refusal can say whether only
/// the opt-in stands in the way. Results come from `<state>/vm-accel.json` when its
/// key matches; new ones are written back.
pub async fn detect(s: &VmSettings) -> VmFacts {
    let unavailable = |reason: String, guest_kernel: String, qemu_version: String| VmFacts {
        state: VmState::Unavailable { reason },
        guest_kernel,
        qemu_version,
    };
    let image = match GuestImage::find(&s.guest_dir) {
        Ok(i) => i,
        Err(reason) => return unavailable(reason, String::new(), String::new()),
    };
    let qemu_version = match probe::qemu_version(&s.qemu).await {
        Ok(v) => v,
        Err(e) => {
            return unavailable(
                format!("QEMU does not run ([vm] qemu): {e}"),
                image.kernel_release,
                String::new(),
            );
        }
    };
    let kvm_device = Path::new("/dev/kvm").exists();
    let key = CacheKey {
        host_kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        qemu_version: qemu_version.clone(),
        kvm_device,
        guest_kernel: image.kernel_release.clone(),
        guest_sha256: image.guest_sha256.clone(),
    };
    let cache_path = probe::cache_path(&s.state_dir);
    let mut cache = AccelCache::load(&cache_path, &key);
    let tsc = probe::host_tsc_khz();
    let wanted: &[Accel] = match s.accel {
        AccelChoice::Auto => &[Accel::Kvm, Accel::Tcg],
        AccelChoice::Kvm => &[Accel::Kvm],
        AccelChoice::Tcg => &[Accel::Tcg],
    };
    let mut results: Vec<(Accel, BootResult)> = Vec::new();
    for &accel in wanted {
        let r = if let Some(r) = cache.results.get(&accel) {
            r.clone()
        } else if accel == Accel::Kvm && !kvm_device {
            BootResult {
                boots: false,
                detail: "no /dev/kvm".into(),
            }
        } else {
            tracing::info!(
                accelerator = accel.as_str(),
                "probe boot of the guest image"
            );
            let r = probe::boot(&s.qemu, &image, accel, tsc).await;
            cache.results.insert(accel, r.clone());
            if let Err(e) = cache.save(&cache_path) {
                tracing::warn!(path = %cache_path.display(), error = %e, "saving the vm probe result");
            }
            r
        };
        let boots = r.boots;
        results.push((accel, r));
        if boots {
            break;
        }
    }
    let verdict = choose(&results, s.allow_tcg);
    VmFacts {
        state: verdict,
        guest_kernel: image.kernel_release,
        qemu_version,
    }
}

/// The accelerator to use from probe results (in the order probed), or why none.
fn choose(results: &[(Accel, BootResult)], allow_tcg: bool) -> VmState {
    let boots = |a: Accel| results.iter().any(|(x, r)| *x == a && r.boots);
    if boots(Accel::Kvm) {
        return VmState::Available { accel: Accel::Kvm };
    }
    if boots(Accel::Tcg) {
        if allow_tcg {
            return VmState::Available { accel: Accel::Tcg };
        }
        let kvm = results
            .iter()
            .find(|(a, _)| *a == Accel::Kvm)
            .map(|(_, r)| format!(" (kvm: {})", r.detail))
            .unwrap_or_default();
        return VmState::Unavailable {
            reason: format!(
                "only TCG emulation boots a guest here and [vm] allow_tcg is false{kvm}"
            ),
        };
    }
    let tried: Vec<String> = results
        .iter()
        .map(|(a, r)| format!("{}: {}", a.as_str(), r.detail))
        .collect();
    VmState::Unavailable {
        reason: format!(
            "no accelerator boots the guest image ({})",
            tried.join("; ")
        ),
    }
}

/// Writes `data` to `path` so that a crash leaves the old file or the new one, never a
/// part: a temp file beside it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(boots: bool, detail: &str) -> BootResult {
        BootResult {
            boots,
            detail: detail.into(),
        }
    }

    #[test]
    fn kvm_first_tcg_only_when_allowed() {
        let kvm_ok = [(Accel::Kvm, r(true, ""))];
        assert_eq!(
            choose(&kvm_ok, false),
            VmState::Available { accel: Accel::Kvm }
        );
        let tcg_only = [
            (Accel::Kvm, r(false, "KVM internal error")),
            (Accel::Tcg, r(true, "")),
        ];
        assert_eq!(
            choose(&tcg_only, true),
            VmState::Available { accel: Accel::Tcg }
        );
        let VmState::Unavailable { reason } = choose(&tcg_only, false) else {
            panic!("TCG needs the opt-in");
        };
        assert!(
            reason.starts_with("only TCG emulation boots a guest here and [vm] allow_tcg is false"),
            "{reason}"
        );
        let none = [
            (Accel::Kvm, r(false, "no /dev/kvm")),
            (Accel::Tcg, r(false, "timeout")),
        ];
        let VmState::Unavailable { reason } = choose(&none, true) else {
            panic!("nothing boots");
        };
        assert!(
            reason.contains("kvm: no /dev/kvm; tcg: timeout"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn without_an_image_the_reason_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = VmSettings::from_config(&VmConfig::default(), dir.path());
        let vm = VmSandbox::new(s);
        assert!(vm.usable().expect_err("probing").contains("probed"));
        vm.probe().await;
        let e = vm.usable().expect_err("no image");
        assert!(
            e.contains(&format!(
                "no guest image at {}",
                dir.path().join("guest").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn atomic_writes_leave_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
