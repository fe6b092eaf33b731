//! Snapshots: everything a VM is besides its RAM, as one versioned, checksummed state file
//! (`file.rs`), captured from and restored into KVM (`kvm.rs`) and the devices.
//!
//! A snapshot directory holds `state`, `memory` (RAM as a sparse file, mapped MAP_PRIVATE on
//! restore), `memory.map` (which pages hold data, with their BLAKE3, for lazy restores) and the
//! frozen disk overlays the VM had written to (`disk<N>.layer<M>`).

pub mod file;
pub mod kvm;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;

pub use file::FORMAT_VERSION;
pub use kvm::{KvmVmState, VcpuState};

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
pub const MEMORY_MAP_FILE: &str = "memory.map";

/// The VM at one instant, without its RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The config it was built from; a restore starts from it and changes what it is told to.
    pub config: VmConfig,
    pub mem_bytes: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: KvmVmState,
    pub serial: SerialSnap,
    /// Virtio transports in the order of their MMIO windows.
    pub transports: Vec<TransportSnap>,
    pub vsock: Option<VsockSnap>,
    /// Per disk, its layers bottom-up.
    pub disks: Vec<Vec<LayerSnap>>,
    /// Which clone this is (0: the original).
    pub clone_id: u32,
    /// BLAKE3 of `memory.map` (page number and BLAKE3 of every page with data), for
    /// snapshots written to a directory: what a lazy restore checks each fetched page against.
    pub memory_map: Option<[u8; 32]>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SerialSnap {
    pub regs: [u8; 9],
    pub in_buffer: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct QueueSnap {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TransportSnap {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub active: bool,
    pub queues: Vec<QueueSnap>,
    pub broken: Option<String>,
}

/// One layer of a disk: the base file (every block present) or a copy-on-write overlay with
/// the blocks it holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerSnap {
    pub path: std::path::PathBuf,
    /// None for the base; otherwise one bit per block present.
    pub present: Option<Vec<u64>>,
    /// The base's size and modification time (seconds, nanoseconds) when the snapshot was
    /// taken: a base written since then would silently corrupt every restore, so it is refused.
    pub stamp: Option<(u64, i64, i64)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VsockSnap {
    pub conns: Vec<ConnSnap>,
    /// Control packets (headers) not yet delivered to the guest.
    pub control: Vec<Vec<u8>>,
    pub next_port: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnSnap {
    pub local_port: u32,
    pub peer_port: u32,
    pub established: bool,
    /// A connection to the monitor's own service (fork, join, identity): it survives into
    /// restored VMs and clones; others are reset there (their host ends do not exist).
    pub service: bool,
    pub fwd_cnt: u32,
    pub announced_fwd: u32,
    pub rx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    pub host_done: bool,
    pub guest_done: bool,
    /// Guest bytes not yet taken by the host side.
    pub pending: Vec<u8>,
    /// Host bytes not yet given to the guest.
    pub outbox: Vec<u8>,
    /// Service requests the guest sent that had no answer yet (answered again on restore),
    /// and the start of a request line not yet complete.
    pub unanswered: Vec<String>,
    pub partial: Vec<u8>,
}
