//! Services whose behaviour later parts of the agent build (image store, sandbox runtime,
//! logs, exec, metrics). Each method answers UNIMPLEMENTED with what is missing, never a
//! fake success, so a control plane can tell "not here yet" from "failed".

use std::pin::Pin;

use eci_api::v1::*;
use futures::Stream;
use tonic::{Request, Response, Status};

type Out<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn later<T>(what: &str) -> Out<T> {
    Err(Status::unimplemented(format!(
        "{what} is not available in this agent build yet"
    )))
}

const RUNTIME: &str = "metrics";
const IMAGES: &str = "image caches";

#[derive(Default, Clone)]
pub struct MetricsApi;

#[tonic::async_trait]
impl metrics_server::Metrics for MetricsApi {
    type StreamMetricsStream = BoxStream<GroupMetrics>;

    async fn get_metrics(&self, _: Request<GetMetricsRequest>) -> Out<GroupMetrics> {
        later(RUNTIME)
    }
    async fn stream_metrics(
        &self,
        _: Request<StreamMetricsRequest>,
    ) -> Out<Self::StreamMetricsStream> {
        later(RUNTIME)
    }
}

#[derive(Default, Clone)]
pub struct CachesApi;

#[tonic::async_trait]
impl image_caches_server::ImageCaches for CachesApi {
    async fn create(&self, _: Request<CreateImageCacheRequest>) -> Out<ImageCache> {
        later(IMAGES)
    }
    async fn get(&self, _: Request<GetImageCacheRequest>) -> Out<ImageCache> {
        later(IMAGES)
    }
    async fn list(&self, _: Request<ListImageCachesRequest>) -> Out<ListImageCachesResponse> {
        later(IMAGES)
    }
    async fn delete(&self, _: Request<DeleteImageCacheRequest>) -> Out<DeleteImageCacheResponse> {
        later(IMAGES)
    }
}
