//! The VM rootfs, side by side (issue 15): an image layer given to the guest as an erofs
//! image on a read-only virtio-blk disk, against the same directory shared by virtiofsd.
//! Each boot runs eci-guest's benchmark mode (`eci.bench=…`, guest/src/bench.rs): mount
//! the source read-only, overlay a tmpfs upper on it as a container rootfs, read every
//! regular file, print `ECI-BENCH …` on the console, idle 3 s, power off. Measured:
//! QEMU spawn (virtiofs: daemon spawn) to that line, the guest's mount and walk times,
//! and host memory during the idle (RSS and Pss of QEMU and virtiofsd with their
//! children); also the one-off mkfs.erofs of the layer, and two VMs at once. A third
//! column boots the erofs disk with guest RAM on the shared memfd virtiofs needs, to
//! tell the memory backend's cost from the rootfs's. Rounds rotate the order so machine
//! noise hits all alike; medians are printed.
//!
//! Run (root): `eci-rootfsbench --guest-dir DIR [--rounds N] [--pair-rounds N]
//! [--virtiofsd PATH] [--sandbox none|namespace] [--accel tcg|kvm]`, the guest image
//! built by `scripts/guest-image.sh DIR`. The layer: the Debian image's layer with
//! `ECI_TEST_DEBIAN_IMAGE=<OCI archive>` (scripts/debian-test-image.sh), else busybox.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

const SERIAL: &str = "0123456789abcdef0123";
const TAG: &str = "rootfs";
const MEMORY_MIB: u64 = 512;
const LINE_TIMEOUT: Duration = Duration::from_secs(180);

struct Opts {
    guest_dir: PathBuf,
    rounds: usize,
    pair_rounds: usize,
    virtiofsd: PathBuf,
    sandbox: String,
    accel: String,
}

fn opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        guest_dir: std::env::var_os("ECI_TEST_GUEST_DIR")
            .map_or_else(|| PathBuf::from("/var/lib/eci/guest"), PathBuf::from),
        rounds: 5,
        pair_rounds: 3,
        virtiofsd: if Path::new("/opt/virtiofsd/bin/virtiofsd").exists() {
            PathBuf::from("/opt/virtiofsd/bin/virtiofsd")
        } else {
            PathBuf::from("virtiofsd")
        },
        sandbox: "namespace".into(),
        accel: "tcg".into(),
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
            "--pair-rounds" => o.pair_rounds = num(it.next())?,
            "--virtiofsd" => o.virtiofsd = it.next().map(PathBuf::from).unwrap_or_default(),
            "--sandbox" => o.sandbox = it.next().unwrap_or_default(),
            "--accel" => o.accel = it.next().unwrap_or_default(),
            _ => bail!(
                "usage: eci-rootfsbench [--guest-dir DIR] [--rounds N] [--pair-rounds N] \
                 [--virtiofsd PATH] [--sandbox none|namespace] [--accel tcg|kvm]"
            ),
        }
    }
    ensure!(o.rounds > 0, "rounds: at least 1");
    ensure!(o.accel == "tcg" || o.accel == "kvm", "accel: tcg or kvm");
    Ok(o)
}

/// The host's TSC rate in kHz (the guest skips calibrating it; see docs/vm.md).
fn tsc_khz() -> u64 {
    eci_runtime::vm_config::host_tsc_khz().unwrap_or(2_000_000)
}

// ---- the layer ----

/// Unpacks every layer of the OCI archive's first manifest into `dir`, in order.
fn unpack_oci(archive: &Path, dir: &Path) -> anyhow::Result<String> {
    let blobs = tempfile::tempdir()?;
    let mut ar = tar::Archive::new(std::fs::File::open(archive).context("opening the archive")?);
    ar.unpack(blobs.path()).context("unpacking the archive")?;
    let read_json = |p: PathBuf| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| p.display().to_string())?,
        )?)
    };
    let blob = |digest: &str| {
        blobs
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = read_json(blobs.path().join("index.json"))?;
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .context("index without a manifest")?;
    let manifest = read_json(blob(mdigest))?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest without layers")?;
    for l in layers {
        let digest = l["digest"].as_str().context("layer without digest")?;
        let media = l["mediaType"].as_str().unwrap_or_default();
        let f = std::fs::File::open(blob(digest))?;
        let reader: Box<dyn Read> = if media.ends_with("zstd") {
            Box::new(zstd::Decoder::new(f)?)
        } else if media.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(f))
        } else {
            Box::new(f)
        };
        unpack_layer(reader, dir)?;
    }
    Ok(format!("{} ({} layer(s))", archive.display(), layers.len()))
}

