//! virtio-net over a TAP, in userspace (the host kernel may have no vhost-net): each frame
//! crosses with its 12-byte virtio-net header, which the TAP speaks too, so checksum and
//! segmentation offloads (CSUM, TSO4/6 both ways) and mergeable receive buffers cost no
//! copy beyond the one between guest memory and the TAP. Every chain the guest posts is
//! checked (direction, length, addresses); a bad one is returned unused and counted, never
//! read past, and only bytes the TAP returned for this frame reach the guest.
//!
//! A device may have no backend ("detached": link down, frames dropped), as a clone's has
//! until it is given a TAP of its own.

pub mod limiter;
pub mod tap;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    write_to_chain, Chain, DeviceEnv, IrqLine, QueueBroken, Queues, VirtioDevice, INT_USED_RING,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::config::{Limit, Mac, NetConfig};
use crate::persist::{Persist, SaveContext};
use crate::Error;
use limiter::Limiter;

pub const TYPE_NET: u32 = 1;

/// The virtio-net header with VIRTIO_F_VERSION_1 (num_buffers always present).
pub const HDR_LEN: usize = 12;
/// The largest frame either way: a 64 KiB GSO frame, its Ethernet and VLAN headers and ours.
pub const MAX_FRAME: usize = HDR_LEN + 65_535 + 14 + 4;
const QUEUE_SIZE: u16 = 256;
/// TX chains served in one round before the device's thread looks at RX again.
const TX_BURST: usize = QUEUE_SIZE as usize;
const RX: usize = 0;
const TX: usize = 1;

pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_GUEST_ECN: u64 = 1 << 9;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_HOST_ECN: u64 = 1 << 13;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;

const HDR_F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// Epoll tokens.
const TAP_TOKEN: u64 = 1;
const TIMER_TOKEN: u64 = 2;
/// The driver's kicks of RX and TX (ioeventfds): tokens 3 and 4.
const KICK_TOKEN: u64 = 3;

/// What the device has passed and dropped, for the VM's status.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames the TAP gave that no guest buffer could hold, or that the TAP refused.
    pub dropped: AtomicU64,
    /// Chains that broke the device's rules (direction, length, addresses).
    pub bad_chains: AtomicU64,
}

impl NetCounters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

pub struct Net {
    tap_name: Option<String>,
    /// The TAP (or, for tests, any descriptor that passes one frame per read and write).
    backend: Option<File>,
    is_tap: bool,
    mac: Mac,
    limits: (Option<Limit>, Option<Limit>),
    /// The TAP was made for this VM by `--net nat` (it goes with the monitor).
    owned: bool,
    /// The guest's address there (`ip=` form), for `whoami`.
    ip: Option<String>,
    /// TAP, MAC and address as the VM's status and identity see them.
    live: Arc<std::sync::Mutex<super::NetIdentity>>,
    rx_limiter: Option<Limiter>,
    tx_limiter: Option<Limiter>,
    epoll: Arc<Epoll>,
    timer: Timer,
    /// Signalled by KVM when the driver kicks RX or TX (see `queue_kicks`).
    kicks: [EventFd; 2],
    /// The interrupt, once the driver is up (see `interrupt_early`).
    irq: Option<IrqLine>,
    acked: u64,
    /// A frame read from the TAP and not yet delivered (no buffers, or no tokens).
    rx_frame: Vec<u8>,
    rx_len: usize,
    tx_buf: Vec<u8>,
    counters: Arc<NetCounters>,
}

impl Net {
    /// A device over TAP `config.tap` (see [`tap::open`] for its errors).
    pub fn new(config: &NetConfig) -> Result<Net, Error> {
        config.validate()?;
        let file = tap::open(&config.tap).map_err(|reason| Error::Net {
            tap: config.tap.clone(),
            reason,
        })?;
        if config.owned {
            tap::set_persist(&file, false).map_err(|e| Error::Net {
                tap: config.tap.clone(),
                reason: format!("taking it over: {e}"),
            })?;
        }
        let mut n = Net::with_backend(
            Some(file),
            config.mac.unwrap_or_else(Mac::random),
            (config.rx, config.tx),
        )?;
        n.tap_name = Some(config.tap.clone());
        n.is_tap = true;
        n.owned = config.owned;
        n.ip = config.ip.clone();
        n.publish();
        Ok(n)
    }

