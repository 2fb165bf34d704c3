//! Container logs end to end: every line reaches the log before the exit is reported
//! (containers and execs), bytes are kept exactly, and `logs -f` follows a log across
//! rotations. Needs root (CI is root).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use eci_tests::scenario::{busybox_agent_with, group, group_id, wait_phase};
use eci_tests::{Agent, text};

/// Checks that `out` is exactly the lines `1..=n`, then `DONE`.
fn assert_seq_then_done(out: &[u8], n: u64, what: &str) {
    let text = String::from_utf8_lossy(out);
    let mut lines = text.lines();
    for want in 1..=n {
        let got = lines.next();
        assert_eq!(
            got,
            Some(want.to_string().as_str()),
            "{what}: line {want} of {n}"
        );
    }
    assert_eq!(lines.next(), Some("DONE"), "{what}: DONE after {n} lines");
    assert_eq!(lines.next(), None, "{what}: nothing after DONE");
}

/// The log directory of a container of a group.
fn log_dir(agent: &Agent, name: &str, container: &str) -> PathBuf {
    agent
        .root()
        .join("var/log/eci/groups")
        .join(group_id(agent, name))
        .join(container)
}

#[test]
fn every_line_is_in_the_log_when_the_container_has_exited() {
    // Large files: this test is about the end of the output, not rotation.
    let agent = busybox_agent_with("[runtime]\nlog_max_size = \"512Mi\"\n");
    for n in [1u64, 1000, 65_536, 200_000, 1_000_000] {
        let name = format!("seq-{n}");
        let spec = group(
            &name,
            "Never",
            &[("app", &format!("seq 1 {n}; echo DONE"))],
            "",
        );
        let out = agent.apply(&name, &spec);
        assert!(out.status.success(), "{}", text(&out));
        wait_phase(&agent, &name, "Succeeded");
        // At once: the exit was reported only after the log was complete.
        let out = agent.ctl(&["logs", &name]);
        assert!(out.status.success(), "{}", text(&out));
        assert_seq_then_done(&out.stdout, n, &name);
        assert!(agent.ctl(&["delete", &name]).status.success());
    }
}

#[test]
fn every_line_of_an_exec_arrives_before_its_exit_code() {
    let agent = busybox_agent_with("");
    let spec = group("ex", "Always", &[("app", "sleep 3600")], "");
    assert!(agent.apply("ex", &spec).status.success());
    wait_phase(&agent, "ex", "Running");
    for n in [1u64, 65_536, 1_000_000] {
        let script = format!("seq 1 {n}; echo DONE");
        let out = agent.ctl(&["exec", "ex", "--", "sh", "-c", &script]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_seq_then_done(&out.stdout, n, &format!("exec of {n} lines"));
    }
}

#[test]
fn bytes_are_kept_exactly() {
    let agent = busybox_agent_with("");
    // NUL, invalid UTF-8, a line over the 16 KiB record limit, stderr between stdout
    // lines, and a last line without a newline.
    let script = "printf 'a\\000b\\377\\376\\n'; printf 'to-err\\n' >&2; \
                  head -c 40000 /dev/zero | tr '\\000' x; echo; printf 'no-newline'";
    let spec = group("bytes", "Never", &[("app", script)], "");
    assert!(agent.apply("bytes", &spec).status.success());
    wait_phase(&agent, "bytes", "Succeeded");
    let long = "x".repeat(40_000);
    let mut want_out = b"a\0b\xff\xfe\n".to_vec();
    want_out.extend_from_slice(long.as_bytes());
    want_out.extend_from_slice(b"\nno-newline");

    // The file, parsed as containerd's CRI parser does: per stream, P parts joined,
    // F ends a line.
    let file = std::fs::read(log_dir(&agent, "bytes", "app").join("0.log")).expect("log file");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut tags = String::new();
    for rec in file.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
        let mut parts = rec.splitn(4, |b| *b == b' ');
        let (ts, stream, tag, body) = (
            parts.next().expect("ts"),
            parts.next().expect("stream"),
            parts.next().expect("tag"),
            parts.next().unwrap_or_default(),
        );
        assert!(ts.starts_with(b"20") && ts.ends_with(b"Z"), "timestamp");
        assert!(body.len() <= 16 * 1024, "record over the limit");
        let dst = if stream == b"stdout" {
            &mut out
        } else {
            &mut err
        };
        dst.extend_from_slice(body);
        match tag {
            b"F" => dst.push(b'\n'),
            b"P" => {}
            other => panic!("tag {other:?}"),
        }
        tags.push(tag[0] as char);
    }
    assert_eq!(out, want_out, "stdout rebuilt from the file");
    assert_eq!(err, b"to-err\n", "stderr rebuilt from the file");
    assert!(tags.contains("PPF"), "the long line is split: {tags}");
    assert!(tags.ends_with('P'), "the last line has no newline: {tags}");

    // Through the API: the same bytes, nothing replaced.
    let api = agent.ctl(&["logs", "bytes"]);
    assert!(api.status.success(), "{}", text(&api));
    let s = &api.stdout;
    let find = |needle: &[u8]| s.windows(needle.len()).any(|w| w == needle);
    assert!(find(b"a\0b\xff\xfe\n"), "NUL and invalid UTF-8 kept");
    assert!(find(long.as_bytes()), "long line joined");
    assert!(find(b"to-err\n") && find(b"no-newline"), "{}", text(&api));
}

