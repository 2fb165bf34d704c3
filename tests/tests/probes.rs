//! Probes as kubelet runs them: readiness over HTTP follows a file, a failing liveness
//! exec restarts the container with an `Unhealthy` event, TCP probes against an open and
//! a closed port, a startup probe holding the others back, and probes resuming after an
//! agent restart. Needs root (CI is root).

use std::time::{Duration, Instant};

use eci_tests::scenario::{IMAGE, busybox_agent, wait_phase};
use eci_tests::{Agent, text, wait_for};

/// A group of containers given as (name, shell script, extra container YAML indented by
/// two spaces).
fn spec(name: &str, policy: &str, group_extra: &str, containers: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "name: {name}\nrestartPolicy: {policy}\ncpu: \"1\"\nmemory: 2Gi\n{group_extra}containers:\n"
    );
    for (c, script, extra) in containers {
        s.push_str(&format!(
            "- name: {c}\n  image: {IMAGE}\n  imagePullPolicy: IfNotPresent\n  command: [\"/bin/sh\", \"-c\"]\n  args: [{}]\n{extra}",
            serde_json::to_string(script).expect("json")
        ));
    }
    s
}

fn status(agent: &Agent, group: &str, container: &str) -> serde_json::Value {
    let g = agent.get_json(group).unwrap_or_default();
    g["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == container).cloned())
        .unwrap_or_default()
}

fn group_health(agent: &Agent, group: &str) -> String {
    agent.get_json(group).unwrap_or_default()["status"]["health"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits up to 20 s for `check` on a container's status.
fn wait_status(
    agent: &Agent,
    group: &str,
    container: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let ok = wait_for(Duration::from_secs(20), || {
        check(&status(agent, group, container)).then_some(())
    });
    assert!(
        ok.is_some(),
        "{container}: never {what}: {}\n{}",
        status(agent, group, container),
        text(&agent.ctl(&["describe", group]))
    );
}

fn events(agent: &Agent, group: &str) -> String {
    text(&agent.ctl(&["events", "--group", group]))
}

fn exec(agent: &Agent, group: &str, container: &str, cmd: &[&str]) {
    let mut args = vec!["exec", group, "-c", container, "--"];
    args.extend_from_slice(cmd);
    let out = agent.ctl(&args);
    assert!(out.status.success(), "exec {cmd:?}: {}", text(&out));
}

const HTTPD: &str = "mkdir -p /www; busybox httpd -f -p 8080 -h /www & wait";

#[test]
fn readiness_over_http_follows_a_file_and_resumes_after_an_agent_restart() {
    let mut agent = busybox_agent();
    let probe = "  readinessProbe:\n    httpGet: {path: /ready, port: 8080}\n    periodSeconds: 1\n    failureThreshold: 1\n";
    let s = spec("ready", "Always", "", &[("web", HTTPD, probe)]);
    let out = agent.apply("ready", &s);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "ready", "Running");
    // 404 until the file is there: Running but not ready.
    wait_status(&agent, "ready", "web", "unhealthy", |c| {
        c["state"] == "Running" && c["health"] == "unhealthy"
    });
    assert_eq!(status(&agent, "ready", "web")["ready"], false);
    assert_eq!(group_health(&agent, "ready"), "unhealthy");
    let said_404 = wait_for(Duration::from_secs(10), || {
        events(&agent, "ready")
            .contains("Readiness probe failed: HTTP probe failed with statuscode: 404")
            .then_some(())
    });
    assert!(said_404.is_some(), "{}", events(&agent, "ready"));
    exec(&agent, "ready", "web", &["touch", "/www/ready"]);
    wait_status(&agent, "ready", "web", "ready", |c| c["ready"] == true);
    assert_eq!(group_health(&agent, "ready"), "healthy");
    let ls = text(&agent.ctl(&["get", "ready"]));
    assert!(ls.contains("1/1"), "{ls}");
    exec(&agent, "ready", "web", &["rm", "/www/ready"]);
    wait_status(&agent, "ready", "web", "not ready", |c| c["ready"] == false);
    // The agent away for longer than the probe's failure threshold: no failure is
    // counted for that time, and probing goes on after re-adoption.
    agent
        .kill9_and_restart_after(Duration::from_secs(3))
        .expect("restart");
    exec(&agent, "ready", "web", &["touch", "/www/ready"]);
    wait_status(&agent, "ready", "web", "ready again", |c| {
        c["ready"] == true
    });
    assert_eq!(status(&agent, "ready", "web")["restartCount"], 0);
}

#[test]
fn a_liveness_exec_failing_twice_restarts_the_container_with_unhealthy() {
    let agent = busybox_agent();
    let probe = "  livenessProbe:\n    exec: {command: [cat, /tmp/alive]}\n    periodSeconds: 1\n    failureThreshold: 2\n";
    // Alive for a moment each run, then the file goes; the TERM handler ends the run.
    let script = "touch /tmp/alive; trap 'echo got TERM; exit 0' TERM; sleep 2; rm /tmp/alive; \
                  while true; do sleep 0.2; done";
    let s = spec(
        "live",
        "Always",
        "terminationGracePeriodSeconds: 5\n",
        &[("app", script, probe)],
    );
    assert!(agent.apply("live", &s).status.success());
    wait_phase(&agent, "live", "Running");
    wait_status(&agent, "live", "app", "restarted", |c| {
        c["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    let ev = events(&agent, "live");
    assert!(
        ev.contains("Liveness probe failed: cat: can't open '/tmp/alive'"),
        "{ev}"
    );
    assert!(
        ev.contains("failed liveness probe, will be restarted"),
        "{ev}"
    );
    let c = status(&agent, "live", "app");
    assert_eq!(c["lastState"]["exitCode"], 0, "{c}");
    let prev = text(&agent.ctl(&["logs", "live", "-c", "app", "--previous"]));
    assert!(
        prev.contains("got TERM"),
        "the run ended by SIGTERM: {prev}"
    );
}

#[test]
fn a_tcp_probe_passes_on_a_listening_port_and_fails_on_a_closed_one() {
    let agent = busybox_agent();
    let open = "  readinessProbe:\n    tcpSocket: {port: 8080}\n    periodSeconds: 1\n    failureThreshold: 1\n";
    let closed = "  readinessProbe:\n    tcpSocket: {port: 8081}\n    periodSeconds: 1\n    failureThreshold: 1\n";
    let s = spec(
        "tcp",
        "Always",
        "",
        &[("open", HTTPD, open), ("closed", "sleep 3600", closed)],
    );
    assert!(agent.apply("tcp", &s).status.success());
    wait_phase(&agent, "tcp", "Running");
    wait_status(&agent, "tcp", "open", "ready", |c| c["ready"] == true);
    wait_status(&agent, "tcp", "closed", "unhealthy", |c| {
        c["health"] == "unhealthy"
    });
    assert_eq!(status(&agent, "tcp", "closed")["ready"], false);
    assert_eq!(status(&agent, "tcp", "open")["health"], "healthy");
    assert_eq!(group_health(&agent, "tcp"), "unhealthy");
    let ev = events(&agent, "tcp");
    assert!(ev.contains("Readiness probe failed: dial tcp"), "{ev}");
    assert!(ev.contains(":8081"), "{ev}");
}

#[test]
fn a_startup_probe_holds_liveness_and_readiness_back() {
    let agent = busybox_agent();
    // Liveness would kill the container at its first failure, were it not held back.
    let probes = "  startupProbe:\n    exec: {command: [test, -f, /tmp/started]}\n    periodSeconds: 1\n    failureThreshold: 30\n\
                  \x20 livenessProbe:\n    exec: {command: [test, -f, /tmp/started]}\n    periodSeconds: 1\n    failureThreshold: 1\n\
                  \x20 readinessProbe:\n    exec: {command: [\"true\"]}\n    periodSeconds: 1\n";
    let s = spec(
        "startup",
        "Always",
        "",
        &[("slow", "sleep 4; touch /tmp/started; sleep 3600", probes)],
    );
    assert!(agent.apply("startup", &s).status.success());
    wait_phase(&agent, "startup", "Running");
    let running = Instant::now();
    // Readiness would pass at once: it waits for the startup probe.
    let early = status(&agent, "startup", "slow");
    assert_eq!(early["ready"], false, "{early}");
    assert_eq!(early["health"], "checking", "{early}");
    assert_eq!(group_health(&agent, "startup"), "checking");
    wait_status(&agent, "startup", "slow", "ready", |c| c["ready"] == true);
    assert!(
        running.elapsed() >= Duration::from_secs(2),
        "ready after {:?}, before the startup probe could pass",
        running.elapsed()
    );
    let c = status(&agent, "startup", "slow");
    assert_eq!(
        c["restartCount"], 0,
        "liveness ran before startup passed: {c}"
    );
    assert_eq!(c["health"], "healthy", "{c}");
    let ev = events(&agent, "startup");
    assert!(ev.contains("Startup probe failed"), "{ev}");
    assert!(!ev.contains("Liveness probe failed"), "{ev}");
}

#[test]
fn http_probes_reach_the_group_address_on_a_dev_network() {
    let dev = eci_tests::vpc::DevNet::new();
    let agent = eci_tests::scenario::busybox_agent_with(&dev.config());
    // The server listens on eth0's address only: a probe to loopback would fail.
    let script = "mkdir -p /www; touch /www/ready; \
                  IP=$(busybox ip -4 -o addr show eth0 | busybox awk '{print $4}' | busybox cut -d/ -f1); \
                  echo listening on $IP; busybox httpd -f -p $IP:8080 -h /www & wait";
    let probe =
        "  readinessProbe:\n    httpGet: {path: /ready, port: 8080}\n    periodSeconds: 1\n";
    let s = spec("devready", "Always", "", &[("web", script, probe)]);
    let out = agent.apply("devready", &s);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "devready", "Running");
    eci_tests::scenario::wait_log(&agent, "devready", "web", "listening on 172.");
    wait_status(&agent, "devready", "web", "ready", |c| c["ready"] == true);
    assert_eq!(group_health(&agent, "devready"), "healthy");
}

/// An HTTPS server with a self-signed certificate on the host: `GET /ok` answers 200,
/// anything else 500. Stops with the test process.
fn https_server() -> u16 {
    use std::io::{Read, Write};
    use std::sync::Arc;
    let ck = rcgen::generate_simple_self_signed(vec!["probe.test".to_string()]).expect("cert");
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    let cfg = Arc::new(cfg);
    let l = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut buf = [0u8; 2048];
                let Ok(n) = tls.read(&mut buf) else { return };
                let ok = buf[..n].starts_with(b"GET /ok ");
                let status = if ok { "200 OK" } else { "500 Oops" };
                let _ = tls.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

#[test]
fn https_probes_accept_a_self_signed_certificate_and_read_the_status() {
    let dev = eci_tests::vpc::DevNet::new();
    let agent = eci_tests::scenario::busybox_agent_with(&dev.config());
    let port = https_server();
    let probe = |path: &str| {
        format!(
            "  readinessProbe:\n    httpGet: {{scheme: HTTPS, host: \"{}\", port: {port}, path: {path}}}\n    periodSeconds: 1\n    failureThreshold: 1\n",
            dev.gateway
        )
    };
    let (good, bad) = (probe("/ok"), probe("/bad"));
    let s = spec(
        "tls",
        "Always",
        "",
        &[("good", "sleep 3600", &good), ("bad", "sleep 3600", &bad)],
    );
    let out = agent.apply("tls", &s);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&agent, "tls", "Running");
    wait_status(&agent, "tls", "good", "ready", |c| c["ready"] == true);
    wait_status(&agent, "tls", "bad", "unhealthy", |c| {
        c["health"] == "unhealthy"
    });
    let ev = events(&agent, "tls");
    assert!(
        ev.contains("HTTP probe failed with statuscode: 500"),
        "{ev}"
    );
}
