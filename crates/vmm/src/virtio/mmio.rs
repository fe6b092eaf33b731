//! The virtio-mmio transport, version 2 (modern): registers, feature negotiation, queue setup,
//! interrupt status and device status, per the virtio 1.x specification §4.2.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{
    IrqLine, Queues, VirtioDevice, INT_CONFIG, INT_USED_RING, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::BusDevice;
use crate::persist::{Persist, SaveContext};
use crate::Error;

const MAGIC: u32 = 0x7472_6976;
/// QueueNotify: the driver writes a queue's index here to kick it.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus and InterruptACK, the two registers a driver's interrupt handler touches
/// (see `InterruptRegisters`).
pub const INTERRUPT_REGISTERS: std::ops::Range<u64> = 0x060..0x068;
const VENDOR: u32 = 0x5354_524c; // "STRL"

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// A virtqueue as saved: virtio-queue's own state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct QueueState {
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

/// The transport as saved: its registers, interrupt status and queues.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub active: bool,
    pub queues: Vec<QueueState>,
    pub broken: Option<String>,
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: IrqLine,
    queues: Vec<Queue>,
    active: Option<Queues>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// Why the device stopped serving requests, if it did.
    pub broken: Option<String>,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: IrqLine) -> Self {
        let queues = new_queues(device.as_ref());
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            active: None,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            broken: None,
        }
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The device behind the transport, as its own type.
    pub fn device_as<T: 'static>(&mut self) -> Option<&mut T> {
        self.device.as_any().downcast_mut::<T>()
    }

    /// The device's configuration changed (a network device's link came up): the driver is
    /// told with a config interrupt, and reads a new generation.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            self.irq.signal(INT_CONFIG);
        }
    }

    /// The device behind the transport.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    fn offered(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = new_queues(self.device.as_ref());
        self.active = None;
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.broken = None;
        self.irq.status.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let newly = v & !self.status;
        if newly & STATUS_FEATURES_OK != 0 && self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            // A legacy driver on a modern-only device: refuse FEATURES_OK.
            self.status = v & !STATUS_FEATURES_OK;
            return;
        }
        if newly & STATUS_DRIVER_OK != 0 {
            let mem = &self.mem;
            if let Some(i) = self
                .queues
                .iter()
                .position(|q| q.ready() && !q.is_valid(mem))
            {
                self.fail(format!(
                    "queue {i} set up outside guest memory or misaligned"
                ));
                return;
            }
            let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            self.active = Some(Queues {
                mem: self.mem.clone(),
                queues: std::mem::take(&mut self.queues),
            });
            self.device.activate(self.irq.clone(), self.driver_features);
        }
        self.status = v;
    }

    fn fail(&mut self, why: String) {
        self.broken = Some(why);
        self.status |= STATUS_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.irq.signal(INT_CONFIG);
        } else {
            self.status |= STATUS_FAILED;
        }
    }

    /// Runs the device's handler for queue `index` (from a notify or the device's own backend).
    pub fn process(&mut self, index: usize) {
        if self.broken.is_some() {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match self.device.notify(index, active) {
            Ok(true) if active.needs_interrupt() => self.irq.signal(INT_USED_RING),
            Ok(_) => {}
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Runs the device's backend handler (its event thread saw host-side input).
    pub fn process_backend(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match self.device.backend(active) {
            Ok(true) if active.needs_interrupt() => self.irq.signal(INT_USED_RING),
            Ok(_) => {}
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.device.device_type(),
            0x00c => VENDOR,
            0x010 => match self.device_features_sel {
                0 => self.offered() as u32,
                1 => (self.offered() >> 32) as u32,
                _ => 0,
            },
            0x034 => q.map_or(0, |q| u32::from(q.max_size())),
            0x044 => q.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.irq.status.load(Ordering::SeqCst),
            0x070 => self.status,
            // SHMLenLow/High, SHMBaseLow/High: no shared memory regions. All ones says so;
            // a zero length would be a region at 0 (virtio-fs would try to map a DAX window
            // there and fail its probe).
            0x0b0..=0x0bc => u32::MAX,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x014 => self.device_features_sel = v,
            // Features are fixed once FEATURES_OK is set.
            0x020 if self.status & STATUS_FEATURES_OK == 0 => {
                let offered = self.offered();
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(v) & offered
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32) & offered
                    }
                    _ => {}
                }
            }
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            0x044 => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY if self.status & STATUS_DRIVER_OK != 0 => self.process(v as usize),
            0x064 => {
                self.irq.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x070 => self.set_status(v),
            0x080 => self
                .queue()
                .map_or((), |q| q.set_desc_table_address(Some(v), None)),
            0x084 => self
                .queue()
                .map_or((), |q| q.set_desc_table_address(None, Some(v))),
            0x090 => self
                .queue()
                .map_or((), |q| q.set_avail_ring_address(Some(v), None)),
            0x094 => self
                .queue()
                .map_or((), |q| q.set_avail_ring_address(None, Some(v))),
            0x0a0 => self
                .queue()
                .map_or((), |q| q.set_used_ring_address(Some(v), None)),
            0x0a4 => self
                .queue()
                .map_or((), |q| q.set_used_ring_address(None, Some(v))),
            _ => {}
        }
    }
}

