//! What the host shim and `eci-guest` say to each other besides the Task API: the
//! framing of the `eci.io` virtio-serial port (stdio streams and control messages) and
//! the options the host adds to a forwarded Create. Both sides link this one module, so
//! the wire format has a single definition.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::task::ExitRecord;

/// Name of the virtio-serial port carrying the ttrpc Task API.
pub const CTL_PORT: &str = "eci.ctl";
/// Name of the virtio-serial port carrying stdio frames and control messages.
pub const IO_PORT: &str = "eci.io";
/// `type_url` of [`CreateOptions`] in `CreateTaskRequest.options`.
pub const CREATE_OPTIONS_TYPE: &str = "eci.guest/create.v1";
/// Scheme of a stdio URI the guest serves over the io port: `eci-io://<stream>`.
pub const IO_URI_SCHEME: &str = "eci-io://";
/// Stream 0 carries control messages ([`Control`]), never stdio.
pub const CONTROL_STREAM: u32 = 0;
/// Largest frame payload either side sends or accepts: a frame is read whole before it
/// is routed, so this bounds what a hostile guest can make the host buffer.
pub const MAX_FRAME: u32 = 64 * 1024;
/// Largest total of file bytes one Create may carry into the guest.
pub const MAX_CREATE_FILES_BYTES: usize = 4 << 20;

/// Errors of the io port framing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading a frame: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    #[error("control message: {0}")]
    Control(#[from] serde_json::Error),
}

/// One frame: `[u32 BE stream][u32 BE len][len bytes]`; an empty payload is the end of
/// that stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub data: Vec<u8>,
}

impl Frame {
    /// The frame that ends `stream`.
    pub fn eof(stream: u32) -> Self {
        Frame {
            stream,
            data: Vec::new(),
        }
    }

    /// A control message as a frame on stream 0.
    pub fn control(msg: &Control) -> Result<Self, FrameError> {
        Ok(Frame {
            stream: CONTROL_STREAM,
            data: serde_json::to_vec(msg)?,
        })
    }

    /// Whether this frame ends its stream.
    pub fn is_eof(&self) -> bool {
        self.data.is_empty()
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.data.len());
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Writes the frame in one `write_all` (callers sharing a port hold its lock
    /// around this, so frames never interleave).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }

    /// Reads one frame; `Ok(None)` at a clean end of the port between frames.
    pub fn read_from(r: &mut impl Read) -> Result<Option<Frame>, FrameError> {
        let mut head = [0u8; 8];
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        Ok(Some(Frame { stream, data }))
    }

    /// The control message a stream-0 frame carries.
    pub fn parse_control(&self) -> Result<Control, FrameError> {
        Ok(serde_json::from_slice(&self.data)?)
    }
}

/// Control messages on stream 0 (guest → host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Control {
    /// The guest's Task API listens: the host may connect its ttrpc client.
    Ready,
    /// A process ended. Sent after the EOF frames of its streams, so the host has all of
    /// its output when it learns of the exit.
    Exit {
        id: String,
        #[serde(default)]
        exec_id: String,
        record: ExitRecord,
    },
    /// The guest kernel's OOM killer ran (a container's cgroup or the whole guest).
    Oom,
}

/// A file the guest writes before a forwarded Create: bind-mount sources (hosts,
/// resolv.conf, configFile volumes) at the same absolute path as on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    pub path: String,
    pub mode: u32,
    /// Base64 (standard alphabet, padded).
    pub data_b64: String,
}

/// `CreateTaskRequest.options` of a Create the host forwards into the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOptions {
    /// The bundle's `config.json`, base64.
    pub config_json_b64: String,
    #[serde(default)]
    pub files: Vec<GuestFile>,
    /// Directories to create (empty bind-mount sources such as emptyDir volumes).
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Host path of each layer the rootfs names → serial of its virtio-blk disk.
    #[serde(default)]
    pub layers: BTreeMap<String, String>,
    /// Host path of each disk volume the bind mounts name → serial of its virtio-blk
    /// disk; the guest mounts the disk read-write there (once) instead of a directory.
    #[serde(default)]
    pub disks: BTreeMap<String, String>,
}

pub use eci_runtime::vm_config::layer_serial;

/// The stream number of an `eci-io://<n>` URI.
pub fn parse_io_uri(uri: &str) -> Option<u32> {
    uri.strip_prefix(IO_URI_SCHEME)?
        .parse()
        .ok()
        .filter(|n| *n != CONTROL_STREAM)
}

/// The `eci-io://<n>` URI of stream `n`.
pub fn io_uri(n: u32) -> String {
    format!("{IO_URI_SCHEME}{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let mut wire = Vec::new();
        Frame {
            stream: 7,
            data: b"hello".to_vec(),
        }
        .write_to(&mut wire)
        .expect("write");
        Frame::eof(7).write_to(&mut wire).expect("write");
        let mut r = &wire[..];
        let a = Frame::read_from(&mut r).expect("read").expect("frame");
        assert_eq!((a.stream, a.data.as_slice()), (7, &b"hello"[..]));
        assert!(
            Frame::read_from(&mut r)
                .expect("read")
                .expect("eof")
                .is_eof()
        );
        assert!(Frame::read_from(&mut r).expect("clean end").is_none());

        let mut big = 1u32.to_be_bytes().to_vec();
        big.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        assert!(matches!(
            Frame::read_from(&mut &big[..]),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn control_messages_are_tagged_json() {
        let f = Frame::control(&Control::Ready).expect("frame");
        assert_eq!(f.data, br#"{"kind":"ready"}"#);
        assert_eq!(f.parse_control().expect("parse"), Control::Ready);
    }

    #[test]
    fn io_uris() {
        assert_eq!(parse_io_uri(&io_uri(3)), Some(3));
        assert_eq!(parse_io_uri("eci-io://0"), None);
        assert_eq!(parse_io_uri("file:///x"), None);
        assert_eq!(layer_serial(&"ab".repeat(32)).len(), 20);
    }
}
