//! A non-Rust client on the local socket: Python grpcio (Debian's python3-grpcio), with
//! no generated stubs. Health, both reflection versions and one ContainerGroups call must
//! work with grpcio's default options, and with each `:authority` that mainstream clients
//! send over a Unix socket, which h2 alone refuses with RST_STREAM PROTOCOL_ERROR.

use std::path::Path;
use std::process::Command;

use eci_tests::{Agent, text};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");

/// Debian's interpreter: python3-grpcio installs into its dist-packages, which another
/// `python3` first on PATH (pyenv, a venv) does not see.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn python_client(socket: &Path, authority: Option<&str>) {
    let probe = Command::new(python())
        .args(["-c", "import grpc"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: install python3-grpcio (.ci/run does)", python()));
    assert!(
        probe.status.success(),
        "{} cannot import grpc: install python3-grpcio (.ci/run does): {}",
        python(),
        text(&probe)
    );
    let mut cmd = Command::new(python());
    cmd.arg(CLIENT).arg(socket);
    if let Some(a) = authority {
        cmd.arg(a);
    }
    let out = cmd.output().expect("running the python client");
    assert!(out.status.success(), "client.py failed: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    for want in [
        "health: SERVING",
        "reflection v1alpha: lists eci.v1.ContainerGroups",
        "reflection v1: lists eci.v1.ContainerGroups",
        "ContainerGroups/List: OK",
    ] {
        assert!(said.contains(want), "{want:?} not in {said}");
    }
}

#[test]
fn grpcio_with_default_options() {
    let agent = Agent::start("").expect("agent");
    python_client(&agent.socket(), None);
}

#[test]
fn authority_is_the_socket_path() {
    // What grpc-java sends over a Unix socket.
    let agent = Agent::start("").expect("agent");
    let path = agent.socket().to_string_lossy().into_owned();
    python_client(&agent.socket(), Some(&path));
}

#[test]
fn authority_is_the_percent_encoded_socket_path() {
    // What newer grpcio releases send.
    let agent = Agent::start("").expect("agent");
    let encoded = agent.socket().to_string_lossy().replace('/', "%2F");
    python_client(&agent.socket(), Some(&encoded));
}
