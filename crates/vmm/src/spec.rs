//! How to restore a snapshot: where it is and what belongs to the new VM. The data
//! `starling-vmm --restore-json` takes; depends on nothing but the config's data types.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Console;

/// How to restore a snapshot: where it is and what belongs to the new VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    /// The snapshot directory (its `state`, and its `memory` unless `memory_fd` is given).
    pub dir: PathBuf,
    /// Map this inherited descriptor (a parent's frozen memfd) instead of `dir/memory`.
    #[serde(default)]
    pub memory_fd: Option<i32>,
    /// Restore as clone K: fresh identity, the fork's pending answer is K.
    #[serde(default)]
    pub clone_id: Option<u32>,
    /// The new VM's own directory: disk overlays, and its vsock socket unless `vsock_path`
    /// is given (default: a private directory per process in the user's runtime directory,
    /// see `builder::default_run_dir_of`).
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// Serve the API on this socket (none if not given).
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// The host side of the VM's vsock device, if it has one (default: `RUN_DIR/vsock.sock`).
    #[serde(default)]
    pub vsock_path: Option<PathBuf>,
    /// Where the serial console goes (default: stdio). Never taken from the snapshot: a
    /// console file belongs to the VM that wrote it.
    #[serde(default)]
    pub console: Option<Console>,
    /// An inherited pipe to write this clone's id to once its vCPUs run (with `release_fd`:
    /// once when they are ready to, and again once released).
    #[serde(default)]
    pub ready_fd: Option<i32>,
    /// An inherited pipe's read end: the vCPUs stay paused until it closes. A fork's clones
    /// are released together once every one is restored, so that clones still restoring do
    /// not compete for the CPUs with clones already running.
    #[serde(default)]
    pub release_fd: Option<i32>,
    /// Create this empty file once the VM is ready, when `ready_fd` hears it (after the
    /// release, for a held VM): a substrate docked in the background marks its pool slot
    /// free itself, so whoever docked it need not wait. Relative paths are refused.
    #[serde(default)]
    pub ready_file: Option<PathBuf>,
    /// Start with the vCPUs paused (a docked substrate, waiting for `activate` or `resume`).
    #[serde(default)]
    pub paused: bool,
    /// Answer the guest's `ready` with this (`activate …`, see service.rs) right away.
    #[serde(default)]
    pub activate: Option<String>,
    /// Fetch state and memory from this memory server (`ADDR#HASH`: the state must have that
    /// BLAKE3) instead of `dir`, each page when the guest first touches it.
    #[serde(default)]
    pub lazy: Option<String>,
    /// A TAP for each network device named here (`net0` → `tap3`; an empty name leaves the
    /// device detached, link down). Devices not named keep the snapshot's TAP, except in a
    /// clone, whose devices are detached unless named (two VMs on one TAP would see each
    /// other's frames).
    #[serde(default)]
    pub taps: std::collections::BTreeMap<String, String>,
    /// Network attachments made for this VM (`--net nat`): a device's TAP, made persistent
    /// for it (the monitor takes it over, so that it goes with the VM), and the guest's address
    /// on it, which the guest's agent learns from `whoami`. Overrides `taps` for that device.
    #[serde(default)]
    pub networks: std::collections::BTreeMap<String, NetAttach>,
    /// The daemon's object socket for image roots (virtio-fs), when it is not where the
    /// snapshot's host had it.
    #[serde(default)]
    pub objects_socket: Option<PathBuf>,
    /// An inherited descriptor of the fork budget this VM shares with the VM it was cloned
    /// from (`budget.rs`); without one a restore starts a budget of its own.
    #[serde(default)]
    pub budget_fd: Option<i32>,
}

/// A TAP made for one VM and the address its guest takes there (see [`RestoreSpec::networks`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetAttach {
    pub tap: String,
    /// The kernel's `ip=` form: `ADDR::GW:MASK:HOST:DEV:off:DNS`.
    pub ip: String,
}
