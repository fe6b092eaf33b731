//! virtio-fs: an image version as a file system of the guest, served inside the monitor.
//!
//! The device lives in the monitor process (not a vhost-user daemon) because clones map the
//! parent's memory privately: only the clone's own process sees the clone's pages. Requests
//! are FUSE messages in descriptor chains; fuse-backend-rs's virtio-fs transport reads and
//! writes them through bounds-checked guest memory and its server dispatches them to the
//! image file system (`starling_fs::ImageFs`), read-only: every write opcode is refused.
//! Objects come from the host's daemon (its one cache: fetched once per host, verified there
//! and again here) or a local store.
//!
//! Requests that may wait on an object are served by worker threads, never on a vCPU
//! thread: a miss may wait on the network. Workers record what they completed; the device's
//! event thread returns those chains to the driver. What waits on no object (a READ of data
//! already in memory, a listing or LOOKUP in a directory already loaded, a GETATTR of a node
//! already numbered, …) is answered on the vCPU thread that saw the notification, as
//! virtio-blk answers: the two thread wake-ups of the workers' way cost more than the work. A snapshot waits until no request is in flight, so every reply is
//! in guest memory when the memory is saved; replies not yet returned to the driver are part
//! of the state and returned by the restored device. The file system's own state (the order
//! directories were numbered in, open handles) lets a restored or forked monitor answer the
//! node ids and handles the guest holds.

use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader, ReadIn};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use serde::{Deserialize, Serialize};
use starling_fs::{Counters, FsState, ImageFs, Objects};
use starling_store::wire::SocketSource;
use starling_store::{ObjectId, ObjectSource, Store};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceEnv, QueueBroken, Queues, VirtioDevice};
use crate::config::FsConfig;
use crate::persist::{Persist, SaveContext};
use crate::Error;

pub const TYPE_FS: u32 = 26;
const HIPRIO_QUEUE_SIZE: u16 = 128;
const REQUEST_QUEUE_SIZE: u16 = 1024;
/// Requests served at once: misses wait on the daemon (and the network behind it).
const WORKERS: usize = 4;
/// The tag's room in the config space.
pub const TAG_LEN: usize = 36;
/// How long an object read may take before the guest gets EIO.
const OBJECT_TIMEOUT: Duration = Duration::from_secs(30);

type Mem = Arc<GuestMemoryMmap>;
pub(crate) type FuseServer = Server<Arc<ImageFs>>;

/// FUSE opcodes by name, as far as the protocol numbers them (0, 7 and 19 name nothing).
const OPCODES: [&str; 53] = [
    "",
    "LOOKUP",
    "FORGET",
    "GETATTR",
    "SETATTR",
    "READLINK",
    "SYMLINK",
    "",
    "MKNOD",
    "MKDIR",
    "UNLINK",
    "RMDIR",
    "RENAME",
    "LINK",
    "OPEN",
    "READ",
    "WRITE",
    "STATFS",
    "RELEASE",
    "",
    "FSYNC",
    "SETXATTR",
    "GETXATTR",
    "LISTXATTR",
    "REMOVEXATTR",
    "FLUSH",
    "INIT",
    "OPENDIR",
    "READDIR",
    "RELEASEDIR",
    "FSYNCDIR",
    "GETLK",
    "SETLK",
    "SETLKW",
    "ACCESS",
    "CREATE",
    "INTERRUPT",
    "BMAP",
    "DESTROY",
    "IOCTL",
    "POLL",
    "NOTIFY_REPLY",
    "BATCH_FORGET",
    "FALLOCATE",
    "READDIRPLUS",
    "RENAME2",
    "LSEEK",
    "COPY_FILE_RANGE",
    "SETUPMAPPING",
    "REMOVEMAPPING",
    "SYNCFS",
    "TMPFILE",
    "STATX",
];

/// What the guest asked the device, by opcode, and the time the device spent answering: the
/// figures that say whether a slow workload is many requests or slow ones.
pub struct Requests {
    by_op: [AtomicU64; OPCODES.len() + 1],
    busy_ns: AtomicU64,
    /// The largest reply to a READ: how far the guest's read-ahead reaches.
    largest_read: AtomicU64,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            by_op: std::array::from_fn(|_| AtomicU64::new(0)),
            busy_ns: AtomicU64::new(0),
            largest_read: AtomicU64::new(0),
        }
    }
}

