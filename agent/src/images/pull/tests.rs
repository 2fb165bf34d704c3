//! Unit tests of the puller that need no registry (the registry ones are end-to-end:
//! tests/tests/registry_pull.rs).

use std::io::Read;

use super::*;

#[test]
fn policies_default_like_kubernetes() {
    assert_eq!(PullPolicy::of("", "busybox"), PullPolicy::Always);
    assert_eq!(PullPolicy::of("", "busybox:latest"), PullPolicy::Always);
    assert_eq!(PullPolicy::of("", "busybox:1.36"), PullPolicy::IfNotPresent);
    let pinned = format!("busybox@sha256:{}", "0".repeat(64));
    assert_eq!(PullPolicy::of("", &pinned), PullPolicy::IfNotPresent);
    assert_eq!(PullPolicy::of("Never", "busybox"), PullPolicy::Never);
    assert_eq!(PullPolicy::of("Always", "busybox:1"), PullPolicy::Always);
}

#[test]
fn the_channel_reader_passes_chunks_and_errors_through() {
    let (tx, rx) = mpsc::channel(4);
    let mut r = ChannelReader::new(rx);
    tx.try_send(Ok(bytes::Bytes::from_static(b"ab")))
        .expect("send");
    tx.try_send(Ok(bytes::Bytes::from_static(b"cd")))
        .expect("send");
    drop(tx);
    let mut out = String::new();
    r.read_to_string(&mut out).expect("read");
    assert_eq!(out, "abcd");

    let (tx, rx) = mpsc::channel(4);
    let mut r = ChannelReader::new(rx);
    tx.try_send(Err(std::io::Error::other("reset")))
        .expect("send");
    let err = r.read(&mut [0u8; 8]).expect_err("the transfer's error");
    assert_eq!(err.to_string(), "reset");
}
