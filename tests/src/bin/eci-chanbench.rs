//! The host↔guest channel, side by side (issue 15): virtio-serial (the `eci.ctl` port
//! carrying ttrpc, the `eci.io` port carrying stdio frames, as the shim uses them)
//! against vsock through vhost-user (vhost-device-vsock, hybrid vsock on a host Unix
//! socket: `CONNECT <port>\n` → `OK …\n`). One guest carries both: eci-guest with
//! `eci.vsock_port=1024` (guest/src/vsock.rs) serves the same Task service on vsock 1024
//! too, and a 64 MiB byte source on 1025. Measured, alternating between the channels:
//! - ttrpc round trips of a cheap call (`State` of an unknown id → NOT_FOUND), median
//!   and p90;
//! - 64 MiB of stdout: a busybox container's `dd` through its FIFO and `eci.io` frames
//!   (the product path); and the raw channels: the guest's byte source on a third
//!   virtio-serial port `eci.bench` against the same source on a vsock stream;
//! - host memory (RSS and Pss of QEMU; of vhost-device-vsock) and boot time to the
//!   guest's `ready`, for the contract line against the same line with the memfd
//!   memory backend and the vhost-user-vsock device (daemon spawn included).
//!
//! Run (root): `eci-chanbench --guest-dir DIR [--rounds N] [--calls N] [--vhost PATH]
//! [--accel tcg|kvm]`, the guest image built by `scripts/guest-image.sh DIR` (with
//! guest/src/vsock.rs), vhost-device-vsock installed
//! (`cargo install --root /opt/vhost-device-vsock vhost-device-vsock`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_async::TaskClient;
use eci_shim::guest_proto::{
    CREATE_OPTIONS_TYPE, Control, CreateOptions, Frame, io_uri, layer_serial,
};

const MEMORY_MIB: u64 = 512;
const VSOCK_PORT: u32 = 1024;
const GUEST_CID: u32 = 3;
const STDOUT_BYTES: u64 = 64 << 20;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const BATCH: usize = 100;

struct Opts {
    guest_dir: PathBuf,
    rounds: usize,
    calls: usize,
    vhost: PathBuf,
    accel: String,
    qemu: PathBuf,
}

fn opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        guest_dir: std::env::var_os("ECI_TEST_GUEST_DIR")
            .map_or_else(|| PathBuf::from("/var/lib/eci/guest"), PathBuf::from),
        rounds: 3,
        calls: 2000,
        vhost: PathBuf::from("/opt/vhost-device-vsock/bin/vhost-device-vsock"),
        accel: "tcg".into(),
        qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>| -> anyhow::Result<usize> {
        let v = v.unwrap_or_default();
        v.parse().map_err(|_| anyhow::anyhow!("not a number: {v}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--guest-dir" => o.guest_dir = it.next().map(PathBuf::from).unwrap_or_default(),
            "--rounds" => o.rounds = num(it.next())?,
            "--calls" => o.calls = num(it.next())?,
            "--vhost" => o.vhost = it.next().map(PathBuf::from).unwrap_or_default(),
            "--accel" => o.accel = it.next().unwrap_or_default(),
            _ => bail!(
                "usage: eci-chanbench [--guest-dir DIR] [--rounds N] [--calls N] \
                 [--vhost PATH] [--accel tcg|kvm]"
            ),
        }
    }
    ensure!(
        o.rounds > 0 && o.calls >= BATCH,
        "rounds ≥ 1, calls ≥ {BATCH}"
    );
    ensure!(o.accel == "tcg" || o.accel == "kvm", "accel: tcg or kvm");
    Ok(o)
}

/// The host's TSC rate in kHz (the guest skips calibrating it; see docs/vm.md).
fn tsc_khz() -> u64 {
    eci_runtime::vm_config::host_tsc_khz().unwrap_or(2_000_000)
}

