//! The agent's configuration: `/etc/eci/agent.toml`, then command-line flags.
//!
//! Every key has a default, so the agent runs with no file at all. `agent.example.toml`
//! beside this crate documents every key with its default; a test keeps it equal to
//! [`Config::default`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Durable state: the redb file, content store, unpacked layers.
    pub state_dir: PathBuf,
    /// Runtime files: the API socket, per-group run dirs. Lost on reboot by design.
    pub run_dir: PathBuf,
    /// Container logs.
    pub log_dir: PathBuf,
    pub api: ApiConfig,
    pub node: NodeConfig,
    pub runtime: RuntimeConfig,
    pub user_namespaces: UserNamespacesConfig,
    pub images: ImagesConfig,
    pub log: LogConfig,
    /// Pulling images from registries.
    pub pull: PullConfig,
    /// Per-registry settings, keyed by `host[:port]` as images name it
    /// (`[registries."127.0.0.1:5000"]`; Docker Hub is `docker.io`).
    pub registries: std::collections::BTreeMap<String, RegistryConfig>,
    pub network: NetworkConfig,
    pub volumes: VolumesConfig,
    /// The `vm` sandbox (issue 15).
    pub vm: VmConfig,
}

/// The `vm` sandbox: where its guest image is, which QEMU runs it, and which
/// accelerator may (issue 15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// The guest image (`vmlinux`, `initrd.img`, `manifest.json`, as
    /// `scripts/guest-image.sh` writes them); empty: `<state_dir>/guest`.
    pub guest_dir: PathBuf,
    /// The QEMU binary: a path, or a name looked up on `PATH`.
    pub qemu: PathBuf,
    /// Run `vm` groups under TCG (QEMU's emulator) where KVM does not boot a guest.
    /// Off by default: QEMU does not treat TCG as a security boundary, and its guests
    /// run 6-15x slower. `Node.Info` labels a TCG node as emulated.
    pub allow_tcg: bool,
    /// `auto` (KVM when a probe boot works under it, else TCG if `allow_tcg`), `kvm`
    /// or `tcg` (only that one; `tcg` needs `allow_tcg`).
    pub accel: String,
    /// Memory given to each VM on top of the group's normalized memory: the guest
    /// kernel and `eci-guest` live in it, so the containers keep their full size.
    pub guest_overhead_memory: String,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            guest_dir: PathBuf::new(),
            qemu: "qemu-system-x86_64".into(),
            allow_tcg: false,
            accel: "auto".into(),
            guest_overhead_memory: "64Mi".into(),
        }
    }
}

/// Which accelerators the `vm` sandbox may use (`[vm] accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM when it boots a guest, else TCG when allowed.
    Auto,
    Kvm,
    Tcg,
}

impl VmConfig {
    /// The guest image directory after defaults.
    pub fn guest_dir(&self, state_dir: &Path) -> PathBuf {
        if self.guest_dir.as_os_str().is_empty() {
            state_dir.join("guest")
        } else {
            self.guest_dir.clone()
        }
    }

    /// `accel`, checked.
    pub fn accel(&self) -> Result<AccelChoice, ConfigError> {
        match self.accel.as_str() {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" if self.allow_tcg => Ok(AccelChoice::Tcg),
            "tcg" => Err(ConfigError::Invalid {
                key: "vm.accel",
                message: "\"tcg\" needs vm.allow_tcg = true".into(),
            }),
            other => Err(ConfigError::Invalid {
                key: "vm.accel",
                message: format!("{other:?} is not one of auto, kvm, tcg"),
            }),
        }
    }

    /// `guest_overhead_memory` in bytes.
    pub fn overhead_bytes(&self) -> Result<u64, ConfigError> {
        crate::quantity::parse_memory_bytes(&self.guest_overhead_memory).map_err(|e| {
            ConfigError::Invalid {
                key: "vm.guest_overhead_memory",
                message: e.to_string(),
            }
        })
    }
}

