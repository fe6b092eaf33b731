//! Building a VM (memory, irqchip, devices) and either booting it (kernel, ACPI, vCPU setup)
//! or restoring it from a snapshot; running it until the guest or the operator ends it, and
//! pausing, snapshotting and forking it on the way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, MmioDevice};
use crate::api::{
    ActivateRequest, Activity, Controller, ForkInfo, ForkRequest, Refusal, SnapshotInfo,
    SnapshotRequest, VmStatus,
};
use crate::boot::{self, cpu, KernelEntry};
use crate::bus::{lock, Bus};
use crate::config::VmConfig;
use crate::devices::{Console, DebugExit, PowerButton, Rtc, SerialPort, I8042};
use crate::exit::{ExitReason, ExitSignal};
use crate::layout::*;
use crate::memory::GuestRam;
use crate::service::{GuestFork, Identity, Services};
use crate::snapshot::{self, kvm as kstate, LayerSnap, SerialSnap, VmState};
use crate::spec::RestoreSpec;
use crate::vcpu::{self, RunState, VcpuControl, VcpuThread};
use crate::virtio::layers::LayeredDisk;
use crate::virtio::{blk::Block, rng::Rng, vsock::Vsock, IrqLine, MmioTransport, VirtioDevice};
use crate::{flavour, Error};

const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A built VM, ready to run.
pub struct Vm {
    config: VmConfig,
    kvm: Kvm,
    vm: VmFd,
    vcpus: Vec<Arc<Mutex<VcpuFd>>>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialPort>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    vsock: Option<(Arc<Mutex<MmioTransport>>, Arc<vmm_sys_util::epoll::Epoll>)>,
    shared: Arc<Shared>,
    /// The kernel's entry point (booted VMs).
    pub kernel: Option<KernelEntry>,
    ram: GuestRam,
    services: Arc<Services>,
    /// Where this VM keeps disk overlays and its clones' directories.
    run_dir: PathBuf,
    forks: u32,
    /// Told once the vCPUs run (a clone telling the parent that forked it).
    ready_fd: Option<std::fs::File>,
    start_paused: bool,
    /// For a lazily restored VM, the pages with data it may not have fetched yet.
    lazy_pages: Option<Vec<u64>>,
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
            vcpus: s.vcpus,
            mem_mib: s.mem_mib,
            kvm: s.flavour.into(),
            uptime_ms: s.started.elapsed().as_millis() as u64,
            clone_id: s.clone_id,
            restored_in_us: s.restored_in.get().map(|d| d.as_micros() as u64),
            lazy: s.lazy.as_ref().map(|l| l.snapshot()),
            guest_ready: s.services.guest_ready(),
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
    pub fn activate(&self, answer: String) -> Result<VmStatus, String> {
        if !self.0.services.activate(answer) {
            return Err("the VM was activated already".into());
        }
        self.resume();
        Ok(self.status())
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
        VmHandle::activate(self, line).map_err(Refusal::conflict)
    }
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// A descriptor the parent handed over (`memory_fd`, `ready_fd`), taken as this process's own
/// and kept from its own children.
fn inherited(fd: i32) -> Result<std::fs::File, Error> {
    if fd < 3 {
        return Err(Error::Invalid(format!(
            "descriptor {fd} is not an inherited one"
        )));
    }
    // SAFETY: the parent that spawned this process handed this descriptor over for this
    // purpose; nothing else in this process owns it.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    crate::fork::set_cloexec(fd, true).map_err(|e| Error::Io {
        what: format!("inherited descriptor {fd}"),
        source: e,
    })?;
    Ok(f)
}

fn default_run_dir() -> PathBuf {
    std::env::temp_dir().join(format!("starling-vm-{}", std::process::id()))
}

/// What `assemble` is given besides the config.
struct Parts {
    ram: GuestRam,
    exit: Option<Arc<ExitSignal>>,
    lazy: Option<Arc<crate::lazy::FaultStats>>,
    disks: Vec<LayeredDisk>,
    serial: Option<SerialSnap>,
    identity: Identity,
    run_dir: PathBuf,
    restored_from: Option<Instant>,
}

