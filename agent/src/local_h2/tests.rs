//! The adapter fed with bytes a client would send; its output read back with an
//! independent HPACK implementation (`httlib-hpack`), which also encodes the input the
//! way grpcio does: Huffman strings and a dynamic table.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use httlib_hpack::{Decoder as RefDecoder, Encoder as RefEncoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tonic::transport::server::Connected;

use super::*;

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;
const WINDOW_UPDATE: u8 = 0x8;
/// Huffman name and value, incremental indexing, reuse of table entries.
const LIKE_GRPCIO: u8 = 0x1 | 0x2 | 0x4 | 0x10;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Hands out `input` at most `chunk` bytes per read, to cross every boundary.
struct Trickle {
    input: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.input.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

async fn run_chunked(input: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
    let mut s = LocalStream::new(Trickle {
        input: input.to_vec(),
        at: 0,
        chunk,
    });
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

/// Runs `input` through the adapter whole and in small pieces; both must agree.
async fn run(input: &[u8]) -> io::Result<Vec<u8>> {
    let whole = run_chunked(input, usize::MAX).await;
    for chunk in [1, 5, 9, 100] {
        let pieces = run_chunked(input, chunk).await;
        match (&whole, &pieces) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "chunk {chunk}"),
            (Err(_), Err(_)) => {}
            _ => panic!("chunk {chunk}: {whole:?} vs {pieces:?}"),
        }
    }
    whole
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(frame(SETTINGS, 0, 0, &[]));
    for f in frames {
        v.extend(f);
    }
    v
}