    /// A device over `backend` (None: detached), which must pass one frame, header first,
    /// per read and write, and be non-blocking.
    pub fn with_backend(
        backend: Option<File>,
        mac: Mac,
        limits: (Option<Limit>, Option<Limit>),
    ) -> Result<Net, Error> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |e| Error::Io {
                what: format!("network device: {what}"),
                source: e,
            }
        };
        let epoll = Epoll::new().map_err(io("epoll"))?;
        let timer = Timer::new().map_err(io("timer"))?;
        if let Some(f) = &backend {
            // Edge-triggered: a full guest queue must not make the event thread spin; reading
            // resumes when the guest posts buffers (a notify) or tokens are back (the timer).
            epoll
                .ctl(
                    ControlOperation::Add,
                    f.as_raw_fd(),
                    EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TAP_TOKEN),
                )
                .map_err(io("epoll"))?;
        }
        epoll
            .ctl(
                ControlOperation::Add,
                timer.0.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TIMER_TOKEN),
            )
            .map_err(io("epoll"))?;
        let kick = || EventFd::new(libc::EFD_NONBLOCK).map_err(io("kick eventfd"));
        let kicks = [kick()?, kick()?];
        for (i, k) in kicks.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    k.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, KICK_TOKEN + i as u64),
                )
                .map_err(io("epoll"))?;
        }
        Ok(Net {
            tap_name: None,
            backend,
            is_tap: false,
            mac,
            limits,
            owned: false,
            ip: None,
            live: Arc::new(std::sync::Mutex::new(super::NetIdentity {
                tap: None,
                mac,
                ip: None,
            })),
            rx_limiter: limits.0.as_ref().map(Limiter::new),
            tx_limiter: limits.1.as_ref().map(Limiter::new),
            epoll: Arc::new(epoll),
            timer,
            kicks,
            irq: None,
            acked: 0,
            rx_frame: vec![0; MAX_FRAME],
            rx_len: 0,
            tx_buf: Vec::with_capacity(MAX_FRAME),
            counters: Arc::default(),
        })
    }

    pub fn mac(&self) -> Mac {
        self.mac
    }

    fn publish(&self) {
        *crate::bus::lock(&self.live) = super::NetIdentity {
            tap: self.tap_name.clone(),
            mac: self.mac,
            ip: self.ip.clone(),
        };
    }

    /// Puts a detached device on a TAP made for this VM (a pool's activation on Starling's
    /// network), with the guest's address there and a MAC of its own (VMs activated from
    /// one snapshot would otherwise share one). The TAP goes with the monitor. The caller
    /// tells the driver (a config change: the link is up).
    pub fn attach(&mut self, a: &crate::spec::NetAttach, mac: Mac) -> Result<(), Error> {
        let err = |reason: String| Error::Net {
            tap: a.tap.clone(),
            reason,
        };
        if let Some(t) = &self.tap_name {
            return Err(err(format!("the device is on TAP {t} already")));
        }
        crate::config::check_ip_param(&a.ip).map_err(err)?;
        let file = tap::open(&a.tap).map_err(err)?;
        tap::set_persist(&file, false).map_err(|e| err(format!("taking it over: {e}")))?;
        self.epoll
            .ctl(
                ControlOperation::Add,
                file.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TAP_TOKEN),
            )
            .map_err(|e| err(format!("epoll: {e}")))?;
        self.backend = Some(file);
        self.is_tap = true;
        self.tap_name = Some(a.tap.clone());
        self.owned = true;
        self.ip = Some(a.ip.clone());
        self.mac = mac;
        if self.acked != 0 {
            self.set_offloads();
        }
        self.publish();
        Ok(())
    }

    /// The TAP's offloads from what the driver accepted.
    fn set_offloads(&self) {
        if let (true, Some(f)) = (self.is_tap, &self.backend) {
            let mut flags = 0;
            if self.has(F_GUEST_CSUM) {
                flags |= tap::TUN_F_CSUM;
                if self.has(F_GUEST_TSO4) {
                    flags |= tap::TUN_F_TSO4;
                }
                if self.has(F_GUEST_TSO6) {
                    flags |= tap::TUN_F_TSO6;
                }
                if self.has(F_GUEST_ECN) && flags & (tap::TUN_F_TSO4 | tap::TUN_F_TSO6) != 0 {
                    flags |= tap::TUN_F_TSO_ECN;
                }
            }
            // A TAP that refuses keeps the safe default (no offloads): frames arrive whole.
            let _ = tap::set_offload(f, flags);
        }
    }

    pub fn tap_name(&self) -> Option<&str> {
        self.tap_name.as_deref()
    }

    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    fn has(&self, f: u64) -> bool {
        self.acked & f != 0
    }

    /// Sends what the guest queued, until the queue is empty or the limiter says wait. The
    /// driver is asked not to kick while the queue is drained (a busy sender then costs one
    /// kick per burst, not one per frame), and to kick again once it is empty.
    fn process_tx(&mut self, q: &mut Queues) -> Result<bool, QueueBroken> {
        let mut used = false;
        let mut burst = 0;
        loop {
            q.disable_notification(TX)?;
            while let Some(chain) = q.pop_one(TX)? {
                burst += 1;
                if burst > TX_BURST {
                    // A guest that keeps the queue full must not keep the device's thread
                    // (and its RX) to itself: the rest is served on the next round.
                    q.undo_pop(TX);
                    let _ = self.kicks[TX].write(1);
                    return Ok(used);
                }
                let frame = match self.read_tx_chain(&q.mem, &chain) {
                    Ok(len) => len,
                    Err(()) => {
                        NetCounters::add(&self.counters.bad_chains, 1);
                        q.add_used(TX, chain.head, 0)?;
                        used = true;
                        continue;
                    }
                };
                if let Some(l) = self.tx_limiter.as_mut() {
                    if let Err(wait) = l.admit((frame - HDR_LEN) as u64) {
                        // The timer runs the queue again; no kick is needed until then.
                        q.undo_pop(TX);
                        self.timer.arm(wait);
                        return Ok(used);
                    }
                }
                match self
                    .backend
                    .as_mut()
                    .map(|b| b.write(&self.tx_buf[..frame]))
                {
                    Some(Ok(_)) => {
                        NetCounters::add(&self.counters.tx_frames, 1);
                        NetCounters::add(&self.counters.tx_bytes, (frame - HDR_LEN) as u64);
                    }
                    // Detached, a full TAP queue or a frame the host refused: dropped, as a
                    // wire would.
                    _ => NetCounters::add(&self.counters.dropped, 1),
                }
                q.add_used(TX, chain.head, 0)?;
                used = true;
                self.interrupt_early(q);
            }
            if !q.enable_notification(TX)? {
                return Ok(used);
            }
        }
    }

    /// Gathers a TX chain into `tx_buf`; its length, or Err for a chain that breaks the rules
    /// (device-writable parts, shorter than the header, longer than a frame, outside memory,
    /// offloads the driver did not negotiate).
    fn read_tx_chain(&mut self, mem: &GuestMemoryMmap, chain: &Chain) -> Result<usize, ()> {
        let mut total = 0usize;
        for d in &chain.descs {
            if d.is_write_only() {
                return Err(());
            }
            total = total.checked_add(d.len() as usize).ok_or(())?;
            if total > MAX_FRAME {
                return Err(());
            }
        }
        if total < HDR_LEN {
            return Err(());
        }
        self.tx_buf.resize(total, 0);
        let mut at = 0;
        for d in &chain.descs {
            let n = d.len() as usize;
            mem.read_slice(&mut self.tx_buf[at..at + n], d.addr())
                .map_err(|_| ())?;
            at += n;
        }
        let flags = self.tx_buf[0];
        let gso = self.tx_buf[1];
        if flags & HDR_F_NEEDS_CSUM != 0 && !self.has(F_CSUM) {
            return Err(());
        }
        let allowed = match gso & !GSO_ECN {
            GSO_NONE => true,
            GSO_TCPV4 => self.has(F_HOST_TSO4),
            GSO_TCPV6 => self.has(F_HOST_TSO6),
            _ => false,
        };
        if !allowed || (gso & GSO_ECN != 0 && !self.has(F_HOST_ECN)) {
            return Err(());
        }
        // num_buffers means nothing on the way out.
        self.tx_buf[10] = 0;
        self.tx_buf[11] = 0;
        Ok(total)
    }

    /// Delivers frames from the TAP while the guest has buffers and the limiter allows.
    fn process_rx(&mut self, q: &mut Queues) -> Result<bool, QueueBroken> {
        let mut used = false;
        loop {
            if self.rx_len == 0 {
                let Some(b) = self.backend.as_mut() else {
                    break;
                };
                match b.read(&mut self.rx_frame) {
                    Ok(n) if n < HDR_LEN => {
                        NetCounters::add(&self.counters.dropped, 1);
                        continue;
                    }
                    Ok(n) => self.rx_len = n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // WouldBlock: drained (the edge-triggered epoll fires on new frames).
                    Err(_) => break,
                }
            }
            if let Some(l) = self.rx_limiter.as_mut() {
                if let Err(wait) = l.admit((self.rx_len - HDR_LEN) as u64) {
                    self.timer.arm(wait);
                    break;
                }
            }
            match self.deliver(q)? {
                Delivery::Done => {
                    NetCounters::add(&self.counters.rx_frames, 1);
                    NetCounters::add(&self.counters.rx_bytes, (self.rx_len - HDR_LEN) as u64);
                    used = true;
                    self.interrupt_early(q);
                }
                Delivery::Dropped => {
                    NetCounters::add(&self.counters.dropped, 1);
                    used = true;
                }
                // Out of buffers (or of room for this frame): the driver is asked to kick
                // when it posts more, unless it posted some meanwhile.
                Delivery::NoBuffers if q.wait_for_more(RX)? => continue,
                Delivery::NoBuffers => break,
            }
            self.rx_len = 0;
        }
        Ok(used)
    }

    /// Writes the pending frame into one chain, or (mergeable buffers) as many as it takes.
    fn deliver(&mut self, q: &mut Queues) -> Result<Delivery, QueueBroken> {
        let len = self.rx_len;
        let mergeable = self.has(F_MRG_RXBUF);
        let mut chains: Vec<(Chain, usize)> = Vec::new();
        let mut room = 0usize;
        while room < len {
            let Some(chain) = q.pop_one(RX)? else {
                for _ in 0..chains.len() {
                    q.undo_pop(RX);
                }
                return Ok(Delivery::NoBuffers);
            };
            let cap = chain
                .descs
                .iter()
                .filter(|d| d.is_write_only())
                .fold(0usize, |a, d| a.saturating_add(d.len() as usize));
            let first_too_small = chains.is_empty() && cap < HDR_LEN;
            if cap == 0 || first_too_small || (!mergeable && cap < len) {
                // A buffer that cannot hold (the start of) a frame: returned empty, and
                // without mergeable buffers the frame is lost, as on a wire.
                NetCounters::add(&self.counters.bad_chains, u64::from(cap < HDR_LEN));
                q.add_used(RX, chain.head, 0)?;
                if !mergeable || !chains.is_empty() {
                    for (c, _) in chains {
                        q.add_used(RX, c.head, 0)?;
                    }
                    return Ok(Delivery::Dropped);
                }
                continue;
            }
            room = room.saturating_add(cap);
            chains.push((chain, cap));
            if !mergeable {
                break;
            }
        }
        let count = chains.len() as u16;
        self.rx_frame[10..12].copy_from_slice(&count.to_le_bytes());
        let mut at = 0;
        for (chain, cap) in &chains {
            let n = (*cap).min(len - at);
            let written =
                write_to_chain(&q.mem, &chain.descs, 0, &self.rx_frame[at..at + n]).unwrap_or(0);
            if written != n {
                NetCounters::add(&self.counters.bad_chains, 1);
            }
            q.add_used(RX, chain.head, written as u32)?;
            at += n;
        }
        Ok(Delivery::Done)
    }

    /// With EVENT_IDX, a driver that waits for what was just used is interrupted now, not
    /// when the burst ends: it consumes (and posts new buffers) while the device goes on.
    /// A driver that is polling has asked for no interrupt, so this costs it nothing.
    /// Without EVENT_IDX every frame would interrupt, so the transport's one interrupt per
    /// burst stays.
    fn interrupt_early(&self, q: &mut Queues) {
        if let (true, Some(irq)) = (self.has(VIRTIO_RING_F_EVENT_IDX), &self.irq) {
            if q.needs_interrupt() {
                irq.signal(INT_USED_RING);
            }
        }
    }

    fn config_space(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac.0);
        let link_up: u16 = u16::from(self.backend.is_some());
        c[6..8].copy_from_slice(&link_up.to_le_bytes());
        c
    }
}

