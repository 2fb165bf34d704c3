//! Every list and string of a group spec has a limit: from PRODUCT.md where it names one,
//! otherwise from what the kernel or the runtime can take (so an accepted spec can run),
//! or a bound generous for real use that keeps one request cheap to check.
//! docs/api.md lists them all with the field they bound.

/// The whole spec, protobuf-encoded: Kubernetes keeps an object under 1.5 MiB (etcd's
/// request limit). Checked before anything else, so an oversized request is cheap.
pub const MAX_SPEC_BYTES: usize = 1536 * 1024;

pub const MAX_CONTAINERS: usize = 20;
pub const MAX_VOLUMES: usize = 20;
pub const MAX_LABELS: usize = 20;
pub const MAX_LABEL_KEY: usize = 63;
pub const MAX_LABEL_VALUE: usize = 63;
/// Group, container, volume, port and image cache names (DNS label).
pub const MAX_NAME: usize = 63;
pub const MAX_GRACE_SECONDS: i64 = 3600;
pub const DEFAULT_GRACE_SECONDS: i64 = 30;
pub const MAX_EPHEMERAL_BYTES: u64 = 2 << 40;
pub const DEFAULT_EPHEMERAL_BYTES: u64 = 40 << 30;
pub const DEFAULT_SHM_BYTES: u64 = 64 << 20;
pub const MAX_CREDENTIALS: usize = 20;
/// Registry host\[:port\] and user names.
pub const MAX_SERVER: usize = 253;
pub const MAX_SECRET: usize = 4096;
pub const MAX_NAMESERVERS: usize = 3;
pub const MAX_SEARCHES: usize = 6;
/// A DNS name.
pub const MAX_SEARCH: usize = 253;
pub const MAX_DNS_OPTIONS: usize = 16;
pub const MAX_DNS_OPTION: usize = 64;
pub const MAX_SG_RULES: usize = 100;

/// `[registry/]repository[:tag][@digest]`: far above any real reference (a 255-byte
/// repository, a 128-byte tag, a sha512 digest and a host), and short enough to quote.
pub const MAX_IMAGE_REF: usize = 1024;

/// Env entries per container (later entries win; the merge with the image's is linear).
pub const MAX_ENV: usize = 10_000;
/// Entries of `command`, of `args`, and of a probe's or hook's `exec.command`.
pub const MAX_ARGS: usize = 10_000;
/// One argument or one `NAME=value` string: the kernel's MAX_ARG_STRLEN (32 pages,
/// NUL included); a longer one makes execve fail with E2BIG.
pub const MAX_ARG_STRING: usize = 128 * 1024 - 1;
/// `command` + `args` + `env` of one container, each string with its NUL and its
/// pointer: execve allows a quarter of the stack limit (2 MiB with the usual 8 MiB), and
/// the image's own ENV and ENTRYPOINT need the rest.
pub const MAX_EXEC_BYTES: usize = 1 << 20;

pub const MAX_PORTS: usize = 100;
/// A port name (IANA service name, as Kubernetes).
pub const MAX_PORT_NAME: usize = 15;
pub const MAX_VOLUME_MOUNTS: usize = 64;
/// `mountPath`, `subPath`, `workingDir`, configFile paths: PATH_MAX with its NUL.
pub const MAX_PATH: usize = 4095;
pub const MAX_SYSCTLS: usize = 64;
pub const MAX_SYSCTL_NAME: usize = 255;
/// A sysctl write takes at most one page.
pub const MAX_SYSCTL_VALUE: usize = 4095;
/// Entries of capabilities `add` and of `drop` (Linux has 41 capabilities).
pub const MAX_CAPABILITIES: usize = 64;
pub const MAX_CONFIG_FILES: usize = 256;
/// Content of all files of one configFile volume, decoded (a Kubernetes ConfigMap holds
/// 1 MiB).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// The smallest container CPU: the quota is `cpu_millis * 100` µs per 100 ms period, and
/// the kernel refuses a CFS quota under 1 ms.
pub const MIN_CONTAINER_CPU_MILLIS: u64 = 10;
/// The smallest container memory limit.
pub const MIN_CONTAINER_MEMORY: u64 = 4 << 20;
