//! A compromised guest on the `eci.ctl` port: the host's ttrpc client against answers
//! that are huge, malformed, for streams never asked, or never come. Each call ends
//! with an error within its deadline; nothing is allocated for the claimed sizes.

use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::TaskClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// ttrpc's response message type.
const RESPONSE: u8 = 2;

/// A "guest" that reads one request and answers it with `answer(stream_id)`, then
/// keeps the connection open.
async fn hostile_guest(answer: fn(u32) -> Vec<u8>) -> (tempfile::TempDir, TaskClient) {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("ctl.sock");
    let l = UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut h = [0u8; 10];
        if s.read_exact(&mut h).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let _ = s.write_all(&answer(stream)).await;
        // Hold the connection: the client must give up by its deadline, not by EOF.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let addr = format!("unix://{}", sock.display());
    let c = ttrpc::asynchronous::Client::connect(&addr)
        .await
        .expect("connect");
    (dir, TaskClient::new(c))
}

fn header(len: u32, stream: u32) -> Vec<u8> {
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&[RESPONSE, 0]);
    h
}

async fn state_fails_quickly(answer: fn(u32) -> Vec<u8>) -> String {
    let (_dir, client) = hostile_guest(answer).await;
    let t = Instant::now();
    let r = client
        .state(
            ttrpc::context::with_duration(Duration::from_secs(3)),
            &api::StateRequest {
                id: "app".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    match r {
        Ok(r) => panic!("a hostile answer was taken: {r:?}"),
        Err(e) => {
            eprintln!("{e}");
            e.to_string()
        }
    }
}

#[tokio::test]
async fn an_answer_over_the_message_limit_is_refused() {
    // Claims 1 GiB, sends 5 MiB: the client refuses it by its header.
    let e = state_fails_quickly(|s| {
        let mut m = header(1 << 30, s);
        m.extend(std::iter::repeat_n(0xAA, 5 << 20));
        m
    })
    .await;
    // (The claimed body is read and thrown away in pages, never allocated.)
    assert!(e.contains("deadline"), "{e}");
}

#[tokio::test]
async fn a_malformed_answer_is_an_error() {
    let e = state_fails_quickly(|s| {
        let junk = vec![0xFF; 64];
        let mut m = header(junk.len() as u32, s);
        m.extend(junk);
        m
    })
    .await;
    assert!(e.contains("Unpack response"), "{e}");
}

#[tokio::test]
async fn answers_for_streams_never_asked_and_silence_end_at_the_deadline() {
    let e = state_fails_quickly(|s| {
        let mut m = Vec::new();
        for other in [s + 2, s + 4, 0, u32::MAX] {
            m.extend(header(2, other));
            m.extend([0x08, 0x01]);
        }
        m
    })
    .await;
    assert!(e.contains("deadline"), "{e}");
}
