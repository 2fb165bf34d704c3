//! Images service: pull, import, list, get, remove.

use std::io::Write;
use std::pin::Pin;

use eci_api::v1::images_server::Images;
use eci_api::v1::*;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::status::pull_status;
use super::{Shared, blocking};
use crate::caches::holder;
use crate::images::ImageRecord;
use crate::images::pull::{Credential, LayerProgress, PullPolicy};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub struct ImagesApi {
    groups: Shared,
}

impl ImagesApi {
    pub fn new(groups: Shared) -> Self {
        ImagesApi { groups }
    }
}

fn to_wire(r: ImageRecord) -> Image {
    Image {
        size_bytes: r.size(),
        layer_count: r.layers.len() as u32,
        references: r.references,
        digest: r.digest.to_string(),
        config_digest: r.config_digest.to_string(),
        platform: r.platform,
        created_at: r.created,
        pulled_at: r.imported_at,
    }
}

#[tonic::async_trait]
impl Images for ImagesApi {
    type PullStream = Pin<Box<dyn Stream<Item = Result<PullProgress, Status>> + Send>>;

    async fn pull(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let req = req.into_inner();
        if req.image.is_empty() {
            return Err(Status::invalid_argument("image: a reference is required"));
        }
        // A bad name is the call's error, not one in the stream.
        crate::images::Reference::parse(&req.image)
            .map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
        let creds: Vec<Credential> = req.credentials.iter().map(Credential::from).collect();
        let puller = self.groups.groups().puller().clone();
        let (ptx, mut prx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::channel(64);
        let progress = |p: LayerProgress| PullProgress {
            layer_digest: p.layer.to_string(),
            downloaded_bytes: p.downloaded,
            total_bytes: p.total,
            state: p.state.into(),
            image: None,
        };
        // The pull runs to its end even if the caller goes away: the next one reuses it.
        tokio::spawn(async move {
            let pull = puller.ensure(&req.image, PullPolicy::Always, &creds, Some(ptx));
            tokio::pin!(pull);
            let done = loop {
                tokio::select! {
                    Some(p) = prx.recv() => { let _ = tx.send(Ok(progress(p))).await; }
                    r = &mut pull => break r,
                }
            };
            while let Ok(p) = prx.try_recv() {
                let _ = tx.send(Ok(progress(p))).await;
            }
            let last = match done {
                Ok(p) => Ok(PullProgress {
                    state: "Done".into(),
                    image: Some(to_wire(p.image)),
                    ..Default::default()
                }),
                Err(e) => Err(pull_status(e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let g = self.groups.groups().clone();
        let images = blocking(move || Ok(g.images().list()?)).await?;
        Ok(Response::new(ListImagesResponse {
            images: images.into_iter().map(to_wire).collect(),
        }))
    }

    async fn get(&self, req: Request<GetImageRequest>) -> Result<Response<Image>, Status> {
        let name = req.into_inner().image;
        let g = self.groups.groups().clone();
        Ok(Response::new(to_wire(
            blocking(move || Ok(g.images().get(&name)?)).await?,
        )))
    }

    async fn remove(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let name = req.into_inner().image;
        let g = self.groups.groups().clone();
        blocking(move || Ok(g.images().remove(&name, holder)?)).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn import(
        &self,
        req: Request<Streaming<ImportImageRequest>>,
    ) -> Result<Response<ImportImageResponse>, Status> {
        let mut stream = req.into_inner();
        // Spool to disk first: an archive can be far larger than memory, and the tar is
        // read twice (blobs, then manifests).
        let mut spool = self
            .groups
            .groups()
            .images()
            .spool_file()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut reference = String::new();
        let mut first = true;
        while let Some(msg) = stream.message().await? {
            if first {
                reference = msg.reference;
                first = false;
            }
            spool
                .write_all(&msg.data)
                .map_err(|e| Status::internal(format!("spooling the archive: {e}")))?;
        }
        let g = self.groups.groups().clone();
        let images = blocking(move || {
            let reference = (!reference.is_empty()).then_some(reference);
            let file = spool.reopen().map_err(|e| crate::images::ImageError::Io {
                path: "spool".into(),
                source: e,
            })?;
            Ok(g.images()
                .import(std::io::BufReader::new(file), reference.as_deref())?)
        })
        .await?;
        Ok(Response::new(ImportImageResponse {
            images: images.into_iter().map(to_wire).collect(),
        }))
    }
}
