//! Who may talk to the agent: the Unix socket checks peer credentials; TCP needs a client
//! certificate from the configured CA.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use eci_tests::{Agent, bin, free_port, text};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Runs this agent's ecictl as another user, from a copy every user can execute.
fn ctl_as(agent: &Agent, uid: u32, gid: u32, args: &[&str]) -> Output {
    let copy = agent.root().join("ecictl");
    if !copy.exists() {
        std::fs::copy(bin("ecictl"), &copy).expect("copy ecictl");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    Command::new(&copy)
        .arg("--socket")
        .arg(agent.socket())
        .args(args)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .output()
        .expect("ecictl as another user")
}

const NOBODY: u32 = 65534;

#[test]
fn unix_socket_refuses_a_peer_that_is_not_root_nor_in_the_group() {
    let agent = Agent::start("").expect("agent");
    agent.open_path_for_all().expect("chmod");
    let mode = std::fs::metadata(agent.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode");
    // Widen the file mode by hand: the peer-credential check must still refuse.
    std::fs::set_permissions(agent.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let out = ctl_as(&agent, NOBODY, NOBODY, &["node"]);
    assert!(!out.status.success(), "nobody got in: {}", text(&out));
    assert!(text(&out).contains("PermissionDenied"), "{}", text(&out));
    assert!(agent.ctl(&["node"]).status.success(), "root is refused");
}

#[test]
fn unix_socket_admits_the_configured_group_only() {
    let gid = 47_001;
    let agent = Agent::start(&format!("[api]\nsocket_group = \"{gid}\"\n")).expect("agent");
    agent.open_path_for_all().expect("chmod");
    let meta = std::fs::metadata(agent.socket()).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid);
    let out = ctl_as(&agent, NOBODY, gid, &["node"]);
    assert!(out.status.success(), "group member refused: {}", text(&out));
    let out = ctl_as(&agent, NOBODY, NOBODY, &["node"]);
    assert!(!out.status.success(), "non-member got in: {}", text(&out));
    std::fs::set_permissions(agent.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let out = ctl_as(&agent, NOBODY, NOBODY, &["node"]);
    assert!(text(&out).contains("PermissionDenied"), "{}", text(&out));
}

struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

fn ca(name: &str) -> Pki {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("self-signed");
    Pki {
        ca_pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// Writes `<name>.pem` and `<name>.key` signed by `ca`.
fn leaf(ca: &Pki, dir: &Path, name: &str, sans: &[&str]) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca.issuer).expect("sign");
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write cert");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
}

#[test]
fn tcp_requires_a_client_certificate_from_the_configured_ca() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let d = pki_dir.path();
    let good = ca("eci test ca");
    let other = ca("someone else");
    std::fs::write(d.join("ca.pem"), &good.ca_pem).expect("ca");
    leaf(&good, d, "server", &["localhost", "127.0.0.1"]);
    leaf(&good, d, "client", &["control-plane"]);
    leaf(&other, d, "stranger", &["stranger"]);
    let port = free_port();
    let p = |n: &str| d.join(n).display().to_string();
    let cfg = format!(
        "[api]\ntcp_listen = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
        p("server.pem"),
        p("server.key"),
        p("ca.pem")
    );
    let agent = Agent::start(&cfg).expect("agent");
    let addr = format!("https://127.0.0.1:{port}");
    let tcp = |extra: &[String]| {
        Command::new(bin("ecictl"))
            .args([
                "--address",
                &addr,
                "--ca",
                &p("ca.pem"),
                "--tls-server-name",
                "localhost",
            ])
            .args(extra)
            .arg("node")
            .stdin(Stdio::null())
            .output()
            .expect("ecictl over tcp")
    };
    let none = tcp(&[]);
    assert!(
        !none.status.success(),
        "no client certificate got in: {}",
        text(&none)
    );
    let stranger = tcp(&[
        "--cert".into(),
        p("stranger.pem"),
        "--key".into(),
        p("stranger.key"),
    ]);
    assert!(
        !stranger.status.success(),
        "foreign CA got in: {}",
        text(&stranger)
    );
    let ok = tcp(&[
        "--cert".into(),
        p("client.pem"),
        "--key".into(),
        p("client.key"),
    ]);
    assert!(ok.status.success(), "{}\n{}", text(&ok), agent.log());
    assert!(text(&ok).contains("Cgroup mode"), "{}", text(&ok));
}
