//! Metrics service: per group and per container, named as in the modelled product's
//! guide (CPU `UsageNanoCores`, `UsageCoreNanoSeconds`, `Load`, `Limit`; memory
//! `AvailableBytes`, `UsageBytes`, `Cache`, `WorkingSet`, `Rss`; network per interface;
//! disk per filesystem), read from the cgroups and the group's network namespace.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use eci_api::v1::metrics_server::Metrics;
use eci_api::v1::*;
use eci_runtime::cgroup;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Shared, blocking};
use crate::quantity::{parse_cpu_millis, parse_memory_bytes};

/// CPU samples per cgroup, oldest first, for rates and the 10 s load.
type Samples = HashMap<String, Vec<(Instant, u64)>>;

pub struct MetricsApi {
    sup: Shared,
    samples: std::sync::Arc<Mutex<Samples>>,
}

impl MetricsApi {
    pub fn new(sup: Shared) -> Self {
        MetricsApi {
            sup,
            samples: Default::default(),
        }
    }
}

/// Whether `key` has a sample old enough to take a rate from.
fn has_history(samples: &Mutex<Samples>, key: &str) -> bool {
    let all = samples.lock().unwrap_or_else(|p| p.into_inner());
    all.get(key)
        .and_then(|l| l.first())
        .is_some_and(|(t, _)| t.elapsed() >= Duration::from_millis(100))
}

/// How long CPU samples are kept (the load average needs 10 s).
const KEEP: Duration = Duration::from_secs(20);

/// Records a CPU sample; returns (nano-cores over the last interval, cores over ~10 s).
fn rates(samples: &Mutex<Samples>, key: &str, now: Instant, cpu: u64) -> (u64, f64) {
    let mut all = samples.lock().unwrap_or_else(|p| p.into_inner());
    // Cgroups nobody sampled lately (deleted groups, finished streams) are forgotten:
    // the map holds what is being watched, not every group the node ever ran.
    all.retain(|k, l| {
        k == key
            || l.last()
                .is_some_and(|(t, _)| now.duration_since(*t) <= KEEP)
    });
    let list = all.entry(key.to_string()).or_default();
    list.retain(|(t, _)| now.duration_since(*t) <= KEEP);
    let rate = |from: &(Instant, u64)| {
        let dt = now.duration_since(from.0).as_secs_f64();
        if dt <= 0.0 {
            0.0
        } else {
            cpu.saturating_sub(from.1) as f64 / dt
        }
    };
    // Over at least a second where possible: CFS quotas make shorter windows jumpy.
    let last = list
        .iter()
        .rev()
        .find(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        .or(list.first())
        .map_or(0.0, rate);
    let ten = list
        .iter()
        .find(|(t, _)| now.duration_since(*t) <= Duration::from_secs(10))
        .map_or(last, rate);
    list.push((now, cpu));
    (last as u64, ten / 1e9)
}

fn cpu_metrics(
    samples: &Mutex<Samples>,
    key: &str,
    u: &cgroup::Usage,
    limit_millis: u64,
) -> CpuMetrics {
    let (nano_cores, load) = rates(samples, key, Instant::now(), u.cpu_nanos);
    CpuMetrics {
        usage_nano_cores: nano_cores,
        usage_core_nano_seconds: u.cpu_nanos,
        load,
        limit: limit_millis,
    }
}

fn memory_metrics(u: &cgroup::Usage, limit: u64) -> MemoryMetrics {
    let working_set = u.memory_bytes.saturating_sub(u.inactive_file_bytes);
    MemoryMetrics {
        available_bytes: u.memory_limit.unwrap_or(limit).saturating_sub(working_set),
        usage_bytes: u.memory_bytes,
        cache: u.cache_bytes,
        working_set,
        rss: u.rss_bytes,
    }
}

/// Interfaces of the network namespace `pid` is in (`/proc/<pid>/net/dev`).
fn network(pid: u32) -> Vec<NetworkInterfaceMetrics> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() >= 12).then(|| NetworkInterfaceMetrics {
                name: name.trim().to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_drops: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_drops: v[11],
            })
        })
        .collect()
}

/// The filesystem holding `path`, with `used` as measured below `path`.
fn filesystem(path: &std::path::Path, mount_point: &str) -> Option<FilesystemMetrics> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let block = st.fragment_size();
    // Measured as eviction measures it (`du`: allocated blocks, each inode once).
    let used = crate::sandbox::usage::allocated_bytes(path);
    Some(FilesystemMetrics {
        mount_point: mount_point.to_string(),
        total_bytes: st.blocks() * block,
        used_bytes: used,
        available_bytes: st.blocks_available() * block,
    })
}

