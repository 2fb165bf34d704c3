//! Services whose behaviour later parts of the agent build (image caches). Each method
//! answers UNIMPLEMENTED with what is missing, never a fake success, so a control plane
//! can tell "not here yet" from "failed".

use eci_api::v1::*;
use tonic::{Request, Response, Status};

type Out<T> = Result<Response<T>, Status>;

fn later<T>(what: &str) -> Out<T> {
    Err(Status::unimplemented(format!(
        "{what} is not available in this agent build yet"
    )))
}

const IMAGES: &str = "image caches";

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
