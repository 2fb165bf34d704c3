//! Boots the guest image under QEMU (TCG) the way the host shim does, and runs a
//! container in it over the two virtio-serial ports: the Task API (ttrpc) on `eci.ctl`,
//! its output frames and exit on `eci.io`.
//!
//! Skipped unless run as root with the guest image built (`scripts/guest-image.sh`,
//! or `ECI_TEST_GUEST_DIR`), QEMU and mkfs.erofs installed:
//!
//!   cargo test -p eci-guest --test boot -- --nocapture

use std::collections::{BTreeMap, HashMap, HashSet};
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
use eci_shim::task::ExitRecord;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const MAC: &str = "02:00:00:aa:bb:01";

fn guest_dir() -> PathBuf {
    std::env::var_os("ECI_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/eci/guest"))
}

/// The host's TSC rate in kHz (the guest skips calibrating it; see docs/vm.md).
fn tsc_khz() -> u64 {
    eci_runtime::vm_config::host_tsc_khz().unwrap_or(2_000_000)
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

#[test]
fn probe_prints_and_powers_off() {
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
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz={} eci.probe=1",
        tsc_khz()
    );
    let mut args = qemu_args(&image, tmp.path(), &cmdline, &[]);
    args.retain(|a| a != "-name" && a != "eci-boot-test");
    let mut qemu = Qemu(
        Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu"),
    );
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Some(st) = qemu.0.try_wait().expect("qemu") {
            let console = std::fs::read_to_string(tmp.path().join("console.log")).expect("log");
            assert!(st.success(), "QEMU: {st}");
            assert!(console.contains("ECI-GUEST-PROBE-OK"), "{console}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the probe boot did not power off");
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
    config_json_with("uname -r; echo hi; cat", serde_json::json!({}))
}

fn config_json_with(script: &str, resources: serde_json::Value) -> Vec<u8> {
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
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
                           {"type": "ipc"}, {"type": "uts"}],
            "resources": resources
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
    for applet in ["sh", "uname", "echo", "cat", "ip", "tail", "tty"] {
        std::os::unix::fs::symlink("busybox", layer_dir.join("bin").join(applet)).expect("ln");
    }
    let erofs = tmp.path().join(format!("{hex}.erofs"));
    let st = Command::new("mkfs.erofs")
        .arg("--quiet")
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
        "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz={} eci.id=g1 eci.dir={group_dir} \
         eci.host=g1 eci.net=mac={MAC};mtu=1500;a=10.0.2.15/24;g=10.0.2.2",
        tsc_khz()
    );
    let mut args = qemu_args(&image, &vm, &cmdline, &[(erofs.clone(), serial.clone())]);
    // QEMU's user-mode network stands in for the tap: the guest finds the NIC by MAC.
    args.extend([
        "-netdev".into(),
        "user,id=net0".into(),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={MAC}"),
    ]);
    eprintln!("{QEMU} {}", args.join(" "));
    let booted = Instant::now();
    let mut qemu = Qemu(
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
    let mut frames = Frames {
        io,
        out: HashMap::new(),
        eofs: HashSet::new(),
        exits: Vec::new(),
        ooms: 0,
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (stdout, stderr, stdin, exec_out, exec_err) = (1u32, 2u32, 3u32, 4u32, 5u32);
    let client = rt.block_on(async {
        ttrpc::asynchronous::Client::connect(&format!("unix://{}", vm.join("ctl.sock").display()))
            .await
            .expect("ctl")
    });
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
        stdin: io_uri(stdin),
        stdout: io_uri(stdout),
        stderr: io_uri(stderr),
        options: MessageField::some(Any {
            type_url: CREATE_OPTIONS_TYPE.into(),
            value: serde_json::to_vec(&opts).expect("options"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = rt.block_on(task.create(ctx(), &req));
    let created = created.unwrap_or_else(|e| panic!("create: {e}\nconsole:\n{}", console()));
    eprintln!("created pid {} after {:?}", created.pid, booted.elapsed());
    let start = |exec_id: &str| api::StartRequest {
        id: "c1".into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    rt.block_on(task.start(ctx(), &start(""))).expect("start");
    frames.until(|f| f.text(stdout).contains("hi\n"));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", qemu.0.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!("first output after {:?}; QEMU {rss}", booted.elapsed());
    let text = frames.text(stdout);
    let release = text.lines().next().unwrap_or_default().to_string();
    let manifest = std::fs::read_to_string(image.join("manifest.json")).expect("manifest");
    assert!(
        manifest.contains(&release) && release.ends_with("cloud-amd64"),
        "uname -r {release:?} is the guest kernel"
    );

    // The host reconnects (a restarted proxy): a fresh connection serves at once.
    drop(task);
    let client = rt.block_on(async {
        ttrpc::asynchronous::Client::connect(&format!("unix://{}", vm.join("ctl.sock").display()))
            .await
            .expect("ctl again")
    });
    let task = TaskClient::new(client);
    let state = api::StateRequest {
        id: "c1".into(),
        ..Default::default()
    };
    let st = rt
        .block_on(task.state(ctx(), &state))
        .expect("state after reconnect");
    assert_eq!(st.pid, created.pid);

    // An exec sees the group's network: eth0 with the eci.net address.
    let process = serde_json::json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/ip", "addr", "show", "eth0"],
        "env": ["PATH=/bin"],
        "cwd": "/"
    });
    let exec = api::ExecProcessRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        stdout: io_uri(exec_out),
        stderr: io_uri(exec_err),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).expect("process"),
            ..Default::default()
        }),
        ..Default::default()
    };
    rt.block_on(task.exec(ctx(), &exec)).expect("exec");
    rt.block_on(task.start(ctx(), &start("e1")))
        .expect("start exec");
    let rec = frames.exit_of("c1", "e1");
    assert!(frames.eofs.contains(&exec_out) && frames.eofs.contains(&exec_err));
    let ip = frames.text(exec_out);
    assert_eq!(rec.exit_code, 0, "ip: {ip} {}", frames.text(exec_err));
    assert!(ip.contains("10.0.2.15/24"), "eth0 in the group netns: {ip}");

    // An exec with a terminal: its output comes as stdout.
    let process = serde_json::json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", "tty; echo T"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "terminal": true
    });
    let exec = api::ExecProcessRequest {
        id: "c1".into(),
        exec_id: "t1".into(),
        terminal: true,
        stdout: io_uri(8),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).expect("process"),
            ..Default::default()
        }),
        ..Default::default()
    };
    rt.block_on(task.exec(ctx(), &exec)).expect("exec tty");
    rt.block_on(task.start(ctx(), &start("t1")))
        .expect("start exec tty");
    let rec = frames.exit_of("c1", "t1");
    let out = frames.text(8);
    assert_eq!(rec.exit_code, 0, "{out}");
    assert!(
        out.contains("/dev/pts/") && out.contains("T\r\n"),
        "{out:?}"
    );

    // stdin frames reach the container; its EOF ends `cat`.
    frames.send(&Frame {
        stream: stdin,
        data: b"ping\n".to_vec(),
    });
    frames.send(&Frame::eof(stdin));
    let rec = frames.exit_of("c1", "");
    eprintln!("exited after {:?}: {rec:?}", booted.elapsed());
    assert!(frames.eofs.contains(&stdout) && frames.eofs.contains(&stderr));
    assert_eq!(rec.exit_code, 0);
    assert!(
        frames.text(stdout).ends_with("hi\nping\n"),
        "{}",
        frames.text(stdout)
    );

    let del = |exec_id: &str| api::DeleteRequest {
        id: "c1".into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    rt.block_on(task.delete(ctx(), &del("e1")))
        .expect("delete exec");
    rt.block_on(task.delete(ctx(), &del(""))).expect("delete");

    // A container over its memory limit: OOM-killed, said in its exit record and by an
    // `oom` control message.
    let opts = CreateOptions {
        config_json_b64: base64::engine::general_purpose::STANDARD.encode(config_json_with(
            "tail /dev/zero",
            serde_json::json!({"memory": {"limit": 32 << 20}}),
        )),
        layers: BTreeMap::from([(host_layer.clone(), serial.clone())]),
        ..Default::default()
    };
    let mut req2 = req.clone();
    req2.id = "c2".into();
    req2.bundle = format!("{group_dir}/c2");
    req2.stdin = String::new();
    req2.stdout = io_uri(6);
    req2.stderr = io_uri(7);
    req2.rootfs[0].options[1] = "upperdir=/var/lib/eci-boot-test/writable/c2/upper".into();
    req2.rootfs[0].options[2] = "workdir=/var/lib/eci-boot-test/writable/c2/work".into();
    req2.options = MessageField::some(Any {
        type_url: CREATE_OPTIONS_TYPE.into(),
        value: serde_json::to_vec(&opts).expect("options"),
        ..Default::default()
    });
    rt.block_on(task.create(ctx(), &req2))
        .unwrap_or_else(|e| panic!("create c2: {e}\nconsole:\n{}", console()));
    let start2 = api::StartRequest {
        id: "c2".into(),
        ..Default::default()
    };
    rt.block_on(task.start(ctx(), &start2)).expect("start c2");
    let rec = frames.exit_of("c2", "");
    assert!(rec.oom_killed, "{rec:?}");
    frames.until(|f| f.ooms > 0);
    let del2 = api::DeleteRequest {
        id: "c2".into(),
        ..Default::default()
    };
    rt.block_on(task.delete(ctx(), &del2)).expect("delete c2");

    rt.block_on(task.shutdown(ctx(), &api::ShutdownRequest::default()))
        .expect("shutdown");
    // The guest powers off: QEMU exits by itself.
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if qemu.0.try_wait().expect("qemu").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("QEMU still runs after Shutdown\nconsole:\n{}", console());
}

