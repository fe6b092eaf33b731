//! Virtio devices over the MMIO transport. Each device sees its queues as lists of descriptor
//! chains read through bounds-checked guest memory; a chain that breaks the device's rules fails
//! that request, and a ring the driver corrupted marks the device as needing reset.

pub mod blk;
pub mod fs;
pub mod layers;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod state;
pub mod vsock;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{desc::split::Descriptor, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use crate::spec::RestoreSpec;

pub use mmio::MmioTransport;

pub const TYPE_NET: u32 = net::TYPE_NET;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// The driver and the device tell each other how far to go before the next notification
/// (`used_event`, `avail_event`): most kicks and interrupts of a busy queue are saved.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt: the status register it shares with the transport and the irqfd.
#[derive(Clone)]
pub struct IrqLine {
    pub status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl IrqLine {
    pub fn new(evt: EventFd) -> Self {
        IrqLine {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }
}

/// The queues of an activated device and the memory they point into.
pub struct Queues {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
}

/// A request as the driver posted it: the chain's head and its descriptors in order.
#[derive(Debug)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Descriptor>,
}

/// The driver corrupted a ring (not just one request): the device must be reset.
#[derive(Debug, thiserror::Error)]
#[error("virtqueue {queue}: {reason}")]
pub struct QueueBroken {
    pub queue: usize,
    pub reason: String,
}

impl Queues {
    /// Takes every chain the driver made available on queue `index`.
    pub fn pop_all(&mut self, index: usize) -> Result<Vec<Chain>, QueueBroken> {
        let mem = &self.mem;
        let q = queue_mut(&mut self.queues, index)?;
        let iter = q.iter(mem).map_err(|e| QueueBroken {
            queue: index,
            reason: format!("available ring: {e}"),
        })?;
        Ok(iter
            .map(|chain| Chain {
                head: chain.head_index(),
                descs: chain.collect(),
            })
            .collect())
    }

    /// Takes one chain from queue `index`, if any. A driver that claims more chains than
    /// the queue holds, or an available ring outside memory, broke the ring.
    pub fn pop_one(&mut self, index: usize) -> Result<Option<Chain>, QueueBroken> {
        let mem = &self.mem;
        let q = queue_mut(&mut self.queues, index)?;
        let broken = |reason: String| QueueBroken {
            queue: index,
            reason,
        };
        if !q.ready() {
            return Ok(None);
        }
        let avail = q
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|e| broken(format!("available ring: {e}")))?;
        if avail.0 == q.next_avail() {
            return Ok(None);
        }
        let mut iter = q
            .iter(mem)
            .map_err(|e| broken(format!("available ring: {e}")))?;
        let chain = iter
            .next()
            .ok_or_else(|| broken("available ring entry outside guest memory".into()))?;
        Ok(Some(Chain {
            head: chain.head_index(),
            descs: chain.collect(),
        }))
    }

    /// Puts a chain back (the device could not use it yet).
    pub fn undo_pop(&mut self, index: usize) {
        if let Some(q) = self.queues.get_mut(index) {
            q.go_to_previous_position();
        }
    }

    /// Asks the driver to stop kicking queue `index` while the device drains it (without
    /// EVENT_IDX; with it, the driver kicks only past the last `enable_notification`).
    pub fn disable_notification(&mut self, index: usize) -> Result<(), QueueBroken> {
        let mem = &self.mem;
        let q = queue_mut(&mut self.queues, index)?;
        q.disable_notification(mem).map_err(|e| QueueBroken {
            queue: index,
            reason: format!("used ring: {e}"),
        })
    }

    /// Asks the driver to kick queue `index` for the next chain it posts; true when chains
    /// were posted meanwhile (the device drains again rather than wait for a kick that may
    /// never come).
    pub fn enable_notification(&mut self, index: usize) -> Result<bool, QueueBroken> {
        let mem = &self.mem;
        let q = queue_mut(&mut self.queues, index)?;
        q.enable_notification(mem).map_err(|e| QueueBroken {
            queue: index,
            reason: format!("rings: {e}"),
        })
    }

    /// Asks the driver to kick queue `index` when it posts a chain beyond those it has
    /// posted now (a device that put back chains too small for what it holds waits for more,
    /// not for the ones it put back); true when the driver posted one meanwhile.
    pub fn wait_for_more(&mut self, index: usize) -> Result<bool, QueueBroken> {
        use std::sync::atomic::{fence, Ordering};
        use vm_memory::{Address, Bytes};
        let mem = &self.mem;
        let q = queue_mut(&mut self.queues, index)?;
        let broken = |e: String| QueueBroken {
            queue: index,
            reason: format!("rings: {e}"),
        };
        let seen = q
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|e| broken(e.to_string()))?;
        if q.event_idx_enabled() {
            // avail_event sits after the used ring's entries (virtio 1.x §2.7.10).
            let at = vm_memory::GuestAddress(q.used_ring())
                .checked_add(4 + 8 * u64::from(q.size()))
                .ok_or_else(|| broken("used ring outside memory".into()))?;
            mem.write_obj(seen.0.to_le(), at)
                .map_err(|e| broken(e.to_string()))?;
        } else {
            q.enable_notification(mem)
                .map_err(|e| broken(e.to_string()))?;
        }
        fence(Ordering::SeqCst);
        let now = q
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|e| broken(e.to_string()))?;
        Ok(now != seen)
    }

    /// Whether the driver wants an interrupt for what the device used since it was last
    /// asked (EVENT_IDX's `used_event`; always without EVENT_IDX). Asks every queue, which
    /// resets each one's count.
    pub fn needs_interrupt(&mut self) -> bool {
        let mem = &self.mem;
        let mut needed = false;
        for q in &mut self.queues {
            // A used_event outside memory: interrupt, as a driver without EVENT_IDX would get.
            needed |= q.needs_notification(mem).unwrap_or(true);
        }
        needed
    }

    /// Returns a chain to the driver with `len` bytes written.
    pub fn add_used(&mut self, index: usize, head: u16, len: u32) -> Result<(), QueueBroken> {
        let mem = &self.mem;
        let q = queue_mut(&mut self.queues, index)?;
        q.add_used(mem, head, len).map_err(|e| QueueBroken {
            queue: index,
            reason: format!("used ring: {e}"),
        })
    }
}

