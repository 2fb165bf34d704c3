//! The attach protocol between the agent and a group's shim, on the shim's attach
//! socket ([`crate::layout::GroupDir::attach_socket`]). The shim owns a container's
//! stdio (the stdin pipe or the pty, the output it copies to the log), so an attach
//! survives nothing of the agent and needs nothing of it but this socket.
//!
//! The agent sends one JSON line, [`Hello`]; the shim answers one JSON line,
//! [`Welcome`] (or its `error`). Then both sides send frames: one kind byte, a 4-byte
//! big-endian length, the payload ([`Frame`]). The shim ends with [`Frame::Exit`] when
//! the container's process exits; the agent detaches by closing the connection.

use serde::{Deserialize, Serialize};

/// The `stdin` of a Task API Create that asks the shim for a stdin pipe it keeps and
/// attachers write to (`stdin: true`), instead of a FIFO path.
pub const STDIN_URI: &str = "attach://stdin";

/// Largest frame payload either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest hello or welcome line.
pub const MAX_LINE: usize = 4096;

/// What the agent asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The container (its Task API id).
    pub container: String,
    /// The caller will send input: refused when the container has no stdin.
    pub stdin: bool,
}

/// The shim's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Empty when attached.
    #[serde(default)]
    pub error: String,
    /// The process has a terminal (its output is all `Stdout`).
    #[serde(default)]
    pub tty: bool,
    /// The process has a stdin attachers can write to.
    #[serde(default)]
    pub stdin: bool,
}

/// One message after the hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Agent → shim: input for the process.
    Stdin(Vec<u8>),
    /// Agent → shim: the terminal size.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Shim → agent: output.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Shim → agent: something this attacher should be told (output dropped for it).
    Notice(String),
    /// Shim → agent: the process exited with this code; the last frame.
    Exit(i32),
}

/// A frame that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("attach frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("attach frame of unknown kind {0}")]
    Kind(u8),
    #[error("attach frame of kind {0} has a malformed payload")]
    Payload(u8),
}

const STDIN: u8 = 0;
const RESIZE: u8 = 1;
const STDOUT: u8 = 2;
const STDERR: u8 = 3;
const NOTICE: u8 = 4;
const EXIT: u8 = 5;

impl Frame {
    /// The frame as bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Stdin(d) => (STDIN, d.as_slice().into()),
            Frame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (RESIZE, p.into())
            }
            Frame::Stdout(d) => (STDOUT, d.as_slice().into()),
            Frame::Stderr(d) => (STDERR, d.as_slice().into()),
            Frame::Notice(t) => (NOTICE, t.as_bytes().into()),
            Frame::Exit(code) => (EXIT, code.to_be_bytes().to_vec().into()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes the frame at the start of `buf`: the frame and the bytes it took, or
    /// None when `buf` holds only part of it.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < 5 + len {
            return Ok(None);
        }
        let p = &buf[5..5 + len];
        let frame = match kind {
            STDIN => Frame::Stdin(p.to_vec()),
            RESIZE => match p {
                [a, b, c, d] => Frame::Resize {
                    rows: u16::from_be_bytes([*a, *b]),
                    cols: u16::from_be_bytes([*c, *d]),
                },
                _ => return Err(FrameError::Payload(kind)),
            },
            STDOUT => Frame::Stdout(p.to_vec()),
            STDERR => Frame::Stderr(p.to_vec()),
            NOTICE => Frame::Notice(String::from_utf8_lossy(p).into_owned()),
            EXIT => match p {
                [a, b, c, d] => Frame::Exit(i32::from_be_bytes([*a, *b, *c, *d])),
                _ => return Err(FrameError::Payload(kind)),
            },
            k => return Err(FrameError::Kind(k)),
        };
        Ok(Some((frame, 5 + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_partial_input_waits() {
        let frames = [
            Frame::Stdin(b"ls\n".to_vec()),
            Frame::Resize {
                rows: 40,
                cols: 120,
            },
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(Vec::new()),
            Frame::Notice("dropped".into()),
            Frame::Exit(-1),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(f.encode());
        }
        let mut got = Vec::new();
        let mut at = 0;
        while let Some((f, n)) = Frame::decode(&wire[at..]).expect("valid") {
            got.push(f);
            at += n;
        }
        assert_eq!(got, frames);
        assert!(Frame::decode(&wire[..3]).expect("partial").is_none());
        assert!(Frame::decode(&wire[..7]).expect("partial").is_none());
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut huge = vec![STDOUT];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Frame::decode(&huge), Err(FrameError::TooLarge(_))));
        assert!(matches!(
            Frame::decode(&[9, 0, 0, 0, 0]),
            Err(FrameError::Kind(9))
        ));
        assert!(matches!(
            Frame::decode(&[RESIZE, 0, 0, 0, 1, 7]),
            Err(FrameError::Payload(RESIZE))
        ));
    }
}
