//! The ECI node agent: API server, group supervisor, state store, node accounting.
//!
//! `eci-agent` (the daemon) and `ecictl` (the operator CLI) are the binaries of this crate;
//! the library is what they share and what the tests drive.

pub mod api;
pub mod caches;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod disk_holds;
pub mod error;
pub mod failpoint;
pub mod groups;
pub mod health;
pub mod id_ranges;
pub mod images;
pub mod local_h2;
pub mod logfiles;
pub mod memory;
pub mod network;
pub mod node;
pub mod notify;
pub mod quantity;
pub mod sandbox;
pub mod selector;
pub mod server;
pub mod sizes;
pub mod store;
pub mod supervisor;
pub mod validate;
pub mod vm;
