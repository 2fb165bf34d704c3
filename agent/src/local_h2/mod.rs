//! Lets mainstream gRPC clients use the local socket whatever `:authority` they send.
//!
//! Over a Unix socket the authority means nothing, yet clients fill it with something:
//! grpc-java sends the socket path (`/run/eci/agent.sock`), newer grpcio releases its
//! %-encoding (`%2Frun%2Feci%2Fagent.sock`). The HTTP/2 server under tonic (`h2`) refuses
//! both as malformed (RST_STREAM PROTOCOL_ERROR) and has no option to relax that.
//! [`LocalStream`] sits between the accepted socket and tonic: it passes every byte through,
//! except that it reads the client's HTTP/2 frames, decodes each header block (HEADERS and
//! its CONTINUATIONs), replaces an `:authority` that `h2` would refuse with `localhost`,
//! and re-encodes the block. "Would refuse" is asked of the parser `h2` itself uses
//! (`http::uri::Authority`); it is stricter than RFC 3986, which allows %-encoding in a
//! host name, so checking the RFC alone would let the grpcio form through to a refusal.
//!
//! The re-encoded block uses only "literal header field without indexing" with raw
//! (non-Huffman) strings, so it never touches the server's dynamic table: it is valid
//! whatever SETTINGS_HEADER_TABLE_SIZE the server advertises, and our decoder is the only
//! one that follows the client's dynamic table. Every other frame is copied as is;
//! payloads of pass-through frames go straight from the socket into tonic's buffer.
//! Anything malformed (bad preface, header frame over the frame size limit, bad padding,
//! an interleaved frame inside a header block, an HPACK error) fails the read, and tonic
//! closes the connection.
//!
//! The HPACK decoder is `loona-hpack`, the continuation of `hpack` by the authors of the
//! `loona` HTTP/2 server. It decodes Huffman strings, keeps the dynamic table across
//! blocks and follows table size updates, and unlike `hpack` 0.3 (its last release) it
//! bounds those updates by a maximum we set, so a client cannot grow our table past
//! SETTINGS_HEADER_TABLE_SIZE, and it refuses a block ending in a size update. Its
//! callback API borrows names and values instead of allocating for each header.
//! `httlib-hpack` (another implementation, one author) serves the tests as the independent
//! encoder and decoder; `h2`'s own HPACK code is public only behind its `unstable` feature.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// SETTINGS_MAX_FRAME_SIZE as the server advertises it: h2's default, which tonic keeps
/// unless `Server::max_frame_size` is set (the agent does not). It is also the smallest
/// value HTTP/2 allows, so frames we emit at this size suit any server setting.
const MAX_FRAME: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE as the server advertises it (h2 sends none: the default).
/// The client's encoder may not grow its table past it; our decoder holds it to that.
const HEADER_TABLE_SIZE: usize = 4_096;
/// Largest header block we hold, encoded as received and as re-encoded (the re-encoding
/// can be much longer: one byte of an indexed field can stand for a 4 KiB table entry).
/// Far above what gRPC metadata needs; hyper refuses lists above 16 KiB anyway.
const MAX_BLOCK: usize = 256 * 1024;

/// An accepted connection as tonic sees it: reads are the client's frames with header
/// blocks rewritten; writes go straight to the socket.
pub struct LocalStream<S> {
    inner: S,
    /// Bytes read from the socket: `input[pos..end]` is not yet handed on. Big enough for
    /// the largest frame we hold whole (a header frame); other frames stream through.
    input: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Re-encoded header frames waiting to be handed on.
    output: Vec<u8>,
    out_pos: usize,
    state: State,
    decoder: Decoder<'static>,
    /// The header block being assembled from HEADERS + CONTINUATION frames.
    pending: Option<Pending>,
    eof: bool,
}

enum State {
    /// Waiting for the 24-byte client preface.
    Preface,
    /// At a frame boundary.
    Frame,
    /// Handing on this many bytes unchanged.
    Through(usize),
}

