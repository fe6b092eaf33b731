//! The daemon's HTTP API (JSON over a unix socket): the request and response shapes, shared
//! by the server and the `starling` client. Documented in docs/api/starlingd.openapi.yaml.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use starling_fs::CounterValues;
pub use starling_store::cache::{CacheStats, VerifyReport};

pub const API_VERSION: &str = "v1";

/// Where a mount's image comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A local Starling store.
    Store { store: PathBuf, image: String },
    /// A repository (URL or directory), through the host cache.
    Repo {
        url: String,
        image: String,
        /// Trusted root metadata for the first contact with this repository.
        #[serde(default)]
        root: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRequest {
    pub mountpoint: PathBuf,
    pub source: Source,
    /// Record the objects the workload touches into this file (written at unmount).
    #[serde(default)]
    pub record: Option<PathBuf>,
    /// A recorded list to fetch in the background from the start.
    #[serde(default)]
    pub prefetch: Option<PathBuf>,
    /// A copy-on-write upper layer (kernel overlayfs over the lazy image) whose changes
    /// `POST /v1/commit` stores as a new version; discarded at unmount.
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    pub mountpoint: PathBuf,
    /// The store that receives the new version (the image's objects are copied into it
    /// first if they are not there).
    pub store: PathBuf,
    /// NAME:TAG for the new version.
    pub image: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitInfo {
    pub image: String,
    pub version: String,
    pub parent: String,
    /// Entries put and removed by the changes.
    pub put: usize,
    pub removed: usize,
    /// Objects of the mounted image copied into the store first.
    pub copied: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    /// `store:PATH` or the repository URL.
    pub source: String,
    pub image: String,
    pub version: String,
    pub started_unix: u64,
    /// False once the file system was unmounted from outside the daemon.
    pub live: bool,
    pub counters: CounterValues,
    #[serde(default)]
    pub record: Option<PathBuf>,
    #[serde(default)]
    pub writable: bool,
    /// The upper (changes) directory of a writable mount.
    #[serde(default)]
    pub upper: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnmountRequest {
    pub mountpoint: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub api: String,
    pub version: String,
    pub state: PathBuf,
    pub mounts: usize,
    pub cache: CacheStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRequest {
    /// Evict unpinned objects down to this many bytes (default 0: all that can go).
    #[serde(default)]
    pub target_bytes: u64,
}

/// Every error response: `{"error": "..."}` with a 4xx/5xx status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
