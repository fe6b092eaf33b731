//! A built VM running: its vCPU threads, the threads serving devices with host-side input,
//! the API, and the run loop that waits for the end and serves pause, resume, snapshot and
//! fork requests in between (one at a time, so none lands in the middle of another).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::api::{
    ActivateRequest, Activity, Controller, ForkInfo, ForkRequest, Refusal, SnapshotInfo,
    SnapshotRequest, VmStatus,
};
use crate::boot::KernelEntry;
use crate::bus::lock;
use crate::config::Console;
use crate::devices::SerialPort;
use crate::exit::{ExitReason, ExitSignal};
use crate::machine::{io_err, Machine};
use crate::service::{GuestFork, Services};
use crate::snapshot::{save, VmInfo};
use crate::vcpu::{self, RunState, VcpuControl, VcpuThread};
use crate::{flavour, Error};

/// How often (ms) the console's coalesced writes are output at the latest.
const CONSOLE_TICK_MS: i32 = 20;

/// A built VM, ready to run.
pub struct Vm {
    machine: Machine,
    /// What the VM is (what its snapshots record).
    info: VmInfo,
    shared: Arc<Shared>,
    services: Arc<Services>,
    wiring: Wiring,
    /// The kernel's entry point (booted VMs).
    pub kernel: Option<KernelEntry>,
    /// Snapshots and forks taken so far (their overlay directories are numbered).
    forks: u32,
    /// Told once the vCPUs run (a clone telling the parent that forked it).
    ready_fd: Option<std::fs::File>,
    ready_file: Option<PathBuf>,
    /// Held paused until this pipe closes (a fork's clones, released together).
    release: Option<std::fs::File>,
    start_paused: bool,
    /// For a lazily restored VM, the pages with data it may not have fetched yet.
    lazy_pages: Option<Vec<u64>>,
}

/// How the VM is tied to this host: not part of what it is, so not in its snapshots (a
/// restore or a clone brings its own).
pub struct Wiring {
    pub api_socket: Option<PathBuf>,
    pub console: Console,
    /// Where the VM keeps disk overlays and its clones' directories.
    pub run_dir: PathBuf,
}

/// What the builder hands over.
pub struct VmParts {
    pub machine: Machine,
    pub info: VmInfo,
    pub exit: Arc<ExitSignal>,
    pub services: Arc<Services>,
    pub wiring: Wiring,
    pub clone_id: u32,
    pub lazy: Option<Arc<crate::lazy::FaultStats>>,
    /// When a restore began (restored VMs).
    pub restored_from: Option<Instant>,
    pub kernel: Option<KernelEntry>,
}

/// What the API and signal handlers act on while the VM runs.
pub struct Shared {
    pub control: Arc<VcpuControl>,
    pub exit: Arc<ExitSignal>,
    pub started: Instant,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub flavour: &'static str,
    pub restored: bool,
    /// For a lazily restored VM: what it fetched.
    pub lazy: Option<Arc<crate::lazy::FaultStats>>,
    /// How long building and restoring took, for a restored VM.
    pub restored_in: std::sync::OnceLock<Duration>,
    pub clone_id: u32,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    /// Wakes the run loop for a request (it sleeps otherwise: an idle or docked VM costs no
    /// CPU in its monitor).
    wake: Arc<EventFd>,
    pub services: Arc<Services>,
    fs_counters: Vec<(String, crate::virtio::FsFigures)>,
    net_figures: Vec<(String, crate::virtio::NetFigures)>,
    /// The network devices' transports, for an activation that attaches one.
    net_devices: Vec<Arc<Mutex<crate::virtio::mmio::MmioTransport>>>,
}

impl Shared {
    pub fn fs_stats(&self) -> Vec<crate::api::FsStats> {
        self.fs_counters
            .iter()
            .map(|(device, f)| {
                let v = f.counters.values();
                let (ops, busy) = f.requests.values();
                crate::api::FsStats {
                    device: device.clone(),
                    read_bytes: v.served,
                    fetched_bytes: v.fetched,
                    cached_bytes: v.cached,
                    reads: v.reads,
                    errors: v.errors,
                    requests: ops.values().sum(),
                    busy_us: u64::try_from(busy.as_micros()).unwrap_or(u64::MAX),
                    largest_read: f.requests.largest_read(),
                    ops,
                }
            })
            .collect()
    }