struct Pending {
    stream: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The PRIORITY fields of the HEADERS frame, kept as they were.
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl<S> LocalStream<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        LocalStream {
            inner,
            input: vec![0; FRAME_HEADER + MAX_FRAME].into_boxed_slice(),
            pos: 0,
            end: 0,
            output: Vec::new(),
            out_pos: 0,
            state: State::Preface,
            decoder,
            pending: None,
            eof: false,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.input[self.pos..self.end]
    }

    /// Consumes `n` buffered bytes, returning them.
    fn take(&mut self, n: usize) -> &[u8] {
        let start = self.pos;
        self.pos += n;
        &self.input[start..self.pos]
    }

    /// Advances the state machine over what is buffered: `Ok(true)` when it moved (there
    /// may be something to hand on), `Ok(false)` when it needs more input.
    fn step(&mut self) -> Result<bool, Malformed> {
        match self.state {
            State::Through(_) => Ok(true),
            State::Preface => {
                let have = self.buffered();
                let n = have.len().min(PREFACE.len());
                if have[..n] != PREFACE[..n] {
                    return Err(Malformed::Frame("the client preface"));
                }
                if n < PREFACE.len() {
                    return Ok(false);
                }
                self.state = State::Through(PREFACE.len());
                Ok(true)
            }
            State::Frame => {
                let Some(head) = self.buffered().get(..FRAME_HEADER) else {
                    return Ok(false);
                };
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let kind = head[3];
                let flags = head[4];
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                if let Some(p) = &self.pending
                    && (kind != CONTINUATION || stream != p.stream)
                {
                    return Err(Malformed::Frame("a frame inside a header block"));
                }
                match kind {
                    HEADERS | CONTINUATION => {
                        if len > MAX_FRAME {
                            return Err(Malformed::Frame(
                                "a header frame over the maximum frame size",
                            ));
                        }
                        if self.buffered().len() < FRAME_HEADER + len {
                            return Ok(false);
                        }
                        self.pos += FRAME_HEADER;
                        self.header_frame(kind, flags, stream, len)?;
                        Ok(true)
                    }
                    // A client never sends one; it would carry a header block we do not
                    // follow, so refuse it here rather than lose track of the table.
                    PUSH_PROMISE => Err(Malformed::Frame("a PUSH_PROMISE from the client")),
                    _ => {
                        self.state = State::Through(FRAME_HEADER + len);
                        Ok(true)
                    }
                }
            }
        }
    }

    /// Takes one HEADERS or CONTINUATION frame whose header is consumed and whose `len`
    /// payload bytes are buffered.
    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        len: usize,
    ) -> Result<(), Malformed> {
        let pending = self.pending.take();
        let payload_start = self.pos;
        self.pos += len;
        let payload = &self.input[payload_start..self.pos];
        let mut p = if kind == HEADERS {
            if stream == 0 {
                return Err(Malformed::Frame("HEADERS on stream 0"));
            }
            let mut frag = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&n, rest) = frag
                    .split_first()
                    .ok_or(Malformed::Frame("HEADERS padding"))?;
                pad = usize::from(n);
                frag = rest;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (fields, rest) = frag
                    .split_first_chunk::<5>()
                    .ok_or(Malformed::Frame("HEADERS priority"))?;
                priority = Some(*fields);
                frag = rest;
            }
            if pad > frag.len() {
                return Err(Malformed::Frame("HEADERS padding"));
            }
            let frag = &frag[..frag.len() - pad];
            Pending {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                block: frag.to_vec(),
            }
        } else {
            let mut p = pending.ok_or(Malformed::Frame("a CONTINUATION outside a header block"))?;
            if p.block.len() + payload.len() > MAX_BLOCK {
                return Err(Malformed::Frame("a header block over the size limit"));
            }
            p.block.extend_from_slice(payload);
            p
        };
        if flags & END_HEADERS == 0 {
            self.pending = Some(p);
            return Ok(());
        }
        let block = rewrite(&mut self.decoder, &p.block)?;
        p.block = block;
        self.output.clear();
        self.out_pos = 0;
        frame_block(&p, &mut self.output);
        Ok(())
    }

    /// Moves unconsumed input to the front, making room to read more.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.input.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
    }
}