/// What the io port brought so far.
struct Frames {
    io: UnixStream,
    out: HashMap<u32, Vec<u8>>,
    eofs: HashSet<u32>,
    exits: Vec<(String, String, ExitRecord)>,
    ooms: usize,
}

impl Frames {
    fn text(&self, stream: u32) -> String {
        String::from_utf8_lossy(self.out.get(&stream).map_or(&[][..], |v| v)).into_owned()
    }

    fn send(&mut self, f: &Frame) {
        f.write_to(&mut self.io).expect("io write");
    }

    /// Reads frames until `done` holds.
    fn until(&mut self, done: impl Fn(&Frames) -> bool) {
        while !done(self) {
            let f = Frame::read_from(&mut self.io)
                .expect("io port")
                .expect("io port closed");
            if f.stream == 0 {
                match f.parse_control().expect("control") {
                    Control::Exit {
                        id,
                        exec_id,
                        record,
                    } => {
                        self.exits.push((id, exec_id, record));
                    }
                    Control::Oom => self.ooms += 1,
                    other => panic!("unexpected control {other:?}"),
                }
            } else if f.is_eof() {
                assert!(self.eofs.insert(f.stream), "two EOFs on {}", f.stream);
            } else {
                assert!(!self.eofs.contains(&f.stream), "data after EOF");
                self.out.entry(f.stream).or_default().extend(f.data);
            }
        }
    }

    fn exit_of(&mut self, id: &str, exec_id: &str) -> ExitRecord {
        let found = |f: &Frames| f.exits.iter().any(|(i, e, _)| i == id && e == exec_id);
        self.until(found);
        self.exits
            .iter()
            .find(|(i, e, _)| i == id && e == exec_id)
            .map(|(_, _, r)| r.clone())
            .expect("exit")
    }
}