    pub fn net_stats(&self) -> Vec<crate::api::NetStats> {
        use std::sync::atomic::Ordering::Relaxed;
        self.net_figures
            .iter()
            .map(|(device, f)| {
                let c = &f.counters;
                let n = f.identity();
                crate::api::NetStats {
                    device: device.clone(),
                    tap: n.tap,
                    mac: n.mac.to_string(),
                    address: n
                        .ip
                        .as_deref()
                        .map(|ip| crate::config::ip_param_address(ip).to_owned()),
                    rx_frames: c.rx_frames.load(Relaxed),
                    rx_bytes: c.rx_bytes.load(Relaxed),
                    tx_frames: c.tx_frames.load(Relaxed),
                    tx_bytes: c.tx_bytes.load(Relaxed),
                    dropped: c.dropped.load(Relaxed),
                    bad_chains: c.bad_chains.load(Relaxed),
                }
            })
            .collect()
    }
}

/// What needs the run loop (it owns the vCPU threads).
enum Request {
    Pause(mpsc::Sender<()>),
    Resume(mpsc::Sender<()>),
    Snapshot {
        dir: PathBuf,
        stop: bool,
        reply: mpsc::Sender<Result<SnapshotInfo, String>>,
    },
    Fork {
        count: u32,
        dir: Option<PathBuf>,
        reply: mpsc::Sender<Result<ForkInfo, String>>,
    },
}

/// A handle to a running VM.
#[derive(Clone)]
pub struct VmHandle(pub Arc<Shared>);

impl VmHandle {
    pub fn status(&self) -> VmStatus {
        let s = &self.0;
        VmStatus {
            state: match (s.exit.reason(), s.control.state()) {
                (Some(_), _) | (_, RunState::Stopping) => Activity::Stopping,
                (None, RunState::Paused) => Activity::Paused,
                (None, RunState::Running) => Activity::Running,
            },
            pid: std::process::id(),
            vcpus: s.vcpus,
            mem_mib: s.mem_mib,
            kvm: s.flavour.into(),
            uptime_ms: s.started.elapsed().as_millis() as u64,
            clone_id: s.clone_id,
            restored_in_us: s.restored_in.get().map(|d| d.as_micros() as u64),
            lazy: s.lazy.as_ref().map(|l| l.snapshot()),
            guest_ready: s.services.guest_ready(),
            fork_budget_left: s.services.fork_budget_left(),
            fs: s.fs_stats(),
            net: s.net_stats(),
        }
    }

    fn request<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Request) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        lock(&self.0.requests).as_ref()?.send(make(tx)).ok()?;
        let _ = self.0.wake.write(1);
        rx.recv().ok()
    }

    /// Pauses every vCPU; returns once they are all out of the guest.
    pub fn pause(&self) {
        self.request(Request::Pause);
    }

    /// Lets the vCPUs run again (through the run loop, so never in the middle of a snapshot
    /// or fork).
    pub fn resume(&self) {
        self.request(Request::Resume);
    }

    /// Gives the guest its configuration (the answer to its `ready`) and resumes it.
    pub fn activate(
        &self,
        answer: String,
        network: Option<&crate::spec::NetAttach>,
    ) -> Result<VmStatus, String> {
        if self.0.services.activated() {
            return Err("the VM was activated already".into());
        }
        if let Some(a) = network {
            self.attach_network(a)?;
        }
        if !self.0.services.activate(answer) {
            return Err("the VM was activated already".into());
        }
        self.resume();
        Ok(self.status())
    }

    /// Puts the first network device on TAP `a.tap` with address `a.ip` and a MAC of its own
    /// (see `Net::attach`); the guest's identity follows, and its driver sees the link up.
    fn attach_network(&self, a: &crate::spec::NetAttach) -> Result<(), String> {
        let t = self
            .0
            .net_devices
            .first()
            .ok_or("the VM has no network device to put on a network")?;
        let mut t = lock(t);
        let net = t
            .device_as::<crate::virtio::net::Net>()
            .ok_or("the VM's first network device is not one")?;
        net.attach(a, crate::config::Mac::random())
            .map_err(|e| e.to_string())?;
        let nic = crate::virtio::VirtioDevice::net_figures(net).map(|f| f.identity());
        t.config_changed();
        if let Some(nic) = nic {
            self.0.services.follow_nic(&nic);
        }
        Ok(())
    }

    pub fn stop(&self, signal: Option<i32>) {
        self.0.exit.raise(ExitReason::Stopped(signal));
    }

    /// Writes a snapshot to `dir` (which must not exist or be empty); the VM then stops or
    /// goes on as it was (paused stays paused).
    pub fn snapshot(&self, dir: &Path, stop: bool) -> Result<SnapshotInfo, String> {
        self.request(|reply| Request::Snapshot {
            dir: dir.to_owned(),
            stop,
            reply,
        })
        .unwrap_or_else(|| Err("the VM is not running".into()))
    }

    /// Forks the VM into `count` clones (directories under `dir`, or the VM's run directory).
    pub fn fork(&self, count: u32, dir: Option<&Path>) -> Result<ForkInfo, String> {
        if count == 0 || count > crate::service::MAX_CLONES {
            return Err(format!(
                "{count} clones: between 1 and {}",
                crate::service::MAX_CLONES
            ));
        }
        self.request(|reply| Request::Fork {
            count,
            dir: dir.map(Path::to_owned),
            reply,
        })
        .unwrap_or_else(|| Err("the VM is not running".into()))
    }
}

