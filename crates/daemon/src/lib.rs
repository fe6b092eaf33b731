//! starlingd: one per host. It owns the host cache (every mount and VM shares it, so an
//! object is fetched once per host) and the lazy mounts, and answers a JSON API on a unix
//! socket (`api`, documented in docs/api/starlingd.openapi.yaml). `client` is the other end,
//! used by the `starling` command.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod args;
pub mod caller;
pub mod client;
pub mod config;
pub mod groups;
pub mod kernels;
pub mod local;
pub mod log;
pub mod metrics;
pub mod mounts;
pub mod objects;
pub mod pools;
pub mod remote;
pub mod run;
pub mod server;
pub mod sources;
pub mod vms;

use std::path::PathBuf;
use std::time::Duration;

/// Where the daemon keeps its state and listens, unless told otherwise.
pub const DEFAULT_STATE: &str = "/var/lib/starling";
pub const DEFAULT_SOCKET: &str = "/run/starling/starlingd.sock";

#[derive(Debug, Clone)]
pub struct Config {
    /// State directory: `cache/` (the host cache, a Starling store), `mounts.json`.
    pub state: PathBuf,
    pub socket: PathBuf,
    /// Host cache size limit, bytes.
    pub quota: u64,
    /// Per-request timeout towards repositories.
    pub timeout: Duration,
    /// Where a scraper reads `GET /metrics` over TCP (the API socket serves it too).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// HTTP caching proxies towards every repository (empty: as the environment says).
    pub proxies: Vec<starling_repo::mirrors::Proxy>,
    /// The repositories the configuration file lists (empty: any, trusted at first contact).
    pub repositories: Vec<config::Repository>,
    /// The file they came from, for messages.
    pub config_file: Option<PathBuf>,
    /// This host's labels, and the groups it follows.
    pub labels: std::collections::BTreeMap<String, String>,
    pub groups: Vec<config::GroupFollow>,
    /// The API for other hosts (TCP, mutual TLS), when configured.
    pub remote_api: Option<remote::RemoteApi>,
    /// Other local users the API socket serves.
    pub users: config::Users,
}

impl Config {
    /// Where monitors read their images' objects (beside the API socket).
    pub fn objects_socket(&self) -> PathBuf {
        self.socket.with_file_name("objects.sock")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The repository or its content failed (unreachable, refused verification).
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Internal(String),
    /// The caller may not do this (another user's mount, a directory not theirs).
    #[error("{0}")]
    Forbidden(String),
}

#[cfg(test)]
mod tests;
