//! Serving the API: the local Unix socket (peer-checked) and, when configured, TCP with
//! mutual TLS. Both serve the same services, plus grpc.health.v1 and reflection (v1 and
//! v1alpha). Connections on the socket go through [`LocalStream`], so that clients which
//! send the socket path as `:authority` (grpcio, grpc-java) are served.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use eci_api::v1::{
    containers_server::ContainersServer, image_caches_server::ImageCachesServer,
    images_server::ImagesServer, metrics_server::MetricsServer, node_server::NodeServer,
};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::{InterceptorLayer, Routes, RoutesBuilder};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::api::{self, CachesApi, ContainersApi, GroupsApi, ImagesApi, MetricsApi, NodeApi};
use crate::caches::ImageCaches;
use crate::config::Config;
use crate::health::Health;
use crate::local_h2::LocalStream;
use crate::supervisor::Supervisor;

/// Every service of the agent, once; both listeners serve clones of it.
/// `grpc.health.v1.Health` reports what [`Health`] says: `""` and `eci.v1.Node` while
/// the agent is alive, `eci.v1.ContainerGroups` while it can also write.
async fn routes(
    groups: Arc<Supervisor>,
    caches: Arc<ImageCaches>,
    health: Arc<Health>,
) -> Result<Routes> {
    let health_svc = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health.reporter()),
    );
    // Reflection in both versions: grpcurl and current clients ask v1, many tools still
    // ask only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(eci_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service (v1)")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;
    let mut b = RoutesBuilder::default();
    b.add_service(GroupsApi::server(groups.clone()))
        .add_service(NodeServer::new(NodeApi::new(groups.clone(), health)))
        .add_service(ContainersServer::new(ContainersApi::new(groups.clone())))
        .add_service(MetricsServer::new(MetricsApi::new(groups.clone())))
        .add_service(ImagesServer::new(ImagesApi::new(groups.clone())))
        .add_service(ImageCachesServer::new(CachesApi::new(caches)))
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(b.routes())
}

/// Resolves `socket_group` (a name or a gid).
fn socket_gid(group: &str) -> Result<Option<u32>> {
    if group.is_empty() {
        return Ok(None);
    }
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(Some(gid));
    }
    let g = nix::unistd::Group::from_name(group)
        .with_context(|| format!("looking up api.socket_group {group:?}"))?;
    match g {
        Some(g) => Ok(Some(g.gid.as_raw())),
        None => bail!("api.socket_group: no group named {group:?}"),
    }
}

/// Binds the Unix socket with its mode set before anyone can connect to a wider one.
fn bind_unix(path: &Path, gid: Option<u32>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
        }
    }
    // Bind under a restrictive umask so the socket never exists with a wider mode.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("chown {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(listener)
}

/// Bound listeners, ready to serve; binding happens before READY is sent to systemd.
pub struct Listeners {
    unix: UnixListener,
    allowed_gid: Option<u32>,
    tcp: Option<(tokio::net::TcpListener, ServerTlsConfig)>,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> Result<Self> {
        let allowed_gid = socket_gid(&cfg.api.socket_group)?;
        let unix = bind_unix(&cfg.socket_path(), allowed_gid)?;
        let tcp = if cfg.api.tcp_listen.is_empty() {
            None
        } else {
            let read = |p: &Path, what: &str| {
                std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))
            };
            let cert = read(&cfg.api.tls_cert, "api.tls_cert")?;
            let key = read(&cfg.api.tls_key, "api.tls_key")?;
            let ca = read(&cfg.api.tls_client_ca, "api.tls_client_ca")?;
            // A client certificate chaining to `ca` is required (not optional).
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(cert, key))
                .client_ca_root(Certificate::from_pem(ca));
            let l = tokio::net::TcpListener::bind(&cfg.api.tcp_listen)
                .await
                .with_context(|| format!("binding api.tcp_listen {}", cfg.api.tcp_listen))?;
            Some((l, tls))
        };
        Ok(Listeners {
            unix,
            allowed_gid,
            tcp,
        })
    }

    /// Serves until `stop` turns true, then drains in-flight calls.
    pub async fn serve(
        self,
        groups: Arc<Supervisor>,
        caches: Arc<ImageCaches>,
        health: Arc<Health>,
        stop: watch::Receiver<bool>,
    ) -> Result<()> {
        let routes = routes(groups, caches, health).await?;
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let unix = Server::builder()
            .layer(InterceptorLayer::new(api::auth::peer_check(
                self.allowed_gid,
            )))
            .add_routes(routes.clone())
            .serve_with_incoming_shutdown(
                // Accept whatever `:authority` a client sends over the socket.
                UnixListenerStream::new(self.unix).map(|conn| conn.map(LocalStream::new)),
                until(stop.clone()),
            );
        match self.tcp {
            None => unix.await.context("serving the unix socket")?,
            Some((listener, tls)) => {
                let tcp = Server::builder()
                    .tls_config(tls)
                    .context("api TLS configuration")?
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), until(stop));
                let (a, b) = tokio::join!(unix, tcp);
                a.context("serving the unix socket")?;
                b.context("serving TCP")?;
            }
        }
        Ok(())
    }
}
