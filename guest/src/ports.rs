//! The virtio-serial ports the host shim opens as Unix sockets: found by the name QEMU
//! gives them (`/sys/class/virtio-ports/*/name`), opened at `/dev/<port>`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors finding a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no virtio-serial port named {0} appeared")]
    Missing(String),
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

const CLASS: &str = "/sys/class/virtio-ports";

/// The device of the port named `name`, if it exists now.
pub fn find(name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(CLASS).ok()?.flatten() {
        let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// Opens the port named `name` read-write, waiting up to `timeout` for its driver and
/// device node (the modules load asynchronously).
pub fn open(name: &str, timeout: Duration) -> Result<File, PortError> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(dev) = find(name)
            && dev.exists()
        {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
                .map_err(|source| PortError::Open {
                    path: dev.display().to_string(),
                    source,
                });
        }
        if Instant::now() > until {
            return Err(PortError::Missing(name.to_string()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
