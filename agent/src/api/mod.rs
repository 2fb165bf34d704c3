//! The gRPC API: thin handlers that convert a request, call one domain method, and
//! convert the result. Domain errors become `tonic::Status` in [`status`] only.

pub mod auth;
mod caches;
mod containers;
mod groups;
mod images;
mod log_stream;
mod metrics;
mod node;
mod status;

use std::sync::Arc;

pub use caches::CachesApi;
pub use containers::ContainersApi;
pub use groups::GroupsApi;
pub use images::ImagesApi;
pub use metrics::MetricsApi;
pub use node::NodeApi;

use crate::error::Error;

/// Runs a store-bound operation off the async workers: redb commits fsync.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, tonic::Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(status::to_status),
        Err(e) => Err(tonic::Status::internal(format!("operation panicked: {e}"))),
    }
}

/// What every handler shares.
pub(crate) type Shared = Arc<crate::supervisor::Supervisor>;

/// Sends every change of `feed` that `pick` maps to a message down `tx`, until the
/// client goes away or the feed ends; a feed error ends the stream with `ended(error,
/// last revision sent)`. The one pump behind Watch and Node.Events(follow).
pub(crate) async fn forward_feed<T>(
    mut feed: crate::store::Feed,
    tx: &tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    mut pick: impl FnMut(eci_api::v1::WatchEvent) -> Option<T>,
    ended: impl FnOnce(crate::store::StoreError, u64) -> tonic::Status,
) {
    loop {
        let ev = tokio::select! {
            ev = feed.next() => ev,
            () = tx.closed() => return,
        };
        match ev {
            Ok(Some(ev)) => {
                if let Some(msg) = pick(ev)
                    && tx.send(Ok(msg)).await.is_err()
                {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let last = feed.last();
                let _ = tx.send(Err(ended(e, last))).await;
                return;
            }
        }
    }
}