/// Disk volumes and local storage limits (issue 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumesConfig {
    /// Block devices a `disk` volume may name, as shell patterns (`fnmatch`) matched
    /// against the device's resolved `/dev` path. A device must also not be mounted or
    /// otherwise in use on the host, whatever the patterns say.
    pub disk_devices: Vec<String>,
    /// How often each group's writable layers and disk emptyDirs are measured against
    /// `ephemeralStorage` and `emptyDir.sizeLimit` (a group over a limit is evicted).
    pub storage_check_interval: String,
}

impl Default for VolumesConfig {
    fn default() -> Self {
        VolumesConfig {
            disk_devices: vec![
                "/dev/vd[b-z]*".into(),
                "/dev/xvd[b-z]*".into(),
                "/dev/sd[b-z]*".into(),
                "/dev/nvme[1-9]*n*".into(),
            ],
            storage_check_interval: "10s".into(),
        }
    }
}

/// How groups get their network (issue 8). A group that names an ENI always gets it;
/// one that names none gets a veth on the agent's dev bridge unless this is a fleet host,
/// where a group without an ENI only has loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// A fleet host: groups come with ENIs, and the dev bridge stays off (no bridge, no
    /// masquerade, no forwarding switched on by the agent).
    pub fleet_host: bool,
    /// Name of the dev bridge in the host netns (at most 15 bytes).
    pub bridge: String,
    /// IPv4 subnet of the dev bridge; its first address is the bridge's (the groups'
    /// gateway), the others go to groups.
    pub dev_subnet: String,
    /// Optional IPv6 subnet of the dev bridge (a /64 or longer prefix, e.g.
    /// "fd00:eci::/64"); empty: groups without an ENI get IPv4 only.
    pub dev_subnet_v6: String,
    /// Host links no spec may take as its ENI, by name (`"eth0"`) or name prefix
    /// (`"mgmt*"`): the management NIC, say, when it carries no default route. Links
    /// the host needs are refused anyway (see `allow_host_links_as_eni`).
    pub reserved_links: Vec<String>,
    /// Lets a spec take a link the host needs: one carrying the host's default route, a
    /// bridge or bond port. Off by default: a control-plane bug or a hostile spec would
    /// otherwise move the host's uplink into a tenant's netns and cut the host off.
    pub allow_host_links_as_eni: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            fleet_host: false,
            bridge: "eci0".into(),
            dev_subnet: "10.88.0.0/16".into(),
            dev_subnet_v6: String::new(),
            reserved_links: Vec::new(),
            allow_host_links_as_eni: false,
        }
    }
}

impl NetworkConfig {
    /// The `reserved_links` patterns, checked: 1-15 bytes, a `*` only at the end.
    pub fn reserved(&self) -> Result<Vec<String>, ConfigError> {
        for (i, p) in self.reserved_links.iter().enumerate() {
            let name = p.strip_suffix('*').unwrap_or(p);
            if p.is_empty() || p.len() > 15 || name.contains(['*', '/', ' ']) {
                return Err(ConfigError::Invalid {
                    key: "network.reserved_links",
                    message: format!(
                        "[{i}] {p:?} is not a link name of 1-15 bytes or a name prefix ending in '*'"
                    ),
                });
            }
        }
        Ok(self.reserved_links.clone())
    }