#[test]
fn follow_reads_across_rotations_every_line_once_in_order() {
    let agent = busybox_agent_with(
        "[runtime]\nlog_max_size = \"64Ki\"\nlog_max_files = 4\nlog_compress = true\n",
    );
    // ~900 KB of records in batches of ~22 KB: a dozen rotations in a few seconds.
    let batches = 40;
    let per = 500;
    let script = format!(
        "sleep 2; b=0; while [ $b -lt {batches} ]; do seq $((b*{per}+1)) $((b*{per}+{per})); \
         b=$((b+1)); sleep 0.1; done; echo DONE; sleep 3600"
    );
    let spec = group("rot", "Always", &[("app", &script)], "");
    assert!(agent.apply("rot", &spec).status.success());
    wait_phase(&agent, "rot", "Running");
    let (mut child, rx) = follow(&agent, "rot");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l == "DONE" => {
                got.push(l);
                break;
            }
            Ok(l) => got.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let total = (batches * per) as u64;
    let mut joined = got.join("\n").into_bytes();
    joined.push(b'\n');
    assert_seq_then_done(&joined, total, "logs -f");

    let dir = log_dir(&agent, "rot", "app");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("log dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "0.log.1") && names.iter().any(|n| n == "0.log.3.gz"),
        "rotated and compressed: {names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("0.log.4")), "{names:?}");
    // Without -f: the kept files, oldest first, end with the last lines in order.
    let out = agent.ctl(&["logs", "rot"]);
    let kept = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = kept.lines().collect();
    assert_eq!(lines.last(), Some(&"DONE"));
    let first: u64 = lines[0].parse().expect("a number");
    assert!(first > 1, "older files were deleted");
    for (i, l) in lines[..lines.len() - 1].iter().enumerate() {
        assert_eq!(*l, (first + i as u64).to_string(), "kept lines in order");
    }
    assert_eq!(first + lines.len() as u64 - 2, total);
}

/// `logs -f` goes on into the container's next run after a restart (the follower looks
/// for a new run about once a second) and ends when the group is deleted.
#[test]
fn follow_moves_on_to_the_next_run_and_ends_with_the_group() {
    let agent = busybox_agent_with("");
    // Each run logs two lines and fails: policy Always restarts it.
    let script = "echo run-start; sleep 1; echo run-end; exit 1";
    let spec = group("next", "Always", &[("app", script)], "");
    assert!(agent.apply("next", &spec).status.success());
    let (mut child, rx) = follow(&agent, "next");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while Instant::now() < deadline && got.iter().filter(|l| *l == "run-end").count() < 3 {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(l);
        }
    }
    assert_eq!(
        got[..6],
        [
            "run-start",
            "run-end",
            "run-start",
            "run-end",
            "run-start",
            "run-end"
        ],
        "three runs, each once, in order: {got:?}"
    );
    assert!(
        agent
            .ctl(&["delete", "next", "--grace-period", "0", "--wait"])
            .status
            .success()
    );
    let ended = (0..100).any(|_| {
        rx.recv_timeout(Duration::from_millis(100))
            .is_ok_and(|l| l == "<eof>")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ended, "logs -f still open after the group was deleted");
}

/// `ecictl logs -f <name>` with its lines on a channel, then `<eof>` when it ends.
fn follow(agent: &Agent, name: &str) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(eci_tests::bin("ecictl"))
        .arg("--socket")
        .arg(agent.socket())
        .args(["logs", "-f", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ecictl logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                return;
            }
        }
        let _ = tx.send("<eof>".into());
    });
    (child, rx)
}
