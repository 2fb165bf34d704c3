//! Attaching to a container in the guest: the same attach socket and protocol as for a
//! namespaced group. Its output reaches the hub through the host log copier's tap, its
//! input goes into the stdin pipe whose other end is pumped into the guest, and a
//! resize is forwarded to the guest's Task API.

use std::sync::Arc;

use containerd_shim_protos::api;
use tokio::sync::watch;

use super::procs::VmProc;
use super::{Inner, VmTaskService};
use crate::attach::Hub;
use crate::task::{Attachable, ExitRecord};

struct VmAttach {
    id: String,
    p: Arc<VmProc>,
    inner: Arc<Inner>,
}

impl Attachable for VmAttach {
    fn hub(&self) -> Option<Arc<Hub>> {
        self.p.hub.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<ExitRecord>> {
        self.p.exited.subscribe()
    }

    fn resize(&self, rows: u16, cols: u16) {
        let (inner, id) = (self.inner.clone(), self.id.clone());
        tokio::spawn(async move {
            let Some(vm) = inner.current_vm().await else {
                return;
            };
            let req = api::ResizePtyRequest {
                id,
                height: rows.into(),
                width: cols.into(),
                ..Default::default()
            };
            let ctx = ttrpc::context::with_duration(std::time::Duration::from_secs(3));
            let _ = vm.client.resize_pty(ctx, &req).await;
        });
    }
}

impl VmTaskService {
    /// Serves one connection on the group's attach socket.
    pub async fn serve_attach(&self, conn: tokio::net::UnixStream) {
        let inner = self.inner.clone();
        crate::task::serve_attach(conn, move |id| {
            inner.proc_(id, "").map(|p| {
                Arc::new(VmAttach {
                    id: id.to_string(),
                    p,
                    inner: inner.clone(),
                }) as Arc<dyn Attachable>
            })
        })
        .await
    }
}