    /// The dev bridge's subnets, or None on a fleet host.
    pub fn dev(&self) -> Result<Option<(ipnet::Ipv4Net, Option<ipnet::Ipv6Net>)>, ConfigError> {
        if self.fleet_host {
            return Ok(None);
        }
        let bad = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        if self.bridge.is_empty() || self.bridge.len() > 15 || self.bridge.contains(['/', ' ']) {
            return Err(bad(
                "network.bridge",
                format!("{:?} is not a link name of 1-15 bytes", self.bridge),
            ));
        }
        let v4: ipnet::Ipv4Net = self.dev_subnet.parse().map_err(|_| {
            bad(
                "network.dev_subnet",
                format!(
                    "{:?} is not an IPv4 subnet such as 10.88.0.0/16",
                    self.dev_subnet
                ),
            )
        })?;
        if v4.prefix_len() > 30 {
            return Err(bad(
                "network.dev_subnet",
                format!(
                    "/{} leaves no address for groups (at most /30)",
                    v4.prefix_len()
                ),
            ));
        }
        let v6 = if self.dev_subnet_v6.is_empty() {
            None
        } else {
            let n: ipnet::Ipv6Net = self.dev_subnet_v6.parse().map_err(|_| {
                bad(
                    "network.dev_subnet_v6",
                    format!(
                        "{:?} is not an IPv6 subnet such as fd00:88::/64",
                        self.dev_subnet_v6
                    ),
                )
            })?;
            if n.prefix_len() > 64 {
                return Err(bad(
                    "network.dev_subnet_v6",
                    format!("/{} is longer than /64", n.prefix_len()),
                ));
            }
            Some(n.trunc())
        };
        Ok(Some((v4.trunc(), v6)))
    }
}

/// How images are pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullConfig {
    /// Longest a whole pull may take, retries included (the product guides' 30 minutes).
    pub timeout: String,
    /// Layers of one image downloaded at once.
    pub parallel_layers: u32,
    /// Attempts per request on 5xx answers, resets and timeouts (first try included).
    pub attempts: u32,
    /// A docker `config.json` whose `auths` are used for registries the group names no
    /// credentials for; empty: none.
    pub docker_config: PathBuf,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            timeout: "30m".into(),
            parallel_layers: 3,
            attempts: 4,
            docker_config: PathBuf::new(),
        }
    }
}

/// Settings of one registry (like containerd's `hosts.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Speak plain HTTP to it (a registry on loopback or a private network).
    pub plain_http: bool,
    /// Accept any TLS certificate. Only for tests and labs.
    pub skip_verify: bool,
    /// PEM CA bundle trusted for this registry on top of the system roots.
    pub ca_file: PathBuf,
    /// Mirrors (`host[:port]`) tried in order before the registry itself; each mirror's
    /// own settings come from its own `[registries."mirror"]` table.
    pub mirrors: Vec<String>,
    /// Credentials used when the group names none for this registry.
    pub username: String,
    pub password: String,
}

/// The image store: garbage collection and image caches (issue 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Garbage collection starts when more than this percent of the filesystem holding
    /// the image store (`state_dir`) is used (0-100; 100 turns it off).
    pub gc_high_percent: u8,
    /// ... and removes unused images, least recently used first, until at most this
    /// percent is used (at most `gc_high_percent`).
    pub gc_low_percent: u8,
    /// Images used by a group, imported or pulled more recently than this are kept.
    pub gc_min_age: String,
    /// How often the watermark is checked and expired image caches are removed (also
    /// after every import).
    pub gc_interval: String,
    /// The length of one day of an image cache's `retention_days` (tests shorten it).
    pub retention_day: String,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            gc_high_percent: 85,
            gc_low_percent: 80,
            gc_min_age: "10m".into(),
            gc_interval: "5m".into(),
            retention_day: "24h".into(),
        }
    }
}

impl ImagesConfig {
    /// The settings as the image caches use them.
    pub fn policy(&self) -> Result<crate::caches::ImagesPolicy, ConfigError> {
        if self.gc_high_percent > 100 {
            return Err(ConfigError::Invalid {
                key: "images.gc_high_percent",
                message: format!("{} is over 100", self.gc_high_percent),
            });
        }
        if self.gc_low_percent > self.gc_high_percent {
            return Err(ConfigError::Invalid {
                key: "images.gc_low_percent",
                message: format!(
                    "{} is above images.gc_high_percent ({})",
                    self.gc_low_percent, self.gc_high_percent
                ),
            });
        }
        let duration = |key: &'static str, v: &str| {
            humantime::parse_duration(v).map_err(|e| ConfigError::Invalid {
                key,
                message: e.to_string(),
            })
        };
        let interval = duration("images.gc_interval", &self.gc_interval)?;
        let retention_day = duration("images.retention_day", &self.retention_day)?;
        for (key, d) in [
            ("images.gc_interval", interval),
            ("images.retention_day", retention_day),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be more than 0s".into(),
                });
            }
        }
        Ok(crate::caches::ImagesPolicy {
            gc: crate::images::gc::GcPolicy {
                high_percent: self.gc_high_percent,
                low_percent: self.gc_low_percent,
                min_age: duration("images.gc_min_age", &self.gc_min_age)?,
            },
            interval,
            retention_day,
        })
    }
}

