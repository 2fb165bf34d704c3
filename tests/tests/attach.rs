//! `ecictl attach` end to end: a `stdin` + `tty` container driven through a real pty
//! (a pair the test opens; ecictl runs on its slave as on a terminal), several
//! attachers, detaching (ctrl-p ctrl-q, end of input) without stopping the container,
//! attach after an agent crash, the log, output-only attach, and an attacher too slow
//! to keep up (it loses output and is told; the container never waits). Needs root.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eci_tests::scenario::{busybox_agent, group, logs, wait_log, wait_phase};
use eci_tests::{Agent, text, wait_for};

/// Output of a child, read on a thread as it comes.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u8>>>);

impl Seen {
    fn reading(mut r: impl Read + Send + 'static) -> Self {
        let seen = Seen::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.0.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        seen
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }

    fn wait(&self, needle: &str) {
        let got = wait_for(Duration::from_secs(15), || {
            self.text().contains(needle).then_some(())
        });
        assert!(got.is_some(), "never saw {needle:?} in:\n{}", self.text());
    }
}

/// ecictl on the slave of a pty pair, as on an operator's terminal.
struct OnPty {
    master: std::fs::File,
    seen: Seen,
    child: Child,
}

impl OnPty {
    fn spawn(agent: &Agent, args: &[&str]) -> Self {
        let size = nix::pty::Winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pair = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave = std::fs::File::from(pair.slave);
        let child = Command::new(eci_tests::bin("ecictl"))
            .arg("--socket")
            .arg(agent.socket())
            .args(args)
            .stdin(slave.try_clone().expect("dup"))
            .stdout(slave.try_clone().expect("dup"))
            .stderr(slave)
            .spawn()
            .expect("ecictl");
        let master = std::fs::File::from(pair.master);
        let seen = Seen::reading(master.try_clone().expect("dup"));
        OnPty {
            master,
            seen,
            child,
        }
    }

    fn type_(&mut self, s: &[u8]) {
        self.master.write_all(s).expect("typing");
    }

    /// Types `line` until `want` shows (the attach may still be connecting when the
    /// first keys arrive: what is typed before it is up goes nowhere).
    fn run(&mut self, line: &str, want: &str) {
        let seen = self.seen.clone();
        self.run_seen_by(line, want, &seen);
    }

