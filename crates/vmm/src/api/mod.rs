//! The monitor's API: HTTP/1.1 with JSON bodies on a unix socket, one request per connection
//! (docs/api/vmm.md). This module holds only the data that crosses the socket, shared by the
//! server (`server.rs`, over any [`Controller`]) and the typed client (`client.rs`); it
//! depends on nothing else in the crate.
//!
//! GET /v1/vm → [`VmStatus`]; POST /v1/vm/pause, /v1/vm/resume → [`VmStatus`];
//! POST /v1/vm/stop → [`Stopping`]; POST /v1/vm/snapshot [`SnapshotRequest`] → [`SnapshotInfo`];
//! POST /v1/vm/fork [`ForkRequest`] → [`ForkInfo`]; POST /v1/vm/activate [`ActivateRequest`]
//! → [`VmStatus`]. Refusals answer `{"error": …}` ([`ErrorBody`]).

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use client::{call, Client, ClientError};

pub const PATH_VM: &str = "/v1/vm";
pub const PATH_PAUSE: &str = "/v1/vm/pause";
pub const PATH_RESUME: &str = "/v1/vm/resume";
pub const PATH_STOP: &str = "/v1/vm/stop";
pub const PATH_SNAPSHOT: &str = "/v1/vm/snapshot";
pub const PATH_FORK: &str = "/v1/vm/fork";
pub const PATH_ACTIVATE: &str = "/v1/vm/activate";

/// What a VM is doing, as its status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    Running,
    Paused,
    Stopping,
}

/// `GET /v1/vm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub state: Activity,
    /// The monitor's process.
    #[serde(default)]
    pub pid: u32,
    pub vcpus: u8,
    pub mem_mib: u64,
    /// The host's KVM flavour: `kvm_intel`, `kvm_amd` or `kvm_pvm`.
    pub kvm: String,
    pub uptime_ms: u64,
    pub clone_id: u32,
    /// For a restored VM or clone: from the start of the restore to its vCPUs running.
    pub restored_in_us: Option<u64>,
    /// For a lazily restored VM: what it fetched.
    pub lazy: Option<LazyStats>,
    /// The guest said `ready` to the monitor's service (booted, waiting to be activated).
    pub guest_ready: bool,
    /// Clones the guests of this VM's family may still fork (its shared fork budget).
    #[serde(default)]
    pub fork_budget_left: u32,
    /// Each virtio-fs device's figures since this monitor started.
    #[serde(default)]
    pub fs: Vec<FsStats>,
    /// Each network device: its TAP, MAC and traffic since this monitor started.
    #[serde(default)]
    pub net: Vec<NetStats>,
}

/// A network device's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    pub device: String,
    /// The TAP it is on (none: detached, link down).
    pub tap: Option<String>,
    pub mac: String,
    /// The guest's address there, when the VM's network gave it one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames lost: no guest buffer for them, detached, or refused by the TAP.
    pub dropped: u64,
    /// Descriptor chains from the guest that broke the device's rules.
    pub bad_chains: u64,
}

/// A virtio-fs device's figures: what the guest read through it, and where the objects
/// behind that came from (fetched from the origin by the daemon, or its host cache).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStats {
    pub device: String,
    /// File bytes returned to the guest's reads.
    pub read_bytes: u64,
    /// Object bytes fetched from the origin for this VM (manifests included).
    pub fetched_bytes: u64,
    /// Object bytes found in the host cache or a local store.
    pub cached_bytes: u64,
    /// READ requests, and requests answered with an error.
    pub reads: u64,
    pub errors: u64,
    /// Every FUSE request the device answered, by opcode name, and the time its workers
    /// spent on them (microseconds; parallel requests add up).
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub ops: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub busy_us: u64,
    /// The largest READ reply (bytes): how far the guest's read-ahead reaches.
    #[serde(default)]
    pub largest_read: u64,
}

/// What a lazily restored VM fetched: pages with data, zero pages filled in place, bytes
/// received from its memory server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyStats {
    pub pages_fetched: u64,
    pub zero_pages: u64,
    pub bytes_received: u64,
}

/// `POST /v1/vm/snapshot`: write a snapshot into `dir` (absent or empty); then stop, or go on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub dir: PathBuf,
    #[serde(default)]
    pub stop: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub dir: PathBuf,
    /// Bytes of RAM written (pages that hold data).
    pub memory_bytes: u64,
    pub state_bytes: u64,
    /// How long the guest was paused.
    pub paused_us: u64,
}

/// `POST /v1/vm/fork`: `count` clones, their directories under `dir` (default: the VM's run
/// directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    pub count: u32,
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForkInfo {
    pub dir: PathBuf,
    pub clones: Vec<CloneInfo>,
    /// How long the parent was paused.
    pub paused_us: u64,
    /// From the request to every clone running.
    pub total_us: u64,
}

/// A clone as its parent knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloneInfo {
    pub id: u32,
    pub pid: u32,
    pub dir: PathBuf,
    pub api_socket: Option<PathBuf>,
    pub vsock: Option<PathBuf>,
}

/// `POST /v1/vm/activate`: the answer to the guest's pending `ready` (`activate K=V … -- A`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub args: Option<String>,
    /// Put the first network device on this TAP (made for the VM, which takes it over) with
    /// this address, and a MAC of its own, before the guest hears its configuration.
    #[serde(default)]
    pub network: Option<crate::spec::NetAttach>,
}

/// `POST /v1/vm/stop`: `{"state": "stopping"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stopping {
    pub state: Activity,
}

/// Every refusal: 400 bad request body, 404 unknown path, 405 wrong method, 409 refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a request was refused: the HTTP status and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub message: String,
}

impl Refusal {
    /// 409: the request is well-formed but the VM cannot do it now.
    pub fn conflict(message: impl Into<String>) -> Self {
        Refusal {
            code: 409,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Refusal {
            code: 400,
            message: message.into(),
        }
    }
}

/// What the server serves: a running VM (the monitor's `VmHandle`), or anything else that
/// answers the same requests.
pub trait Controller: Send + Sync + 'static {
    fn status(&self) -> VmStatus;
    /// Returns once every vCPU is out of the guest.
    fn pause(&self) -> VmStatus;
    fn resume(&self) -> VmStatus;
    fn stop(&self);
    fn snapshot(&self, req: &SnapshotRequest) -> Result<SnapshotInfo, Refusal>;
    fn fork(&self, req: &ForkRequest) -> Result<ForkInfo, Refusal>;
    fn activate(&self, req: &ActivateRequest) -> Result<VmStatus, Refusal>;
}