/// The group's local storage as `ephemeralStorage` bounds it (mount point `/`: used
/// is what eviction measures, total the limit or the filesystem if smaller), then one
/// entry per mounted disk volume (`volume:<name>`, the filesystem's own counts).
fn group_disks(
    writable: &std::path::Path,
    volumes: &std::path::Path,
    spec: &GroupSpec,
) -> Vec<FilesystemMetrics> {
    let mut out = Vec::new();
    if let Some(mut f) = filesystem(writable, "/") {
        let limit = crate::sandbox::usage::ephemeral_limit(spec);
        f.used_bytes = crate::sandbox::usage::allocated_bytes(writable);
        f.total_bytes = f.total_bytes.min(limit);
        f.available_bytes = f.available_bytes.min(limit.saturating_sub(f.used_bytes));
        out.push(f);
    }
    // Not nfs: statvfs of an export whose server is gone would hang.
    for v in spec.volumes.iter().filter(|v| v.disk.is_some()) {
        let Ok(st) = nix::sys::statvfs::statvfs(&volumes.join(&v.name)) else {
            continue;
        };
        let block = st.fragment_size();
        out.push(FilesystemMetrics {
            mount_point: format!("volume:{}", v.name),
            total_bytes: st.blocks() * block,
            used_bytes: (st.blocks() - st.blocks_free()) * block,
            available_bytes: st.blocks_available() * block,
        });
    }
    out
}