fn request(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/eci.v1.ContainerGroups/List"),
        (":authority", authority),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        (
            "user-agent",
            "grpc-python/1.51.1 grpc-c/29.0.0 (linux; chttp2)",
        ),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

fn encode(enc: &mut RefEncoder, fields: &Fields) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in fields {
        enc.encode((n.clone(), v.clone(), LIKE_GRPCIO), &mut block)
            .expect("encode");
    }
    block
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frames(out: &[u8]) -> Vec<Frame> {
    let mut rest = out.strip_prefix(PREFACE.as_slice()).expect("preface kept");
    let mut v = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        v.push(Frame {
            kind: rest[3],
            flags: rest[4],
            stream: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    v
}

/// Checks that a block holds only literals without indexing, new name, raw strings —
/// nothing that could touch the server's dynamic table.
fn assert_plain_literals(mut block: &[u8]) {
    fn string(b: &[u8]) -> &[u8] {
        assert_eq!(b[0] & 0x80, 0, "no Huffman");
        let (mut len, mut i) = (usize::from(b[0] & 0x7f), 1);
        if len == 0x7f {
            let mut shift = 0;
            loop {
                len += usize::from(b[i] & 0x7f) << shift;
                shift += 7;
                i += 1;
                if b[i - 1] & 0x80 == 0 {
                    break;
                }
            }
        }
        &b[i + len..]
    }
    while !block.is_empty() {
        assert_eq!(block[0], 0, "literal without indexing, new name");
        block = string(string(&block[1..]));
    }
}

/// The header blocks of `out`, reassembled and decoded by a server-side decoder that
/// never learns a dynamic table entry (size 0).
fn blocks(out: &[u8]) -> Vec<(u32, u8, Fields)> {
    let mut v = Vec::new();
    let mut open: Option<(u32, u8, Vec<u8>)> = None;
    for f in frames(out) {
        match f.kind {
            HEADERS => {
                assert!(open.is_none());
                assert!(f.payload.len() <= MAX_FRAME);
                assert_eq!(f.flags & PADDED, 0, "padding dropped");
                let frag = if f.flags & PRIORITY != 0 {
                    &f.payload[5..]
                } else {
                    &f.payload[..]
                };
                open = Some((f.stream, f.flags, frag.to_vec()));
            }
            CONTINUATION => {
                assert!(f.payload.len() <= MAX_FRAME);
                let o = open.as_mut().expect("continuation after headers");
                assert_eq!(o.0, f.stream);
                o.2.extend(&f.payload);
                o.1 |= f.flags & END_HEADERS;
            }
            _ => assert!(open.is_none(), "nothing inside a header block"),
        }
        if let Some((stream, flags, block)) = &open
            && flags & END_HEADERS != 0
        {
            assert_plain_literals(block);
            let mut dec = RefDecoder::with_dynamic_size(0);
            let mut buf = block.clone();
            let mut fields = Vec::new();
            dec.decode(&mut buf, &mut fields).expect("decodes");
            let fields = fields.into_iter().map(|(n, v, _)| (n, v)).collect();
            v.push((*stream, *flags, fields));
            open = None;
        }
    }
    assert!(open.is_none(), "header block left open");
    v
}

fn with_authority(mut fields: Fields, authority: &str) -> Fields {
    for (n, v) in &mut fields {
        if n == b":authority" {
            *v = authority.as_bytes().to_vec();
        }
    }
    fields
}

async fn rewritten(authority: &str) -> Fields {
    let mut enc = RefEncoder::default();
    let block = encode(&mut enc, &request(authority));
    let out = run(&connection(&[frame(HEADERS, END_HEADERS, 1, &block)]))
        .await
        .expect("accepted");
    let mut b = blocks(&out);
    assert_eq!(b.len(), 1);
    let (stream, flags, fields) = b.remove(0);
    assert_eq!((stream, flags), (1, END_HEADERS));
    fields
}

#[tokio::test]
async fn socket_path_authority_becomes_localhost() {
    // What grpc-java and grpcio < 1.57 send.
    let got = rewritten("/run/eci/agent.sock").await;
    assert_eq!(got, with_authority(request(""), "localhost"));
}

#[tokio::test]
async fn percent_encoded_authority_becomes_localhost() {
    // What grpcio ≥ 1.57 sends.
    let got = rewritten("%2Frun%2Feci%2Fagent.sock").await;
    assert_eq!(got, with_authority(request(""), "localhost"));
    let got = rewritten("").await;
    assert_eq!(got, with_authority(request(""), "localhost"));
}

#[tokio::test]
async fn valid_authorities_are_kept() {
    for a in [
        "localhost",
        "localhost:50051",
        "[::1]:80",
        "agent.eci.internal",
    ] {
        assert_eq!(rewritten(a).await, request(a), "{a}");
    }
}

#[tokio::test]
async fn block_split_across_continuations_is_reassembled() {
    let mut enc = RefEncoder::default();
    let block = encode(&mut enc, &request("/run/eci/agent.sock"));
    let (a, rest) = block.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let input = connection(&[
        frame(HEADERS, END_STREAM, 5, a),
        frame(CONTINUATION, 0, 5, b),
        frame(CONTINUATION, END_HEADERS, 5, c),
        frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]),
    ]);
    let out = run(&input).await.expect("accepted");
    let f = frames(&out);
    // SETTINGS, one HEADERS, WINDOW_UPDATE.
    assert_eq!(f.len(), 3);
    assert_eq!(f[1].kind, HEADERS);
    assert_eq!(f[1].flags, END_STREAM | END_HEADERS);
    assert_eq!(f[2].kind, WINDOW_UPDATE);
    let b = blocks(&out);
    assert_eq!(b[0].2, with_authority(request(""), "localhost"));
}

#[tokio::test]
async fn padded_headers_with_priority() {
    let mut enc = RefEncoder::default();
    let block = encode(&mut enc, &request("/run/eci/agent.sock"));
    let prio = [0x80, 0, 0, 3, 200];
    let mut payload = vec![7];
    payload.extend(prio);
    payload.extend(&block);
    payload.extend([0; 7]);
    let input = connection(&[frame(
        HEADERS,
        PADDED | PRIORITY | END_HEADERS | END_STREAM,
        1,
        &payload,
    )]);
    let out = run(&input).await.expect("accepted");
    let f = frames(&out);
    assert_eq!(f[1].flags, PRIORITY | END_HEADERS | END_STREAM);
    assert_eq!(f[1].payload[..5], prio, "priority fields kept");
    assert_eq!(blocks(&out)[0].2, with_authority(request(""), "localhost"));
}

#[tokio::test]
async fn dynamic_table_is_followed_across_requests() {
    let mut enc = RefEncoder::default();
    let first = encode(&mut enc, &request("/run/eci/agent.sock"));
    let second = encode(&mut enc, &request("/run/eci/agent.sock"));
    // The second request is made of references to the first one's table entries.
    assert!(second.len() < 10, "{} bytes", second.len());
    let mut third = Vec::new();
    // Evict everything, then index anew: the decoder must follow the size updates.
    enc.update_max_dynamic_size(0, &mut third).expect("size");
    enc.update_max_dynamic_size(4096, &mut third).expect("size");
    third.extend(encode(&mut enc, &request("%2Frun%2Feci%2Fagent.sock")));
    let fourth = encode(&mut enc, &request("localhost"));
    let input = connection(&[
        frame(HEADERS, END_HEADERS, 1, &first),
        frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]),
        frame(HEADERS, END_HEADERS, 3, &second),
        frame(HEADERS, END_HEADERS, 5, &third),
        frame(HEADERS, END_HEADERS, 7, &fourth),
    ]);
    let out = run(&input).await.expect("accepted");
    let b = blocks(&out);
    let fixed = with_authority(request(""), "localhost");
    assert_eq!(b.len(), 4);
    for (i, (stream, _, fields)) in b.iter().enumerate() {
        assert_eq!(*stream, 1 + 2 * i as u32);
        assert_eq!(fields, &fixed, "request {i}");
    }
}

