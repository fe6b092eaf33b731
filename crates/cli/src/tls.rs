//! Certificates for what Starling does between hosts: the client side of a host's remote API
//! (`group status --host https://…`), and memory servers on `tls://` (`vm memory-server`,
//! `vm restore --lazy`): one fleet CA, a certificate and key per host or operator, given by
//! flags or by `STARLING_TLS_CERT`, `STARLING_TLS_KEY`, `STARLING_TLS_CA` (paths: nothing
//! secret travels in an argument list).

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use starling_vmm::lazy::{Stream, TlsWrap, IO_TIMEOUT};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Certificate (PEM) signed by the fleet's CA: the client's for https hosts and tls://
    /// memory servers, the server's for `vm memory-server --listen tls://…`
    #[arg(long, env = "STARLING_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM, 0600)
    #[arg(long, env = "STARLING_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The fleet's CA (PEM): the only one trusted for the other side's certificate
    #[arg(long, env = "STARLING_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The three files, or what is missing.
    fn files(&self, need: &str) -> Result<(&PathBuf, &PathBuf, &PathBuf), String> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(c), Some(k), Some(a)) => Ok((c, k, a)),
            _ => Err(format!(
                "{need} needs --tls-cert, --tls-key and --tls-ca (or STARLING_TLS_CERT, \
                 STARLING_TLS_KEY, STARLING_TLS_CA): a certificate of the fleet's CA"
            )),
        }
    }

    /// An HTTPS client presenting the certificate and trusting only the CA.
    pub fn client(&self) -> Result<reqwest::Client, String> {
        let (cert, key, ca) = self.files("an https host")?;
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend(read(key)?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            format!(
                "{} and {}: {}",
                cert.display(),
                key.display(),
                starling_store::innermost(&e)
            )
        })?;
        let ca_cert = reqwest::Certificate::from_pem(&read(ca)?)
            .map_err(|e| format!("{}: {}", ca.display(), starling_store::innermost(&e)))?;
        reqwest::Client::builder()
            .identity(id)
            .tls_certs_only([ca_cert])
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| starling_store::innermost(&e))
    }

    /// Gives this process TLS for `tls://` memory server addresses when any of `addrs` is one
    /// (the files read now, before a memory server confines itself).
    pub fn for_memory(&self, addrs: &[&str]) -> anyhow::Result<()> {
        if !addrs.iter().any(|a| a.starts_with("tls://")) {
            return Ok(());
        }
        let (cert, key, ca) = self
            .files("a tls:// memory server")
            .map_err(anyhow::Error::msg)?;
        let server =
            starling_daemon::remote::server_config(cert, key, ca).map_err(anyhow::Error::msg)?;
        let client =
            starling_daemon::remote::client_config(cert, key, ca).map_err(anyhow::Error::msg)?;
        // The first random bytes make aws-lc look for a VM generation device
        // (/dev/sysgenid): done now, before a memory server's filter would refuse the look.
        let mut warm = [0u8; 32];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut warm)
            .map_err(|_| anyhow::anyhow!("no random numbers for TLS"))?;
        starling_vmm::lazy::use_tls(Box::new(MemoryTls { server, client }));
        Ok(())
    }
}

/// rustls for memory servers and their clients, both sides presenting certificates.
struct MemoryTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// Drives a handshake to its end on `s` (each read within the socket's timeout).
fn handshake<C, D>(conn: &mut C, s: &mut TcpStream) -> std::io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
{
    while conn.is_handshaking() {
        conn.complete_io(s)?;
    }
    Ok(())
}

impl TlsWrap for MemoryTls {
    fn accept(&self, mut s: TcpStream) -> std::io::Result<Box<dyn Stream>> {
        let mut conn =
            rustls::ServerConnection::new(self.server.clone()).map_err(std::io::Error::other)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        handshake(&mut conn, &mut s)?;
        // Authenticated: it may idle between requests, as a host's memory server does.
        s.set_read_timeout(None)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, s)))
    }

    fn connect(&self, host: &str, mut s: TcpStream) -> std::io::Result<Box<dyn Stream>> {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
        let mut conn = rustls::ClientConnection::new(self.client.clone(), name)
            .map_err(std::io::Error::other)?;
        handshake(&mut conn, &mut s)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, s)))
    }
}
