//! The host shim in vm mode, end to end: `eci-shim start --sandbox vm` boots the guest
//! image under QEMU (TCG) at the first Create, runs a container whose output lands in
//! the agent's log file (with a bind-mounted host file, and pinging the host through
//! the net helper's tap), an exec whose output comes through a FIFO, an attach to a
//! container's stdin and output, records the exit in `exit.json`, and leaves no QEMU,
//! cgroup or VM directory after Shutdown; a shim that is killed takes its QEMU along.
//!
//! Skipped unless run as root with QEMU, mkfs.erofs, busybox-static and the guest
//! image (`scripts/guest-image.sh DIR`, then `ECI_TEST_GUEST_DIR=DIR`; default
//! /var/lib/eci/guest):
//!
//!   ECI_TEST_GUEST_DIR=/tmp/guest cargo test -p eci-shim --test vm_boot -- --nocapture

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::TaskClient;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn guest_dir() -> PathBuf {
    std::env::var_os("ECI_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/eci/guest"))
}

/// The host's TSC rate in kHz (the guest skips calibrating it; see docs/vm.md).
fn tsc_khz() -> u64 {
    eci_runtime::vm_config::host_tsc_khz().unwrap_or(2_000_000)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(120))
}

fn qemu_running(id: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|a| a == format!("eci-{id}").as_bytes())
            })
        })
}