#[tokio::test]
async fn table_size_over_the_servers_setting_is_refused() {
    let mut enc = RefEncoder::with_dynamic_size(65536);
    let mut block = Vec::new();
    enc.update_max_dynamic_size(8192, &mut block).expect("size");
    block.extend(encode(&mut enc, &request("localhost")));
    let input = connection(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    let e = run(&input).await.expect_err("refused");
    assert!(e.to_string().contains("HPACK: Dynamic table size"), "{e}");
}

#[tokio::test]
async fn large_block_is_split_at_the_frame_size() {
    let mut fields = request("/run/eci/agent.sock");
    for i in 0..40 {
        fields.push((
            format!("x-meta-{i}").into_bytes(),
            vec![b'a' + (i % 26); 1000],
        ));
    }
    let mut enc = RefEncoder::default();
    let block = encode(&mut enc, &fields);
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    let mut input = vec![frame(HEADERS, 0, 1, chunks[0])];
    for (i, c) in chunks[1..].iter().enumerate() {
        let last = i + 2 == chunks.len();
        input.push(frame(
            CONTINUATION,
            if last { END_HEADERS } else { 0 },
            1,
            c,
        ));
    }
    let out = run(&connection(&input)).await.expect("accepted");
    let f = frames(&out);
    assert!(f.len() >= 4, "HEADERS and at least two CONTINUATIONs");
    assert_eq!(f[1].payload.len(), MAX_FRAME);
    let (last, rest) = f[1..].split_last().expect("frames");
    assert!(rest.iter().all(|f| f.flags & END_HEADERS == 0));
    assert_eq!(last.flags, END_HEADERS);
    assert_eq!(blocks(&out)[0].2, with_authority(fields, "localhost"));
}

#[tokio::test]
async fn other_frames_pass_unchanged() {
    let data: Vec<u8> = (0..MAX_FRAME).map(|i| i as u8).collect();
    let frames_in = [
        frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]),
        frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]),
        frame(DATA, 0, 1, &data),
        frame(DATA, END_STREAM, 1, &[]),
        // A DATA frame over the limit is h2's business (FRAME_SIZE_ERROR), not ours.
        frame(DATA, 0, 3, &vec![1; MAX_FRAME + 10]),
        frame(0x6, 0, 0, b"pingping"),
        frame(0x7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let input = connection(&frames_in);
    assert_eq!(run(&input).await.expect("accepted"), input);
}

#[tokio::test]
async fn clean_end_of_stream_between_frames() {
    assert_eq!(run(&[]).await.expect("empty").len(), 0);
    let input = connection(&[]);
    assert_eq!(run(&input).await.expect("settings only"), input);
}

