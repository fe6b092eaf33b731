//! Snapshots: everything a VM is besides its RAM, as one versioned, checksummed state file
//! (`file.rs`), saved from KVM (`kvm.rs`) and each device's own `Persist` impl, put together
//! by `save.rs`; `builder.rs` restores from it.
//!
//! A snapshot directory holds `state`, `memory` (RAM as a sparse file, mapped MAP_PRIVATE on
//! restore), `memory.map` (which pages hold data, with their BLAKE3, for lazy restores) and the
//! frozen disk overlays the VM had written to (`disk<N>.layer<M>`).

pub mod file;
pub mod key;
pub mod kvm;
pub mod save;

use serde::{Deserialize, Serialize};

use crate::config::MAX_VCPUS;
use crate::devices::serial::SerialState;
use crate::virtio::state::VirtioState;
use crate::Error;

pub use file::FORMAT_VERSION;
pub use kvm::{KvmVmState, VcpuState};

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
pub const MEMORY_MAP_FILE: &str = "memory.map";

/// The VM at one instant, without its RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// What the VM is: what a restore builds before it sets any state.
    pub info: VmInfo,
    /// Which clone this is (0: the original).
    pub clone_id: u32,
    /// BLAKE3 of `memory.map` (page number and BLAKE3 of every page with data), for
    /// snapshots written to a directory: what a lazy restore checks each fetched page against.
    pub memory_map: Option<[u8; 32]>,
    pub vcpus: Vec<VcpuState>,
    pub kvm: KvmVmState,
    pub serial: SerialState,
    /// Virtio devices in the order of `info.devices` (and of their MMIO windows).
    pub devices: Vec<VirtioState>,
}

/// What a VM is, apart from what it is doing: its size and its devices. Not how it was wired
/// to the host (console, sockets, its directory: a restore chooses its own) nor how it was
/// booted (kernel, command line: a restored VM never boots).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub mem_mib: u64,
    pub vcpus: u8,
    /// The guest's hostname as the monitor's service tells it (clone K of it: `NAME-K`).
    pub hostname: String,
    /// Virtio devices, in the order of their MMIO windows.
    pub devices: Vec<DeviceInfo>,
}

/// A virtio device: its name in the VM and its virtio device type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    pub device_type: u32,
}

impl VmInfo {
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }

    /// Whether the VM has a device of this virtio type.
    pub fn has(&self, device_type: u32) -> bool {
        self.devices.iter().any(|d| d.device_type == device_type)
    }
}

impl VmState {
    /// The devices whose state names host resources a restore opens or attaches to: disks
    /// (their files), virtio-fs (its store or object socket), network devices (their TAP).
    pub fn host_resources(&self) -> Vec<String> {
        use crate::virtio::state::DeviceState;
        self.info
            .devices
            .iter()
            .zip(&self.devices)
            .filter_map(|(d, s)| match s.device {
                DeviceState::Block(_) => Some(format!("disk {}", d.id)),
                DeviceState::Fs(_) => Some(format!("virtio-fs {}", d.id)),
                DeviceState::Net(_) => Some(format!("network device {}", d.id)),
                _ => None,
            })
            .collect()
    }

    /// Checks that the parts of the state agree with each other and with the limits a VM is
    /// built within (a state file is input like any other).
    pub fn check(&self) -> Result<(), String> {
        let i = &self.info;
        if i.vcpus == 0 || i.vcpus > MAX_VCPUS || self.vcpus.len() != usize::from(i.vcpus) {
            return Err(format!(
                "{} vCPU states for {} vCPUs",
                self.vcpus.len(),
                i.vcpus
            ));
        }
        if i.mem_mib < crate::config::MIN_MEM_MIB || i.mem_mib > 1 << 20 {
            return Err(format!("{} MiB of memory", i.mem_mib));
        }
        if self.devices.len() != i.devices.len() {
            return Err(format!(
                "{} device states for {} devices",
                self.devices.len(),
                i.devices.len()
            ));
        }
        for (d, s) in i.devices.iter().zip(&self.devices) {
            if s.transport.device_type != d.device_type {
                return Err(format!(
                    "device {} is of type {}, its state of type {}",
                    d.id, d.device_type, s.transport.device_type
                ));
            }
        }
        crate::config::check_hostname(&i.hostname).map_err(|e| e.to_string())
    }
}

/// Reads and checks the state file in a snapshot directory. A state that names host
/// resources (`VmState::host_resources`) is used only when its MAC was made with this user's
/// key (`key.rs`): a restore opens what it names with its user's rights.
pub fn read(dir: &std::path::Path) -> Result<VmState, Error> {
    let key = key::get();
    let (state, mac) = file::read(&dir.join(STATE_FILE), key.ok())?;
    let refuse = |reason: String| Error::Snapshot {
        path: dir.to_owned(),
        reason,
    };
    state.check().map_err(refuse)?;
    let named = state.host_resources();
    if named.is_empty() || mac == file::Mac::Valid {
        return Ok(state);
    }
    let named = named.join(", ");
    Err(refuse(match (mac, key) {
        (_, Err(e)) => {
            format!("its state names host resources ({named}) and its MAC cannot be checked: {e}")
        }
        (file::Mac::Absent, _) => format!(
            "its state names host resources ({named}) and carries no MAC (written by a \
             Starling before 2026-11-28, or altered): not opening what it names"
        ),
        (_, Ok(k)) => format!(
            "its state names host resources ({named}) and its MAC was not made with this \
             user's snapshot key {} (written by another user or host, or altered since): not \
             opening what it names; hosts that restore each other's snapshots share one key \
             (STARLING_SNAPSHOT_KEY)",
            k.path().display()
        ),
    }))
}

/// Writes `state` to `path` signed with this user's key; a state that names host resources
/// is not written without it.
pub fn write_state(path: &std::path::Path, state: &VmState) -> Result<(), Error> {
    let key = match key::get() {
        Ok(k) => Some(k),
        Err(_) if state.host_resources().is_empty() => None,
        Err(e) => {
            return Err(Error::Invalid(format!(
                "{e}: a snapshot of a VM with disks, shared file systems or network devices is \
                 signed with it"
            )))
        }
    };
    file::write(path, state, key)
}
