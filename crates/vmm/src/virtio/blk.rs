//! virtio-blk over a raw file and its copy-on-write overlays (layers.rs): read, write, flush
//! (fsync) and get-id; read-only disks refuse writes with VIRTIO_BLK_S_IOERR and offer
//! VIRTIO_BLK_F_RO.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::layers::{LayerState, LayeredDisk};
use super::{write_to_chain, Chain, DeviceEnv, QueueBroken, Queues, VirtioDevice, TYPE_BLOCK};
use crate::persist::{Persist, SaveContext};
use crate::Error;

const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Largest single data buffer accepted (the driver's max segment size is far below).
const MAX_SEGMENT: u32 = 1 << 20;
const SEG_MAX: u32 = 128;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

pub struct Block {
    disk: LayeredDisk,
    sectors: u64,
    read_only: bool,
    id: [u8; 20],
}

impl Block {
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        Ok(Self::new(
            LayeredDisk::open_base(path, read_only)?,
            read_only,
        ))
    }

    pub fn new(disk: LayeredDisk, read_only: bool) -> Self {
        let path = disk.path().to_owned();
        let len = disk.len();
        let mut id = [0u8; 20];
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"disk");
        let n = name.len().min(20);
        id[..n].copy_from_slice(&name[..n]);
        Block {
            disk,
            sectors: len / SECTOR,
            read_only,
            id,
        }
    }

    pub fn disk(&self) -> &LayeredDisk {
        &self.disk
    }

    pub fn disk_mut(&mut self) -> &mut LayeredDisk {
        &mut self.disk
    }

    /// Serves one request; returns the status byte and how many bytes went to the driver.
    fn serve(&mut self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> (u8, u32) {
        // Header (16 bytes, driver-readable), data buffers, status byte (device-writable, last).
        let Some((header, rest)) = descs.split_first() else {
            return (S_IOERR, 0);
        };
        let Some((_status, data)) = rest.split_last() else {
            return (S_IOERR, 0);
        };
        if header.is_write_only() || header.len() < 16 {
            return (S_IOERR, 0);
        }
        let mut h = [0u8; 16];
        if mem.read_slice(&mut h, header.addr()).is_err() {
            return (S_IOERR, 0);
        }
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        match kind {
            T_IN | T_OUT => self.transfer(mem, kind, sector, data),
            T_FLUSH => {
                if self.read_only {
                    return (S_OK, 0);
                }
                match self.disk.flush() {
                    Ok(()) => (S_OK, 0),
                    Err(_) => (S_IOERR, 0),
                }
            }
            T_GET_ID => match write_to_chain(mem, data, 0, &self.id) {
                Ok(n) => (S_OK, n as u32),
                Err(_) => (S_IOERR, 0),
            },
            _ => (S_UNSUPP, 0),
        }
    }

    fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[Descriptor],
    ) -> (u8, u32) {
        let write = kind == T_OUT;
        if write && self.read_only {
            return (S_IOERR, 0);
        }
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let fits = sector
            .checked_mul(SECTOR)
            .and_then(|start| start.checked_add(total))
            .is_some_and(|end| end <= self.sectors * SECTOR);
        // Reads fill device-writable buffers, writes take driver-readable ones; whole sectors.
        if !fits
            || !total.is_multiple_of(SECTOR)
            || data
                .iter()
                .any(|d| d.is_write_only() == write || d.len() > MAX_SEGMENT)
        {
            return (S_IOERR, 0);
        }
        let mut offset = sector * SECTOR;
        let mut buf = Vec::new();
        for d in data {
            buf.resize(d.len() as usize, 0);
            let ok = if write {
                mem.read_slice(&mut buf, d.addr()).is_ok()
                    && self.disk.write_at(&buf, offset).is_ok()
            } else {
                self.disk.read_at(&mut buf, offset).is_ok()
                    && mem.write_slice(&buf, d.addr()).is_ok()
            };
            if !ok {
                return (S_IOERR, 0);
            }
            offset += u64::from(d.len());
        }
        (S_OK, if write { 0 } else { total as u32 })
    }

    fn complete(&mut self, q: &mut Queues, chain: &Chain) -> Result<(), QueueBroken> {
        let (status, len) = self.serve(&q.mem, &chain.descs);
        // The status byte goes to the last descriptor when it is device-writable; a chain with
        // nowhere to put it is still returned, with nothing written.
        let mut used = len;
        if let Some(last) = chain
            .descs
            .last()
            .filter(|d| d.is_write_only() && d.len() >= 1)
        {
            if q.mem.write_obj(status, last.addr()).is_ok() {
                used += 1;
            }
        }
        q.add_used(0, chain.head, used)
    }
}

