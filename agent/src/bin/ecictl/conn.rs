//! Connecting to the agent: the local Unix socket by default, TCP + mutual TLS on demand.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(clap::Args, Debug)]
pub struct ConnArgs {
    /// The agent's Unix socket.
    #[arg(
        long,
        global = true,
        env = "ECI_SOCKET",
        default_value = "/run/eci/agent.sock"
    )]
    socket: PathBuf,
    /// Agent TCP address (https://HOST:PORT) instead of the socket; needs --ca, --cert, --key.
    #[arg(long, global = true, env = "ECI_ADDRESS")]
    address: Option<String>,
    /// PEM CA that signed the agent's certificate.
    #[arg(long, global = true, env = "ECI_CA")]
    ca: Option<PathBuf>,
    /// PEM client certificate.
    #[arg(long, global = true, env = "ECI_CERT")]
    cert: Option<PathBuf>,
    /// PEM key of --cert.
    #[arg(long, global = true, env = "ECI_KEY")]
    key: Option<PathBuf>,
    /// Name to verify in the agent's certificate (default: the address's host).
    #[arg(long, global = true)]
    tls_server_name: Option<String>,
}

pub async fn connect(a: &ConnArgs) -> Result<Channel> {
    match &a.address {
        Some(addr) => {
            let read = |p: &Option<PathBuf>, flag: &str| -> Result<Option<Vec<u8>>> {
                p.as_ref()
                    .map(|p| {
                        std::fs::read(p).with_context(|| format!("reading {flag} {}", p.display()))
                    })
                    .transpose()
            };
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = read(&a.ca, "--ca")? {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let (Some(c), Some(k)) = (read(&a.cert, "--cert")?, read(&a.key, "--key")?) {
                tls = tls.identity(Identity::from_pem(c, k));
            }
            if let Some(n) = &a.tls_server_name {
                tls = tls.domain_name(n.clone());
            }
            let ep = Endpoint::from_shared(addr.clone())
                .with_context(|| format!("--address {addr:?}"))?
                .tls_config(tls)
                .context("TLS configuration")?;
            ep.connect()
                .await
                .with_context(|| format!("connecting to {addr}"))
        }
        None => {
            let path = a.socket.clone();
            // The URI is required by the HTTP/2 layer but unused: the connector dials the socket.
            Endpoint::from_static("http://agent.local")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .with_context(|| format!("connecting to the agent at {}", a.socket.display()))
        }
    }
}
