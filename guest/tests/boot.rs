//! Boots the guest image under QEMU (TCG) the way the host shim does, and runs a
//! container in it over the two virtio-serial ports: the Task API (ttrpc) on `eci.ctl`,
//! its output frames and exit on `eci.io`.
//!
//! Skipped unless run as root with the guest image built (`scripts/guest-image.sh`,
//! or `ECI_GUEST_DIR`), QEMU and mkfs.erofs installed:
//!
//!   cargo test -p eci-guest --test boot -- --nocapture

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_async::TaskClient;
use eci_shim::guest_proto::{
    CREATE_OPTIONS_TYPE, Control, CreateOptions, Frame, io_uri, layer_serial,
};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn guest_dir() -> PathBuf {
    std::env::var_os("ECI_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/eci/guest"))
}

/// The host's TSC rate in kHz: the guest skips calibrating it (under TCG, microvm has
/// no timer to calibrate against and hangs in about one boot in four without it).
fn tsc_khz() -> u64 {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        && let Ok(k) = s.trim().parse()
    {
        return k;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// The QEMU command line (the one docs/vm.md gives).
fn qemu_args(image: &Path, vm: &Path, cmdline: &str, layers: &[(PathBuf, String)]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-name",
        "eci-boot-test",
        "-M",
        "microvm,x-option-roms=off,rtc=on",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        "512",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p = |x: &Path| x.display().to_string();
    a.extend([
        "-kernel".into(),
        p(&image.join("vmlinux")),
        "-initrd".into(),
        p(&image.join("initrd.img")),
        "-append".into(),
        cmdline.into(),
        "-serial".into(),
        format!("file:{}", p(&vm.join("console.log"))),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,id=ctl,path={},server=on,wait=off",
            p(&vm.join("ctl.sock"))
        ),
        "-device".into(),
        "virtserialport,chardev=ctl,name=eci.ctl".into(),
        "-chardev".into(),
        format!(
            "socket,id=io,path={},server=on,wait=off",
            p(&vm.join("io.sock"))
        ),
        "-device".into(),
        "virtserialport,chardev=io,name=eci.io".into(),
    ]);
    for (i, (erofs, serial)) in layers.iter().enumerate() {
        a.extend([
            "-drive".into(),
            format!(
                "id=layer{i},if=none,readonly=on,format=raw,file={}",
                p(erofs)
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=layer{i},serial={serial}"),
        ]);
    }
    a
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect(path: &Path, until: Instant) -> UnixStream {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > until => panic!("connecting {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn config_json() -> Vec<u8> {
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", "uname -r; echo hi"],
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": {"path": "rootfs"},
        "hostname": "boot-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"},
                           {"type": "ipc"}, {"type": "uts"}]
        }
    });
    serde_json::to_vec(&spec).expect("spec")
}