/// The busybox layer as the agent caches it: `(erofs image, hex)`.
fn busybox_layer(tmp: &Path) -> anyhow::Result<(PathBuf, String)> {
    let hex = "cd34".repeat(16);
    let dir = tmp.join("layer");
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("/bin/busybox")?;
    for applet in ["sh", "dd", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    let erofs = tmp.join(format!("{hex}.erofs"));
    let st = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&erofs)
        .arg(&dir)
        .status()
        .context("mkfs.erofs")?;
    ensure!(st.success(), "mkfs.erofs failed");
    Ok((erofs, hex))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The contract's command line: virtio-serial only, anonymous guest RAM.
    Serial,
    /// The same plus memfd-backed RAM and vhost-user-vsock (and its daemon).
    Vsock,
}

struct Vm {
    qemu: Child,
    daemon: Option<Child>,
    dir: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if let Some(d) = &mut self.daemon {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn wait_path(p: &Path, until: Instant) -> anyhow::Result<()> {
    while !p.exists() {
        ensure!(Instant::now() < until, "{} did not appear", p.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn connect(p: &Path, until: Instant) -> anyhow::Result<UnixStream> {
    loop {
        match UnixStream::connect(p) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > until => bail!("connecting {}: {e}", p.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

struct Layer {
    erofs: PathBuf,
    hex: String,
}

/// Boots one guest; returns it, its io port (after `ready`) and the time to `ready`.
fn boot(
    o: &Opts,
    layer: &Layer,
    kind: Kind,
    dir: &Path,
) -> anyhow::Result<(Vm, UnixStream, Duration)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let p = |x: &Path| x.display().to_string();
    let t0 = Instant::now();
    let mut daemon = None;
    if kind == Kind::Vsock {
        let d = Command::new(&o.vhost)
            .arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                p(&dir.join("vhost.sock")),
                p(&dir.join("vsock.sock"))
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("vhost.log"))?)
            .spawn()
            .with_context(|| format!("spawning {}", o.vhost.display()))?;
        daemon = Some(d);
        wait_path(&dir.join("vhost.sock"), t0 + Duration::from_secs(10))?;
    }
    let mut cmdline = format!(
        "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz={} eci.id=g1 \
         eci.dir=/run/eci-chanbench/groups/g1 eci.host=g1",
        tsc_khz()
    );
    let mut machine = "microvm,x-option-roms=off,rtc=on".to_string();
    if kind == Kind::Vsock {
        cmdline.push_str(&format!(" eci.vsock_port={VSOCK_PORT}"));
        machine.push_str(",memory-backend=mem");
    }
    let (accel, cpu) = if o.accel == "kvm" {
        ("kvm", "host")
    } else {
        ("tcg", "max")
    };
    let mut a: Vec<String> = vec![
        "-name".into(),
        "eci-chanbench".into(),
        "-M".into(),
        machine,
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        format!("{MEMORY_MIB}"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        p(&o.guest_dir.join("vmlinux")),
        "-initrd".into(),
        p(&o.guest_dir.join("initrd.img")),
        "-append".into(),
        cmdline,
        "-serial".into(),
        format!("file:{}", p(&dir.join("console.log"))),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,id=ctl,path={},server=on,wait=off",
            p(&dir.join("ctl.sock"))
        ),
        "-device".into(),
        "virtserialport,chardev=ctl,name=eci.ctl".into(),
        "-chardev".into(),
        format!(
            "socket,id=io,path={},server=on,wait=off",
            p(&dir.join("io.sock"))
        ),
        "-device".into(),
        "virtserialport,chardev=io,name=eci.io".into(),
        "-drive".into(),
        format!(
            "id=layer0,if=none,readonly=on,format=raw,file={}",
            p(&layer.erofs)
        ),
        "-device".into(),
        format!(
            "virtio-blk-device,drive=layer0,serial={}",
            layer_serial(&layer.hex)
        ),
    ];
    if kind == Kind::Vsock {
        a.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on"),
            "-chardev".into(),
            format!("socket,id=vs,path={}", p(&dir.join("vhost.sock"))),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vs".into(),
            "-chardev".into(),
            format!(
                "socket,id=bench,path={},server=on,wait=off",
                p(&dir.join("bench.sock"))
            ),
            "-device".into(),
            "virtserialport,chardev=bench,name=eci.bench".into(),
        ]);
    }
    let qemu = Command::new(&o.qemu)
        .args(&a)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.err"))?)
        .spawn()
        .context("spawning QEMU")?;
    let vm = Vm {
        qemu,
        daemon,
        dir: dir.to_path_buf(),
    };
    let mut io = connect(&dir.join("io.sock"), t0 + Duration::from_secs(30))?;
    io.set_read_timeout(Some(READY_TIMEOUT))?;
    let first = Frame::read_from(&mut io)
        .with_context(|| console(&vm))?
        .with_context(|| format!("io port closed; {}", console(&vm)))?;
    ensure!(
        first.parse_control().ok() == Some(Control::Ready),
        "first frame is not ready"
    );
    let ready = t0.elapsed();
    io.set_read_timeout(Some(Duration::from_secs(300)))?;
    Ok((vm, io, ready))
}

fn console(vm: &Vm) -> String {
    let c = std::fs::read_to_string(vm.dir.join("console.log")).unwrap_or_default();
    let e = std::fs::read_to_string(vm.dir.join("qemu.err")).unwrap_or_default();
    let v = std::fs::read_to_string(vm.dir.join("vhost.log")).unwrap_or_default();
    format!("console:\n{c}\nqemu stderr:\n{e}\nvhost-device-vsock:\n{v}")
}

/// A hybrid-vsock stream to guest `port` through the daemon's Unix socket.
fn vsock_connect(dir: &Path, port: u32) -> anyhow::Result<UnixStream> {
    let mut s = UnixStream::connect(dir.join("vsock.sock")).context("vsock.sock")?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read the `OK <host port>\n` byte by byte: nothing of the stream may be consumed.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        ensure!(line.len() < 64, "vsock handshake: line too long");
        let n = s.read(&mut b)?;
        ensure!(n == 1, "vsock handshake: EOF");
        line.push(b[0]);
    }
    ensure!(
        line.starts_with(b"OK "),
        "vsock handshake: {:?}",
        String::from_utf8_lossy(&line)
    );
    Ok(s)
}

fn task_client(stream: UnixStream) -> anyhow::Result<TaskClient> {
    stream.set_nonblocking(true)?;
    let s = tokio::net::UnixStream::from_std(stream)?;
    let client = ttrpc::asynchronous::Client::new(ttrpc::asynchronous::transport::Socket::from(s));
    Ok(TaskClient::new(client))
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(60_000_000_000)
}

/// `n` State calls of an unknown id; each must come back NOT_FOUND. Returns µs each.
async fn state_calls(task: &TaskClient, n: usize) -> anyhow::Result<Vec<f64>> {
    let req = api::StateRequest {
        id: "no-such-container".into(),
        ..Default::default()
    };
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        match task.state(ctx(), &req).await {
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::NOT_FOUND => {}
            other => bail!("State of an unknown id: {other:?}"),
        }
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(v)
}

fn config_json(script: &str) -> Vec<u8> {
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": {"path": "rootfs"},
        "hostname": "chanbench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
            "resources": {}
        }
    });
    serde_json::to_vec(&spec).unwrap_or_default()
}