/// What each security-group rule of the spec matched so far, read from the group's
/// nftables table (empty when it cannot be read: metrics are best effort).
fn rule_counters(netns: &std::path::Path, spec: &GroupSpec) -> Vec<SecurityGroupRuleCounter> {
    let rules = spec
        .network
        .as_ref()
        .map(|n| n.security_group_rules.clone())
        .unwrap_or_default();
    if rules.is_empty() {
        return Vec::new();
    }
    let counters = match eci_netns::nft::security_group_counters(netns) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %crate::error::chain(&e), "reading security-group counters");
            return Vec::new();
        }
    };
    counters
        .into_iter()
        .filter_map(|c| {
            let r = rules.get(c.index)?;
            Some(SecurityGroupRuleCounter {
                index: c.index as u32,
                rule: format!(
                    "{} {} {} {} {} priority {}",
                    r.direction,
                    r.protocol,
                    if r.port_range.is_empty() {
                        "-1/-1"
                    } else {
                        &r.port_range
                    },
                    r.cidr,
                    if r.policy.is_empty() {
                        "accept"
                    } else {
                        &r.policy
                    },
                    r.priority.max(1)
                ),
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect()
}

impl MetricsApi {
    /// One sample; when the group has no earlier sample at least 100 ms old, a second
    /// one after 100 ms so that the rates mean something.
    async fn sample(&self, name: String) -> Result<GroupMetrics, Status> {
        let (m, had_history) = self.sample_once(name.clone()).await?;
        if had_history {
            return Ok(m);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(self.sample_once(name).await?.0)
    }

    async fn sample_once(&self, name: String) -> Result<(GroupMetrics, bool), Status> {
        let g = self.sup.groups().clone();
        let n = name.clone();
        let group = blocking(move || g.get(&n)).await?;
        let spec = group.spec.clone().unwrap_or_default();
        let status = group.status.clone().unwrap_or_default();
        if status.phase != eci_api::phase::RUNNING && status.phase != eci_api::phase::RESTARTING {
            return Err(Status::failed_precondition(format!(
                "group {name:?} is {}: no metrics",
                status.phase
            )));
        }
        let size = status.normalized_resources.clone().unwrap_or_default();
        let group_cpu = parse_cpu_millis(&size.cpu).unwrap_or(0);
        let group_mem = parse_memory_bytes(&size.memory).unwrap_or(0);
        let parent = self.sup.cgroup_parent().to_string();
        let layers = self.sup.writable_dir(&group.id);
        let samples = self.samples.clone();
        let id = group.id.clone();
        let sup = self.sup.clone();
        // A vm group's containers are guest processes: their use comes from inside the
        // guest, through the shim's Stats; the host cgroups hold the VM, not them.
        let vm_usage = if spec.sandbox == "vm" {
            let mut per = HashMap::new();
            if let Ok(shim) = crate::sandbox::Shim::connect(
                &eci_runtime::layout::GroupDir::new(sup.run_dir(), &group.id).shim_socket(),
            )
            .await
            {
                for c in &spec.containers {
                    if let Ok(u) = shim.stats(&c.name).await {
                        per.insert(c.name.clone(), u);
                    }
                }
            }
            Some(per)
        } else {
            None
        };
        let out = tokio::task::spawn_blocking(move || {
            let rel = format!("{parent}/{id}");
            let had_history = has_history(&samples, &rel);
            let (u, overhead) = match &vm_usage {
                None => (cgroup::usage(&rel), 0),
                Some(per) => (
                    sum_usage(per.values()),
                    cgroup::usage(&format!("{rel}/{}", crate::vm::VM_CGROUP)).memory_bytes,
                ),
            };
            let mut m = GroupMetrics {
                group: name.clone(),
                timestamp: crate::clock::now(),
                cpu: Some(cpu_metrics(&samples, &rel, &u, group_cpu)),
                memory: Some(memory_metrics(&u, group_mem)),
                network: cgroup::procs(&rel)
                    .first()
                    .map(|p| network(*p))
                    .unwrap_or_default(),
                // A vm group's files are in its guest: the host dirs say nothing.
                disk: if vm_usage.is_some() {
                    Vec::new()
                } else {
                    group_disks(&layers, &sup.volumes_dir(&id), &spec)
                },
                containers: Vec::new(),
                security_group_rules: Vec::new(),
                sandbox_overhead_bytes: overhead,
            };
            if status.network.as_ref().is_some_and(|n| n.mode != "none") {
                m.security_group_rules = rule_counters(&sup.netns_of(&id), &spec);
            }
            for c in &spec.containers {
                let crel = format!("{rel}/{}", c.name);
                let cu = match &vm_usage {
                    None => cgroup::usage(&crel),
                    Some(per) => per.get(&c.name).cloned().unwrap_or_default(),
                };
                let res = c.resources.clone().unwrap_or_default();
                let cpu_limit = parse_cpu_millis(&res.cpu).unwrap_or(group_cpu);
                let mem_limit = parse_memory_bytes(&res.memory).unwrap_or(group_mem);
                m.containers.push(ContainerMetrics {
                    name: c.name.clone(),
                    cpu: Some(cpu_metrics(&samples, &crel, &cu, cpu_limit)),
                    memory: Some(memory_metrics(&cu, mem_limit)),
                    disk: if vm_usage.is_some() {
                        Vec::new()
                    } else {
                        filesystem(&layers.join(&c.name), "/").into_iter().collect()
                    },
                    log_dropped_bytes: sup.log_stats(&id, &c.name).dropped_bytes,
                });
            }
            (m, had_history)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(out)
    }
}

/// The sum of containers' use: a vm group's use as the guest sees it.
fn sum_usage<'a>(all: impl Iterator<Item = &'a cgroup::Usage>) -> cgroup::Usage {
    let mut t = cgroup::Usage::default();
    for u in all {
        t.memory_bytes = t.memory_bytes.saturating_add(u.memory_bytes);
        t.cache_bytes = t.cache_bytes.saturating_add(u.cache_bytes);
        t.rss_bytes = t.rss_bytes.saturating_add(u.rss_bytes);
        t.inactive_file_bytes = t.inactive_file_bytes.saturating_add(u.inactive_file_bytes);
        t.cpu_nanos = t.cpu_nanos.saturating_add(u.cpu_nanos);
    }
    t
}

#[tonic::async_trait]
impl Metrics for MetricsApi {
    type StreamMetricsStream = Pin<Box<dyn Stream<Item = Result<GroupMetrics, Status>> + Send>>;

    async fn get_metrics(
        &self,
        req: Request<GetMetricsRequest>,
    ) -> Result<Response<GroupMetrics>, Status> {
        Ok(Response::new(self.sample(req.into_inner().group).await?))
    }

    async fn stream_metrics(
        &self,
        req: Request<StreamMetricsRequest>,
    ) -> Result<Response<Self::StreamMetricsStream>, Status> {
        let r = req.into_inner();
        let every = Duration::from_secs(u64::from(if r.interval_seconds == 0 {
            10
        } else {
            r.interval_seconds
        }));
        let first = self.sample(r.group.clone()).await?;
        let (tx, rx) = mpsc::channel(4);
        let me = MetricsApi {
            sup: self.sup.clone(),
            samples: self.samples.clone(),
        };
        tokio::spawn(async move {
            let mut next = Ok(first);
            loop {
                let stop = next.is_err();
                if tx.send(next).await.is_err() || stop {
                    return;
                }
                tokio::time::sleep(every).await;
                next = me.sample(r.group.clone()).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod du_tests {
    use crate::sandbox::usage::allocated_bytes;

    #[test]
    fn the_walk_never_follows_a_link_out_of_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), vec![0u8; 1000]).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/g"), vec![0u8; 500]).expect("write");
        // A tenant's links to the host's root and to a big host tree.
        std::os::unix::fs::symlink("/", dir.path().join("root")).expect("ln");
        std::os::unix::fs::symlink("/usr", dir.path().join("sub/usr")).expect("ln");
        let used = allocated_bytes(dir.path());
        assert!((1500..1500 + 64 * 1024).contains(&used), "{used}");
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    #[test]
    fn samples_of_cgroups_no_longer_sampled_are_forgotten() {
        let samples = Mutex::new(Samples::new());
        let t0 = Instant::now();
        rates(&samples, "parent/gone", t0, 100);
        rates(&samples, "parent/live", t0, 100);
        let (rate, _) = rates(
            &samples,
            "parent/live",
            t0 + Duration::from_secs(2),
            2_000_000_100,
        );
        assert_eq!(rate, 1_000_000_000, "one core over two seconds");
        assert_eq!(samples.lock().expect("lock").len(), 2);
        rates(
            &samples,
            "parent/live",
            t0 + KEEP + Duration::from_secs(1),
            3_000_000_000,
        );
        let all = samples.lock().expect("lock");
        assert!(
            !all.contains_key("parent/gone"),
            "a deleted group's samples stay"
        );
        assert!(all.contains_key("parent/live"));
    }
}
