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
    /// Said when the mount was made from what the host last verified, its repository
    /// unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The user who made it (their rights opened what the request named).
    #[serde(default)]
    pub owner: u32,
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

/// `POST /v1/vms`: boot an image as a VM (`starling run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    /// The VM's name (default: from the image, with a random suffix).
    #[serde(default)]
    pub name: Option<String>,
    pub source: Source,
    /// The store kernels are looked up in (`--kernel REF`, `debian-kernel:*`).
    pub store: PathBuf,
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// A kernel image in the store (`debian-kernel:RELEASE`), a directory holding
    /// `boot/vmlinuz-RELEASE` and `lib/modules/RELEASE/`, or a kernel file (bzImage or ELF)
    /// with what the run init needs built in; default: the image's own, else the newest
    /// kernel image in the store.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Appended to the kernel's command line (e.g. `systemd.unit=rescue.target`).
    #[serde(default)]
    pub kernel_args: Option<String>,
    /// The command to run as the image's init would (empty: boot the image's /sbin/init).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` for the command.
    #[serde(default)]
    pub env: Vec<String>,
    /// Remove the VM when it ends.
    #[serde(default)]
    pub rm: bool,
    /// Size of the writable layer (a sparse scratch disk), bytes.
    #[serde(default = "default_disk")]
    pub disk_bytes: u64,
    /// The VM's network: Starling's NAT bridge (the default) or none.
    #[serde(default)]
    pub net: RunNet,
    /// Guest ports published on the host (with `net: nat`).
    #[serde(default)]
    pub publish: Vec<starling_net::Publish>,
}

/// A `starling run` VM's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunNet {
    /// An address of its own on Starling's bridge, outbound NAT, published ports.
    #[default]
    Nat,
    None,
}

fn default_mem() -> u64 {
    512
}
fn default_vcpus() -> u8 {
    1
}
fn default_disk() -> u64 {
    8 << 30
}

impl RunRequest {
    /// How the user named the image (for messages that suggest a next command).
    pub fn image_arg(&self) -> String {
        match &self.source {
            Source::Store { image, .. } => image.clone(),
            Source::Repo { url, image, .. } => format!("{url} {image}"),
        }
    }
}

/// `POST /v1/pools`: a pool of an image's substrates. Each is booted as `starling run` boots
/// the image (the same boot artifact, root and scratch disk) until its guest says `ready`,
/// then docked; activated (`starling pool run`), it runs `run.cmd` with the activation's
/// environment, or the activation's arguments as its command (`/bin/sh -c ARGS`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolRequest {
    pub name: String,
    /// The VM, as for `starling run` (its name and `rm` are not used).
    pub run: RunRequest,
    /// Substrates kept waiting.
    pub size: u32,
    /// Seconds the first boot may take to reach `ready`.
    pub boot_timeout_secs: u64,
    /// The pools directory (the caller's `STARLING_POOLS`), where `pool run` finds it.
    pub pools: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// The monitor runs but does not answer its API yet.
    Starting,
    Running,
    Paused,
    Exited,
    /// The monitor is gone without a recorded end.
    Dead,
}

impl VmState {
    pub fn word(&self) -> &'static str {
        match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Exited => "exited",
            VmState::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    /// `NAME:TAG@SHORT` or `NAME@SHORT`.
    pub image: String,
    pub version: String,
    /// `repo:URL` or `store:PATH`.
    pub source: String,
    pub state: VmState,
    pub exit_status: Option<i32>,
    pub exit_reason: Option<String>,
    pub pid: Option<u32>,
    pub created_unix: u64,
    pub ended_unix: Option<u64>,
    pub mem_mib: u64,
    pub vcpus: u8,
    /// The monitor's resident memory (guest pages it touched and its own).
    pub rss_bytes: Option<u64>,
    pub cmd: Vec<String>,
    pub rm: bool,
    pub dir: PathBuf,
    pub console_socket: PathBuf,
    pub console_log: PathBuf,
    pub vsock_socket: PathBuf,
    pub api_socket: PathBuf,
    /// Its address on Starling's network (`--net nat`), and the ports published to it.
    #[serde(default)]
    pub address: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub ports: Vec<starling_net::Publish>,
    /// Said when the VM was created from what the host last verified, its repository
    /// unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `POST /v1/vms/NAME/stop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopRequest {
    /// Stop at once instead of asking the guest to power off first.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/vms/NAME/commit`: the VM's writable layer as a new image version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmCommitRequest {
    pub store: PathBuf,
    /// NAME:TAG for the new version.
    pub image: String,
}

/// A followed group on this host (`GET /v1/groups`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    /// The repository that publishes it.
    pub repository: String,
    /// Whether the group's host selector takes this host (unknown until first verified).
    pub selected: Option<bool>,
    /// The newest generation verified in the repository.
    pub latest: Option<u64>,
    /// The generation this host converged to.
    pub generation: Option<u64>,
    /// This host is where the latest generation wants it (or is not selected).
    pub converged: bool,
    /// The images of the converged generation, held in the host cache.
    pub images: Vec<GroupImageStatus>,
    /// Why the last poll failed (the host stays at its generation meanwhile).
    pub error: Option<String>,
    /// When the repository was last polled (RFC 3339).
    pub checked: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupImageStatus {
    #[serde(rename = "ref")]
    pub reference: String,
    pub name: String,
    pub version: String,
    /// Objects and bytes read into the host cache for it.
    pub objects: u64,
    pub bytes: u64,
}