/// Creates container `id` writing 64 MiB to stdout (stream `n`), starts it and reads
/// its frames until that stream's EOF. Returns (MB/s, bytes) from Start to the EOF.
async fn stdout_run(
    task: &TaskClient,
    io: &mut UnixStream,
    layer: &Layer,
    id: &str,
    n: u32,
) -> anyhow::Result<(f64, u64)> {
    let host_layer = format!("/var/lib/eci-chanbench/layers/{}", layer.hex);
    let opts = CreateOptions {
        config_json_b64: base64::engine::general_purpose::STANDARD.encode(config_json(&format!(
            "dd if=/dev/zero bs=65536 count={} 2>/dev/null",
            STDOUT_BYTES >> 16
        ))),
        layers: BTreeMap::from([(host_layer.clone(), layer_serial(&layer.hex))]),
        ..Default::default()
    };
    let req = api::CreateTaskRequest {
        id: id.into(),
        bundle: format!("/run/eci-chanbench/groups/g1/{id}"),
        rootfs: vec![api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={host_layer}"),
                format!("upperdir=/var/lib/eci-chanbench/writable/{id}/upper"),
                format!("workdir=/var/lib/eci-chanbench/writable/{id}/work"),
            ],
            ..Default::default()
        }],
        stdout: io_uri(n),
        options: MessageField::some(Any {
            type_url: CREATE_OPTIONS_TYPE.into(),
            value: serde_json::to_vec(&opts)?,
            ..Default::default()
        }),
        ..Default::default()
    };
    task.create(ctx(), &req).await.context("create")?;
    let start = api::StartRequest {
        id: id.into(),
        ..Default::default()
    };
    let t = Instant::now();
    task.start(ctx(), &start).await.context("start")?;
    let mut io2 = io.try_clone()?;
    let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut bytes = 0u64;
        loop {
            let f = Frame::read_from(&mut io2)?.context("io port closed")?;
            if f.stream == n {
                if f.is_eof() {
                    return Ok(bytes);
                }
                bytes += f.data.len() as u64;
            }
        }
    })
    .await??;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        bytes == STDOUT_BYTES,
        "container wrote {bytes} bytes, not {STDOUT_BYTES}"
    );
    let del = api::DeleteRequest {
        id: id.into(),
        ..Default::default()
    };
    // The exit control follows the EOF; Delete after Wait so the next run starts clean.
    let wait = api::WaitRequest {
        id: id.into(),
        ..Default::default()
    };
    task.wait(ctx(), &wait).await.context("wait")?;
    task.delete(ctx(), &del).await.context("delete")?;
    Ok((bytes as f64 / secs / 1e6, bytes))
}