impl Vm {
    /// Builds the VM and loads its kernel; every input problem (kernel, initrd, memory, disks)
    /// is reported here, before any guest code runs.
    pub fn build(config: VmConfig) -> Result<Vm, Error> {
        config.validate()?;
        let ram =
            GuestRam::fresh(config.mem_mib << 20, config.hugepages).map_err(|e| Error::Io {
                what: format!("allocating {} MiB of guest memory", config.mem_mib),
                source: e,
            })?;
        let mut disks = Vec::new();
        for d in &config.disks {
            disks.push(
                LayeredDisk::open_base(&d.path, d.read_only).map_err(|e| Error::Disk {
                    path: d.path.clone(),
                    reason: e.to_string(),
                })?,
            );
        }
        let identity = Identity::fresh(0, config.hostname.clone());
        let run_dir = config.run_dir.clone().unwrap_or_else(default_run_dir);
        let (mut vm, announced) = Self::assemble(
            config,
            Parts {
                ram,
                exit: None,
                lazy: None,
                disks,
                serial: None,
                identity,
                run_dir,
                restored_from: None,
            },
        )?;
        let mem = &vm.ram.mem;
        let kernel = boot::load_kernel(mem, &vm.config.kernel)?;
        let initrd = match &vm.config.initrd {
            Some(p) => {
                let max = kernel
                    .setup_header
                    .map(|h| u64::from(h.initrd_addr_max))
                    .filter(|&m| m != 0)
                    .unwrap_or(MMIO_HOLE_START);
                Some(boot::load_initrd(mem, p, kernel.end, max)?)
            }
            None => None,
        };
        let cmdline_size = boot::load_cmdline(mem, &vm.config.cmdline)?;
        let rsdp = acpi::write_tables(mem, vm.config.vcpus, &announced)?;
        boot::write_boot_params(mem, &kernel, cmdline_size, initrd, rsdp)?;

        let base_cpuid = vm
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        for id in 0..vm.config.vcpus {
            let fd = vm
                .vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = cpu::cpuid_for(&base_cpuid, id, vm.config.vcpus);
            cpu::setup_vcpu(&fd, mem, &cpuid, (id == 0).then_some(&kernel))?;
            vm.vcpus.push(Arc::new(Mutex::new(fd)));
        }
        vm.kernel = Some(kernel);
        Ok(vm)
    }

