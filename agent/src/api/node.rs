//! Node service.

use std::pin::Pin;

use eci_api::phase;
use eci_api::v1::node_server::Node as NodeService;
use eci_api::v1::*;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Shared, blocking};
use crate::sizes::Size;

pub struct NodeApi {
    groups: Shared,
    started_at: String,
}

impl NodeApi {
    pub fn new(groups: Shared) -> Self {
        NodeApi {
            groups,
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

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn info(&self, _: Request<NodeInfoRequest>) -> Result<Response<NodeInfo>, Status> {
        let g = self.groups.groups().clone();
        let (groups, usage) = blocking(move || g.usage_now()).await?;
        let node = self.groups.groups().node();
        let running = groups
            .iter()
            .filter(|g| g.status.as_ref().is_some_and(|s| s.phase == phase::RUNNING))
            .count() as u32;
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
            sandbox_kinds: node
                .facts
                .sandbox_kinds
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            health: "healthy".into(),
            os: std::env::consts::OS.into(),
            architecture: node.facts.architecture.clone(),
            started_at: self.started_at.clone(),
        }))
    }

    type EventsStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

    async fn events(
        &self,
        req: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let r = req.into_inner();
        let store = self.groups.groups().store().clone();
        let mut live = store.subscribe();
        let group = r.group.clone();
        let past =
            blocking(move || Ok(store.events((!group.is_empty()).then_some(group.as_str()))?))
                .await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = 0;
            for e in past {
                last = last.max(e.revision);
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if !r.follow {
                return;
            }
            loop {
                let ev = match live.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "event follower fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(e) = ev.event else { continue };
                if e.revision <= last || (!r.group.is_empty() && e.group != r.group) {
                    continue;
                }
                last = e.revision;
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
