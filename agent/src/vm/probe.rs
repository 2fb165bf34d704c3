//! Which accelerator boots a guest on this host: a probe boot of the guest image with
//! `eci.probe=1` (contract "Accelerator probe": `eci-guest` prints
//! [`PROBE_OK`] on the serial console as soon as it runs as PID 1, then powers off).
//!
//! A `/dev/kvm` proves nothing: on a nested host without vmx/svm (`kvm_pvm`) an
//! ordinary guest kernel never reaches `/init` under KVM. So the agent boots the real
//! guest image once per accelerator and remembers the outcome in
//! `<state>/vm-accel.json`, keyed by everything that can change it ([`CacheKey`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::image::GuestImage;

/// The line `eci-guest` prints on its console in probe mode.
pub const PROBE_OK: &str = "ECI-GUEST-PROBE-OK";
/// How long a KVM probe may take (a working KVM boots in well under a second).
pub const KVM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a TCG probe may take (about 2 s to `/init` here; slow hosts vary).
pub const TCG_TIMEOUT: Duration = Duration::from_secs(60);
/// Most console bytes read from one probe: a hostile or broken guest cannot make the
/// agent buffer more.
const MAX_CONSOLE: usize = 1 << 20;
/// Most bytes of QEMU's stderr kept as the reason a probe failed.
const MAX_DETAIL: usize = 400;

pub use eci_runtime::vm_config::Accel;

/// How long a probe boot under `accel` may take to print [`PROBE_OK`].
fn timeout_of(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => KVM_TIMEOUT,
        Accel::Tcg => TCG_TIMEOUT,
    }
}

/// What one probe boot showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootResult {
    /// The guest reached `/init` and printed [`PROBE_OK`].
    pub boots: bool,
    /// Why not (QEMU's last words, a timeout), empty when it booted.
    pub detail: String,
}

/// Everything a cached probe result depends on: a new host kernel, QEMU, KVM device or
/// guest image probes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub host_kernel: String,
    pub qemu_version: String,
    pub kvm_device: bool,
    pub guest_kernel: String,
    pub guest_sha256: String,
}

/// `<state>/vm-accel.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelCache {
    pub key: CacheKey,
    #[serde(default)]
    pub results: BTreeMap<Accel, BootResult>,
}

impl AccelCache {
    /// The cache at `path` if it was made for `key`; else an empty one for `key`.
    pub fn load(path: &Path, key: &CacheKey) -> Self {
        let stored = std::fs::read(path)
            .ok()
            .filter(|b| b.len() < 64 * 1024)
            .and_then(|b| serde_json::from_slice::<AccelCache>(&b).ok());
        match stored {
            Some(c) if c.key == *key => c,
            _ => AccelCache {
                key: key.clone(),
                results: BTreeMap::new(),
            },
        }
    }

    /// Writes the cache atomically (temp file, fsync, rename): a crash leaves the old
    /// cache or the new one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::vm::write_atomic(path, &json)
    }
}

pub use eci_runtime::vm_config::host_tsc_khz;

/// `qemu --version`'s first line, or why QEMU does not run.
pub async fn qemu_version(qemu: &Path) -> Result<String, String> {
    let run = tokio::process::Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| format!("{} --version did not answer within 10s", qemu.display()))?
        .map_err(|e| format!("{}: {e}", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default().trim().to_string();
    if !out.status.success() || first.is_empty() {
        return Err(format!(
            "{} --version failed: {}",
            qemu.display(),
            tail(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    Ok(first)
}

/// The last [`MAX_DETAIL`] bytes of `s`, trimmed, on char boundaries.
fn tail(s: &str) -> String {
    let s = s.trim();
    let mut start = s.len().saturating_sub(MAX_DETAIL);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].replace('\n', " | ")
}

/// QEMU's arguments for a probe boot of `image` under `accel`.
pub fn probe_args(image: &GuestImage, accel: Accel, tsc_khz: Option<u64>) -> Vec<String> {
    let mut append = String::from("console=ttyS0 quiet panic=-1 reboot=t eci.probe=1");
    if accel == Accel::Tcg
        && let Some(khz) = tsc_khz
    {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let mut args: Vec<String> = vec![
        "-accel".into(),
        accel.as_str().into(),
        // The machine and CPU the shim boots groups with (shim/src/vm/qemu.rs), so
        // that what the probe shows holds for them.
        "-M".into(),
        "microvm,x-option-roms=off,rtc=on".into(),
        "-cpu".into(),
        match accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
        .into(),
    ];
    args.extend(
        [
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-name",
            "eci-probe",
            "-kernel",
        ]
        .map(String::from),
    );
    args.push(image.kernel.display().to_string());
    args.push("-initrd".into());
    args.push(image.initrd.display().to_string());
    args.push("-append".into());
    args.push(append);
    args
}

/// Boots `image` once under `accel` and says whether the guest reached `/init`. QEMU
/// is killed at the end whatever happened (a KVM emulation failure leaves it paused,
/// not exited).
pub async fn boot(
    qemu: &Path,
    image: &GuestImage,
    accel: Accel,
    tsc_khz: Option<u64>,
) -> BootResult {
    boot_within(qemu, image, accel, tsc_khz, timeout_of(accel)).await
}

async fn boot_within(
    qemu: &Path,
    image: &GuestImage,
    accel: Accel,
    tsc_khz: Option<u64>,
    limit: Duration,
) -> BootResult {
    let fail = |detail: String| BootResult {
        boots: false,
        detail,
    };
    let mut child = match tokio::process::Command::new(qemu)
        .args(probe_args(image, accel, tsc_khz))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("{}: {e}", qemu.display())),
    };
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return fail("no pipes to QEMU".into());
    };
    let errors = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr)
            .take(MAX_CONSOLE as u64)
            .read_to_end(&mut buf)
            .await;
        buf
    });
    let seen = async {
        let mut lines = BufReader::new(stdout.take(MAX_CONSOLE as u64)).split(b'\n');
        while let Ok(Some(line)) = lines.next_segment().await {
            if String::from_utf8_lossy(&line).contains(PROBE_OK) {
                return true;
            }
        }
        false
    };
    let outcome = tokio::time::timeout(limit, seen).await;
    let _ = child.start_kill();
    let status = child.wait().await;
    // Bounded: a child QEMU left behind could hold the pipe open.
    let stderr = tokio::time::timeout(Duration::from_secs(2), errors)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let stderr = tail(&String::from_utf8_lossy(&stderr));
    match outcome {
        Ok(true) => BootResult {
            boots: true,
            detail: String::new(),
        },
        Ok(false) => fail(format!(
            "QEMU ended ({}) before the guest ran /init{}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            if stderr.is_empty() {
                String::new()
            } else {
                format!(": {stderr}")
            }
        )),
        Err(_) => fail(format!(
            "the guest did not reach /init within {}s{}",
            limit.as_secs(),
            if stderr.is_empty() {
                String::new()
            } else {
                format!(" (QEMU: {stderr})")
            }
        )),
    }
}