#[test]
fn boots_and_runs_a_container() {
    let image = guest_dir();
    if !nix::unistd::Uid::effective().is_root()
        || !image.join("initrd.img").exists()
        || !Path::new(QEMU).exists()
    {
        eprintln!(
            "skipped: needs root, {QEMU} and the guest image at {}",
            image.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // The busybox layer, as the agent would cache it.
    let hex = "ab12".repeat(16);
    let layer_dir = tmp.path().join("layer");
    std::fs::create_dir_all(layer_dir.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", layer_dir.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "uname", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", layer_dir.join("bin").join(applet)).expect("ln");
    }
    let erofs = tmp.path().join(format!("{hex}.erofs"));
    let st = Command::new("mkfs.erofs")
        .arg("-q")
        .arg(&erofs)
        .arg(&layer_dir)
        .status()
        .expect("mkfs.erofs");
    assert!(st.success(), "mkfs.erofs failed");
    let serial = layer_serial(&hex);
    // Host paths as the guest will see them (nothing of these exists in the guest yet).
    let host_layer = format!("/var/lib/eci-boot-test/layers/{hex}");
    let group_dir = "/run/eci-boot-test/groups/g1";
    let bundle = format!("{group_dir}/c1");
    let vm = tmp.path().join("vm");
    std::fs::create_dir_all(&vm).expect("vm dir");

    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz={} eci.id=g1 eci.dir={group_dir} eci.host=g1",
        tsc_khz()
    );
    let args = qemu_args(&image, &vm, &cmdline, &[(erofs.clone(), serial.clone())]);
    eprintln!("{QEMU} {}", args.join(" "));
    let booted = Instant::now();
    let _qemu = Qemu(
        Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu"),
    );
    let until = Instant::now() + Duration::from_secs(60);
    let mut io = connect(&vm.join("io.sock"), until);
    io.set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    let console = || std::fs::read_to_string(vm.join("console.log")).unwrap_or_default();
    let first = Frame::read_from(&mut io)
        .unwrap_or_else(|e| panic!("io port: {e}\nconsole:\n{}", console()))
        .unwrap_or_else(|| panic!("io port closed\nconsole:\n{}", console()));
    assert_eq!(first.parse_control().expect("control"), Control::Ready);
    eprintln!("ready after {:?}", booted.elapsed());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (stdout, stderr) = (1u32, 2u32);
    rt.block_on(async {
        let client = ttrpc::asynchronous::Client::connect(&format!(
            "unix://{}",
            vm.join("ctl.sock").display()
        ))
        .await
        .expect("ctl");
        let task = TaskClient::new(client);
        let ctx = || ttrpc::context::with_timeout(60_000_000_000);
        let opts = CreateOptions {
            config_json_b64: base64::engine::general_purpose::STANDARD.encode(config_json()),
            layers: BTreeMap::from([(host_layer.clone(), serial.clone())]),
            ..Default::default()
        };
        let req = api::CreateTaskRequest {
            id: "c1".into(),
            bundle: bundle.clone(),
            rootfs: vec![api::Mount {
                type_: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("lowerdir={host_layer}"),
                    "upperdir=/var/lib/eci-boot-test/writable/c1/upper".into(),
                    "workdir=/var/lib/eci-boot-test/writable/c1/work".into(),
                ],
                ..Default::default()
            }],
            stdout: io_uri(stdout),
            stderr: io_uri(stderr),
            options: MessageField::some(Any {
                type_url: CREATE_OPTIONS_TYPE.into(),
                value: serde_json::to_vec(&opts).expect("options"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = task.create(ctx(), &req).await;
        let created = created.unwrap_or_else(|e| panic!("create: {e}\nconsole:\n{}", console()));
        eprintln!("created pid {} after {:?}", created.pid, booted.elapsed());
        let start = api::StartRequest {
            id: "c1".into(),
            ..Default::default()
        };
        task.start(ctx(), &start).await.expect("start");
    });

    let mut out = Vec::new();
    let mut eofs = 0;
    let record = loop {
        let f = Frame::read_from(&mut io)
            .unwrap_or_else(|e| panic!("io port: {e}\nconsole:\n{}", console()))
            .expect("io port closed");
        match f.stream {
            0 => match f.parse_control().expect("control") {
                Control::Exit { id, record, .. } => {
                    assert_eq!(id, "c1");
                    break record;
                }
                other => panic!("unexpected control {other:?}"),
            },
            s if f.is_eof() => {
                assert!(s == stdout || s == stderr);
                eofs += 1;
            }
            s if s == stdout => out.extend_from_slice(&f.data),
            _ => {}
        }
    };
    eprintln!("exited after {:?}: {record:?}", booted.elapsed());
    let text = String::from_utf8_lossy(&out);
    assert_eq!(eofs, 2, "both streams end before the exit");
    assert_eq!(record.exit_code, 0);
    let mut lines = text.lines();
    let release = lines.next().unwrap_or_default();
    let manifest = std::fs::read_to_string(image.join("manifest.json")).expect("manifest");
    assert!(
        manifest.contains(release) && release.ends_with("cloud-amd64"),
        "uname -r {release:?} is the guest kernel"
    );
    assert_eq!(lines.next(), Some("hi"));
    let mut rest = Vec::new();
    let _ = io.set_read_timeout(Some(Duration::from_millis(10)));
    let _ = io.read(&mut rest);
}
