//! ContainerGroups service.

use std::collections::HashSet;
use std::pin::Pin;

use eci_api::v1::container_groups_server::{ContainerGroups, ContainerGroupsServer};
use eci_api::v1::*;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Shared, blocking, status::to_status};
use crate::groups::parse_selector;
use crate::selector::Selector;
use crate::store::{Feed, StoreError};
use crate::validate;

pub struct GroupsApi {
    groups: Shared,
}

/// The largest ContainerGroups request decoded. Above tonic's default (4 MiB) on
/// purpose: a spec over its own limit (1.5 MiB) must get a readable `INVALID_ARGUMENT`
/// naming the limit from the agent, not a transport `RESOURCE_EXHAUSTED`; past this, the
/// transport refuses it unread.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

impl GroupsApi {
    pub fn new(groups: Shared) -> Self {
        GroupsApi { groups }
    }

    /// The service, with its request size limit.
    pub fn server(groups: Shared) -> ContainerGroupsServer<GroupsApi> {
        ContainerGroupsServer::new(GroupsApi::new(groups))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

fn spec_of(spec: Option<GroupSpec>) -> Result<GroupSpec, Status> {
    spec.ok_or_else(|| Status::invalid_argument("spec: is required"))
}

/// Admits the spec of a Create or Update (size, rules, this kernel, unbuilt fields; see
/// `validate`), off the async workers: it may look at /proc/sys in a fresh netns.
/// A refused spec reaches nothing else.
async fn admitted(spec: Option<GroupSpec>) -> Result<GroupSpec, Status> {
    let spec = spec_of(spec)?;
    blocking(move || {
        validate::admit(&spec)?;
        Ok(spec)
    })
    .await
}

#[tonic::async_trait]
impl ContainerGroups for GroupsApi {
    async fn create(
        &self,
        req: Request<CreateGroupRequest>,
    ) -> Result<Response<ContainerGroup>, Status> {
        let spec = admitted(req.into_inner().spec).await?;
        let group = self.groups.create(spec).await.map_err(to_status)?;
        tracing::info!(group = %group.spec.as_ref().map_or("", |s| &s.name), id = %group.id, "group created");
        Ok(Response::new(redacted(group)))
    }

    async fn get(&self, req: Request<GetGroupRequest>) -> Result<Response<ContainerGroup>, Status> {
        let name = req.into_inner().name;
        let g = self.groups.groups().clone();
        Ok(Response::new(redacted(
            blocking(move || g.get(&name)).await?,
        )))
    }

    async fn list(
        &self,
        req: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let sel = req.into_inner().label_selector;
        let g = self.groups.groups().clone();
        let (groups, revision) = blocking(move || g.list(&sel)).await?;
        let groups = groups.into_iter().map(redacted).collect();
        Ok(Response::new(ListGroupsResponse { groups, revision }))
    }

    async fn update(
        &self,
        req: Request<UpdateGroupRequest>,
    ) -> Result<Response<ContainerGroup>, Status> {
        let spec = admitted(req.into_inner().spec).await?;
        Ok(Response::new(redacted(
            self.groups.update(spec).await.map_err(to_status)?,
        )))
    }

    async fn restart(
        &self,
        req: Request<RestartGroupRequest>,
    ) -> Result<Response<ContainerGroup>, Status> {
        let name = req.into_inner().name;
        Ok(Response::new(redacted(
            self.groups.restart(&name).await.map_err(to_status)?,
        )))
    }

    async fn delete(
        &self,
        req: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        let r = req.into_inner();
        let group = self
            .groups
            .delete(&r.name, r.grace_period_seconds, r.force)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DeleteGroupResponse {
            group: Some(redacted(group)),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

    /// Every committed change after the start, once, in commit order (see
    /// [`Feed`]); history is replayed from the change log a page at a time.
    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        let selector = parse_selector(&r.label_selector).map_err(to_status)?;
        let store = self.groups.groups().store().clone();
        let from = r.from_revision;
        let s = store.clone();
        // The groups that exist now: the snapshot to start from (from 0), and which names
        // the selector matches, for events (which carry only a group name).
        let (current, rev) = blocking(move || Ok(s.list_groups()?)).await?;
        let mut filter = WatchFilter {
            selector,
            name: r.name,
            events: r.events,
            seen: HashSet::new(),
        };
        let (snapshot, after) = if from == 0 {
            let added: Vec<WatchEvent> = current
                .into_iter()
                .map(|g| WatchEvent {
                    r#type: "ADDED".into(),
                    revision: g.revision,
                    group: Some(redacted(g)),
                    event: None,
                })
                .collect();
            (added, rev)
        } else {
            for g in &current {
                filter.learn(g);
            }
            (Vec::new(), from)
        };
        let mut feed = Feed::new(store, after);
        // The first page now, so a revision the change log no longer has is the call's
        // OUT_OF_RANGE rather than an error in the stream.
        feed.fill().await.map_err(|e| to_status(e.into()))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for ev in snapshot {
                if filter.pass(&ev) && tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            let pick = |mut ev: WatchEvent| {
                ev.group = ev.group.map(redacted);
                filter.pass(&ev).then_some(ev)
            };
            super::forward_feed(feed, &tx, pick, |e, last| {
                tracing::info!(error = %e, last, "ending a watch");
                watch_ended(e, last)
            })
            .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A group as it leaves the agent: registry passwords are the agent's to use, never to
/// show (`get -o yaml`, watch, list). The username and server stay, so an operator sees
/// which credentials a group has.
fn redacted(mut g: ContainerGroup) -> ContainerGroup {
    if let Some(spec) = g.spec.as_mut() {
        for c in &mut spec.image_registry_credentials {
            c.password.clear();
        }
    }
    g
}

/// Why a watch stream ended: the watcher resumes from `last` (what it received) or, when
/// the change log no longer reaches back, lists again.
fn watch_ended(e: StoreError, last: u64) -> Status {
    match e {
        StoreError::Compacted { oldest, .. } => Status::out_of_range(format!(
            "watcher fell behind: revision {last} is older than the oldest kept change {oldest}; list again and watch from the list's revision"
        )),
        other => {
            let status = to_status(other.into());
            Status::new(
                status.code(),
                format!("{}; watch again from revision {last}", status.message()),
            )
        }
    }
}

/// Which changes a watcher wants. Events carry only a group name, so the names of groups
/// that matched the selector are remembered.
struct WatchFilter {
    selector: Selector,
    name: String,
    events: bool,
    seen: HashSet<String>,
}

impl WatchFilter {
    /// Whether a group passes; remembers its name for its events.
    fn learn(&mut self, g: &ContainerGroup) -> bool {
        let Some(spec) = &g.spec else { return false };
        let ok =
            (self.name.is_empty() || self.name == spec.name) && self.selector.matches(&spec.labels);
        if ok {
            self.seen.insert(spec.name.clone());
        }
        ok
    }

    fn pass(&mut self, ev: &WatchEvent) -> bool {
        if let Some(g) = &ev.group {
            return self.learn(g);
        }
        match &ev.event {
            Some(e) if self.events => {
                (self.name.is_empty() || self.name == e.group)
                    && (self.selector == Selector::default() || self.seen.contains(&e.group))
            }
            _ => false,
        }
    }
}