impl Controller for VmHandle {
    fn status(&self) -> VmStatus {
        VmHandle::status(self)
    }
    fn pause(&self) -> VmStatus {
        VmHandle::pause(self);
        VmHandle::status(self)
    }
    fn resume(&self) -> VmStatus {
        VmHandle::resume(self);
        VmHandle::status(self)
    }
    fn stop(&self) {
        VmHandle::stop(self, None);
    }
    fn snapshot(&self, req: &SnapshotRequest) -> Result<SnapshotInfo, Refusal> {
        VmHandle::snapshot(self, &req.dir, req.stop).map_err(Refusal::conflict)
    }
    fn fork(&self, req: &ForkRequest) -> Result<ForkInfo, Refusal> {
        VmHandle::fork(self, req.count, req.dir.as_deref()).map_err(Refusal::conflict)
    }
    fn activate(&self, req: &ActivateRequest) -> Result<VmStatus, Refusal> {
        let env: Vec<(String, String)> = req.env.clone().into_iter().collect();
        let line = crate::service::activation_line(&env, req.args.as_deref())
            .map_err(Refusal::bad_request)?;
        VmHandle::activate(self, line, req.network.as_ref()).map_err(Refusal::conflict)
    }
}

impl Vm {
    pub fn new(p: VmParts) -> Vm {
        let shared = Arc::new(Shared {
            control: Arc::new(VcpuControl::new()),
            exit: p.exit,
            started: p.restored_from.unwrap_or_else(Instant::now),
            vcpus: p.info.vcpus,
            mem_mib: p.info.mem_mib,
            flavour: flavour::detect().name(),
            restored: p.restored_from.is_some(),
            lazy: p.lazy,
            restored_in: std::sync::OnceLock::new(),
            clone_id: p.clone_id,
            requests: Mutex::new(None),
            wake: p.services.wake.clone(),
            services: p.services.clone(),
            fs_counters: p.machine.devices.fs_counters(),
            net_figures: p.machine.devices.net_figures(),
            net_devices: p
                .machine
                .devices
                .virtio
                .iter()
                .filter(|s| s.net.is_some())
                .map(|s| s.transport.clone())
                .collect(),
        });
        Vm {
            machine: p.machine,
            info: p.info,
            shared,
            services: p.services,
            wiring: p.wiring,
            kernel: p.kernel,
            forks: 0,
            ready_fd: None,
            ready_file: None,
            release: None,
            start_paused: false,
            lazy_pages: None,
        }
    }

    /// Start with the vCPUs paused (a docked substrate).
    pub fn start_paused(&mut self, paused: bool) {
        self.start_paused = paused;
    }

    /// A file to create when the VM is ready, as `set_ready_fd`'s pipe hears it (for a held
    /// VM, once it is released).
    pub fn set_ready_file(&mut self, path: Option<PathBuf>) {
        self.ready_file = path;
    }

    /// A pipe to tell (4 bytes: the clone id) once the vCPUs run and the API answers; for
    /// a held VM, once when it is ready to be released and again once it is.
    pub fn set_ready_fd(&mut self, fd: Option<std::fs::File>) {
        self.ready_fd = fd;
    }

    /// Hold the vCPUs paused until `fd` (a pipe's read end) closes: a fork releases all its
    /// clones at once, so that none still restoring competes with others already running.
    pub fn hold_until_closed(&mut self, fd: Option<std::fs::File>) {
        self.release = fd;
    }