/// User namespaces for groups (issue 14): each group gets its own range of
/// [`UserNamespacesConfig::RANGE`] host uids and gids from a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserNamespacesConfig {
    /// Give every group an id range. Off for kernels or filesystems that cannot idmap
    /// (the agent also detects that at start and reports `unsupported`).
    pub enabled: bool,
    /// The first host id of the pool. Greater than 0, so no group's root is host root,
    /// and a multiple of 65536, so every range is aligned the way `/etc/subuid` ranges
    /// and container ids (uid >> 16 names the range) usually are. Must not overlap the
    /// host's own users or `/etc/subuid`: the default (16 × 65536) is above both on
    /// common distributions.
    pub first_host_id: u32,
    /// Ranges in the pool, at least 1: at most this many groups hold one at a time. The
    /// last id, `first_host_id + ranges * 65536 - 1`, must stay below 2^32 - 1 (uid
    /// `4294967295` is `(uid_t)-1`, which means "no change" to the kernel).
    pub ranges: u32,
}

impl UserNamespacesConfig {
    /// Ids in one group's range: the 16-bit id space images are built for.
    pub const RANGE: u32 = eci_runtime::userns::IdRange::GROUP_LEN;
}

impl Default for UserNamespacesConfig {
    fn default() -> Self {
        UserNamespacesConfig {
            enabled: true,
            first_host_id: 1_048_576,
            ranges: 1024,
        }
    }
}

/// How groups are run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The eci-shim binary; empty: `eci-shim` next to the eci-agent binary.
    pub shim: PathBuf,
    /// Cgroup under which groups get `<parent>/<group id>/<container>`.
    pub cgroup_parent: String,
    /// Size at which a container's log file is rotated.
    pub log_max_size: String,
    /// Log files kept per container run, the one being written included (kubelet's
    /// `containerLogMaxFiles`); at least 2, so that a rotation never drops the file a
    /// reader may still be following.
    pub log_max_files: u32,
    /// Gzip rotated log files other than the newest (which a follower may still read).
    pub log_compress: bool,
    /// Back-off before the first restart of a container; doubles per restart.
    pub restart_backoff: String,
    /// Longest back-off between restarts.
    pub restart_backoff_max: String,
    /// Most processes and threads a group may have at once (`pids.max` of the group's
    /// cgroup): a fork bomb stays inside its group.
    pub pids_max: u32,
    /// `oom_score_adj` of every container process (-1000..=1000). High, so that under
    /// host-wide memory pressure tenants go first, never the agent or a shim (-999).
    pub oom_score_adj: i32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shim: PathBuf::new(),
            cgroup_parent: "eci".into(),
            log_max_size: "10Mi".into(),
            log_max_files: 2,
            log_compress: false,
            restart_backoff: "10s".into(),
            restart_backoff_max: "5m".into(),
            pids_max: 4096,
            oom_score_adj: 1000,
        }
    }
}

/// Where and to whom the API is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Local Unix socket; empty means `<run_dir>/agent.sock`.
    pub socket: PathBuf,
    /// A group (name or numeric gid) whose members may use the socket besides root. The
    /// socket is then mode 0660 and owned by that group; otherwise 0600.
    pub socket_group: String,
    /// TCP address for the control plane, e.g. "0.0.0.0:7443"; empty disables TCP.
    /// TCP always requires mutual TLS.
    pub tcp_listen: String,
    /// PEM server certificate chain for TCP.
    pub tls_cert: PathBuf,
    /// PEM private key for `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM CA bundle that client certificates must chain to.
    pub tls_client_ca: PathBuf,
}

