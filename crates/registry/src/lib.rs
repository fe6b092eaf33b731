//! OCI distribution registries (the Docker Registry HTTP API v2 that Docker Hub, ghcr.io,
//! quay.io, Harbor and `docker-registry` speak): an image pulled into an OCI image layout, and
//! a layout's image pushed. starling-image imports and exports the layouts, so a registry
//! image goes through the same verified layer code as `oci:DIR`.
//!
//! The protocol is oci-client's (token and basic authentication, chunked uploads); the
//! choices are ours: the linux/amd64 image of an index, every blob checked against its digest
//! and size as it arrives, blobs the registry has already skipped on push, and loopback
//! registries spoken to over plain HTTP (as docker does), everything else over HTTPS.

#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod pull;
pub mod push;
pub mod reference;
pub mod upload;

pub use error::{Error, Result};
pub use reference::RegistryRef;

/// Options of a registry session.
#[derive(Debug, Clone)]
pub struct Options {
    pub auth: auth::Credentials,
    /// A request that sends nothing for this long fails.
    pub timeout: std::time::Duration,
    /// Blobs fetched or sent at once.
    pub parallel: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth: auth::Credentials::Anonymous,
            timeout: std::time::Duration::from_secs(30),
            parallel: 4,
        }
    }
}

/// Blobs (as `files`) and bytes moved so far, for a progress display.
pub use starling_image::chunk::Progress;

/// A registry that does not accept a connection in this long is unreachable.
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The client for `r`: plain HTTP to a loopback registry, HTTPS to any other.
pub(crate) fn client(r: &RegistryRef, opts: &Options) -> oci_client::Client {
    use oci_client::client::{ClientConfig, ClientProtocol};
    let protocol = if r.is_loopback() {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    oci_client::Client::new(ClientConfig {
        protocol,
        read_timeout: Some(opts.timeout),
        connect_timeout: Some(CONNECT_TIMEOUT),
        max_concurrent_download: opts.parallel.max(1),
        max_concurrent_upload: opts.parallel.max(1),
        ..ClientConfig::default()
    })
}

/// The runtime registry sessions run on (the command line is otherwise synchronous).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            what: "the async runtime".into(),
            source: e,
        })
}