impl Requests {
    fn count(&self, opcode: u32, written: u32, took: Duration) {
        if opcode == Opcode::Read as u32 {
            self.largest_read
                .fetch_max(u64::from(written), Ordering::Relaxed);
        }
        // Unknown opcodes share the last slot.
        let i = usize::try_from(opcode).map_or(OPCODES.len(), |i| i.min(OPCODES.len()));
        self.by_op[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The largest READ reply so far (bytes, its header included).
    pub fn largest_read(&self) -> u64 {
        self.largest_read.load(Ordering::Relaxed)
    }

    /// Requests answered, by opcode name (only those seen), and the time spent on them.
    pub fn values(&self) -> (std::collections::BTreeMap<String, u64>, Duration) {
        let mut ops = std::collections::BTreeMap::new();
        for (i, n) in self.by_op.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let name = match OPCODES.get(i) {
                    Some(name) if !name.is_empty() => (*name).to_string(),
                    _ => "other".to_string(),
                };
                *ops.entry(name).or_insert(0) += n;
            }
        }
        let busy = Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed));
        (ops, busy)
    }
}

/// A chain handed back to the driver: queue, head, bytes written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub queue: u16,
    pub head: u16,
    pub len: u32,
}

struct Shared {
    done: Mutex<Vec<Completion>>,
    /// Requests handed to workers and not yet completed.
    inflight: Mutex<usize>,
    idle: Condvar,
    evt: EventFd,
}

pub struct Fs {
    config: FsConfig,
    /// What the guest read, and where the objects behind it came from (the VM's status).
    counters: Arc<Counters>,
    requests: Arc<Requests>,
    fs: Arc<ImageFs>,
    server: Arc<FuseServer>,
    shared: Arc<Shared>,
    epoll: Arc<Epoll>,
    work: Option<Sender<(u16, DescriptorChain<Mem>)>>,
}

/// Opens the objects an image root reads: through the daemon's object socket, or a local
/// store directly (`store:PATH` without a socket).
fn objects(config: &FsConfig, counters: &Arc<Counters>) -> Result<Arc<Objects>, Error> {
    let bad = |reason: String| Error::Invalid(format!("virtio-fs {}: {reason}", config.tag));
    let source: Arc<dyn ObjectSource> = match &config.objects_socket {
        Some(sock) => Arc::new(
            SocketSource::new(sock, &config.source, OBJECT_TIMEOUT)
                .map_err(|e| bad(e.to_string()))?,
        ),
        None => {
            let path = config.source.strip_prefix("store:").ok_or_else(|| {
                bad(format!(
                    "source {:?} needs the daemon's object socket (only store:PATH is read directly)",
                    config.source
                ))
            })?;
            Arc::new(Store::open(path).map_err(|e| bad(e.to_string()))?)
        }
    };
    Ok(Arc::new(Objects::new(source, counters.clone())))
}

fn version(config: &FsConfig) -> Result<ObjectId, Error> {
    config.version.parse().map_err(|_| {
        Error::Invalid(format!(
            "virtio-fs {}: version {:?} is not an object id",
            config.tag, config.version
        ))
    })
}

