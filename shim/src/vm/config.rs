//! `<group dir>/vm.json`, as the agent wrote it: the one definition lives in
//! [`eci_runtime::vm_config`], shared with the agent.

pub use eci_runtime::vm_config::{Accel, ConfigError, VmConfig, VmDisk, VmLayer};