fn queue_mut(queues: &mut [Queue], index: usize) -> Result<&mut Queue, QueueBroken> {
    queues.get_mut(index).ok_or_else(|| QueueBroken {
        queue: index,
        reason: "no such queue".into(),
    })
}

/// Takes the monitor's end of a new service connection (vsock host port `SERVICE_PORT`):
/// the guest's port, and the requests it had sent and not had answered when a snapshot was
/// taken (for connections restored from one).
pub type ServiceHandler = Arc<dyn Fn(UnixStream, u32, Vec<String>) + Send + Sync>;

/// What every virtio device is restored with (its `Persist::Args`): its name, where the
/// snapshot is, and what belongs to the new VM.
pub struct DeviceEnv<'a> {
    /// The device's name in the VM (`disk0`, `vsock`, …).
    pub id: &'a str,
    /// The snapshot directory: files a state names relatively are there.
    pub snapshot_dir: &'a Path,
    /// The new VM's own directory: new files (disk overlays, default sockets) go there.
    pub run_dir: &'a Path,
    /// The restore's own choices (socket paths …).
    pub spec: &'a RestoreSpec,
    /// The monitor's vsock service, for connections that continue into the new VM.
    pub service: &'a ServiceHandler,
}

/// What a virtio device implements; the transport does feature negotiation, queue setup,
/// interrupts and status. Its snapshot state is its `Persist` impl, beside it, named in
/// `state.rs`.
/// A file-system device's figures: the file system's (bytes read, where objects came from)
/// and the device's (requests by opcode, time spent answering).
#[derive(Clone)]
pub struct FsFigures {
    pub counters: Arc<starling_fs::Counters>,
    pub requests: Arc<fs::Requests>,
}

/// A network device's identity (it changes when a pool's activation attaches the device)
/// and counters, for the VM's status.
#[derive(Clone)]
pub struct NetFigures {
    pub live: Arc<std::sync::Mutex<NetIdentity>>,
    pub counters: Arc<net::NetCounters>,
}

#[derive(Clone, Debug)]
pub struct NetIdentity {
    pub tap: Option<String>,
    pub mac: crate::config::Mac,
    /// The guest's address (`ip=` form), when the VM's network gave it one.
    pub ip: Option<String>,
}

impl NetFigures {
    pub fn identity(&self) -> NetIdentity {
        crate::bus::lock(&self.live).clone()
    }
}

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_sizes(&self) -> &[u16];
    /// Features offered (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK having accepted `features`; `irq` stays valid until reset.
    fn activate(&mut self, _irq: IrqLine, _features: u64) {}
    /// The driver notified queue `index`; returns whether used buffers were added.
    fn notify(&mut self, index: usize, q: &mut Queues) -> Result<bool, QueueBroken>;
    /// The device's own event source fired (host-side input); returns whether used buffers
    /// were added.
    fn backend(&mut self, _q: &mut Queues) -> Result<bool, QueueBroken> {
        Ok(false)
    }
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Host-side input the device waits for: a thread of the monitor waits on it and runs
    /// `backend` when it fires.
    fn event_source(&self) -> Option<Arc<Epoll>> {
        None
    }
    /// A file-system device's figures: bytes the guest read, and the object bytes behind them
    /// fetched from the origin or read from the host cache (the VM's status shows them).
    fn fs_counters(&self) -> Option<FsFigures> {
        None
    }
    /// A network device's TAP, MAC and counters (the VM's status shows them).
    fn net_figures(&self) -> Option<NetFigures> {
        None
    }
    /// Eventfds in the device's `event_source` to be signalled by KVM itself when the driver
    /// kicks the queue of that index (ioeventfd): the kick costs the vCPU no exit to the
    /// monitor, and the device's thread serves the queue (in `backend`) while the guest goes
    /// on. Queues not named here are served on the vCPU that kicked.
    fn queue_kicks(&self) -> Vec<(usize, &EventFd)> {
        Vec::new()
    }
    /// The device as its own type (its snapshot state is saved by type, `state.rs`).
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}

/// Copies `out` into the chain's writable descriptors from `skip` bytes on; returns bytes written.
pub fn write_to_chain(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    mut skip: usize,
    mut out: &[u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    use vm_memory::{Address, Bytes};
    let mut written = 0;
    for d in descs.iter().filter(|d| d.is_write_only()) {
        let len = d.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len());
        let addr = d
            .addr()
            .checked_add(skip as u64)
            .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(d.addr()))?;
        mem.write_slice(&out[..n], addr)?;
        written += n;
        out = &out[n..];
        skip = 0;
        if out.is_empty() {
            break;
        }
    }
    Ok(written)
}