/// Asks the guest's raw source on the `eci.bench` port for 64 MiB and reads them. MB/s.
fn serial_source(port: &mut UnixStream) -> anyhow::Result<f64> {
    let t = Instant::now();
    port.write_all(b"g")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    while bytes < STDOUT_BYTES {
        let want = (STDOUT_BYTES - bytes).min(buf.len() as u64) as usize;
        let n = port.read(&mut buf[..want])?;
        ensure!(n > 0, "eci.bench port closed after {bytes} bytes");
        bytes += n as u64;
    }
    Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// Reads the guest's byte source on vsock port `VSOCK_PORT + 1` to EOF. MB/s.
fn vsock_source(dir: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut s = vsock_connect(dir, VSOCK_PORT + 1)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    ensure!(bytes == STDOUT_BYTES, "vsock source sent {bytes} bytes");
    Ok(bytes as f64 / secs / 1e6)
}

/// RSS and Pss (KiB) of a process and all its descendants.
#[derive(Clone, Copy, Default, Debug)]
struct Mem {
    rss: u64,
    pss: u64,
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            v.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    v
}

fn tree_mem(pid: u32) -> Mem {
    let mut m = Mem::default();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        m.rss += field_kib(&status, "VmRSS:");
        m.pss += field_kib(&rollup, "Pss:");
        stack.extend(children_of(p));
    }
    m
}

fn median(v: &[f64]) -> f64 {
    pct(v, 0.5)
}