impl VirtioDevice for Block {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        F_FLUSH | F_SEG_MAX | if self.read_only { F_RO } else { 0 }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (u64 sectors), size_max (u32), seg_max (u32).
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }
    fn notify(&mut self, index: usize, q: &mut Queues) -> Result<bool, QueueBroken> {
        if index != 0 {
            return Ok(false);
        }
        let chains = q.pop_all(0)?;
        for chain in &chains {
            self.complete(q, chain)?;
        }
        Ok(!chains.is_empty())
    }
}

/// A disk as saved: its layers bottom-up (frozen when the VM went on) and whether the guest
/// may write it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BlockState {
    pub read_only: bool,
    pub layers: Vec<LayerState>,
}

impl<'a> Persist<'a> for Block {
    type State = BlockState;
    type Args = &'a DeviceEnv<'a>;

    /// The disk's layers: flushed, or frozen with the disk continuing on a new overlay
    /// (`ID.overlay` in the freeze directory); overlays go into the snapshot directory as
    /// `ID.layerN`, base files are referred to where they are.
    fn save(&mut self, ctx: &SaveContext) -> Result<BlockState, Error> {
        let path = self.disk.path().to_owned();
        let bad = |what: &str, e: std::io::Error| Error::Disk {
            path: path.clone(),
            reason: format!("{what} for a snapshot: {e}"),
        };
        let mut layers = match ctx.freeze_dir {
            Some(dir) => {
                let top = dir.join(format!("{}.overlay", ctx.id));
                self.disk.freeze(&top).map_err(|e| bad("freezing", e))?
            }
            None => self.disk.layers().map_err(|e| bad("flushing", e))?,
        };
        if let Some(dir) = ctx.snapshot_dir {
            for (j, l) in layers.iter_mut().enumerate().skip(1) {
                let name = format!("{}.layer{j}", ctx.id);
                let to = dir.join(&name);
                if std::fs::hard_link(&l.path, &to).is_err() {
                    std::fs::copy(&l.path, &to).map_err(|e| Error::Io {
                        what: format!("copying {} into the snapshot", l.path.display()),
                        source: e,
                    })?;
                }
                l.path = PathBuf::from(name);
            }
        }
        Ok(BlockState {
            read_only: self.read_only,
            layers,
        })
    }

    /// The disk over the saved layers (relative ones from the snapshot directory), with a
    /// new overlay of its own (`ID.overlay` in the run directory) when writable.
    fn restore(env: &'a DeviceEnv<'a>, state: &BlockState) -> Result<Block, Error> {
        let mut layers = state.layers.clone();
        for l in &mut layers {
            let plain_name = l.path.components().count() == 1
                && matches!(l.path.components().next(), Some(Component::Normal(_)));
            if l.path.is_relative() {
                if !plain_name {
                    return Err(Error::Snapshot {
                        path: env.snapshot_dir.to_owned(),
                        reason: format!(
                            "disk layer {} is not a file of the snapshot directory",
                            l.path.display()
                        ),
                    });
                }
                l.path = env.snapshot_dir.join(&l.path);
            }
        }
        let top = env.run_dir.join(format!("{}.overlay", env.id));
        let disk = LayeredDisk::open_layers(&layers, Some(&top), state.read_only).map_err(|e| {
            Error::Disk {
                path: layers.first().map(|l| l.path.clone()).unwrap_or_default(),
                reason: e.to_string(),
            }
        })?;
        Ok(Block::new(disk, state.read_only))
    }
}

/// Copies the slice of `config` at `offset` into `data`; bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}