fn unpack_layer(reader: impl Read, dir: &Path) -> anyhow::Result<()> {
    let mut t = tar::Archive::new(reader);
    t.set_preserve_permissions(true);
    t.set_preserve_ownerships(true);
    t.set_unpack_xattrs(true);
    t.set_overwrite(true);
    for e in t.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        if let Some(n) = name
            && let Some(hidden) = n.strip_prefix(".wh.")
        {
            if hidden != ".wh..opq" {
                let victim = dir.join(path.with_file_name(hidden));
                let _ = std::fs::remove_dir_all(&victim).or_else(|_| std::fs::remove_file(&victim));
            }
            continue;
        }
        e.unpack_in(dir)?;
    }
    Ok(())
}

fn tree_size(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => {
                    files += 1;
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    (files, bytes)
}

fn mkfs_erofs(dir: &Path, out: &Path) -> anyhow::Result<Duration> {
    let _ = std::fs::remove_file(out);
    let t = Instant::now();
    let o = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(out)
        .arg(dir)
        .output()
        .context("running mkfs.erofs")?;
    ensure!(
        o.status.success(),
        "mkfs.erofs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(t.elapsed())
}

// ---- one VM ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// The product's line: erofs disk, guest RAM anonymous (THP where the host allows).
    Erofs,
    /// The erofs disk with guest RAM on a shared memfd as virtiofs needs: separates the
    /// memory backend's cost from the rootfs's.
    ErofsMemfd,
    Virtiofs,
}

const KINDS: [Kind; 3] = [Kind::Erofs, Kind::ErofsMemfd, Kind::Virtiofs];

/// Round `r`'s order: rotated, so that each kind runs first, second and last alike.
fn order(r: usize) -> [Kind; 3] {
    let mut k = KINDS;
    k.rotate_left(r % 3);
    k
}

/// A booted VM (and its virtiofsd): killed on drop, so nothing outlives the bench.
struct Vm {
    qemu: Child,
    daemon: Option<Child>,
    console: PathBuf,
    t0: Instant,
    daemon_start: Duration,
}

impl Drop for Vm {
    fn drop(&mut self) {
        for c in std::iter::once(&mut self.qemu).chain(self.daemon.as_mut()) {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

struct Ctx {
    opts: Opts,
    work: PathBuf,
    layer: PathBuf,
    erofs: PathBuf,
    tsc: u64,
}

/// `idle_s`: how long the guest idles after its line (memory is sampled meanwhile).
fn spawn(ctx: &Ctx, kind: Kind, n: usize, idle_s: u64) -> anyhow::Result<Vm> {
    let v = ctx.work.join(format!("vm{n}"));
    let _ = std::fs::remove_dir_all(&v);
    std::fs::create_dir_all(&v)?;
    let console = v.join("console.log");
    let t0 = Instant::now();
    let mut daemon = None;
    let mut daemon_start = Duration::ZERO;
    let vfs_sock = v.join("vfs.sock");
    if kind == Kind::Virtiofs {
        let child = Command::new(&ctx.opts.virtiofsd)
            .arg("--socket-path")
            .arg(&vfs_sock)
            .arg("--shared-dir")
            .arg(&ctx.layer)
            .args([
                "--sandbox",
                &ctx.opts.sandbox,
                "--cache",
                "auto",
                "--readonly",
            ])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(v.join("virtiofsd.log"))?)
            .spawn()
            .context("starting virtiofsd")?;
        daemon = Some(child);
        while !vfs_sock.exists() {
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "virtiofsd made no socket: {}",
                std::fs::read_to_string(v.join("virtiofsd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        daemon_start = t0.elapsed();
    }
    let g = &ctx.opts.guest_dir;
    let spec = match kind {
        Kind::Erofs | Kind::ErofsMemfd => format!("erofs:{SERIAL}"),
        Kind::Virtiofs => format!("virtiofs:{TAG}"),
    };
    let append = format!(
        "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz={} eci.bench={spec} \
         eci.bench_idle={idle_s}",
        ctx.tsc
    );
    let machine = match kind {
        Kind::Erofs => "microvm,x-option-roms=off,rtc=on".to_string(),
        Kind::ErofsMemfd | Kind::Virtiofs => {
            "microvm,x-option-roms=off,rtc=on,memory-backend=mem".to_string()
        }
    };
    let (accel, cpu) = if ctx.opts.accel == "kvm" {
        ("kvm", "host")
    } else {
        ("tcg", "max")
    };
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("eci-rootfsbench-{n}"),
        "-M".into(),
        machine,
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        MEMORY_MIB.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        g.join("vmlinux").display().to_string(),
        "-initrd".into(),
        g.join("initrd.img").display().to_string(),
        "-append".into(),
        append,
        "-serial".into(),
        format!("file:{}", console.display()),
        "-device".into(),
        "virtio-serial-device".into(),
    ];
    for (id, port) in [("ctl", "eci.ctl"), ("io", "eci.io")] {
        a.push("-chardev".into());
        a.push(format!(
            "socket,id={id},path={},server=on,wait=off",
            v.join(format!("{id}.sock")).display()
        ));
        a.push("-device".into());
        a.push(format!("virtserialport,chardev={id},name={port}"));
    }
    if kind != Kind::Erofs {
        a.push("-object".into());
        a.push(format!(
            "memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on"
        ));
    }
    match kind {
        Kind::Erofs | Kind::ErofsMemfd => {
            a.push("-drive".into());
            a.push(format!(
                "id=layer0,if=none,readonly=on,format=raw,file={}",
                ctx.erofs.display()
            ));
            a.push("-device".into());
            a.push(format!("virtio-blk-device,drive=layer0,serial={SERIAL}"));
        }
        Kind::Virtiofs => {
            a.push("-chardev".into());
            a.push(format!("socket,id=vfs,path={}", vfs_sock.display()));
            a.push("-device".into());
            a.push(format!("vhost-user-fs-device,chardev=vfs,tag={TAG}"));
        }
    }
    let qemu = Command::new("qemu-system-x86_64")
        .args(&a)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(v.join("qemu.log"))?)
        .spawn()
        .context("starting QEMU")?;
    Ok(Vm {
        qemu,
        daemon,
        console,
        t0,
        daemon_start,
    })
}

#[derive(Clone, Copy, Default, Debug)]
struct Line {
    mount_us: u64,
    walk_us: u64,
    files: u64,
    bytes: u64,
}

/// Waits for the `ECI-BENCH` line; returns it and the time since spawn.
fn wait_line(vm: &mut Vm) -> anyhow::Result<(Duration, Line)> {
    loop {
        let text = std::fs::read_to_string(&vm.console).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("ECI-BENCH")) {
            // Read the whole line: it may be caught half written.
            // (The serial console ends lines with "\r\n".)
            if text.contains(&format!("{l}\n")) || text.contains(&format!("{l}\r")) {
                let at = vm.t0.elapsed();
                ensure!(!l.starts_with("ECI-BENCH error"), "guest: {l}");
                let mut line = Line::default();
                for kv in l.split_whitespace().skip(1) {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    let v: u64 = v.parse().unwrap_or(0);
                    match k {
                        "mount_us" => line.mount_us = v,
                        "walk_us" => line.walk_us = v,
                        "files" => line.files = v,
                        "bytes" => line.bytes = v,
                        _ => {}
                    }
                }
                return Ok((at, line));
            }
        }
        if let Some(st) = vm.qemu.try_wait()? {
            bail!("QEMU exited ({st}) before the bench line; console:\n{text}");
        }
        ensure!(
            vm.t0.elapsed() < LINE_TIMEOUT,
            "no bench line after {LINE_TIMEOUT:?}; console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// RSS and Pss (KiB) of a process and all its descendants.
#[derive(Clone, Copy, Default, Debug)]
struct Mem {
    rss: u64,
    pss: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
        }
    }
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // ppid is the second field after the ")" that ends the command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
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

struct Sample {
    kind: Kind,
    to_line: Duration,
    daemon_start: Duration,
    line: Line,
    qemu: Mem,
    daemon: Mem,
}

/// Samples memory in the guest's idle, then waits for the power-off.
fn settle(vm: &mut Vm, kind: Kind, to_line: Duration, line: Line) -> anyhow::Result<Sample> {
    std::thread::sleep(Duration::from_millis(1500));
    let qemu = tree_mem(vm.qemu.id());
    let daemon = vm
        .daemon
        .as_ref()
        .map(|d| tree_mem(d.id()))
        .unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(30);
    while vm.qemu.try_wait()?.is_none() {
        if Instant::now() > until {
            let _ = vm.qemu.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(d) = vm.daemon.as_mut() {
        let until = Instant::now() + Duration::from_secs(3);
        while d.try_wait()?.is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(Sample {
        kind,
        to_line,
        daemon_start: vm.daemon_start,
        line,
        qemu,
        daemon,
    })
}

fn once(ctx: &Ctx, kind: Kind) -> anyhow::Result<Sample> {
    let mut vm = spawn(ctx, kind, 0, 3)?;
    let (at, line) = wait_line(&mut vm)?;
    settle(&mut vm, kind, at, line)
}

/// Two VMs at once on the same layer: the slower boot and the summed memory.
fn pair(ctx: &Ctx, kind: Kind) -> anyhow::Result<(Duration, Mem)> {
    // Each idles long enough after its line for the other to finish its walk.
    let mut a = spawn(ctx, kind, 1, 15)?;
    let mut b = spawn(ctx, kind, 2, 15)?;
    let (ta, la) = wait_line(&mut a)?;
    let (tb, lb) = wait_line(&mut b)?;
    std::thread::sleep(Duration::from_millis(1000));
    let mut mem = Mem::default();
    for vm in [&a, &b] {
        mem = mem + tree_mem(vm.qemu.id());
        if let Some(d) = &vm.daemon {
            mem = mem + tree_mem(d.id());
        }
    }
    let _ = (la, lb);
    // Dropping kills both VMs (and their daemons): their idle is of no further use.
    drop((a, b));
    Ok((ta.max(tb), mem))
}

// ---- report ----

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn row(name: &str, [e, m, v]: [f64; 3]) {
    let ratio = |a: f64| if a > 0.0 { v / a } else { f64::NAN };
    println!(
        "{name:<38} {e:>8.1} {m:>8.1} {v:>8.1} {:>6.2} {:>6.2}",
        ratio(e),
        ratio(m)
    );
}

fn main() -> anyhow::Result<()> {
    let opts = opts()?;
    for f in ["vmlinux", "initrd.img"] {
        ensure!(
            opts.guest_dir.join(f).exists(),
            "no guest image at {} (scripts/guest-image.sh DIR)",
            opts.guest_dir.display()
        );
    }
    let work = tempfile::Builder::new()
        .prefix("eci-rootfsbench")
        .tempdir()?;
    let layer = work.path().join("layer");
    std::fs::create_dir_all(&layer)?;
    let what = match std::env::var_os("ECI_TEST_DEBIAN_IMAGE") {
        Some(a) => unpack_oci(Path::new(&a), &layer)?,
        None => {
            let tar = eci_tests::oci::busybox_layer()?;
            unpack_layer(std::io::Cursor::new(tar), &layer)?;
            "busybox (host /bin/busybox + applet links)".to_string()
        }
    };
    let (files, bytes) = tree_size(&layer);
    let ctx = Ctx {
        opts,
        work: work.path().to_path_buf(),
        erofs: work.path().join("layer.erofs"),
        layer,
        tsc: tsc_khz(),
    };
    println!(
        "layer: {what}: {files} regular files, {:.1} MiB; accel {}, -m {MEMORY_MIB}, virtiofsd --sandbox {} --cache auto --readonly",
        bytes as f64 / 1048576.0,
        ctx.opts.accel,
        ctx.opts.sandbox
    );
    let mut mkfs = Vec::new();
    let mut samples = Vec::new();
    for r in 0..ctx.opts.rounds {
        mkfs.push(mkfs_erofs(&ctx.layer, &ctx.erofs)?.as_secs_f64() * 1000.0);
        for kind in order(r) {
            let s = once(&ctx, kind)?;
            eprintln!(
                "round {r} {kind:?}: line {:?} (daemon {:?}), mount {} us, walk {} us, {} files {} bytes; qemu rss {} pss {} KiB, virtiofsd rss {} pss {} KiB",
                s.to_line,
                s.daemon_start,
                s.line.mount_us,
                s.line.walk_us,
                s.line.files,
                s.line.bytes,
                s.qemu.rss,
                s.qemu.pss,
                s.daemon.rss,
                s.daemon.pss
            );
            samples.push(s);
        }
    }
    let mut pairs: Vec<(Kind, Duration, Mem)> = Vec::new();
    for r in 0..ctx.opts.pair_rounds {
        for kind in order(r) {
            let (t, m) = pair(&ctx, kind)?;
            eprintln!(
                "pair {r} {kind:?}: slower line {t:?}, rss {} pss {} KiB",
                m.rss, m.pss
            );
            pairs.push((kind, t, m));
        }
    }
    let erofs_size = std::fs::metadata(&ctx.erofs).map(|m| m.len()).unwrap_or(0);

    let med = |kind: Kind, f: &dyn Fn(&Sample) -> f64| {
        median(samples.iter().filter(|s| s.kind == kind).map(f).collect())
    };
    let both = |name: &str, f: &dyn Fn(&Sample) -> f64| {
        row(name, KINDS.map(|k| med(k, f)));
    };
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "mkfs.erofs (one-off per layer): median {:.0} ms, image {:.1} MiB; guest read {} files",
        median(mkfs),
        erofs_size as f64 / 1048576.0,
        samples.first().map_or(0, |s| s.line.files)
    );
    println!(
        "{:<38} {:>8} {:>8} {:>8} {:>6} {:>6}",
        format!("medians of {} rounds", ctx.opts.rounds),
        "erofs",
        "e+memfd",
        "virtiofs",
        "v/e",
        "v/e+m"
    );
    both("spawn -> ECI-BENCH line (ms)", &|s| {
        s.to_line.as_secs_f64() * 1000.0
    });
    both("  of which virtiofsd start (ms)", &|s| {
        s.daemon_start.as_secs_f64() * 1000.0
    });
    both("  guest mount + overlay (ms)", &|s| {
        s.line.mount_us as f64 / 1000.0
    });
    both("  guest walk, read all (ms)", &|s| {
        s.line.walk_us as f64 / 1000.0
    });
    both("QEMU RSS (MiB)", &|s| mib(s.qemu.rss));
    both("QEMU Pss (MiB)", &|s| mib(s.qemu.pss));
    both("virtiofsd RSS (MiB)", &|s| mib(s.daemon.rss));
    both("virtiofsd Pss (MiB)", &|s| mib(s.daemon.pss));
    both("per-VM host Pss, QEMU+virtiofsd (MiB)", &|s| {
        mib(s.qemu.pss + s.daemon.pss)
    });
    if !pairs.is_empty() {
        let pm = |kind: Kind, f: &dyn Fn(&(Kind, Duration, Mem)) -> f64| {
            median(pairs.iter().filter(|p| p.0 == kind).map(f).collect())
        };
        println!("2 VMs at once, {} rounds:", ctx.opts.pair_rounds);
        let f1 = |p: &(Kind, Duration, Mem)| p.1.as_secs_f64() * 1000.0;
        row("  slower spawn -> line (ms)", KINDS.map(|k| pm(k, &f1)));
        let f2 = |p: &(Kind, Duration, Mem)| mib(p.2.rss);
        row("  RSS of both (MiB)", KINDS.map(|k| pm(k, &f2)));
        let f3 = |p: &(Kind, Duration, Mem)| mib(p.2.pss);
        row("  Pss of both (MiB)", KINDS.map(|k| pm(k, &f3)));
    }
    Ok(())
}