/// Where the probe cache lives.
pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("vm-accel.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey {
            host_kernel: "6.1.0".into(),
            qemu_version: "QEMU emulator version 7.2.22".into(),
            kvm_device: true,
            guest_kernel: "6.1.0-28-cloud-amd64".into(),
            guest_sha256: "ab".into(),
        }
    }

    #[test]
    fn the_cache_is_used_only_for_its_own_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = cache_path(dir.path());
        let mut c = AccelCache::load(&path, &key());
        assert!(c.results.is_empty(), "no file: empty");
        c.results.insert(
            Accel::Kvm,
            BootResult {
                boots: false,
                detail: "emulation failure".into(),
            },
        );
        c.save(&path).expect("save");
        assert_eq!(AccelCache::load(&path, &key()), c);
        // Any part of the key changing probes again.
        let changes: [fn(&mut CacheKey); 5] = [
            |k| k.host_kernel = "6.2".into(),
            |k| k.qemu_version = "QEMU emulator version 8.0".into(),
            |k| k.kvm_device = false,
            |k| k.guest_kernel = "6.1.0-29-cloud-amd64".into(),
            |k| k.guest_sha256 = "cd".into(),
        ];
        for change in changes {
            let mut k = key();
            change(&mut k);
            let other = AccelCache::load(&path, &k);
            assert!(other.results.is_empty(), "{k:?}");
            assert_eq!(other.key, k);
        }
        // A damaged file is no cache.
        std::fs::write(&path, b"{not json").expect("write");
        assert!(AccelCache::load(&path, &key()).results.is_empty());
    }

    #[test]
    fn cpu_mhz_becomes_khz() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.134\n";
        assert_eq!(eci_runtime::vm_config::parse_cpu_mhz(info), Some(2_596_134));
        assert_eq!(eci_runtime::vm_config::parse_cpu_mhz("nothing"), None);
        assert!(host_tsc_khz().is_some_and(|k| k > 100_000));
    }

    fn fake_image(dir: &Path) -> GuestImage {
        GuestImage {
            dir: dir.to_path_buf(),
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            kernel_release: "6.1.0-28-cloud-amd64".into(),
            guest_sha256: String::new(),
        }
    }

    /// A stand-in for QEMU: boots (prints the probe line) only under `ok_accel`.
    fn fake_qemu(dir: &Path, ok_accel: &str) -> PathBuf {
        let path = dir.join("qemu");
        let script = format!(
            "#!/bin/sh\ncase \"$*\" in *\"-accel {ok_accel} \"*) echo booting; echo '{PROBE_OK}'; exec sleep 30;; *) echo 'KVM internal error' >&2; exec sleep 30;; esac\n"
        );
        std::fs::write(&path, script).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        path
    }

    #[tokio::test]
    async fn a_probe_boot_sees_the_line_or_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let qemu = fake_qemu(dir.path(), "tcg");
        let image = fake_image(dir.path());
        let t0 = std::time::Instant::now();
        let ok = boot_within(
            &qemu,
            &image,
            Accel::Tcg,
            Some(1000),
            Duration::from_secs(5),
        )
        .await;
        assert!(ok.boots, "{ok:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "QEMU is killed at once"
        );
        let bad = boot_within(&qemu, &image, Accel::Kvm, None, Duration::from_secs(1)).await;
        assert!(!bad.boots);
        assert!(
            bad.detail.contains("within 1s") && bad.detail.contains("KVM internal error"),
            "{bad:?}"
        );
        let gone = boot(&dir.path().join("absent"), &image, Accel::Kvm, None).await;
        assert!(!gone.boots && gone.detail.contains("absent"), "{gone:?}");
    }

    #[test]
    fn probe_args_name_the_image_and_the_tsc_under_tcg_only() {
        let image = fake_image(Path::new("/g"));
        let tcg = probe_args(&image, Accel::Tcg, Some(2_400_000)).join(" ");
        assert!(
            tcg.contains("-accel tcg -M microvm,x-option-roms=off"),
            "{tcg}"
        );
        assert!(
            tcg.contains("-kernel /g/vmlinux -initrd /g/initrd.img"),
            "{tcg}"
        );
        assert!(tcg.contains("eci.probe=1 tsc_early_khz=2400000"), "{tcg}");
        let kvm = probe_args(&image, Accel::Kvm, Some(2_400_000)).join(" ");
        assert!(
            !kvm.contains("tsc_early_khz") && kvm.contains("-cpu host"),
            "{kvm}"
        );
    }
}
