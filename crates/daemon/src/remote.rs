//! The daemon's API for other hosts: TCP with mutual TLS (rustls), so that an operator (or
//! `starling group status --host https://…`) reads a fleet's state from one place. Every
//! caller presents a certificate signed by the configured client CA; a connection without
//! one, or with another CA's, ends in the handshake. Only reads are served (status, groups,
//! mounts, VMs, metrics): what changes a host stays on its unix socket. Bounded: at most
//! [`MAX_CONNECTIONS`] at once (more are closed on arrival) and [`HANDSHAKE`] for a TLS
//! handshake, each in a task of its own so a slow one holds up nobody.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

pub const MAX_CONNECTIONS: usize = 256;
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// `[remote_api]` of the configuration, checked.
#[derive(Debug, Clone)]
pub struct RemoteApi {
    pub listen: SocketAddr,
    /// This daemon's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA whose certificates callers must present (PEM).
    pub client_ca: PathBuf,
}

impl RemoteApi {
    /// The TLS configuration: the files read and checked (the key private to its owner).
    pub fn tls(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        server_config(&self.cert, &self.key, &self.client_ca)
    }
}

/// A server's TLS that requires client certificates of `client_ca` (mutual TLS).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = certificates(cert, "cert")?;
    let key = private_key(key)?;
    let roots = roots(client_ca, "client_ca")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client_ca {}: {e}", client_ca.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert {}: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

/// A client's TLS that presents `cert` and trusts only servers of `ca`.
pub fn client_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let certs = certificates(cert, "cert")?;
    let key = private_key(key)?;
    let roots = roots(ca, "ca")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("cert {}: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    private_to_owner(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("key {}: {e}", path.display()))
}

fn roots(path: &Path, what: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(path, what)? {
        roots
            .add(c)
            .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A key file others may read is refused, as ssh refuses such a private key.
fn private_to_owner(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(p).map_err(|e| format!("key {}: {e}", p.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "key {}: others may read it (mode {:o}); chmod 600 it",
            p.display(),
            md.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// An authenticated connection, holding its place among [`MAX_CONNECTIONS`].
pub struct Conn {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// What axum serves from: connections whose handshake succeeded.
pub struct TlsListener {
    rx: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor ended (its listener failed): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Binds `api.listen` and starts accepting: each connection's handshake in a task of its
/// own, within the bounds above.
pub async fn listen(api: &RemoteApi) -> Result<TlsListener, String> {
    let tls = api.tls()?;
    let tcp = TcpListener::bind(api.listen)
        .await
        .map_err(|e| format!("remote_api listen {}: {e}", api.listen))?;
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut said_full = false;
        loop {
            let (stream, addr) = match tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("remote API: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if !said_full {
                    tracing::warn!(
                        "remote API: {MAX_CONNECTIONS} connections open; closing new ones until some end"
                    );
                    said_full = true;
                }
                continue;
            };
            said_full = false;
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((Conn { tls, _slot: slot }, addr)).await;
                    }
                    Ok(Err(e)) => tracing::info!(peer = %addr, "remote API: refused: {e}"),
                    Err(_) => {
                        tracing::info!(peer = %addr, "remote API: no TLS handshake within {}s", HANDSHAKE.as_secs())
                    }
                }
            });
        }
    });
    Ok(TlsListener { rx, local })
}