    /// Builds a VM from a snapshot: the state file is checked (format version, checksum)
    /// before anything is created, RAM is mapped copy-on-write, and the vCPUs, interrupt
    /// controllers, clock and devices continue where they were.
    pub fn restore(spec: &RestoreSpec) -> Result<Vm, Error> {
        let t0 = Instant::now();
        let lazy = match &spec.lazy {
            Some(r) => Some(crate::lazy::fetch_state(&r.parse()?)?),
            None => None,
        };
        let snap_err = |reason: String| Error::Snapshot {
            path: spec.dir.clone(),
            reason,
        };
        let (state, lazy) = match lazy {
            Some((state, map, client)) => (state, Some((map, client))),
            None => (
                snapshot::file::read(&spec.dir.join(snapshot::STATE_FILE))?,
                None,
            ),
        };
        if state.vcpus.len() != usize::from(state.config.vcpus)
            || state.disks.len() != state.config.disks.len()
            || state.mem_bytes != state.config.mem_mib << 20
        {
            return Err(snap_err("the state does not match its own config".into()));
        }
        if lazy.is_some() && !state.config.disks.is_empty() {
            // Disk paths in a state from another host name files of that host.
            return Err(snap_err(
                "lazy restores of VMs with disks are not supported (the disks are on the \
                 snapshot's host)"
                    .into(),
            ));
        }
        for l in state.disks.iter().flatten() {
            let plain_name = l.path.components().count() == 1
                && matches!(
                    l.path.components().next(),
                    Some(std::path::Component::Normal(_))
                );
            if l.path.is_relative() && !plain_name {
                return Err(snap_err(format!(
                    "disk layer {} is not a file of the snapshot directory",
                    l.path.display()
                )));
            }
        }
        let exit = Arc::new(ExitSignal::new().map_err(io("creating the exit event"))?);
        let mut lazy_pages = None;
        let (ram, fault_stats) = match (lazy, spec.memory_fd) {
            (Some((map, client)), _) => {
                let ram = GuestRam::anonymous(state.mem_bytes)
                    .map_err(|e| snap_err(format!("memory: {e}")))?;
                let mut pages: Vec<u64> = map.keys().copied().collect();
                pages.sort_unstable();
                lazy_pages = Some(pages);
                let stats = crate::lazy::serve_faults(&ram, client, map, exit.clone())?;
                (ram, Some(stats))
            }
            (None, fd) => {
                let memory = match fd {
                    Some(fd) => inherited(fd)?,
                    None => {
                        let p = spec.dir.join(snapshot::MEMORY_FILE);
                        std::fs::File::open(&p)
                            .map_err(|e| snap_err(format!("{}: {e}", p.display())))?
                    }
                };
                let ram = GuestRam::private_over(memory, state.mem_bytes)
                    .map_err(|e| snap_err(format!("memory: {e}")))?;
                (ram, None)
            }
        };

        let clone_id = spec.clone_id.unwrap_or(0);
        let run_dir = spec.run_dir.clone().unwrap_or_else(default_run_dir);
        let mut config = state.config.clone();
        config.api_socket = spec.api_socket.clone().or_else(|| {
            (spec.clone_id.is_some() && config.api_socket.is_some())
                .then(|| run_dir.join("api.sock"))
        });
        if let Some(v) = config.vsock.as_mut() {
            v.path = spec
                .vsock_path
                .clone()
                .unwrap_or_else(|| run_dir.join("vsock.sock"));
        }
        config.console = match (&spec.console, spec.clone_id) {
            (Some(c), _) => c.clone(),
            (None, Some(_)) if config.console != Console::Off => {
                Console::File(run_dir.join("console.log"))
            }
            // A console file named by another host's state is not ours to write.
            (None, _) if spec.lazy.is_some() => Console::Off,
            (None, _) => config.console.clone(),
        };
        if spec.clone_id.is_some() {
            let h = format!("{}-{clone_id}", state.config.hostname);
            // Clones of clones: keep the distinguishing end within a hostname's 63 bytes.
            config.hostname = h[h.len().saturating_sub(63)..]
                .trim_start_matches('-')
                .to_owned();
        }
        config.validate()?;
        config.run_dir = Some(run_dir.clone());
        std::fs::create_dir_all(&run_dir).map_err(|e| Error::Io {
            what: format!("creating {}", run_dir.display()),
            source: e,
        })?;
        let mut disks = Vec::new();
        for (i, (layers, d)) in state.disks.iter().zip(&config.disks).enumerate() {
            let layers: Vec<LayerSnap> = layers
                .iter()
                .map(|l| LayerSnap {
                    path: if l.path.is_relative() {
                        spec.dir.join(&l.path)
                    } else {
                        l.path.clone()
                    },
                    present: l.present.clone(),
                    stamp: l.stamp,
                })
                .collect();
            let top = overlay_path(&run_dir, i);
            disks.push(
                LayeredDisk::open_layers(&layers, Some(&top), d.read_only).map_err(|e| {
                    Error::Disk {
                        path: d.path.clone(),
                        reason: e.to_string(),
                    }
                })?,
            );
        }
        let identity = Identity::fresh(clone_id, config.hostname.clone());
        let (mut vm, _) = Self::assemble(
            config,
            Parts {
                ram,
                exit: Some(exit),
                lazy: fault_stats,
                disks,
                serial: Some(state.serial.clone()),
                identity,
                run_dir,
                restored_from: Some(t0),
            },
        )?;
        kstate::restore_vm(&vm.vm, &state.vm)?;
        for (id, s) in state.vcpus.iter().enumerate() {
            let fd = vm
                .vm
                .create_vcpu(id as u64)
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            kstate::restore_vcpu(&fd, s)?;
            vm.vcpus.push(Arc::new(Mutex::new(fd)));
        }
        if state.transports.len() != vm.transports.len() {
            return Err(snap_err(format!(
                "{} virtio devices in the snapshot, {} configured",
                state.transports.len(),
                vm.transports.len()
            )));
        }
        for (t, s) in vm.transports.iter().zip(&state.transports) {
            let mut t = lock(t);
            if let (Some(v), Some(vs)) = (t.device_as::<Vsock>(), state.vsock.as_ref()) {
                v.restore(vs);
            }
            t.restore(s).map_err(snap_err)?;
        }
        if let Some((t, _)) = &vm.vsock {
            // Restored connections may have bytes to deliver right away.
            lock(t).process_backend();
        }
        if let Some(a) = &spec.activate {
            vm.services.activate(a.clone());
        }
        vm.start_paused = spec.paused;
        vm.ready_fd = spec.ready_fd.map(inherited).transpose()?;
        vm.lazy_pages = lazy_pages;
        Ok(vm)
    }