impl<'a> Persist<'a> for MmioTransport {
    type State = TransportState;
    /// The device (restored first), guest memory and the interrupt line.
    type Args = (Box<dyn VirtioDevice>, GuestMemoryMmap, IrqLine);

    fn save(&mut self, _ctx: &SaveContext) -> Result<TransportState, Error> {
        let queues = self
            .active
            .as_ref()
            .map_or(&self.queues, |a| &a.queues)
            .iter()
            .map(|q| {
                let s = q.state();
                QueueState {
                    max_size: s.max_size,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx: s.event_idx_enabled,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                }
            })
            .collect();
        Ok(TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.irq.status.load(Ordering::SeqCst),
            active: self.active.is_some(),
            queues,
            broken: self.broken.clone(),
        })
    }

    /// The transport with the saved registers and queues; an activated device is activated
    /// again and its pending interrupt raised anew.
    fn restore((device, mem, irq): Self::Args, s: &TransportState) -> Result<MmioTransport, Error> {
        if s.device_type != device.device_type() {
            return Err(Error::Invalid(format!(
                "device type {} in the snapshot, {} here",
                s.device_type,
                device.device_type()
            )));
        }
        let mut queues = Vec::new();
        for q in &s.queues {
            let state = virtio_queue::QueueState {
                max_size: q.max_size,
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx_enabled: q.event_idx,
                size: q.size,
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
            };
            queues.push(Queue::try_from(state).map_err(|e| Error::Invalid(format!("queue: {e}")))?);
        }
        if queues.len() != device.queue_sizes().len() {
            return Err(Error::Invalid(
                "queue count differs from the device's".into(),
            ));
        }
        let mut t = MmioTransport::new(device, mem, irq);
        t.status = s.status;
        t.device_features_sel = s.device_features_sel;
        t.driver_features_sel = s.driver_features_sel;
        t.driver_features = s.driver_features;
        t.queue_sel = s.queue_sel;
        t.config_generation = s.config_generation;
        t.broken = s.broken.clone();
        if s.active {
            t.active = Some(Queues {
                mem: t.mem.clone(),
                queues,
            });
            t.device.activate(t.irq.clone(), t.driver_features);
        } else {
            t.queues = queues;
        }
        if s.interrupt_status != 0 {
            t.irq.signal(s.interrupt_status);
        }
        Ok(t)
    }
}

fn new_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_sizes()
        .iter()
        .map(|&n| Queue::new(n).expect("device queue sizes are powers of two"))
        .collect()
}