/// What the node offers to groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// vCPU capacity ("16", "15500m"); empty: the host's online CPUs.
    pub cpu: String,
    /// Memory capacity ("64Gi"); empty: the host's MemTotal.
    pub memory: String,
    /// Kept back for the host and the agent; allocatable = capacity - reserved.
    pub reserved_cpu: String,
    pub reserved_memory: String,
    /// GPU devices offered to groups; -1: count the host's /dev/nvidiaN devices.
    pub gpus: i32,
    /// How long finished (Failed, Succeeded, ScheduleFailed) groups are kept before they
    /// are deleted automatically ("1h", "30m"; "0s" keeps them).
    pub finished_group_retention: String,
}

/// Logging of the agent itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter, e.g. "info" or "eci_agent=debug,info".
    pub level: String,
    /// `text` (journald-friendly: no colours, no timestamps under systemd) or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: "/var/lib/eci".into(),
            run_dir: "/run/eci".into(),
            log_dir: "/var/log/eci".into(),
            api: ApiConfig::default(),
            node: NodeConfig::default(),
            runtime: RuntimeConfig::default(),
            user_namespaces: UserNamespacesConfig::default(),
            images: ImagesConfig::default(),
            log: LogConfig::default(),
            pull: PullConfig::default(),
            registries: Default::default(),
            network: NetworkConfig::default(),
            volumes: VolumesConfig::default(),
            vm: VmConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: PathBuf::new(),
            socket_group: String::new(),
            tcp_listen: String::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_client_ca: PathBuf::new(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cpu: String::new(),
            memory: String::new(),
            reserved_cpu: "0".into(),
            reserved_memory: "0".into(),
            gpus: -1,
            finished_group_retention: "1h".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// The default config file; a missing default file means all defaults.
pub const DEFAULT_PATH: &str = "/etc/eci/agent.toml";

impl Config {
    /// Reads `path`. When `required` is false a missing file yields the defaults.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Moves every state, run and log path under `root` (tests, several agents per host).
    pub fn relocate(&mut self, root: &Path) {
        let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        self.state_dir = under(&self.state_dir);
        self.run_dir = under(&self.run_dir);
        self.log_dir = under(&self.log_dir);
        // An explicit `vm.guest_dir` stays: several agents (tests) share one guest
        // image; the default follows `state_dir`.
        if !self.api.socket.as_os_str().is_empty() {
            self.api.socket = under(&self.api.socket);
        }
    }

    /// The socket path after defaults.
    pub fn socket_path(&self) -> PathBuf {
        if self.api.socket.as_os_str().is_empty() {
            self.run_dir.join("agent.sock")
        } else {
            self.api.socket.clone()
        }
    }

    pub fn state_db_path(&self) -> PathBuf {
        self.state_dir.join("state.redb")
    }

    /// Checks values that parse lazily, so a bad file fails at start, not at first use.
    /// (Node sizes are checked where they are read, in `Node::detect`.)
    pub fn check(&self) -> Result<(), ConfigError> {
        humantime::parse_duration(&self.node.finished_group_retention).map_err(|e| {
            ConfigError::Invalid {
                key: "node.finished_group_retention",
                message: e.to_string(),
            }
        })?;
        for (key, v) in [
            ("runtime.restart_backoff", &self.runtime.restart_backoff),
            ("pull.timeout", &self.pull.timeout),
            (
                "volumes.storage_check_interval",
                &self.volumes.storage_check_interval,
            ),
            (
                "runtime.restart_backoff_max",
                &self.runtime.restart_backoff_max,
            ),
        ] {
            humantime::parse_duration(v).map_err(|e| ConfigError::Invalid {
                key,
                message: e.to_string(),
            })?;
        }
        crate::quantity::parse_memory_bytes(&self.runtime.log_max_size).map_err(|e| {
            ConfigError::Invalid {
                key: "runtime.log_max_size",
                message: e.to_string(),
            }
        })?;
        if self.pull.parallel_layers == 0 || self.pull.attempts == 0 {
            return Err(ConfigError::Invalid {
                key: "pull.parallel_layers",
                message: "pull.parallel_layers and pull.attempts are at least 1".into(),
            });
        }
        if self.runtime.log_max_files < 2 {
            return Err(ConfigError::Invalid {
                key: "runtime.log_max_files",
                message: format!("{} is below the minimum of 2", self.runtime.log_max_files),
            });
        }
        if self.runtime.cgroup_parent.is_empty() || self.runtime.cgroup_parent.contains("..") {
            return Err(ConfigError::Invalid {
                key: "runtime.cgroup_parent",
                message: "must be a relative cgroup path without '..'".into(),
            });
        }
        if self.runtime.pids_max < 16 {
            return Err(ConfigError::Invalid {
                key: "runtime.pids_max",
                message: format!("{} is below the minimum of 16", self.runtime.pids_max),
            });
        }
        if !(-1000..=1000).contains(&self.runtime.oom_score_adj) {
            return Err(ConfigError::Invalid {
                key: "runtime.oom_score_adj",
                message: format!("{} is outside -1000..=1000", self.runtime.oom_score_adj),
            });
        }
        self.check_user_namespaces()?;
        self.network.dev()?;
        self.network.reserved()?;
        self.images.policy()?;
        self.vm.accel()?;
        self.vm.overhead_bytes()?;
        if self.vm.qemu.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "vm.qemu",
                message: "must name the QEMU binary".into(),
            });
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid {
                key: "log.format",
                message: format!("{:?} is not one of text, json", self.log.format),
            });
        }
        let tls = [
            &self.api.tls_cert,
            &self.api.tls_key,
            &self.api.tls_client_ca,
        ];
        if !self.api.tcp_listen.is_empty() && tls.iter().any(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "api.tcp_listen",
                message: "TCP needs api.tls_cert, api.tls_key and api.tls_client_ca (mutual TLS)"
                    .into(),
            });
        }
        Ok(())
    }

    fn check_user_namespaces(&self) -> Result<(), ConfigError> {
        let u = &self.user_namespaces;
        let range = UserNamespacesConfig::RANGE;
        if u.first_host_id == 0 || !u.first_host_id.is_multiple_of(range) {
            return Err(ConfigError::Invalid {
                key: "user_namespaces.first_host_id",
                message: format!(
                    "{} must be greater than 0 and a multiple of {range}",
                    u.first_host_id
                ),
            });
        }
        if u.ranges == 0 {
            return Err(ConfigError::Invalid {
                key: "user_namespaces.ranges",
                message: "0 is below the minimum of 1".into(),
            });
        }
        // The last id of the pool must be below u32::MAX ((uid_t)-1 means "no change").
        let end = u64::from(u.first_host_id) + u64::from(u.ranges) * u64::from(range);
        if end > u64::from(u32::MAX) {
            return Err(ConfigError::Invalid {
                key: "user_namespaces.ranges",
                message: format!(
                    "{} ranges of {range} ids from {} end at id {}, beyond the largest usable id {}",
                    u.ranges,
                    u.first_host_id,
                    end - 1,
                    u32::MAX - 1
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_documents_the_defaults() {
        let text = include_str!("../agent.example.toml");
        let parsed: Config = toml::from_str(text).expect("example parses");
        assert_eq!(parsed, Config::default());
        // Every key of the defaults appears in the example.
        let defaults = toml::to_string(&Config::default()).expect("serialize");
        for line in defaults.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap_or_default();
            assert!(
                text.contains(&format!("{key} = ")),
                "{key} is not documented"
            );
        }
    }

    #[test]
    fn reserved_links_are_names_or_prefixes() {
        let mut n = NetworkConfig {
            reserved_links: vec!["eth0".into(), "mgmt*".into()],
            ..Default::default()
        };
        assert_eq!(n.reserved().expect("valid").len(), 2);
        for bad in ["", "a*b", "*x*", "sixteen-bytes-xx", "a/b"] {
            n.reserved_links = vec!["ok".into(), bad.into()];
            let e = n.reserved().expect_err(bad).to_string();
            assert!(e.contains("network.reserved_links"), "{e}");
        }
    }

    #[test]
    fn vm_defaults_and_checks() {
        let c = Config::default();
        assert_eq!(
            c.vm.guest_dir(&c.state_dir),
            Path::new("/var/lib/eci/guest")
        );
        assert_eq!(c.vm.accel().expect("auto"), AccelChoice::Auto);
        assert!(!c.vm.allow_tcg, "TCG is an opt-in");
        let c: Config = toml::from_str("[vm]\naccel = \"tcg\"").expect("parses");
        let e = c.check().expect_err("tcg without allow_tcg").to_string();
        assert!(e.contains("vm.accel") && e.contains("allow_tcg"), "{e}");
        let c: Config =
            toml::from_str("[vm]\naccel = \"tcg\"\nallow_tcg = true\nguest_dir = \"/g\"")
                .expect("parses");
        c.check().expect("tcg allowed");
        assert_eq!(c.vm.accel().expect("tcg"), AccelChoice::Tcg);
        assert_eq!(c.vm.guest_dir(&c.state_dir), Path::new("/g"));
        for (text, key) in [
            ("accel = \"hvf\"", "vm.accel"),
            (
                "guest_overhead_memory = \"lots\"",
                "vm.guest_overhead_memory",
            ),
            ("qemu = \"\"", "vm.qemu"),
        ] {
            let c: Config = toml::from_str(&format!("[vm]\n{text}")).expect("parses");
            let e = c.check().expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn relocates_under_root() {
        let mut c = Config::default();
        c.relocate(Path::new("/tmp/x"));
        assert_eq!(c.socket_path(), Path::new("/tmp/x/run/eci/agent.sock"));
        assert_eq!(
            c.state_db_path(),
            Path::new("/tmp/x/var/lib/eci/state.redb")
        );
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let c: Config = toml::from_str("[log]\nformat = \"xml\"").expect("parses");
        assert!(c.check().is_err());
        let c: Config = toml::from_str("[api]\ntcp_listen = \"0.0.0.0:1\"").expect("parses");
        assert!(c.check().is_err(), "TCP without TLS files");
        for (toml_text, key) in [
            ("first_host_id = 0", "user_namespaces.first_host_id"),
            ("first_host_id = 65537", "user_namespaces.first_host_id"),
            ("ranges = 0", "user_namespaces.ranges"),
            (
                "first_host_id = 65536\nranges = 65535",
                "user_namespaces.ranges",
            ),
        ] {
            let c: Config =
                toml::from_str(&format!("[user_namespaces]\n{toml_text}")).expect("parses");
            let err = c.check().expect_err(toml_text).to_string();
            assert!(err.contains(key), "{toml_text}: {err}");
        }
        // The largest pool that fits: its last id is u32::MAX - 65536.
        let c: Config = toml::from_str("[user_namespaces]\nfirst_host_id = 65536\nranges = 65534")
            .expect("parses");
        c.check().expect("largest pool");
        for (toml_text, key) in [
            ("gc_high_percent = 101", "images.gc_high_percent"),
            ("gc_low_percent = 90", "images.gc_low_percent"),
            ("gc_interval = \"0s\"", "images.gc_interval"),
            ("retention_day = \"soon\"", "images.retention_day"),
            ("gc_min_age = \"x\"", "images.gc_min_age"),
        ] {
            let c: Config = toml::from_str(&format!("[images]\n{toml_text}")).expect("parses");
            let err = c.check().expect_err(toml_text).to_string();
            assert!(err.contains(key), "{toml_text}: {err}");
        }
        let c: Config = toml::from_str("[runtime]\nlog_max_files = 1").expect("parses");
        assert!(
            c.check().is_err(),
            "one log file cannot rotate without loss"
        );
    }
}