    /// The pages a lazily restored VM has to fetch before it can be saved.
    pub fn set_lazy_pages(&mut self, pages: Option<Vec<u64>>) {
        self.lazy_pages = pages;
    }

    /// What the VM is.
    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    pub fn handle(&self) -> VmHandle {
        VmHandle(self.shared.clone())
    }

    /// Runs until the guest powers off, resets or exits, or the VM is stopped.
    pub fn run(mut self) -> Result<ExitReason, Error> {
        vcpu::install_kick_handler()?;
        let done = Arc::new(AtomicBool::new(false));
        for slot in &self.machine.devices.virtio {
            if let Some(events) = &slot.events {
                spawn_event_thread(
                    &slot.id,
                    slot.transport.clone(),
                    events.clone(),
                    done.clone(),
                )?;
            }
        }
        if let (Console::Stdio, Some(serial)) = (&self.wiring.console, &self.machine.devices.serial)
        {
            spawn_stdin_thread(serial.clone(), done.clone());
        }
        if let (Console::Socket { socket, .. }, Some(serial)) =
            (&self.wiring.console, &self.machine.devices.serial)
        {
            if let Some(l) = lock(serial).1.take() {
                crate::devices::serial::serve_attach(
                    l,
                    socket.clone(),
                    serial.clone(),
                    done.clone(),
                );
            }
        }
        let (req_tx, req_rx) = mpsc::channel();
        *lock(&self.shared.requests) = Some(req_tx);
        let (fork_tx, fork_rx) = mpsc::channel::<GuestFork>();
        self.services.set_fork_sender(Some(fork_tx));

        if self.start_paused || self.release.is_some() {
            self.shared.control.set(RunState::Paused);
        }
        let mut threads = Vec::new();
        for (id, fd) in self.machine.vcpus.iter().enumerate() {
            threads.push(
                VcpuThread::spawn(
                    id as u8,
                    fd.clone(),
                    self.machine.devices.pio.clone(),
                    self.machine.devices.mmio.clone(),
                    self.shared.control.clone(),
                    self.shared.exit.clone(),
                )
                .map_err(io_err("starting a vCPU thread"))?,
            );
        }
        if self.shared.restored && self.release.is_none() {
            let _ = self.shared.restored_in.set(self.shared.started.elapsed());
        }
        // Served once the vCPUs run: whoever sees the socket sees a running VM.
        let api = match &self.wiring.api_socket {
            Some(p) => {
                match crate::api::server::serve(p, Arc::new(VmHandle(self.shared.clone()))) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        vcpu::stop_all(&mut threads, &self.shared.control);
                        done.store(true, Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        // Whoever forked this clone may use it now: its vCPUs run (or, held, are ready to)
        // and its API answers.
        self.tell_ready();

        // Wait for the end, serving pause, snapshot and fork requests meanwhile.
        let reason = loop {
            if let Some(r) = self.shared.exit.reason() {
                break r;
            }
            use std::os::fd::AsRawFd;
            let release = self.release.as_ref().map_or(-1, |f| f.as_raw_fd());
            let mut pfd = [
                self.shared.exit.evt.as_raw_fd(),
                self.shared.wake.as_raw_fd(),
                release,
            ]
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            let n = if release < 0 { 2 } else { 3 };
            // What the guest wrote to its console without exiting is output at least this
            // often (a guest that prints and then halts exits no more).
            let console = self
                .machine
                .devices
                .serial
                .as_ref()
                .filter(|s| lock(s).coalescing());
            let wait_ms = if console.is_some() {
                CONSOLE_TICK_MS
            } else {
                200
            };
            // SAFETY: `n` valid pollfds on the stack. The timeout only paces the reaping of
            // clones and the console.
            unsafe { libc::poll(pfd.as_mut_ptr(), n, wait_ms) };
            if let Some(s) = console {
                lock(s).drain();
            }
            if pfd[2].revents != 0 {
                // Closed (or written to): the clones of this fork go on together.
                self.release_hold(true);
            }
            let _ = self.shared.exit.evt.read();
            let _ = self.shared.wake.read();
            self.services.reap();
            while let Ok(req) = req_rx.try_recv() {
                self.serve_request(req, &threads);
            }
            // The answer goes to the service once the clones run, without holding this loop.
            while let Ok(f) = fork_rx.try_recv() {
                self.serve_request(
                    Request::Fork {
                        count: f.count,
                        dir: None,
                        reply: f.reply,
                    },
                    &threads,
                );
            }
        };
        *lock(&self.shared.requests) = None;
        self.services.set_fork_sender(None);
        vcpu::stop_all(&mut threads, &self.shared.control);
        if let Some(s) = &self.machine.devices.serial {
            lock(s).drain();
        }
        done.store(true, Ordering::SeqCst);
        if let Some(api) = api {
            api.shutdown();
        }
        Ok(reason)
    }

    /// Tells whoever started this VM that it is ready: for a held VM, once when it is ready
    /// to be released (the pipe stays open for the second word) and once when it is.
    fn tell_ready(&mut self) {
        use std::io::Write;
        let id = self.shared.clone_id.to_le_bytes();
        if self.release.is_some() {
            if let Some(f) = self.ready_fd.as_mut() {
                let _ = f.write_all(&id);
            }
        } else if let Some(mut f) = self.ready_fd.take() {
            let _ = f.write_all(&id);
        }
        if self.release.is_none() {
            if let Some(p) = self.ready_file.take() {
                if let Err(e) = std::fs::File::create(&p) {
                    eprintln!("starling: cannot mark ready at {}: {e}", p.display());
                }
            }
        }
    }

    /// Ends a hold: whoever started the VM hears that it is released, and the vCPUs run
    /// (`run`: the release came; otherwise an API pause or resume came first and decides).
    /// Told first: once the vCPUs of a hundred clones spin, this thread may wait long for a
    /// CPU, and the vCPU it wakes would take its CPU before it wrote.
    fn release_hold(&mut self, run: bool) {
        if self.release.take().is_none() {
            return;
        }
        let _ = self.shared.restored_in.set(self.shared.started.elapsed());
        self.tell_ready();
        if run {
            self.shared.control.set(RunState::Running);
        }
    }

    fn serve_request(&mut self, req: Request, threads: &[VcpuThread]) {
        match req {
            Request::Pause(ack) => {
                self.release_hold(false);
                vcpu::pause_all(threads, &self.shared.control);
                let _ = ack.send(());
            }
            Request::Resume(ack) => {
                self.release_hold(false);
                self.shared.control.set(RunState::Running);
                let _ = ack.send(());
            }
            Request::Snapshot { dir, stop, reply } => {
                let was = self.shared.control.state();
                let t = Instant::now();
                vcpu::pause_all(threads, &self.shared.control);
                let r = if self.shared.control.state() == RunState::Paused {
                    self.snapshot_to(&dir, stop).map_err(|e| e.to_string())
                } else {
                    Err("the VM is stopping".to_string())
                };
                let paused_us = t.elapsed().as_micros();
                if stop && r.is_ok() {
                    self.shared.exit.raise(ExitReason::Stopped(None));
                } else if was == RunState::Running {
                    self.shared.control.set(RunState::Running);
                }
                let _ = reply.send(r.map(|w| SnapshotInfo {
                    dir,
                    memory_bytes: w.memory_bytes,
                    state_bytes: w.state_bytes,
                    paused_us: paused_us as u64,
                }));
            }
            Request::Fork { count, dir, reply } => {
                // Addresses first, while the parent still runs.
                let networks = match self.clone_networks(count) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let was = self.shared.control.state();
                let t = Instant::now();
                vcpu::pause_all(threads, &self.shared.control);
                let frozen = if self.shared.control.state() == RunState::Paused {
                    self.freeze_for_fork(dir)
                } else {
                    Err(Error::Invalid("the VM is stopping".into()))
                };
                let paused_us = t.elapsed().as_micros();
                if was == RunState::Running {
                    self.shared.control.set(RunState::Running);
                }
                // The parent runs on while its clones start.
                let r = frozen.and_then(|(dir, memfd)| {
                    crate::fork::spawn_clones(
                        &dir,
                        count,
                        &memfd,
                        &self.clone_wiring(),
                        networks.as_ref(),
                        self.services.budget_fd(),
                    )
                    .map_err(|e| Error::Io {
                        what: format!("starting clones in {}", dir.display()),
                        source: e,
                    })
                    .map(|p| (dir, p))
                });
                match r {
                    Ok((dir, pending)) => {
                        // The parent runs again; the answer waits for the clones to run.
                        let services = self.services.clone();
                        let _ =
                            std::thread::Builder::new()
                                .name("fork-wait".into())
                                .spawn(move || {
                                    let r = match (pending.wait(&services), networks) {
                                        (Ok(clones), Some(n)) => n.adopt(&clones).map(|_| clones),
                                        (Ok(clones), None) => Ok(clones),
                                        (Err(e), Some(n)) => {
                                            n.detach();
                                            Err(e)
                                        }
                                        (Err(e), None) => Err(e),
                                    };
                                    let r = r.map(|clones| ForkInfo {
                                        dir,
                                        clones,
                                        paused_us: paused_us as u64,
                                        total_us: t.elapsed().as_micros() as u64,
                                    });
                                    let _ = reply.send(r);
                                });
                    }
                    Err(e) => {
                        if let Some(n) = networks {
                            n.detach();
                        }
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    /// Leases for `count` clones when this VM's first network device was given its address
    /// by a network (see `clone_net`).
    fn clone_networks(
        &self,
        count: u32,
    ) -> Result<Option<crate::clone_net::CloneNetworks>, String> {
        let Some((device, f)) = self.shared.net_figures.first() else {
            return Ok(None);
        };
        let ip = f.identity().ip;
        crate::clone_net::CloneNetworks::attach(device, ip.as_deref(), count, &self.info.hostname)
    }

    /// What clones get of this VM's wiring: an API socket, a vsock socket and a console file
    /// in their own directories where this VM has them.
    fn clone_wiring(&self) -> crate::fork::CloneWiring {
        crate::fork::CloneWiring {
            api: self.wiring.api_socket.is_some(),
            vsock: self.info.has(crate::virtio::TYPE_VSOCK),
            console: self.wiring.console != Console::Off,
        }
    }

    /// Pages a lazy VM never touched exist only on its memory server: fetch them all (the
    /// fault thread serves these reads) before anything reads or remaps RAM.
    fn fetch_untouched(&mut self) {
        if let Some(pages) = self.lazy_pages.take() {
            for p in pages {
                self.machine.ram.touch(p);
            }
        }
    }

    /// Writes a snapshot into `dir`; unless the VM stops after it, writable disks continue on
    /// new overlays in the run directory.
    fn snapshot_to(&mut self, dir: &Path, stop: bool) -> Result<save::Written, Error> {
        self.fetch_untouched();
        self.forks += 1;
        let freeze = self.wiring.run_dir.join(format!("snap-{}", self.forks));
        save::snapshot(
            &mut self.machine,
            &self.info,
            self.shared.clone_id,
            dir,
            (!stop).then_some(freeze.as_path()),
        )
    }

    /// Freezes RAM and disks and writes the state for the clones; returns their directory
    /// and the frozen memory.
    fn freeze_for_fork(&mut self, dir: Option<PathBuf>) -> Result<(PathBuf, std::fs::File), Error> {
        self.fetch_untouched();
        self.forks += 1;
        let dir = dir.unwrap_or_else(|| self.wiring.run_dir.join(format!("fork-{}", self.forks)));
        // The parent's own overlays stay in its run directory: removing a fork's directory
        // must not take a disk layer from under the parent.
        let freeze = self.wiring.run_dir.join(format!("overlays-{}", self.forks));
        let memfd = save::freeze_for_fork(
            &mut self.machine,
            &self.info,
            self.shared.clone_id,
            &dir,
            &freeze,
        )?;
        Ok((dir, memfd))
    }
}

/// Serves a device's host-side input (vsock's host sockets) on a thread of its own.
fn spawn_event_thread(
    id: &str,
    transport: Arc<Mutex<crate::virtio::MmioTransport>>,
    epoll: Arc<vmm_sys_util::epoll::Epoll>,
    done: Arc<AtomicBool>,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name(id.into())
        .spawn(move || {
            let mut events = vec![vmm_sys_util::epoll::EpollEvent::default(); 32];
            while !done.load(Ordering::SeqCst) {
                match epoll.wait(100, &mut events) {
                    Ok(0) => {}
                    Ok(_) => lock(&transport).process_backend(),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .map(|_| ())
        .map_err(io_err("starting a device thread"))
}

fn spawn_stdin_thread(serial: Arc<Mutex<SerialPort>>, done: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while !done.load(Ordering::SeqCst) {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() && !done.load(Ordering::SeqCst) {
                    let took = lock(&serial).input(rest);
                    rest = &rest[took..];
                    if !rest.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
}