enum Delivery {
    Done,
    Dropped,
    NoBuffers,
}

impl VirtioDevice for Net {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let offloads = if self.is_tap || self.backend.is_none() {
            F_CSUM
                | F_GUEST_CSUM
                | F_GUEST_TSO4
                | F_GUEST_TSO6
                | F_GUEST_ECN
                | F_HOST_TSO4
                | F_HOST_TSO6
                | F_HOST_ECN
        } else {
            0
        };
        offloads | F_MAC | F_MRG_RXBUF | F_STATUS | VIRTIO_RING_F_EVENT_IDX
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::blk::read_config_bytes(&self.config_space(), offset, data);
    }
    fn activate(&mut self, irq: IrqLine, features: u64) {
        self.irq = Some(irq);
        self.acked = features;
        self.set_offloads();
    }
    fn notify(&mut self, index: usize, q: &mut Queues) -> Result<bool, QueueBroken> {
        match index {
            TX => self.process_tx(q),
            // New receive buffers: a frame may have been waiting for them.
            RX => self.process_rx(q),
            _ => Ok(false),
        }
    }
    /// The TAP has frames, the limiter's timer fired, or the driver kicked: both queues are
    /// served (a kick that was pending when a snapshot was taken is served this way too, when
    /// the restored VM's devices are first polled).
    fn backend(&mut self, q: &mut Queues) -> Result<bool, QueueBroken> {
        self.timer.clear();
        for k in &self.kicks {
            let _ = k.read();
        }
        let mut used = self.process_tx(q)?;
        used |= self.process_rx(q)?;
        Ok(used)
    }
    fn queue_kicks(&self) -> Vec<(usize, &EventFd)> {
        vec![(RX, &self.kicks[RX]), (TX, &self.kicks[TX])]
    }
    fn event_source(&self) -> Option<Arc<Epoll>> {
        Some(self.epoll.clone())
    }
    fn net_figures(&self) -> Option<super::NetFigures> {
        Some(super::NetFigures {
            live: self.live.clone(),
            counters: self.counters.clone(),
        })
    }
    fn reset(&mut self) {
        self.acked = 0;
        self.irq = None;
        self.rx_len = 0;
        self.timer.disarm();
        self.timer.clear();
        if let (true, Some(f)) = (self.is_tap, &self.backend) {
            let _ = tap::set_offload(f, 0);
        }
    }
}