#[tokio::test]
async fn malformed_input_closes_the_connection() {
    let mut enc = RefEncoder::default();
    let block = encode(&mut enc, &request("localhost"));
    // (what, input, the reason given)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad preface",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "the client preface",
        ),
        (
            "index past the table",
            connection(&[frame(HEADERS, END_HEADERS, 1, &[0x80 | 100])]),
            "HPACK: Header index out of bounds",
        ),
        (
            "bad Huffman",
            connection(&[frame(
                HEADERS,
                END_HEADERS,
                1,
                &[0x00, 0x81, 0xff, 0x01, b'a'],
            )]),
            "HPACK: String decoding error",
        ),
        (
            "truncated literal",
            connection(&[frame(HEADERS, END_HEADERS, 1, &[0x00, 0x05, b'a'])]),
            "HPACK: String decoding error",
        ),
        (
            "frame inside a header block",
            connection(&[
                frame(HEADERS, 0, 1, &block[..4]),
                frame(DATA, 0, 1, b"x"),
                frame(CONTINUATION, END_HEADERS, 1, &block[4..]),
            ]),
            "a frame inside a header block",
        ),
        (
            "continuation on another stream",
            connection(&[
                frame(HEADERS, 0, 1, &block[..4]),
                frame(CONTINUATION, END_HEADERS, 3, &block[4..]),
            ]),
            "a frame inside a header block",
        ),
        (
            "continuation alone",
            connection(&[frame(CONTINUATION, END_HEADERS, 1, &block)]),
            "a CONTINUATION outside a header block",
        ),
        (
            "headers on stream 0",
            connection(&[frame(HEADERS, END_HEADERS, 0, &block)]),
            "HEADERS on stream 0",
        ),
        (
            "header frame over the frame size",
            connection(&[frame(HEADERS, END_HEADERS, 1, &vec![0x82; MAX_FRAME + 1])]),
            "a header frame over the maximum frame size",
        ),
        (
            "continuation over the frame size",
            connection(&[
                frame(HEADERS, 0, 1, &block),
                frame(CONTINUATION, END_HEADERS, 1, &vec![0x82; MAX_FRAME + 1]),
            ]),
            "a header frame over the maximum frame size",
        ),
        (
            "padding longer than the payload",
            connection(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x82])]),
            "HEADERS padding",
        ),
        (
            "priority fields cut short",
            connection(&[frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0])]),
            "HEADERS priority",
        ),
        (
            "push promise from the client",
            connection(&[frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])]),
            "a PUSH_PROMISE from the client",
        ),
        (
            "ends inside a frame",
            connection(&[frame(DATA, 0, 1, b"abcdef")])[..PREFACE.len() + 9 + 9 + 3].to_vec(),
            "unexpected end of file",
        ),
        (
            "ends inside a header block",
            connection(&[frame(HEADERS, 0, 1, &block)]),
            "unexpected end of file",
        ),
        (
            "ends inside the preface",
            PREFACE[..10].to_vec(),
            "unexpected end of file",
        ),
    ];
    for (what, input, reason) in cases {
        let e = run(&input).await.expect_err(what);
        assert!(e.to_string().contains(reason), "{what}: {e}");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ),
            "{what}: {e}"
        );
    }
}

#[tokio::test]
async fn huge_expansion_is_refused() {
    // One 4 KiB table entry referenced over and over: a few bytes on the wire, far more
    // once re-encoded as literals.
    let mut enc = RefEncoder::default();
    let mut block = Vec::new();
    enc.encode((b"x-big".to_vec(), vec![b'a'; 4000], 0x4), &mut block)
        .expect("encode");
    block.extend(std::iter::repeat_n(0x80 | 62, 8000));
    assert!(block.len() <= MAX_FRAME);
    let input = connection(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    let e = run(&input).await.expect_err("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("over the size limit"), "{e}");
}

#[tokio::test]
async fn writes_and_peer_credentials_are_the_sockets() {
    let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
    let mut s = LocalStream::new(a);
    let cred = s.connect_info().peer_cred.expect("peer credentials");
    assert_eq!(cred.uid(), nix::unistd::getuid().as_raw());
    assert_eq!(cred.pid(), Some(std::process::id() as i32));
    s.write_all(b"from the server").await.expect("write");
    s.flush().await.expect("flush");
    let mut got = [0; 15];
    b.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"from the server");
    b.write_all(&connection(&[])).await.expect("write");
    drop(b);
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, connection(&[]));
}