    /// Types `line` until `want` shows in `other` too (another attacher, which may
    /// still be connecting).
    fn run_seen_by(&mut self, line: &str, want: &str, other: &Seen) {
        let got = wait_for(Duration::from_secs(15), || {
            let mine = self.seen.clone();
            let done = || mine.text().contains(want) && other.text().contains(want);
            if done() {
                return Some(());
            }
            self.type_(format!("{line}\r").as_bytes());
            std::thread::sleep(Duration::from_millis(500));
            done().then_some(())
        });
        assert!(
            got.is_some(),
            "{line:?} never printed {want:?}:\n{}\n--- other:\n{}",
            self.seen.text(),
            other.text()
        );
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_for(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| panic!("ecictl attach did not end:\n{}", self.seen.text()))
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child whose stdout and stderr are read as they come.
struct Piped {
    child: Child,
    out: Seen,
    err: Seen,
}

impl Piped {
    fn spawn(agent: &Agent, args: &[&str], stdin: Stdio) -> Self {
        let mut child = Command::new(eci_tests::bin("ecictl"))
            .arg("--socket")
            .arg(agent.socket())
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ecictl");
        let out = Seen::reading(child.stdout.take().expect("stdout"));
        let err = Seen::reading(child.stderr.take().expect("stderr"));
        Piped { child, out, err }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_for(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| {
            panic!(
                "ecictl attach did not end:\n{}{}",
                self.out.text(),
                self.err.text()
            )
        })
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_fields(spec: String, fields: &str) -> String {
    spec.replace("  command:", &format!("{fields}  command:"))
}

fn container_state(agent: &Agent, name: &str) -> String {
    agent
        .get_json(name)
        .map(|g| {
            g["status"]["containerStatuses"][0]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

#[test]
fn attach_it_runs_typed_commands_detaches_and_survives_an_agent_crash() {
    let mut agent = busybox_agent();
    let spec = with_fields(
        group("shell", "Never", &[("app", "exec sh")], ""),
        "  stdin: true\n  tty: true\n",
    );
    let out = agent.apply("shell", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "shell", "Running");

    let mut it = OnPty::spawn(&agent, &["attach", "-it", "shell"]);
    // A second attacher, output only: sees what the first one's commands print.
    let mut watcher = Piped::spawn(&agent, &["attach", "shell"], Stdio::null());
    it.run("echo typed-$((6*7))", "typed-42");
    // The shell has a terminal of its own, in the container's devpts.
    it.run("tty", "/dev/pts/");
    // The size ecictl found on its terminal.
    it.run("stty size", "30 100");
    it.run_seen_by("echo both-$((1+1))", "both-2", &watcher.out);
    // With a terminal the log holds the terminal's output.
    wait_log(&agent, "shell", "app", "typed-42");

    // ctrl-p ctrl-q detaches; the container runs on, and so does the other attacher.
    it.type_(&[0x10, 0x11]);
    let st = it.wait_exit();
    assert!(st.success(), "{st:?}: {}", it.seen.text());
    assert!(it.seen.text().contains("detached"), "{}", it.seen.text());
    drop(it);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(container_state(&agent, "shell"), "Running");
    assert!(
        watcher.child.try_wait().expect("try_wait").is_none(),
        "the other attacher ended: {}",
        watcher.err.text()
    );

    // The shim owns the terminal: attach works the same after the agent crashed (an
    // attach through the crashed agent ends with it and attaches again).
    agent.kill9_and_restart().expect("restart");
    drop(watcher);
    let mut watcher = Piped::spawn(&agent, &["attach", "shell"], Stdio::null());
    let mut again = OnPty::spawn(&agent, &["attach", "-it", "shell"]);
    again.run_seen_by("echo again-$((3*3))", "again-9", &watcher.out);
    // The process's end ends every attacher, with its exit code.
    again.type_(b"exit 7\r");
    let st = again.wait_exit();
    assert_eq!(st.code(), Some(7), "{}", again.seen.text());
    let st = watcher.wait_exit();
    assert_eq!(st.code(), Some(7), "{}", watcher.err.text());
    let log = logs(&agent, "shell", "app");
    assert!(log.contains("both-2") && log.contains("again-9"), "{log}");
}

#[test]
fn stdin_without_a_terminal_and_output_only_attach() {
    let agent = busybox_agent();
    let spec = group(
        "pipes",
        "Always",
        &[
            (
                "reader",
                "while read l; do echo got:$l; echo err:$l >&2; done",
            ),
            (
                "ticker",
                "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done",
            ),
        ],
        "",
    );
    let spec = spec.replacen("  command:", "  stdin: true\n  command:", 1);
    let out = agent.apply("pipes", &spec);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "pipes", "Running");

    // A stdin pipe: input in, stdout and stderr out, apart.
    let mut a = Piped::spawn(
        &agent,
        &["attach", "-i", "pipes", "-c", "reader"],
        Stdio::piped(),
    );
    let mut input = a.child.stdin.take().expect("stdin");
    let got = wait_for(Duration::from_secs(15), || {
        let _ = input.write_all(b"hello\n");
        std::thread::sleep(Duration::from_millis(300));
        a.out.text().contains("got:hello").then_some(())
    });
    assert!(got.is_some(), "{}{}", a.out.text(), a.err.text());
    a.err.wait("err:hello");
    assert!(!a.out.text().contains("err:"), "{}", a.out.text());
    // The end of input detaches; the container runs on.
    drop(input);
    let st = a.wait_exit();
    assert!(st.success(), "{st:?} {}", a.err.text());
    wait_log(&agent, "pipes", "reader", "got:hello");
    assert_eq!(container_state(&agent, "pipes"), "Running");

    // No stdin: output only; asking for input is refused, clearly.
    let t = Piped::spawn(&agent, &["attach", "pipes", "-c", "ticker"], Stdio::null());
    t.out.wait("tick-");
    let refused = agent.ctl(&["attach", "-i", "pipes", "-c", "ticker"]);
    assert!(!refused.status.success());
    let msg = text(&refused);
    assert!(
        msg.contains("stdin: true") && msg.contains("output-only"),
        "{msg}"
    );
    // Still attached and still getting output after the refusal of another.
    let before = t.out.text().len();
    assert!(
        wait_for(Duration::from_secs(5), || (t.out.text().len() > before)
            .then_some(()))
        .is_some()
    );
    // Attaching to a container that is not in the group names it.
    let out = agent.ctl(&["attach", "pipes", "-c", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nope"), "{}", text(&out));
}

#[test]
fn a_slow_attacher_never_holds_up_the_container_and_is_told_what_it_missed() {
    let agent = busybox_agent();
    // About 1 MB of output every 0.2 s, then a numbered mark.
    let script = "i=0; while true; do head -c 1000000 /dev/zero | tr '\\0' x; echo; \
                  echo mark-$i; i=$((i+1)); sleep 0.2; done";
    let out = agent.apply("flood", &group("flood", "Never", &[("app", script)], ""));
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "flood", "Running");
    // An attacher whose stdout nobody reads: it stops taking output once its pipe is full.
    let mut child = Command::new(eci_tests::bin("ecictl"))
        .arg("--socket")
        .arg(agent.socket())
        .args(["attach", "flood"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ecictl");
    let stalled = child.stdout.take().expect("stdout");
    let err = Seen::reading(child.stderr.take().expect("stderr"));
    let guard = Piped {
        child,
        out: Seen::default(),
        err: err.clone(),
    };
    // The container writes on, far past what the attacher could hold.
    wait_log(&agent, "flood", "app", "mark-1\n");
    let got = wait_for(Duration::from_secs(30), || {
        logs(&agent, "flood", "app")
            .contains("mark-30\n")
            .then_some(())
    });
    assert!(
        got.is_some(),
        "the container was held up by a stalled attacher"
    );
    // Reading again: the attacher is told how much it missed.
    let _out = Seen::reading(stalled);
    err.wait("bytes of output were dropped for this attacher");
    drop(guard);
}