/// Why a connection was closed: the client's bytes are not what HTTP/2 allows.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("malformed HTTP/2 from the client: {0}")]
    Frame(&'static str),
    #[error("malformed HTTP/2 from the client: HPACK: {0}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

impl From<Malformed> for io::Error {
    fn from(e: Malformed) -> Self {
        tracing::debug!(error = %e, "closing a local API connection");
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Whether the server (h2, through `http`'s parser) accepts `value` as an authority.
fn acceptable(value: &[u8]) -> bool {
    !value.is_empty() && Authority::try_from(value).is_ok()
}

/// Decodes `block` with the client's table and re-encodes it as literals without
/// indexing, with an unacceptable `:authority` replaced by `localhost`.
fn rewrite(decoder: &mut Decoder<'static>, block: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::with_capacity(block.len() * 2);
    let mut too_long = false;
    decoder
        .decode_with_cb(block, |name, value| {
            let value: &[u8] = if &*name == b":authority" && !acceptable(&value) {
                b"localhost"
            } else {
                &value
            };
            if out.len() + name.len() + value.len() + 11 > MAX_BLOCK {
                too_long = true;
                return;
            }
            encode_literal(&name, value, &mut out);
        })
        .map_err(Malformed::Hpack)?;
    if too_long {
        return Err(Malformed::Frame("a header block over the size limit"));
    }
    Ok(out)
}

/// A "literal header field without indexing — new name" (RFC 7541 §6.2.2), raw strings.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    encode_string(name, out);
    encode_string(value, out);
}

/// A string literal without Huffman coding (RFC 7541 §5.2): H = 0, 7-bit prefix length.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_int(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1); `high` holds the bits above it.
fn encode_int(mut v: usize, prefix: u8, high: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if v < max {
        // Fits in the prefix: v < max ≤ 127.
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Frames a re-encoded block as HEADERS (+ CONTINUATION), each at most [`MAX_FRAME`].
fn frame_block(p: &Pending, out: &mut Vec<u8>) {
    let prio_len = if p.priority.is_some() { 5 } else { 0 };
    let first = p.block.len().min(MAX_FRAME - prio_len);
    let (head, mut rest) = p.block.split_at(first);
    let mut flags = 0;
    if p.end_stream {
        flags |= END_STREAM;
    }
    if p.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(prio_len + head.len(), HEADERS, flags, p.stream, out);
    if let Some(prio) = &p.priority {
        out.extend_from_slice(prio);
    }
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_header(chunk.len(), CONTINUATION, flags, p.stream, out);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    // len ≤ MAX_FRAME < 2^24: the three low bytes hold it.
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

impl<S: AsyncRead + Unpin> AsyncRead for LocalStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Re-encoded header frames first.
            if this.out_pos < this.output.len() {
                let n = (this.output.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.output[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.output.len() {
                    this.output.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let State::Through(left) = this.state {
                if left == 0 {
                    this.state = State::Frame;
                    continue;
                }
                let limit = left.min(buf.remaining());
                let n = if !this.buffered().is_empty() {
                    let n = limit.min(this.buffered().len());
                    let bytes = this.take(n);
                    buf.put_slice(bytes);
                    n
                } else {
                    if this.eof {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    // Straight from the socket into the caller's buffer.
                    let mut sub = buf.take(limit);
                    let at = sub.filled().as_ptr();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                    if sub.filled().as_ptr() != at {
                        return Poll::Ready(Err(io::Error::other("reader swapped its buffer")));
                    }
                    let n = sub.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    // SAFETY: `sub` views `buf`'s unfilled part (same pointer, checked
                    // above), and the inner reader initialized its first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    n
                };
                this.state = State::Through(left - n);
                return Poll::Ready(Ok(()));
            }
            if this.step()? {
                continue;
            }
            // Need more input.
            if this.eof {
                let clean = this.buffered().is_empty()
                    && this.pending.is_none()
                    && matches!(this.state, State::Frame | State::Preface);
                return Poll::Ready(if clean {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                });
            }
            // `step` asks for more only while a whole frame header, or a header frame of
            // at most MAX_FRAME, is incomplete: after compacting there is room.
            this.compact();
            let mut rb = ReadBuf::new(&mut this.input[this.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.eof = true;
            }
            this.end += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LocalStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The peer-credential check reads the real socket's connect info through this.
impl<S: Connected> Connected for LocalStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
