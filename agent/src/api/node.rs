//! Node service.

use std::pin::Pin;
use std::sync::Arc;

use eci_api::phase;
use eci_api::v1::node_server::Node as NodeService;
use eci_api::v1::*;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Shared, blocking};
use crate::health::Health;
use crate::sizes::Size;
use crate::store::Feed;

pub struct NodeApi {
    groups: Shared,
    health: Arc<Health>,
    started_at: String,
}

impl NodeApi {
    pub fn new(groups: Shared, health: Arc<Health>) -> Self {
        NodeApi {
            groups,
            health,
            started_at: crate::clock::now(),
        }
    }
}

fn resources(s: Size, gpus: u32) -> Resources {
    Resources {
        cpu_millis: s.cpu_millis,
        memory_bytes: s.memory_bytes,
        gpus,
    }
}

/// The vm sandbox as `Node.Info` reports it.
fn node_vm(f: &crate::vm::VmFacts) -> NodeVm {
    use crate::vm::VmState;
    let (available, accelerator, reason) = match &f.state {
        VmState::Available { accel } => (true, accel.as_str().to_string(), String::new()),
        VmState::Probing => (false, String::new(), "probing".to_string()),
        VmState::Unavailable { reason } => (false, String::new(), reason.clone()),
    };
    NodeVm {
        available,
        emulated: accelerator == "tcg",
        accelerator,
        guest_kernel_release: f.guest_kernel.clone(),
        reason,
        qemu_version: f.qemu_version.clone(),
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn info(&self, _: Request<NodeInfoRequest>) -> Result<Response<NodeInfo>, Status> {
        let g = self.groups.groups().clone();
        let (groups, usage, held, enis) = blocking(move || {
            let (groups, usage) = g.usage_now()?;
            let enis =
                crate::network::inventory::enis(&g.store().held_enis()?, g.network().dev.as_ref());
            Ok((groups, usage, g.store().ranges()?, enis))
        })
        .await?;
        let node = self.groups.groups().node();
        let running = groups
            .iter()
            .filter(|g| g.status.as_ref().is_some_and(|s| s.phase == phase::RUNNING))
            .count() as u32;
        let conditions = self.health.conditions();
        Ok(Response::new(NodeInfo {
            hostname: node.hostname.clone(),
            capacity: Some(resources(node.capacity, node.gpus)),
            allocatable: Some(resources(node.allocatable, node.gpus)),
            in_use: Some(resources(usage.size, usage.gpus)),
            groups_total: groups.len() as u32,
            groups_running: running,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_version: node.facts.kernel_release.clone(),
            cgroup_mode: node.facts.cgroup_mode.as_str().into(),
            sandbox_kinds: self
                .groups
                .groups()
                .sandbox_kinds()
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            health: Health::summary(&conditions),
            conditions,
            os: std::env::consts::OS.into(),
            architecture: node.facts.architecture.clone(),
            started_at: self.started_at.clone(),
            user_namespaces: Some(self.groups.groups().user_namespaces().report(&held)),
            enis,
            dev_bridge: self.groups.groups().network().describe_dev(),
            vm: Some(node_vm(&self.groups.groups().vm().facts())),
        }))
    }

    type EventsStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

    async fn events(
        &self,
        req: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let r = req.into_inner();
        let store = self.groups.groups().store().clone();
        let s = store.clone();
        let group = r.group.clone();
        let (past, rev) =
            blocking(move || Ok(s.events_at((!group.is_empty()).then_some(group.as_str()))?))
                .await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for e in past {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if !r.follow {
                return;
            }
            // Every event after the ones sent, exactly once (see Feed).
            let pick = |ev: WatchEvent| {
                ev.event
                    .filter(|e| r.group.is_empty() || e.group == r.group)
            };
            super::forward_feed(Feed::new(store, rev), &tx, pick, |e, last| {
                Status::out_of_range(format!(
                    "event stream ended after revision {last}: {e}; read the events again"
                ))
            })
            .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
