//! Container stdout/stderr to CRI-format log files
//! (`<RFC3339Nano> stdout|stderr F|P <text>`), at disk speed and without losing lines.
//!
//! - [`records`]: bytes → records (`F`/`P`, the record size limit), byte-exact.
//! - [`file`]: appending, rotation with kept files and optional gzip, the marker left
//!   in a log whose copy was cut short by a stopped shim.
//! - [`copier`]: the per-run thread that reads both pipes and writes the records, and
//!   tells the exit watcher when everything the process wrote is in the file.

pub mod copier;
pub mod file;
pub mod records;

pub use copier::{CopyError, Copying, start};
pub use file::Rotation;