    /// Memory slots, interrupt controllers, legacy devices and virtio devices.
    fn assemble(config: VmConfig, parts: Parts) -> Result<(Vm, Vec<MmioDevice>), Error> {
        let Parts {
            ram,
            exit,
            lazy,
            disks,
            serial: serial_state,
            identity,
            run_dir,
            restored_from,
        } = parts;
        let kvm = Kvm::new().map_err(|source| Error::Kvm {
            what: "opening /dev/kvm",
            source,
        })?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        for (slot, region) in ram.mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| Error::Layout(e.to_string()))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `ram`, which this Vm keeps alive
            // for as long as the VM fd that references it (a freeze replaces the pages behind
            // the same addresses, never the addresses).
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let exit = match exit {
            Some(e) => e,
            None => Arc::new(ExitSignal::new().map_err(io("creating the exit event"))?),
        };
        let mut pio = Bus::default();
        let mut mmio = Bus::default();

        let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating an irqfd"))?;
        vm.register_irqfd(&serial_evt, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let serial = match &serial_state {
            Some(s) => SerialPort::restored(serial_evt, &config.console, s),
            None => SerialPort::new(serial_evt, &config.console),
        };
        let serial = Arc::new(Mutex::new(serial.map_err(io("opening the console"))?));
        pio.insert(u64::from(COM1_PORT), 8, serial.clone());
        pio.insert(
            u64::from(I8042_PORT),
            5,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        );
        pio.insert(u64::from(RTC_PORT), 2, Arc::new(Mutex::new(Rtc::default())));
        pio.insert(
            u64::from(ACPI_PM_PORT),
            2,
            Arc::new(Mutex::new(PowerButton(exit.clone()))),
        );
        pio.insert(
            u64::from(DEBUG_EXIT_PORT),
            1,
            Arc::new(Mutex::new(DebugExit(exit.clone()))),
        );

        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating an eventfd"))?);
        let services = Services::new(identity, wake.clone());
        // Virtio devices: disks in order, then rng, then vsock.
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for (disk, d) in disks.into_iter().zip(&config.disks) {
            devices.push(Box::new(Block::new(disk, d.read_only)));
        }
        if config.rng {
            devices.push(Box::new(Rng));
        }
        let mut vsock_epoll = None;
        if let Some(v) = &config.vsock {
            let mut dev = Vsock::new(v.cid, &v.path).map_err(|e| Error::Io {
                what: format!("vsock socket {}", v.path.display()),
                source: e,
            })?;
            dev.set_service(services.handler());
            vsock_epoll = Some(dev.epoll());
            devices.push(Box::new(dev));
        }
        let mut announced = Vec::new();
        let mut vsock = None;
        let mut transports = Vec::new();
        for (i, dev) in devices.into_iter().enumerate() {
            let addr = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
            let irq = VIRTIO_IRQS[i];
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating an irqfd"))?;
            vm.register_irqfd(&evt, irq).map_err(kvm_err("KVM_IRQFD"))?;
            let is_vsock = dev.device_type() == crate::virtio::TYPE_VSOCK;
            let t = Arc::new(Mutex::new(MmioTransport::new(
                dev,
                ram.mem.clone(),
                IrqLine::new(evt),
            )));
            if is_vsock {
                vsock = vsock_epoll.take().map(|e| (t.clone(), e));
            }
            transports.push(t.clone());
            mmio.insert(addr, VIRTIO_MMIO_SIZE, t);
            announced.push(MmioDevice {
                addr,
                len: VIRTIO_MMIO_SIZE,
                irq,
            });
        }

        let shared = Arc::new(Shared {
            control: Arc::new(VcpuControl::new()),
            exit,
            started: restored_from.unwrap_or_else(Instant::now),
            vcpus: config.vcpus,
            mem_mib: config.mem_mib,
            flavour: flavour::detect().name(),
            restored: restored_from.is_some(),
            lazy,
            restored_in: std::sync::OnceLock::new(),
            clone_id: lock(&services.identity).clone_id,
            requests: Mutex::new(None),
            wake,
            services: services.clone(),
        });
        Ok((
            Vm {
                config,
                kvm,
                vm,
                vcpus: Vec::new(),
                pio,
                mmio,
                serial,
                transports,
                vsock,
                shared,
                kernel: None,
                ram,
                services,
                run_dir,
                forks: 0,
                ready_fd: None,
                start_paused: false,
                lazy_pages: None,
            },
            announced,
        ))
    }