/// InterruptStatus (read) and InterruptACK (write), served from the interrupt line's atomic
/// status without the transport's lock: a device's event thread holds that lock while it
/// serves a burst, and the guest's interrupt handler must not wait for the burst to end
/// (it would stop the guest consuming what the device already delivered).
pub struct InterruptRegisters(pub IrqLine);

impl BusDevice for InterruptRegisters {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.0.status.load(Ordering::SeqCst).to_le_bytes()),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (4, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
            self.0
                .status
                .fetch_and(!u32::from_le_bytes(bytes), Ordering::SeqCst);
        }
    }
}

/// Puts a transport's window `[addr, addr+len)` on the bus, in three parts: its interrupt
/// registers are served without the transport's lock (see `InterruptRegisters`).
pub fn map_window(
    bus: &mut crate::bus::Bus,
    addr: u64,
    len: u64,
    transport: &Arc<Mutex<MmioTransport>>,
    irq: &IrqLine,
) {
    let isr = INTERRUPT_REGISTERS;
    bus.insert_part(addr, isr.start, transport.clone(), 0);
    bus.insert(
        addr + isr.start,
        isr.end - isr.start,
        Arc::new(Mutex::new(InterruptRegisters(irq.clone()))),
    );
    bus.insert_part(addr + isr.end, len - isr.end, transport.clone(), isr.end);
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            self.device.write_config(offset - 0x100, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::QueueBroken;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Bare;

    impl VirtioDevice for Bare {
        fn device_type(&self) -> u32 {
            26
        }
        fn queue_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn notify(&mut self, _index: usize, _q: &mut Queues) -> Result<bool, QueueBroken> {
            Ok(false)
        }
        fn as_any(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    fn reg(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn no_shared_memory_region_is_offered() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let irq = IrqLine::new(EventFd::new(0).unwrap());
        let mut t = MmioTransport::new(Box::new(Bare), mem, irq);
        assert_eq!(reg(&mut t, 0x000), MAGIC);
        assert_eq!(reg(&mut t, 0x008), 26);
        // Linux's virtio-fs maps a DAX window when a region's length is not all ones, and
        // fails its probe on a zero-length one at address 0 (seen booting Debian's kernel).
        for off in [0x0b0, 0x0b4, 0x0b8, 0x0bc] {
            assert_eq!(reg(&mut t, off), u32::MAX, "register {off:#x}");
        }
    }

    #[test]
    fn interrupt_registers_answer_while_the_device_holds_the_transport() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let irq = IrqLine::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let t = Arc::new(Mutex::new(MmioTransport::new(
            Box::new(Bare),
            mem,
            irq.clone(),
        )));
        let mut bus = crate::bus::Bus::default();
        let base = 0x1000_0000;
        map_window(&mut bus, base, 0x200, &t, &irq);
        let read = move |bus: &crate::bus::Bus, off: u64| {
            let mut b = [0u8; 4];
            bus.read(base + off, &mut b);
            u32::from_le_bytes(b)
        };
        // The rest of the window is the transport's, at its own offsets.
        assert_eq!(read(&bus, 0x000), MAGIC);
        assert_eq!(read(&bus, 0x008), 26);
        irq.signal(INT_USED_RING | INT_CONFIG);
        // A device's event thread holds the transport (a burst): the guest's interrupt
        // handler still reads and acknowledges.
        let held = t.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let b2 = bus.clone();
        std::thread::spawn(move || {
            let status = read(&b2, 0x060);
            b2.write(base + 0x064, &INT_USED_RING.to_le_bytes());
            tx.send((status, read(&b2, 0x060))).unwrap();
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        assert_eq!(got, Ok((INT_USED_RING | INT_CONFIG, INT_CONFIG)));
        // Odd sizes read as zero and write nothing.
        let mut b = [0u8; 2];
        bus.read(base + 0x060, &mut b);
        assert_eq!(b, [0, 0]);
        bus.write(base + 0x064, &[0xff]);
        assert_eq!(read(&bus, 0x060), INT_CONFIG);
    }
}