/// A non-blocking timerfd that wakes the device's event thread when tokens are back.
struct Timer(File);

impl Timer {
    fn new() -> std::io::Result<Timer> {
        // SAFETY: plain syscall; the returned descriptor is checked and then owned by the File.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        Ok(Timer(unsafe {
            <File as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    fn arm(&self, after: Duration) {
        let after = after.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the call; the old value is not asked for.
        unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    fn disarm(&self) {
        // SAFETY: an all-zero itimerspec disarms the timer; the old value is not asked for.
        let spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: `spec` is valid for the call.
        unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    fn clear(&mut self) {
        let mut b = [0u8; 8];
        let _ = self.0.read(&mut b);
    }
}

/// What a network device keeps across a snapshot: its MAC, its TAP's name and its limits.
/// Frames in flight are not kept (a wire loses them too).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetState {
    pub tap: Option<String>,
    /// The TAP was made for the VM (`--net nat`) and went with its monitor: a restore does
    /// not make one of that name, which would be on no network.
    #[serde(default)]
    pub owned: bool,
    pub mac: [u8; 6],
    pub rx: Option<Limit>,
    pub tx: Option<Limit>,
    /// The guest's address: kept by a restore on the same TAP.
    #[serde(default)]
    pub ip: Option<String>,
}

impl<'a> Persist<'a> for Net {
    type State = NetState;
    type Args = &'a DeviceEnv<'a>;

    fn save(&mut self, _ctx: &SaveContext) -> Result<NetState, Error> {
        Ok(NetState {
            tap: self.tap_name.clone(),
            owned: self.owned,
            mac: self.mac.0,
            rx: self.limits.0,
            tx: self.limits.1,
            ip: self.ip.clone(),
        })
    }

    /// The same TAP by name, unless the restore names another or attaches the device to a
    /// network made for it (`RestoreSpec::networks`: a TAP it takes over, and an address); a
    /// clone keeps none unless given one (two VMs on one TAP would see each other's frames),
    /// and gets a MAC of its own; nor does a VM whose TAP was made for it (`--net nat`), which
    /// went with it. The address goes with the TAP it was given for.
    fn restore(env: &'a DeviceEnv<'a>, s: &NetState) -> Result<Net, Error> {
        let clone = env.spec.clone_id.is_some();
        let mac = if clone { Mac::random() } else { Mac(s.mac) };
        let config = |tap: String, owned: bool, ip: Option<String>| NetConfig {
            tap,
            mac: Some(mac),
            rx: s.rx,
            tx: s.tx,
            owned,
            ip,
        };
        if let Some(a) = env.spec.networks.get(env.id) {
            return Net::new(&config(a.tap.clone(), true, Some(a.ip.clone())));
        }
        let given = env.spec.taps.get(env.id).cloned();
        match given {
            Some(t) if t.is_empty() => Net::with_backend(None, mac, (s.rx, s.tx)),
            Some(t) => Net::new(&config(t, false, None)),
            None if clone || s.owned => Net::with_backend(None, mac, (s.rx, s.tx)),
            None => match s.tap.clone() {
                Some(t) => Net::new(&config(t, false, s.ip.clone())),
                None => Net::with_backend(None, mac, (s.rx, s.tx)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::spec::RestoreSpec;
    use crate::virtio::ServiceHandler;

    fn pair() -> (File, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (File::from(std::os::fd::OwnedFd::from(a)), b)
    }

    fn restored(state: &NetState, spec: &RestoreSpec) -> Result<Net, Error> {
        let dir = std::env::temp_dir();
        let service: ServiceHandler = Arc::new(|_, _, _| {});
        let env = DeviceEnv {
            id: "net0",
            snapshot_dir: &dir,
            run_dir: &dir,
            spec,
            service: &service,
        };
        Net::restore(&env, state)
    }

    /// A driver's two queues in 64 KiB of memory, EVENT_IDX on: queue Q's descriptors at
    /// 0x1000 + Q*0x4000, its available ring 0x1000 later, its used ring 0x2000 later, and
    /// buffers from 0x9000.
    struct Driver {
        q: Queues,
        posted: [u16; 2],
    }

    const SIZE: u16 = 16;

    impl Driver {
        fn new() -> Driver {
            use virtio_queue::{Queue, QueueT};
            use vm_memory::GuestAddress;
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
            let queues = (0..2u32)
                .map(|i| {
                    let base = 0x1000 + i * 0x4000;
                    let mut q = Queue::new(QUEUE_SIZE).unwrap();
                    q.set_size(SIZE);
                    q.set_desc_table_address(Some(base), Some(0));
                    q.set_avail_ring_address(Some(base + 0x1000), Some(0));
                    q.set_used_ring_address(Some(base + 0x2000), Some(0));
                    q.set_ready(true);
                    q.set_event_idx(true);
                    q
                })
                .collect();
            Driver {
                q: Queues { mem, queues },
                posted: [0; 2],
            }
        }

        fn ring(queue: usize) -> u64 {
            0x1000 + queue as u64 * 0x4000
        }

        /// Posts a one-descriptor chain of `len` bytes (device-writable for RX), holding
        /// `data` for TX.
        fn post(&mut self, queue: usize, len: u32, data: &[u8]) {
            use vm_memory::GuestAddress;
            let slot = self.posted[queue] % SIZE;
            let buf = 0x9000 + (queue as u64 * 16 + u64::from(slot)) * 0x400;
            self.q.mem.write_slice(data, GuestAddress(buf)).unwrap();
            let flags: u16 = if queue == RX { 2 } else { 0 };
            let desc = Driver::ring(queue) + 16 * u64::from(slot);
            self.q.mem.write_obj(buf, GuestAddress(desc)).unwrap();
            self.q.mem.write_obj(len, GuestAddress(desc + 8)).unwrap();
            self.q
                .mem
                .write_obj(flags, GuestAddress(desc + 12))
                .unwrap();
            let avail = Driver::ring(queue) + 0x1000;
            self.q
                .mem
                .write_obj(slot, GuestAddress(avail + 4 + 2 * u64::from(slot)))
                .unwrap();
            self.posted[queue] = self.posted[queue].wrapping_add(1);
            self.set_avail_idx(queue, self.posted[queue]);
        }

        fn set_avail_idx(&self, queue: usize, idx: u16) {
            let at = vm_memory::GuestAddress(Driver::ring(queue) + 0x1000 + 2);
            self.q.mem.write_obj(idx, at).unwrap();
        }

        /// The driver's used_event: interrupt me once the device has used past it.
        fn set_used_event(&self, queue: usize, v: u16) {
            let at = Driver::ring(queue) + 0x1000 + 4 + 2 * u64::from(SIZE);
            self.q
                .mem
                .write_obj(v, vm_memory::GuestAddress(at))
                .unwrap();
        }

        /// The device's avail_event: kick me when you post the chain of this index.
        fn avail_event(&self, queue: usize) -> u16 {
            let at = Driver::ring(queue) + 0x2000 + 4 + 8 * u64::from(SIZE);
            self.q.mem.read_obj(vm_memory::GuestAddress(at)).unwrap()
        }

        fn used_idx(&self, queue: usize) -> u16 {
            let at = Driver::ring(queue) + 0x2000 + 2;
            self.q.mem.read_obj(vm_memory::GuestAddress(at)).unwrap()
        }
    }

    #[test]
    fn event_idx_saves_kicks_and_interrupts_and_a_broken_ring_is_refused() {
        let (f, peer) = pair();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = Net::with_backend(Some(f), Mac::random(), (None, None)).unwrap();
        assert_ne!(n.features() & VIRTIO_RING_F_EVENT_IDX, 0, "offered");
        let irq = IrqLine::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        n.activate(irq.clone(), F_MAC | F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX);
        // How many interrupts the device sent since last asked.
        let interrupts = || irq.evt.read().unwrap_or(0);
        let mut d = Driver::new();
        let frame = |k: u8| {
            let mut f = vec![0u8; HDR_LEN];
            f.extend(std::iter::repeat_n(k, 60));
            f
        };
        // Three frames, the driver wanting an interrupt once the first is used.
        for k in 0..3 {
            d.post(TX, 72, &frame(k));
        }
        d.set_used_event(TX, 0);
        assert!(n.notify(TX, &mut d.q).unwrap());
        let mut got = [0u8; 256];
        for k in 0..3 {
            let len = peer.recv(&mut got).unwrap();
            assert_eq!(len, 72);
            assert_eq!(got[HDR_LEN], k);
        }
        assert_eq!(d.used_idx(TX), 3);
        assert_eq!(d.avail_event(TX), 3, "the next kick is asked for chain 3");
        // The device interrupted as soon as the first was used (not at the burst's end),
        // and only then.
        assert_eq!(interrupts(), 1, "used went past used_event once");
        assert!(!d.q.needs_interrupt(), "nothing used since");
        // The driver asks for no interrupt before 10 chains are used: one more gets none.
        d.set_used_event(TX, 10);
        d.post(TX, 72, &frame(3));
        assert!(n.notify(TX, &mut d.q).unwrap());
        assert_eq!(peer.recv(&mut got).unwrap(), 72);
        assert!(!d.q.needs_interrupt());
        // A frame from the host with no receive buffer waits; the device asks for a kick
        // at the next buffer posted, and that buffer gets the frame.
        peer.send(&frame(9)).unwrap();
        assert!(!n.backend(&mut d.q).unwrap());
        assert_eq!(d.avail_event(RX), 0);
        d.post(RX, 1024, &[]);
        assert!(n.notify(RX, &mut d.q).unwrap());
        assert_eq!(d.used_idx(RX), 1);
        assert_eq!(interrupts(), 1, "RX's used_event 0 was passed");
        // Three frames while the driver waits for the next one (used_event 1): one
        // interrupt, right after that frame; none while it polls (used_event far back).
        d.set_used_event(RX, 1);
        for k in 0..3 {
            d.post(RX, 1024, &[]);
            peer.send(&frame(k)).unwrap();
        }
        assert!(n.backend(&mut d.q).unwrap());
        assert_eq!(d.used_idx(RX), 4);
        assert_eq!(interrupts(), 1);
        assert!(!d.q.needs_interrupt());
        // A driver claiming more chains than the queue holds broke the ring: refused at
        // once, not served in a loop.
        d.set_avail_idx(TX, d.posted[TX].wrapping_add(SIZE + 1));
        let e = n.notify(TX, &mut d.q).unwrap_err();
        assert!(e.to_string().contains("available ring"), "{e}");
    }

    #[test]
    fn restores_keep_the_mac_and_clones_get_their_own_and_no_tap() {
        let (f, _peer) = pair();
        let limit = Some(Limit::bytes_per_sec(1 << 20));
        let mut n = Net::with_backend(Some(f), "02:00:00:00:00:07".parse().unwrap(), (limit, None))
            .unwrap();
        let state = n.save(&SaveContext::default()).unwrap();
        assert_eq!(state.mac, [2, 0, 0, 0, 0, 7]);
        assert_eq!(state.rx, limit);
        // Without a TAP in the state, a plain restore is detached with the same MAC.
        let back = restored(&state, &RestoreSpec::default()).unwrap();
        assert_eq!(back.mac().to_string(), "02:00:00:00:00:07");
        assert_eq!(back.config_space()[6..8], [0, 0], "link down when detached");
        // A clone of a VM on a TAP does not take the TAP, and has a MAC of its own.
        let on_tap = NetState {
            tap: Some("tap-of-parent".into()),
            ..state.clone()
        };
        let spec = RestoreSpec {
            clone_id: Some(3),
            ..Default::default()
        };
        let clone = restored(&on_tap, &spec).unwrap();
        assert!(clone.tap_name().is_none());
        assert_ne!(clone.mac().0, state.mac);
        assert_eq!(clone.mac().0[0] & 3, 2, "locally administered unicast");
        // The restore may take the device off its TAP by name.
        let spec = RestoreSpec {
            taps: [("net0".to_string(), String::new())].into(),
            ..Default::default()
        };
        assert!(restored(&on_tap, &spec).unwrap().tap_name().is_none());
        // Naming a TAP that cannot be opened fails the restore by the TAP's name.
        let spec = RestoreSpec {
            taps: [("net0".to_string(), "no/such".to_string())].into(),
            ..Default::default()
        };
        let e = restored(&on_tap, &spec).err().unwrap().to_string();
        assert!(e.contains("\"no/such\""), "{e}");
        // A VM whose TAP and address were made for it comes back without either, unless
        // the restore attaches it anew (here to a TAP that cannot be opened: named).
        let made_for_it = NetState {
            tap: Some("stap9".into()),
            owned: true,
            ip: Some("10.213.0.9::10.213.0.1:255.255.0.0:vm:eth0:off".into()),
            ..state.clone()
        };
        let back = restored(&made_for_it, &RestoreSpec::default()).unwrap();
        assert!(back.tap_name().is_none());
        assert!(back.net_figures().unwrap().identity().ip.is_none());
        let spec = RestoreSpec {
            clone_id: Some(1),
            networks: [(
                "net0".to_string(),
                crate::spec::NetAttach {
                    tap: "no/such".into(),
                    ip: "10.213.0.10::10.213.0.1:255.255.0.0:vm-1:eth0:off".into(),
                },
            )]
            .into(),
            ..Default::default()
        };
        let e = restored(&made_for_it, &spec).err().unwrap().to_string();
        assert!(e.contains("\"no/such\""), "{e}");
        // An activation attaching the detached device: a TAP that cannot be opened, or an
        // address that is not one word, is refused by name and leaves it detached.
        let mut detached = restored(&made_for_it, &RestoreSpec::default()).unwrap();
        let mac: Mac = "02:00:00:00:00:09".parse().unwrap();
        let bad_tap = crate::spec::NetAttach {
            tap: "no/such".into(),
            ip: "10.213.0.9::10.213.0.1:255.255.0.0:vm:eth0:off".into(),
        };
        let e = detached.attach(&bad_tap, mac).unwrap_err().to_string();
        assert!(e.contains("\"no/such\""), "{e}");
        let bad_ip = crate::spec::NetAttach {
            tap: "stap9".into(),
            ip: "10.213.0.9 rm -rf".into(),
        };
        let e = detached.attach(&bad_ip, mac).unwrap_err().to_string();
        assert!(e.contains("one word"), "{e}");
        assert!(detached.tap_name().is_none());
        assert_eq!(
            detached.net_figures().unwrap().identity().mac,
            Mac(state.mac)
        );
    }
}