impl Fs {
    /// Serves the version `config` names; its commit is read now, so an unknown version or
    /// an unreachable source is an error before the guest runs.
    pub fn new(config: FsConfig) -> Result<Fs, Error> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let fs = ImageFs::new(
            objects(&config, &counters)?,
            &version(&config)?,
            counters.clone(),
            None,
            format!("virtio-fs {}", config.tag),
        )
        .map_err(|e| Error::Invalid(format!("virtio-fs {}: {e}", config.tag)))?;
        Self::with(config, fs, counters, Vec::new())
    }

    fn with(
        config: FsConfig,
        fs: ImageFs,
        counters: Arc<Counters>,
        pending: Vec<Completion>,
    ) -> Result<Fs, Error> {
        let fs = Arc::new(fs);
        let evt =
            EventFd::new(libc::EFD_NONBLOCK).map_err(crate::machine::io_err("virtio-fs event"))?;
        let epoll = Epoll::new().map_err(crate::machine::io_err("virtio-fs epoll"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(&evt),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(crate::machine::io_err("virtio-fs epoll"))?;
        if !pending.is_empty() {
            let _ = evt.write(1);
        }
        Ok(Fs {
            config,
            counters,
            requests: Arc::new(Requests::default()),
            server: Arc::new(Server::new(fs.clone())),
            fs,
            shared: Arc::new(Shared {
                done: Mutex::new(pending),
                inflight: Mutex::new(0),
                idle: Condvar::new(),
                evt,
            }),
            epoll: Arc::new(epoll),
            work: None,
        })
    }

    fn start_workers(&mut self) {
        let (tx, rx) = mpsc::channel::<(u16, DescriptorChain<Mem>)>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let (rx, server, shared) = (rx.clone(), self.server.clone(), self.shared.clone());
            let requests = self.requests.clone();
            let _ = std::thread::Builder::new()
                .name(format!("{}-fs{i}", self.config.tag))
                .spawn(move || serve(&rx, &server, &shared, &requests));
        }
        self.work = Some(tx);
    }

    /// Waits until no request is in flight (a snapshot needs every reply in memory).
    pub(crate) fn quiesce(&self) {
        let mut n = lock(&self.shared.inflight);
        while *n > 0 {
            n = self.shared.idle.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A worker: takes requests until the device lets go of the queue's sender.
fn serve(
    rx: &Mutex<Receiver<(u16, DescriptorChain<Mem>)>>,
    server: &FuseServer,
    shared: &Shared,
    requests: &Requests,
) {
    loop {
        let next = lock(rx).recv();
        let Ok((queue, chain)) = next else { return };
        let head = chain.head_index();
        let written = answer(server, requests, &chain);
        lock(&shared.done).push(Completion {
            queue,
            head,
            len: written,
        });
        let _ = shared.evt.write(1);
        let mut n = lock(&shared.inflight);
        *n -= 1;
        if *n == 0 {
            shared.idle.notify_all();
        }
    }
}

/// Serves one request and counts it; returns the bytes written into the chain. A panic in the
/// parser or the file system must not lose the chain (the driver would wait for it forever,
/// and a snapshot would wait for the request in flight): it goes back unanswered.
fn answer(server: &FuseServer, requests: &Requests, chain: &DescriptorChain<Mem>) -> u32 {
    let started = Instant::now();
    let (written, opcode) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(server, chain)))
            .unwrap_or((0, u32::MAX));
    requests.count(opcode, written, started.elapsed());
    written
}

/// Serves one request; returns the bytes written into the chain (0: not answered, the chain
/// goes back to the driver as it came) and the request's opcode (`u32::MAX` when unreadable).
pub(crate) fn handle(server: &FuseServer, chain: &DescriptorChain<Mem>) -> (u32, u32) {
    let mem = chain.memory();
    let (Ok(mut peek), Ok(r), Ok(w)) = (
        Reader::from_descriptor_chain(mem, chain.clone()),
        Reader::from_descriptor_chain(mem, chain.clone()),
        VirtioFsWriter::new(mem, chain.clone()),
    ) else {
        // A descriptor outside guest memory, or lengths that overflow.
        return (0, u32::MAX);
    };
    // The server trusts the header's length as far as the bodies it reads by it; a length
    // past the readable part of the chain (or shorter than the header) is refused here.
    let readable = peek.available_bytes();
    let Ok(header) = peek.read_obj::<InHeader>() else {
        return (0, u32::MAX);
    };
    let len = header.len as usize;
    if len > readable || len < size_of::<InHeader>() {
        return (reply_error(w, header.unique, libc::EINVAL), header.opcode);
    }
    // Opcodes that name no operation are answered here: fuse-backend-rs turns an opcode below
    // its last into its enum by transmute when it traces, and these have no variant.
    let unnamed = usize::try_from(header.opcode)
        .ok()
        .and_then(|i| OPCODES.get(i))
        .is_some_and(|name| name.is_empty());
    if unnamed {
        return (reply_error(w, header.unique, libc::ENOSYS), header.opcode);
    }
    let written = match server.handle_message(r, Writer::VirtioFs(w), None, None) {
        Ok(n) => u32::try_from(n).unwrap_or(0),
        // A malformed request: the chain goes back to the driver unanswered.
        Err(_) => 0,
    };
    (written, header.opcode)
}

/// Whether `chain` asks what the file system answers from memory, waiting on no object (see
/// `ImageFs::read_is_ready`, `listing_is_ready`, `lookup_is_ready`, `is_numbered`); a chain
/// that does not parse goes the workers' way, which answers it.
fn is_ready(fs: &ImageFs, chain: &DescriptorChain<Mem>) -> bool {
    let Ok(mut r) = Reader::from_descriptor_chain(chain.memory(), chain.clone()) else {
        return false;
    };
    let Ok(header) = r.read_obj::<InHeader>() else {
        return false;
    };
    let node = header.nodeid;
    // Compared as numbers: fuse-backend-rs's `Opcode::from` transmutes, and some numbers
    // below its last name no variant.
    let is = |o: Opcode| header.opcode == o as u32;
    if is(Opcode::Read) || is(Opcode::Readdir) || is(Opcode::Readdirplus) {
        // READDIR and READDIRPLUS carry the same body as READ (fuse_read_in).
        let Ok(read) = r.read_obj::<ReadIn>() else {
            return false;
        };
        return if is(Opcode::Read) {
            fs.read_is_ready(node, read.offset, read.size)
        } else {
            fs.listing_is_ready(node, read.offset)
        };
    }
    if is(Opcode::Lookup) {
        let len = (header.len as usize).saturating_sub(size_of::<InHeader>());
        if len == 0 || len > NAME_MAX + 1 {
            return false;
        }
        let mut name = vec![0u8; len];
        if std::io::Read::read_exact(&mut r, &mut name).is_err() {
            return false;
        }
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        return fs.lookup_is_ready(node, &name[..end]);
    }
    let about_one_node = [
        Opcode::Getattr,
        Opcode::Open,
        Opcode::Release,
        Opcode::Flush,
        Opcode::Readlink,
        Opcode::Getxattr,
        Opcode::Listxattr,
        Opcode::Opendir,
        Opcode::Releasedir,
        Opcode::Access,
        Opcode::Statfs,
    ];
    about_one_node.into_iter().any(is) && fs.is_numbered(node)
}

/// The longest name a LOOKUP answered on a vCPU thread may carry (longer ones go to the
/// workers, which refuse them).
const NAME_MAX: usize = 255;

fn reply_error<S: BitmapSlice>(mut w: VirtioFsWriter<'_, S>, unique: u64, errno: i32) -> u32 {
    let out = OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    match std::io::Write::write_all(&mut w, out.as_slice()) {
        Ok(()) => out.len,
        Err(_) => 0,
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        // Ends the workers once they finish what they hold.
        self.work.take();
    }
}

impl VirtioDevice for Fs {
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn fs_counters(&self) -> Option<super::FsFigures> {
        Some(super::FsFigures {
            counters: self.counters.clone(),
            requests: self.requests.clone(),
        })
    }
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn queue_sizes(&self) -> &[u16] {
        &[HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; TAG_LEN + 4];
        cfg[..self.config.tag.len()].copy_from_slice(self.config.tag.as_bytes());
        cfg[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, _irq: super::IrqLine, _features: u64) {
        if self.work.is_none() {
            self.start_workers();
        }
    }
    fn notify(&mut self, index: usize, q: &mut Queues) -> Result<bool, QueueBroken> {
        if self.work.is_none() {
            self.start_workers();
        }
        let mem: Mem = Arc::new(q.mem.clone());
        let Some(queue) = q.queues.get_mut(index) else {
            return Ok(false);
        };
        let mut answered = Vec::new();
        while let Some(chain) = queue.pop_descriptor_chain(mem.clone()) {
            // What waits on no object is answered here, on the vCPU's thread, as virtio-blk
            // answers: handing it to a worker and back costs two thread wake-ups, more than
            // the work. Anything that may wait on an object goes to the workers.
            if index > 0 && is_ready(&self.fs, &chain) {
                let written = answer(&self.server, &self.requests, &chain);
                answered.push((chain.head_index(), written));
                continue;
            }
            *lock(&self.shared.inflight) += 1;
            let sent = self
                .work
                .as_ref()
                .is_some_and(|w| w.send((index as u16, chain)).is_ok());
            if !sent {
                *lock(&self.shared.inflight) -= 1;
            }
        }
        for (head, len) in &answered {
            q.add_used(index, *head, *len)?;
        }
        Ok(!answered.is_empty())
    }
    fn backend(&mut self, q: &mut Queues) -> Result<bool, QueueBroken> {
        let _ = self.shared.evt.read();
        let done = std::mem::take(&mut *lock(&self.shared.done));
        for c in &done {
            q.add_used(usize::from(c.queue), c.head, c.len)?;
        }
        Ok(!done.is_empty())
    }
    fn reset(&mut self) {
        self.quiesce();
        lock(&self.shared.done).clear();
    }
    fn event_source(&self) -> Option<Arc<Epoll>> {
        Some(self.epoll.clone())
    }
}

/// The device in a snapshot: which image it serves from where, the file system's numbering
/// and handles, and replies not yet returned to the driver.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FsDeviceState {
    pub config: FsConfig,
    pub fs: FsState,
    pub completions: Vec<Completion>,
}

impl<'a> Persist<'a> for Fs {
    type State = FsDeviceState;
    type Args = &'a DeviceEnv<'a>;

    fn save(&mut self, _ctx: &SaveContext) -> Result<FsDeviceState, Error> {
        self.quiesce();
        Ok(FsDeviceState {
            config: self.config.clone(),
            fs: self.fs.save(),
            completions: lock(&self.shared.done).clone(),
        })
    }

    fn restore(env: &'a DeviceEnv<'a>, state: &FsDeviceState) -> Result<Fs, Error> {
        let mut config = state.config.clone();
        if let Some(sock) = &env.spec.objects_socket {
            config.objects_socket = Some(sock.clone());
        }
        config.validate()?;
        if state.fs.commit != version(&config)? {
            return Err(Error::Invalid(format!(
                "virtio-fs {}: its file system state is of another version",
                config.tag
            )));
        }
        let counters = Arc::new(Counters::default());
        let fs = ImageFs::restore(
            objects(&config, &counters)?,
            &state.fs,
            counters.clone(),
            format!("virtio-fs {}", config.tag),
        )
        .map_err(|e| Error::Invalid(format!("virtio-fs {}: {e}", config.tag)))?;
        Self::with(config, fs, counters, state.completions.clone())
    }
}