fn pct(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[derive(Default)]
struct Results {
    lat_serial: Vec<f64>,
    lat_vsock: Vec<f64>,
    tp_serial: Vec<f64>,
    tp_vsock: Vec<f64>,
    tp_serial_only: Vec<f64>,
    tp_serial_raw: Vec<f64>,
    ready_serial: Vec<f64>,
    ready_vsock: Vec<f64>,
    qemu_serial: Vec<Mem>,
    qemu_vsock: Vec<Mem>,
    qemu_vsock_after: Vec<Mem>,
    qemu_serial_after: Vec<Mem>,
    daemon: Vec<Mem>,
    daemon_after: Vec<Mem>,
}

/// One round: both guests booted in turn (order alternating by round), memory sampled a
/// moment after `ready`; the serial-only guest then runs the stdio benchmark on its own
/// line, and the vsock guest runs both channels alternately.
fn round(o: &Opts, layer: &Layer, tmp: &Path, r: usize, res: &mut Results) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kinds = if r.is_multiple_of(2) {
        [Kind::Serial, Kind::Vsock]
    } else {
        [Kind::Vsock, Kind::Serial]
    };
    for kind in kinds {
        let dir = tmp.join(format!("vm-{r}-{kind:?}"));
        let (vm, mut io, ready) = boot(o, layer, kind, &dir)?;
        std::thread::sleep(Duration::from_millis(1500));
        let q = tree_mem(vm.qemu.id());
        let d = vm.daemon.as_ref().map(|d| tree_mem(d.id()));
        eprintln!(
            "round {r} {kind:?}: ready {:.2} s, QEMU rss {} pss {} KiB, daemon {d:?}",
            ready.as_secs_f64(),
            q.rss,
            q.pss
        );
        match kind {
            Kind::Serial => {
                res.ready_serial.push(ready.as_secs_f64());
                res.qemu_serial.push(q);
            }
            Kind::Vsock => {
                res.ready_vsock.push(ready.as_secs_f64());
                res.qemu_vsock.push(q);
                res.daemon.extend(d);
            }
        }
        let ctl = connect(
            &dir.join("ctl.sock"),
            Instant::now() + Duration::from_secs(5),
        )?;
        let mut bench = if kind == Kind::Vsock {
            let b = connect(
                &dir.join("bench.sock"),
                Instant::now() + Duration::from_secs(5),
            )?;
            b.set_read_timeout(Some(Duration::from_secs(300)))?;
            Some(b)
        } else {
            None
        };
        let result = rt.block_on(async {
            let serial = task_client(ctl)?;
            let vsock = if kind == Kind::Vsock {
                Some(task_client(vsock_connect(&dir, VSOCK_PORT)?)?)
            } else {
                None
            };
            // Warm both up (first call pays for the connection and the guest's paging).
            state_calls(&serial, 20).await?;
            if let Some(v) = &vsock {
                state_calls(v, 20).await?;
                let mut i = 0;
                while i < o.calls {
                    res.lat_serial.extend(state_calls(&serial, BATCH).await?);
                    res.lat_vsock.extend(state_calls(v, BATCH).await?);
                    i += BATCH;
                }
            }
            for k in 0..2u32 {
                let id = format!("c{k}");
                if let (Some(_v), Some(bench)) = (&vsock, &mut bench) {
                    if k.is_multiple_of(2) {
                        let (mbs, _) = stdout_run(&serial, &mut io, layer, &id, 10 + k).await?;
                        res.tp_serial.push(mbs);
                        res.tp_serial_raw.push(serial_source(bench)?);
                        res.tp_vsock.push(vsock_source(&dir)?);
                    } else {
                        res.tp_vsock.push(vsock_source(&dir)?);
                        res.tp_serial_raw.push(serial_source(bench)?);
                        let (mbs, _) = stdout_run(&serial, &mut io, layer, &id, 10 + k).await?;
                        res.tp_serial.push(mbs);
                    }
                } else {
                    let (mbs, _) = stdout_run(&serial, &mut io, layer, &id, 10 + k).await?;
                    res.tp_serial_only.push(mbs);
                }
            }
            anyhow::Ok(())
        });
        result.with_context(|| console(&vm))?;
        let q = tree_mem(vm.qemu.id());
        match kind {
            Kind::Serial => res.qemu_serial_after.push(q),
            Kind::Vsock => {
                res.qemu_vsock_after.push(q);
                res.daemon_after
                    .extend(vm.daemon.as_ref().map(|d| tree_mem(d.id())));
            }
        }
        drop(vm);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn row(name: &str, serial: f64, vsock: f64) {
    let ratio = if serial > 0.0 {
        vsock / serial
    } else {
        f64::NAN
    };
    println!("{name:<44} {serial:>12.1} {vsock:>12.1} {ratio:>8.2}");
}

fn main() -> anyhow::Result<()> {
    let o = opts()?;
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root (QEMU, mkfs.erofs, the daemon's sockets)"
    );
    ensure!(
        o.guest_dir.join("initrd.img").exists(),
        "no guest image in {}",
        o.guest_dir.display()
    );
    ensure!(
        o.vhost.exists(),
        "no vhost-device-vsock at {}",
        o.vhost.display()
    );
    let tmp = tempfile::tempdir()?;
    let (erofs, hex) = busybox_layer(tmp.path())?;
    let layer = Layer { erofs, hex };
    let mut res = Results::default();
    for r in 0..o.rounds {
        round(&o, &layer, tmp.path(), r, &mut res)?;
    }
    let f = |v: &[Mem], g: fn(&Mem) -> u64| -> Vec<f64> { v.iter().map(|m| mib(g(m))).collect() };
    println!(
        "\neci-chanbench: {} rounds, {} State calls per channel per round, accel {}, guest RAM {MEMORY_MIB} MiB",
        o.rounds, o.calls, o.accel
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "median", "virtio-serial", "vsock", "vsock/vs"
    );
    row(
        "State RTT median (µs)",
        median(&res.lat_serial),
        median(&res.lat_vsock),
    );
    row(
        "State RTT p90 (µs)",
        pct(&res.lat_serial, 0.9),
        pct(&res.lat_vsock, 0.9),
    );
    row(
        "State RTT p99 (µs)",
        pct(&res.lat_serial, 0.99),
        pct(&res.lat_vsock, 0.99),
    );
    row(
        "64 MiB raw stream, guest → host (MB/s)",
        median(&res.tp_serial_raw),
        median(&res.tp_vsock),
    );
    row(
        "64 MiB stdout: container+frames vs raw vsock",
        median(&res.tp_serial),
        median(&res.tp_vsock),
    );
    row(
        "boot to ready (ms; vsock: daemon+memfd)",
        median(&res.ready_serial) * 1e3,
        median(&res.ready_vsock) * 1e3,
    );
    row(
        "QEMU RSS at ready (MiB)",
        median(&f(&res.qemu_serial, |m| m.rss)),
        median(&f(&res.qemu_vsock, |m| m.rss)),
    );
    row(
        "QEMU Pss at ready (MiB)",
        median(&f(&res.qemu_serial, |m| m.pss)),
        median(&f(&res.qemu_vsock, |m| m.pss)),
    );
    row(
        "QEMU RSS after the runs (MiB)",
        median(&f(&res.qemu_serial_after, |m| m.rss)),
        median(&f(&res.qemu_vsock_after, |m| m.rss)),
    );
    row(
        "QEMU Pss after the runs (MiB)",
        median(&f(&res.qemu_serial_after, |m| m.pss)),
        median(&f(&res.qemu_vsock_after, |m| m.pss)),
    );
    println!(
        "64 MiB stdout in the serial-only guest (anonymous RAM): {:.1} MB/s",
        median(&res.tp_serial_only)
    );
    println!(
        "vhost-device-vsock (per VM): at ready RSS {:.1} MiB Pss {:.1} MiB; after the runs RSS {:.1} MiB Pss {:.1} MiB",
        median(&f(&res.daemon, |m| m.rss)),
        median(&f(&res.daemon, |m| m.pss)),
        median(&f(&res.daemon_after, |m| m.rss)),
        median(&f(&res.daemon_after, |m| m.pss)),
    );
    Ok(())
}