    pub fn handle(&self) -> VmHandle {
        VmHandle(self.shared.clone())
    }

    /// Runs until the guest powers off, resets or exits, or the VM is stopped.
    pub fn run(mut self) -> Result<ExitReason, Error> {
        vcpu::install_kick_handler()?;
        let done = Arc::new(AtomicBool::new(false));
        if let Some((transport, epoll)) = &self.vsock {
            spawn_vsock_thread(transport.clone(), epoll.clone(), done.clone())?;
        }
        if self.config.console == Console::Stdio {
            spawn_stdin_thread(self.serial.clone(), done.clone());
        }
        let (req_tx, req_rx) = mpsc::channel();
        *lock(&self.shared.requests) = Some(req_tx);
        let (fork_tx, fork_rx) = mpsc::channel::<GuestFork>();
        self.services.set_fork_sender(Some(fork_tx));

        if self.start_paused {
            self.shared.control.set(RunState::Paused);
        }
        let mut threads = Vec::new();
        for (id, fd) in self.vcpus.iter().enumerate() {
            threads.push(
                VcpuThread::spawn(
                    id as u8,
                    fd.clone(),
                    self.pio.clone(),
                    self.mmio.clone(),
                    self.shared.control.clone(),
                    self.shared.exit.clone(),
                )
                .map_err(io("starting a vCPU thread"))?,
            );
        }
        if self.shared.restored {
            let _ = self.shared.restored_in.set(self.shared.started.elapsed());
        }
        // Served once the vCPUs run: whoever sees the socket sees a running VM.
        let api = match &self.config.api_socket {
            Some(p) => match crate::api::server::serve(
                p,
                Arc::new(VmHandle(self.shared.clone())),
                done.clone(),
            ) {
                Ok(a) => Some(a),
                Err(e) => {
                    vcpu::stop_all(&mut threads, &self.shared.control);
                    done.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            },
            None => None,
        };
        // Whoever forked this clone may use it now: its vCPUs run and its API answers.
        if let Some(mut f) = self.ready_fd.take() {
            use std::io::Write;
            let _ = f.write_all(&self.shared.clone_id.to_le_bytes());
        }

        // Wait for the end, serving pause, snapshot and fork requests meanwhile.
        let reason = loop {
            if let Some(r) = self.shared.exit.reason() {
                break r;
            }
            let mut pfd = [&self.shared.exit.evt, &*self.shared.wake].map(|e| libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(e),
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: two valid pollfds on the stack, count 2. The timeout only paces the
            // reaping of clones.
            unsafe { libc::poll(pfd.as_mut_ptr(), 2, 200) };
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
        done.store(true, Ordering::SeqCst);
        if let Some(api) = api {
            api.shutdown();
        }
        Ok(reason)
    }

    fn serve_request(&mut self, req: Request, threads: &[VcpuThread]) {
        match req {
            Request::Pause(ack) => {
                vcpu::pause_all(threads, &self.shared.control);
                let _ = ack.send(());
            }
            Request::Resume(ack) => {
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
                let _ = reply.send(r.map(|(memory_bytes, state_bytes)| SnapshotInfo {
                    dir,
                    memory_bytes,
                    state_bytes,
                    paused_us: paused_us as u64,
                }));
            }
            Request::Fork { count, dir, reply } => {
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
                    crate::fork::spawn_clones(&dir, count, &memfd, &self.config)
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
                                    let r = pending.wait(&services).map(|clones| ForkInfo {
                                        dir,
                                        clones,
                                        paused_us: paused_us as u64,
                                        total_us: t.elapsed().as_micros() as u64,
                                    });
                                    let _ = reply.send(r);
                                });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    /// Captures everything but RAM. The vCPUs must be parked; the devices are held still
    /// (their locks taken) while `with_ram` runs, so RAM and device state agree. Writable
    /// disks are frozen onto a new overlay from `new_top(disk index)` when given.
    fn capture<T>(
        &mut self,
        new_top: Option<&dyn Fn(usize) -> PathBuf>,
        with_ram: impl FnOnce(&mut GuestRam) -> Result<T, Error>,
    ) -> Result<(VmState, T), Error> {
        if let Some(pages) = self.lazy_pages.take() {
            // Pages a lazy VM never touched exist only on its memory server: fetch them all
            // (the fault thread serves these reads) before anything reads or remaps RAM.
            for p in pages {
                self.ram.touch(p);
            }
        }
        let transports = self.transports.clone();
        let mut guards: Vec<_> = transports.iter().map(|t| lock(t)).collect();
        let mut disks = Vec::new();
        let mut vsock = None;
        let mut snaps = Vec::new();
        for g in guards.iter_mut() {
            snaps.push(g.snap());
            if let Some(b) = g.device_as::<Block>() {
                let i = disks.len();
                let layers = match new_top {
                    Some(f) => b.disk_mut().freeze(&f(i)).map_err(|e| Error::Disk {
                        path: b.disk().path().to_owned(),
                        reason: format!("freezing for a snapshot: {e}"),
                    })?,
                    None => b.disk().snap().map_err(|e| Error::Disk {
                        path: b.disk().path().to_owned(),
                        reason: format!("flushing for a snapshot: {e}"),
                    })?,
                };
                disks.push(layers);
            } else if let Some(v) = g.device_as::<Vsock>() {
                vsock = Some(v.snap());
            }
        }
        let serial = lock(&self.serial).snap();
        let mut vcpus = Vec::new();
        let mut msr_list = None;
        for fd in &self.vcpus {
            let fd = lock(fd);
            if msr_list.is_none() {
                msr_list = Some(kstate::msr_indices(&self.kvm, &fd)?);
            }
            vcpus.push(kstate::capture_vcpu(
                &fd,
                msr_list.as_deref().unwrap_or(&[]),
            )?);
        }
        let vm = kstate::capture_vm(&self.vm)?;
        let out = with_ram(&mut self.ram)?;
        drop(guards);
        Ok((
            VmState {
                config: self.config.clone(),
                mem_bytes: self.ram.bytes(),
                vcpus,
                vm,
                serial,
                transports: snaps,
                vsock,
                disks,
                clone_id: self.shared.clone_id,
                memory_map: None,
            },
            out,
        ))
    }

    /// Writes `dir/memory` and `dir/state` (last: a directory with a state file is a whole
    /// snapshot). Disk overlays the snapshot needs are linked into `dir`.
    fn snapshot_to(&mut self, dir: &Path, stop: bool) -> Result<(u64, u64), Error> {
        let io_at = |what: String| move |source| Error::Io { what, source };
        if non_empty(dir) {
            return Err(Error::Snapshot {
                path: dir.to_owned(),
                reason: "the directory is not empty (a snapshot is never written over)".into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_at(format!("creating {}", dir.display())))?;
        let r = self.write_snapshot(dir, stop);
        if r.is_err() {
            // Nothing half-written stays behind to look like a snapshot or block a retry.
            let _ = std::fs::remove_dir_all(dir);
        }
        r
    }

    fn write_snapshot(&mut self, dir: &Path, stop: bool) -> Result<(u64, u64), Error> {
        let io_at = |what: String| move |source| Error::Io { what, source };
        self.forks += 1;
        let run_dir = self.run_dir.clone();
        let n = self.forks;
        let top = move |i: usize| {
            run_dir
                .join(format!("snap-{n}"))
                .join(format!("disk{i}.overlay"))
        };
        let mem_path = dir.join(snapshot::MEMORY_FILE);
        let (mut state, (mem_bytes, map)) =
            self.capture(if stop { None } else { Some(&top) }, |ram| {
                ram.write_to(&mem_path)
                    .map_err(io_at(format!("writing {}", mem_path.display())))
            })?;
        let map_path = dir.join(snapshot::MEMORY_MAP_FILE);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&map_path)
                .map_err(io_at(format!("writing {}", map_path.display())))?;
            f.write_all(&map)
                .and_then(|()| f.sync_all())
                .map_err(io_at(format!("writing {}", map_path.display())))?;
        }
        state.memory_map = Some(*blake3::hash(&map).as_bytes());
        // Overlays become part of the snapshot; base files are referred to where they are.
        for (i, layers) in state.disks.iter_mut().enumerate() {
            for (j, l) in layers.iter_mut().enumerate().skip(1) {
                let name = format!("disk{i}.layer{j}");
                let to = dir.join(&name);
                if std::fs::hard_link(&l.path, &to).is_err() {
                    std::fs::copy(&l.path, &to).map_err(io_at(format!(
                        "copying {} into the snapshot",
                        l.path.display()
                    )))?;
                }
                l.path = PathBuf::from(name);
            }
        }
        let state_path = dir.join(snapshot::STATE_FILE);
        snapshot::file::write(&state_path, &state)?;
        let state_bytes = std::fs::metadata(&state_path).map_or(0, |m| m.len());
        Ok((mem_bytes, state_bytes))
    }

    /// Freezes RAM and disks and writes the state for the clones; returns their directory
    /// and the frozen memory.
    fn freeze_for_fork(&mut self, dir: Option<PathBuf>) -> Result<(PathBuf, std::fs::File), Error> {
        self.forks += 1;
        let dir = dir.unwrap_or_else(|| self.run_dir.join(format!("fork-{}", self.forks)));
        let io_at = |what: String| move |source| Error::Io { what, source };
        if non_empty(&dir) {
            return Err(Error::Invalid(format!(
                "fork directory {} is not empty (clones never share one)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(&dir).map_err(io_at(format!("creating {}", dir.display())))?;
        // The parent's own overlays stay in its run directory: removing a fork's directory
        // must not take a disk layer from under the parent.
        let parent_dir = self.run_dir.join(format!("overlays-{}", self.forks));
        let top = |i: usize| parent_dir.join(format!("disk{i}.overlay"));
        let (state, memfd) = self.capture(Some(&top), |ram| {
            ram.freeze().map_err(io_at("freezing guest memory".into()))
        })?;
        snapshot::file::write(&dir.join(snapshot::STATE_FILE), &state)?;
        Ok((dir, memfd))
    }
}

/// A directory that exists and holds something: never written into by a snapshot or a fork.
fn non_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

fn overlay_path(run_dir: &Path, disk: usize) -> PathBuf {
    run_dir.join(format!("disk{disk}.overlay"))
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}

fn spawn_vsock_thread(
    transport: Arc<Mutex<MmioTransport>>,
    epoll: Arc<vmm_sys_util::epoll::Epoll>,
    done: Arc<AtomicBool>,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("vsock".into())
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
        .map_err(io("starting the vsock thread"))
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
