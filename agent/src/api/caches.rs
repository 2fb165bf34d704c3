//! ImageCaches service: create, get, list, delete (see `caches`).

use std::sync::Arc;

use eci_api::v1::image_caches_server::ImageCaches as CachesService;
use eci_api::v1::*;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::caches::{CacheRecord, ImageCaches};

pub struct CachesApi {
    caches: Arc<ImageCaches>,
}

impl CachesApi {
    pub fn new(caches: Arc<ImageCaches>) -> Self {
        CachesApi { caches }
    }
}

fn to_wire(c: CacheRecord) -> ImageCache {
    ImageCache {
        name: c.name,
        images: c.images,
        status: c.status,
        message: c.message,
        created_at: c.created_at,
        retention_days: c.retention_days,
        size_bytes: c.size_bytes,
    }
}

type Out<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl CachesService for CachesApi {
    async fn create(&self, req: Request<CreateImageCacheRequest>) -> Out<ImageCache> {
        let c = self.caches.create(req.into_inner()).await;
        Ok(Response::new(to_wire(c.map_err(to_status)?)))
    }

    async fn get(&self, req: Request<GetImageCacheRequest>) -> Out<ImageCache> {
        let c = self.caches.get(&req.into_inner().name).await;
        Ok(Response::new(to_wire(c.map_err(to_status)?)))
    }

    async fn list(&self, _: Request<ListImageCachesRequest>) -> Out<ListImageCachesResponse> {
        let caches = self.caches.list().await.map_err(to_status)?;
        Ok(Response::new(ListImageCachesResponse {
            caches: caches.into_iter().map(to_wire).collect(),
        }))
    }

    async fn delete(&self, req: Request<DeleteImageCacheRequest>) -> Out<DeleteImageCacheResponse> {
        self.caches
            .delete(&req.into_inner().name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DeleteImageCacheResponse {}))
    }
}
