//! `httpGet` with `scheme: HTTPS`, as kubelet does it: TLS without verifying the
//! server's certificate (a probe checks that the server answers, not who it is; pods
//! serve self-signed certificates all the time). The handshake's signatures are still
//! checked. Blocking, over a socket already connected inside the group's namespace: run
//! on the blocking pool.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate (kubelet's `InsecureSkipVerify` for probes).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Sends `request` over TLS on `stream` and returns the response, at most `limit`
/// bytes; every read and write waits at most `timeout`.
pub(crate) fn exchange(
    stream: TcpStream,
    request: &[u8],
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let peer = stream.peer_addr().map_err(|e| e.to_string())?;
    for r in [
        stream.set_read_timeout(Some(timeout)),
        stream.set_write_timeout(Some(timeout)),
        stream.set_nonblocking(false),
    ] {
        r.map_err(|e| e.to_string())?;
    }
    let conn = rustls::ClientConnection::new(
        config().map_err(|e| e.to_string())?,
        ServerName::from(peer.ip()),
    )
    .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    tls.write_all(request)
        .map_err(|e| format!("TLS with {peer}: {e}"))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
                if room == 0 {
                    break;
                }
            }
            // A server that closes without close_notify: what came is the answer.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !out.is_empty() => break,
            Err(e) => return Err(format!("TLS with {peer}: {e}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_server_answers() {
        let ck = rcgen::generate_simple_self_signed(vec!["probe.test".to_string()])
            .expect("certificate");
        let cert = CertificateDer::from(ck.cert.der().to_vec());
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
        let server = Arc::new(server);
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let conn = rustls::ServerConnection::new(server).expect("conn");
            let mut tls = rustls::StreamOwned::new(conn, s);
            let mut buf = [0u8; 1024];
            let n = tls.read(&mut buf).expect("read");
            assert!(buf[..n].starts_with(b"GET /"));
            tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .expect("write");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        let s = TcpStream::connect(addr).expect("connect");
        let got =
            exchange(s, b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(5), 1024).expect("exchange");
        assert!(got.starts_with(b"HTTP/1.1 204"), "{got:?}");
        t.join().expect("server");
    }
}