/// Removes the test's veth (its host end).
struct Veth(String);

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Ends a shim the test left running (a failed assertion): kills it (QEMU follows it,
/// PR_SET_PDEATHSIG) and removes its namespaces and cgroups.
struct Cleanup {
    group: PathBuf,
    cgroup: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.group.join("shim.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
            && std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = eci_runtime::namespaces::remove(&self.group.join("ns"));
        let _ = eci_shim::kill::kill_cgroup_and_remove(&format!("{}/vm", self.cgroup));
        let _ = eci_shim::kill::kill_cgroup_and_remove(&self.cgroup);
        let _ = eci_runtime::cgroup::destroy("eci-shim-vmtest");
    }
}

#[test]
fn containers_exec_attach_and_network_in_the_vm_and_no_qemu_outlives_its_shim() {
    let image = guest_dir();
    let ready = nix::unistd::Uid::effective().is_root()
        && image.join("initrd.img").exists()
        && Path::new(QEMU).exists()
        && Path::new("/bin/busybox").exists();
    if !ready {
        eprintln!(
            "skipped: needs root, {QEMU}, busybox and the guest image at {}",
            image.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let id = format!("vmt{}", std::process::id());
    let run = root.join("run");
    let group = run.join("groups").join(&id);
    let state = root.join("state");
    // A busybox layer and its erofs image, as the agent caches them.
    let hex = "5eed".repeat(16);
    let layer = state.join("layers").join(&hex);
    std::fs::create_dir_all(layer.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).expect("busybox");
    for applet in ["sh", "uname", "echo", "cat", "sleep", "ping", "tty"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).expect("ln");
    }
    let erofs = state.join("layers").join(format!("{hex}.erofs"));
    let st = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&erofs)
        .arg(&layer)
        .status()
        .expect("mkfs.erofs");
    assert!(st.success());
    std::fs::create_dir_all(group.join("etc")).expect("mkdir");
    std::fs::write(
        group.join("etc/hosts"),
        "127.0.0.1 localhost\n10.9.9.9 planted\n",
    )
    .expect("hosts");
    let vm_json = group.join("vm.json");
    std::fs::write(
        &vm_json,
        serde_json::json!({
            "qemu": QEMU, "kernel": image.join("vmlinux"), "initrd": image.join("initrd.img"),
            "accel": "tcg", "tsc_khz": tsc_khz(), "vcpus": 1, "memory_mib": 384,
            "layers": [{"path": layer, "erofs": erofs}],
        })
        .to_string(),
    )
    .expect("vm.json");
    let bundle = group.join("containers/c1");
    std::fs::create_dir_all(&bundle).expect("bundle");
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
            "args": ["/bin/sh", "-c", "uname -r; cat /etc/hosts; echo to-stderr >&2; ping -c 1 -W 20 10.213.77.1 && echo ping-ok; sleep 3; exit 7"],
            "capabilities": {"bounding": ["CAP_NET_RAW"], "effective": ["CAP_NET_RAW"], "permitted": ["CAP_NET_RAW"]}},
        "root": {"path": "rootfs"},
        "hostname": "vmt",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": group.join("etc/hosts"),
             "options": ["rbind", "rprivate", "nosuid", "nodev"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]}
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).expect("config");
    // c2: `cat` on an attach stdin.
    let bundle2 = group.join("containers/c2");
    std::fs::create_dir_all(&bundle2).expect("bundle");
    let mut spec2 = spec.clone();
    spec2["process"]["args"] = serde_json::json!(["/bin/cat"]);
    std::fs::write(bundle2.join("config.json"), spec2.to_string()).expect("config");
    let log = root.join("logs/c1/0.log");
    std::fs::create_dir_all(log.parent().expect("parent")).expect("logs");

    let start_shim = || {
        let out = Command::new(env!("CARGO_BIN_EXE_eci-shim"))
            .args([
                "start",
                "--id",
                &id,
                "--hostname",
                "vmt",
                "--cgroup-parent",
                "eci-shim-vmtest",
            ])
            .arg("--run-dir")
            .arg(&run)
            .args([
                "--cpu-millis",
                "2000",
                "--memory-bytes",
                "268435456",
                "--sandbox",
                "vm",
            ])
            .arg("--vm-config")
            .arg(&vm_json)
            .output()
            .expect("eci-shim start");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    start_shim();
    let _cleanup = Cleanup {
        group: group.clone(),
        cgroup: format!("eci-shim-vmtest/{id}"),
    };
    let shim_log = || std::fs::read_to_string(group.join("shim.log")).unwrap_or_default();
    let console = || std::fs::read_to_string(group.join("vm/console.log")).unwrap_or_default();

    // The group's network, as the agent gives it before the first Create: eth0 in the
    // group netns (a veth whose host end answers pings).
    let host_if = format!("vh{}", std::process::id());
    let _veth = Veth(host_if.clone());
    let netns = group.join("ns/net");
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().expect("ip");
        assert!(st.success(), "ip {args:?}");
    };
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", "vg-tmp",
    ]);
    ip(&[
        "link",
        "set",
        "vg-tmp",
        "netns",
        netns.to_str().expect("utf8"),
    ]);
    ip(&["addr", "add", "10.213.77.1/24", "dev", &host_if]);
    ip(&["link", "set", &host_if, "up"]);
    let nsx = |args: &[&str]| {
        let mut a = vec!["--net=", "ip"];
        let n = format!("--net={}", netns.display());
        a[0] = &n;
        a.extend_from_slice(args);
        let st = Command::new("nsenter").args(&a).status().expect("nsenter");
        assert!(st.success(), "nsenter {a:?}");
    };
    nsx(&["link", "set", "vg-tmp", "name", "eth0"]);
    nsx(&["addr", "add", "10.213.77.2/24", "dev", "eth0"]);
    nsx(&["link", "set", "eth0", "up"]);

    let rw = |c: &str| state.join("groups").join(&id).join(c).display().to_string();
    let req2 = api::CreateTaskRequest {
        id: "c2".into(),
        bundle: bundle2.display().to_string(),
        rootfs: vec![api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", layer.display()),
                format!("upperdir={}", rw("c2/upper")),
                format!("workdir={}", rw("c2/work")),
            ],
            ..Default::default()
        }],
        stdin: eci_runtime::attach::STDIN_URI.into(),
        stdout: format!("file://{}", log.with_extension("c2").display()),
        stderr: format!("file://{}", log.with_extension("c2").display()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let c = ttrpc::asynchronous::Client::connect(&format!("unix://{}", group.join("shim.sock").display()))
            .await
            .expect("connect");
        let task = TaskClient::new(c);
        let t0 = Instant::now();
        let req = api::CreateTaskRequest {
            id: "c1".into(),
            bundle: bundle.display().to_string(),
            rootfs: vec![api::Mount {
                type_: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("lowerdir={}", layer.display()),
                    format!("upperdir={}", state.join("groups").join(&id).join("c1/upper").display()),
                    format!("workdir={}", state.join("groups").join(&id).join("c1/work").display()),
                ],
                ..Default::default()
            }],
            stdout: format!("file://{}", log.display()),
            stderr: format!("file://{}", log.display()),
            ..Default::default()
        };
        let created = task.create(ctx(), &req).await;
        let created = created.unwrap_or_else(|e| panic!("create: {e}\nshim:\n{}\nconsole:\n{}", shim_log(), console()));
        eprintln!("created (boot included) in {:?}, guest pid {}", t0.elapsed(), created.pid);
        let started = task.start(ctx(), &api::StartRequest { id: "c1".into(), ..Default::default() }).await;
        started.unwrap_or_else(|e| panic!("start: {e}\nshim:\n{}", shim_log()));

        // An exec with its output through a FIFO, while the container sleeps.
        let fifo = root.join("exec-out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let f2 = fifo.clone();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            std::fs::File::open(&f2).expect("open fifo").read_to_string(&mut s).expect("read fifo");
            s
        });
        let process = serde_json::json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
            "args": ["/bin/echo", "exec-ok"]});
        let exec = api::ExecProcessRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            stdout: fifo.display().to_string(),
            spec: containerd_shim_protos::protobuf::MessageField::some(
                containerd_shim_protos::protobuf::well_known_types::any::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: process.to_string().into_bytes(),
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        task.exec(ctx(), &exec).await.unwrap_or_else(|e| panic!("exec: {e}\nshim:\n{}", shim_log()));
        task.start(ctx(), &api::StartRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("exec start: {e}\nshim:\n{}", shim_log()));
        let w = task.wait(ctx(), &api::WaitRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() }).await;
        assert_eq!(w.expect("exec wait").exit_status, 0);
        assert_eq!(reader.join().expect("reader").trim(), "exec-ok");
        task.delete(ctx(), &api::DeleteRequest { id: "c1".into(), exec_id: "e1".into(), ..Default::default() })
            .await
            .expect("exec delete");
        // An exec with a terminal: its output (the pty's) comes as stdout.
        let tty_fifo = root.join("exec-tty");
        nix::unistd::mkfifo(&tty_fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let f3 = tty_fifo.clone();
        let tty_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::fs::File::open(&f3).expect("open fifo").read_to_string(&mut s);
            s
        });
        let tty_process = serde_json::json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
            "terminal": true, "args": ["/bin/tty"]});
        let exec2 = api::ExecProcessRequest {
            id: "c1".into(),
            exec_id: "e2".into(),
            terminal: true,
            stdout: tty_fifo.display().to_string(),
            spec: containerd_shim_protos::protobuf::MessageField::some(
                containerd_shim_protos::protobuf::well_known_types::any::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: tty_process.to_string().into_bytes(),
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        task.exec(ctx(), &exec2).await.unwrap_or_else(|e| panic!("exec tty: {e}\nshim:\n{}", shim_log()));
        task.start(ctx(), &api::StartRequest { id: "c1".into(), exec_id: "e2".into(), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("exec tty start: {e}\nshim:\n{}", shim_log()));
        let w = task.wait(ctx(), &api::WaitRequest { id: "c1".into(), exec_id: "e2".into(), ..Default::default() }).await;
        assert_eq!(w.expect("exec tty wait").exit_status, 0);
        let tty_out = tty_reader.join().expect("reader");
        assert!(tty_out.contains("/dev/pts/"), "tty output {tty_out:?}");
        task.delete(ctx(), &api::DeleteRequest { id: "c1".into(), exec_id: "e2".into(), ..Default::default() })
            .await
            .expect("exec tty delete");

        let w = task.wait(ctx(), &api::WaitRequest { id: "c1".into(), ..Default::default() }).await;
        let w = w.unwrap_or_else(|e| panic!("wait: {e}\nshim:\n{}", shim_log()));
        assert_eq!(w.exit_status, 7);
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("exit.json")).expect("exit.json")).expect("json");
        assert_eq!(rec["exit_code"], 7);
        let text = std::fs::read_to_string(&log).expect("log");
        eprintln!("log:\n{text}");
        let manifest = std::fs::read_to_string(image.join("manifest.json")).unwrap_or_default();
        let release = text.lines().next().and_then(|l| l.splitn(4, ' ').nth(3)).unwrap_or_default();
        assert!(!release.is_empty() && manifest.contains(release), "uname -r {release:?} is the guest's");
        assert!(text.contains(" stdout F 10.9.9.9 planted"), "the bind-mounted hosts file");
        assert!(text.contains(" stderr F to-stderr"));
        assert!(text.contains(" stdout F ping-ok"), "the guest reaches the host through the tap");
        task.delete(ctx(), &api::DeleteRequest { id: "c1".into(), ..Default::default() })
            .await
            .expect("delete");

        // Attach: input through the attach socket reaches the guest's `cat`, whose
        // output comes back to the attacher (and the log).
        let req2 = req2.clone();
        task.create(ctx(), &req2).await.unwrap_or_else(|e| panic!("create c2: {e}\n{}", shim_log()));
        task.start(ctx(), &api::StartRequest { id: "c2".into(), ..Default::default() })
            .await
            .expect("start c2");
        let sock = group.join("attach.sock");
        let got = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Write};
            use eci_runtime::attach::{Frame, Hello};
            let mut conn = std::os::unix::net::UnixStream::connect(&sock).expect("attach");
            conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut hello = serde_json::to_vec(&Hello { container: "c2".into(), stdin: true }).expect("hello");
            hello.push(b'\n');
            conn.write_all(&hello).expect("hello");
            let mut r = std::io::BufReader::new(conn.try_clone().expect("clone"));
            let mut welcome = String::new();
            r.read_line(&mut welcome).expect("welcome");
            assert!(welcome.contains("\"error\":\"\""), "welcome {welcome}");
            conn.write_all(&Frame::Stdin(b"hello-attach\n".to_vec()).encode()).expect("stdin");
            let mut buf = Vec::new();
            let mut out = Vec::new();
            while !String::from_utf8_lossy(&out).contains("hello-attach") {
                let mut chunk = [0u8; 4096];
                let n = r.read(&mut chunk).expect("attach output");
                assert!(n > 0, "attach closed");
                buf.extend_from_slice(&chunk[..n]);
                while let Ok(Some((f, used))) = Frame::decode(&buf) {
                    buf.drain(..used);
                    if let Frame::Stdout(d) = f {
                        out.extend_from_slice(&d);
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
        .await
        .expect("attach thread");
        assert!(got.contains("hello-attach"));
        task.kill(ctx(), &api::KillRequest { id: "c2".into(), signal: 9, ..Default::default() })
            .await
            .expect("kill c2");
        let w2 = task.wait(ctx(), &api::WaitRequest { id: "c2".into(), ..Default::default() }).await;
        assert_eq!(w2.expect("wait c2").exit_status, 137);
        task.delete(ctx(), &api::DeleteRequest { id: "c2".into(), ..Default::default() })
            .await
            .expect("delete c2");
        task.shutdown(ctx(), &api::ShutdownRequest::default()).await.expect("shutdown");
    });
    let until = Instant::now() + Duration::from_secs(30);
    while (group.join("shim.pid").exists() || qemu_running(&id)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!qemu_running(&id), "QEMU is gone\n{}", shim_log());
    assert!(!group.join("vm").exists(), "the VM directory is gone");
    assert!(
        !eci_runtime::cgroup::exists(&format!("eci-shim-vmtest/{id}")),
        "the group cgroup is gone"
    );
    let _ = eci_runtime::cgroup::destroy("eci-shim-vmtest");

    // Crash: a shim that dies takes its QEMU along (PR_SET_PDEATHSIG), so a VM never
    // outlives the shim that could stop it.
    start_shim();
    rt.block_on(async {
        let c = ttrpc::asynchronous::Client::connect(&format!(
            "unix://{}",
            group.join("shim.sock").display()
        ))
        .await
        .expect("connect");
        let task = TaskClient::new(c);
        task.create(ctx(), &req2)
            .await
            .unwrap_or_else(|e| panic!("create again: {e}\n{}", shim_log()));
        task.start(
            ctx(),
            &api::StartRequest {
                id: "c2".into(),
                ..Default::default()
            },
        )
        .await
        .expect("start c2 again");
        // QEMU dies under the shim: its processes end as killed, recorded on the host;
        // the next Create boots a new VM.
        let qemu: i32 = std::fs::read_to_string(group.join("vm/qemu.pid"))
            .expect("qemu.pid")
            .trim()
            .parse()
            .expect("pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(qemu),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill qemu");
        let w = task
            .wait(
                ctx(),
                &api::WaitRequest {
                    id: "c2".into(),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(w.expect("wait after the VM died").exit_status, 137);
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle2.join("exit.json")).expect("exit.json"))
                .expect("json");
        assert_eq!(rec["signal"], 9);
        task.delete(
            ctx(),
            &api::DeleteRequest {
                id: "c2".into(),
                ..Default::default()
            },
        )
        .await
        .expect("delete after the VM died");
        task.create(ctx(), &req2)
            .await
            .unwrap_or_else(|e| panic!("create in a new VM: {e}\n{}", shim_log()));
        let again: i32 = std::fs::read_to_string(group.join("vm/qemu.pid"))
            .expect("qemu.pid")
            .trim()
            .parse()
            .expect("pid");
        assert_ne!(again, qemu, "a new VM");
    });
    assert!(qemu_running(&id));
    let shim_pid: i32 = std::fs::read_to_string(group.join("shim.pid"))
        .expect("shim.pid")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    let until = Instant::now() + Duration::from_secs(10);
    while qemu_running(&id) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!qemu_running(&id), "QEMU died with its shim");
}
