//! Building a VM from its config (memory, irqchip, devices, ACPI, kernel, vCPUs) and running it
//! until the guest or the operator ends it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::Serialize;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, MmioDevice};
use crate::boot::{self, cpu, KernelEntry};
use crate::bus::{lock, Bus};
use crate::config::VmConfig;
use crate::devices::{DebugExit, PowerButton, Rtc, SerialPort, I8042};
use crate::exit::{ExitReason, ExitSignal};
use crate::layout::*;
use crate::vcpu::{self, RunState, VcpuControl, VcpuThread};
use crate::virtio::{blk::Block, rng::Rng, vsock::Vsock, IrqLine, MmioTransport, VirtioDevice};
use crate::{flavour, Error};

const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A built VM, ready to run.
pub struct Vm {
    config: VmConfig,
    _kvm: Kvm,
    _vm: VmFd,
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialPort>>,
    vsock: Option<(Arc<Mutex<MmioTransport>>, Arc<vmm_sys_util::epoll::Epoll>)>,
    shared: Arc<Shared>,
    pub kernel: KernelEntry,
    _mem: GuestMemoryMmap,
}

/// What the API and signal handlers act on while the VM runs.
pub struct Shared {
    pub control: Arc<VcpuControl>,
    pub exit: Arc<ExitSignal>,
    pub started: Instant,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub flavour: &'static str,
    pause_requests: Mutex<Option<std::sync::mpsc::Sender<Request>>>,
}

/// Pausing needs the vCPU thread handles, which the run loop owns.
enum Request {
    Pause(std::sync::mpsc::Sender<()>),
}

/// A handle to a running VM.
#[derive(Clone)]
pub struct VmHandle(pub Arc<Shared>);

#[derive(Debug, Serialize)]
pub struct VmStatus {
    pub state: &'static str,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub kvm: &'static str,
    pub uptime_ms: u128,
}

impl VmHandle {
    pub fn status(&self) -> VmStatus {
        let s = &self.0;
        VmStatus {
            state: match (s.exit.reason(), s.control.state()) {
                (Some(_), _) | (_, RunState::Stopping) => "stopping",
                (None, RunState::Paused) => "paused",
                (None, RunState::Running) => "running",
            },
            vcpus: s.vcpus,
            mem_mib: s.mem_mib,
            kvm: s.flavour,
            uptime_ms: s.started.elapsed().as_millis(),
        }
    }

    /// Pauses every vCPU; returns once they are all out of the guest.
    pub fn pause(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(req) = lock(&self.0.pause_requests).as_ref() {
            let _ = req.send(Request::Pause(tx));
        }
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }

    pub fn resume(&self) {
        self.0.control.set(RunState::Running);
    }

    pub fn stop(&self, signal: Option<i32>) {
        self.0.exit.raise(ExitReason::Stopped(signal));
    }
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

impl Vm {
    /// Builds the VM; every input problem (kernel, initrd, memory, disks) is reported here,
    /// before any guest code runs.
    pub fn build(config: VmConfig) -> Result<Vm, Error> {
        config.validate()?;
        let kvm = Kvm::new().map_err(|source| Error::Kvm {
            what: "opening /dev/kvm",
            source,
        })?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem_bytes = config.mem_mib << 20;
        let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_bytes)
            .into_iter()
            .map(|(a, l)| (GuestAddress(a), l as usize))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| Error::Io {
            what: format!("allocating {} MiB of guest memory", config.mem_mib),
            source: std::io::Error::other(e.to_string()),
        })?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| Error::Layout(e.to_string()))?;
            if config.hugepages {
                // SAFETY: advice only, on a mapping `mem` owns, with its exact bounds. Huge
                // pages let KVM map guest memory 2 MiB at a time: a fraction of the EPT/NPT
                // faults while the kernel decompresses and touches its memory (QEMU does the
                // same). Failure (THP off) only loses the speed-up.
                unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
            }
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which this Vm keeps alive
            // (as `_mem`) for as long as the VM fd that references it.
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

        let exit = Arc::new(ExitSignal::new().map_err(io("creating the exit event"))?);
        let mut pio = Bus::default();
        let mut mmio = Bus::default();

        let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating an irqfd"))?;
        vm.register_irqfd(&serial_evt, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let serial = Arc::new(Mutex::new(
            SerialPort::new(serial_evt, &config.console).map_err(io("opening the console"))?,
        ));
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

        // Virtio devices: disks in order, then rng, then vsock.
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for d in &config.disks {
            let blk = Block::open(&d.path, d.read_only).map_err(|e| Error::Disk {
                path: d.path.clone(),
                reason: e.to_string(),
            })?;
            devices.push(Box::new(blk));
        }
        if config.rng {
            devices.push(Box::new(Rng));
        }
        let mut vsock_epoll = None;
        if let Some(v) = &config.vsock {
            let dev = Vsock::new(v.cid, &v.path).map_err(|e| Error::Io {
                what: format!("vsock socket {}", v.path.display()),
                source: e,
            })?;
            vsock_epoll = Some(dev.epoll());
            devices.push(Box::new(dev));
        }
        let mut announced = Vec::new();
        let mut vsock = None;
        for (i, dev) in devices.into_iter().enumerate() {
            let addr = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
            let irq = VIRTIO_IRQS[i];
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating an irqfd"))?;
            vm.register_irqfd(&evt, irq).map_err(kvm_err("KVM_IRQFD"))?;
            let is_vsock = dev.device_type() == crate::virtio::TYPE_VSOCK;
            let t = Arc::new(Mutex::new(MmioTransport::new(
                dev,
                mem.clone(),
                IrqLine::new(evt),
            )));
            if is_vsock {
                vsock = vsock_epoll.take().map(|e| (t.clone(), e));
            }
            mmio.insert(addr, VIRTIO_MMIO_SIZE, t);
            announced.push(MmioDevice {
                addr,
                len: VIRTIO_MMIO_SIZE,
                irq,
            });
        }

        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(p) => {
                let max = kernel
                    .setup_header
                    .map(|h| u64::from(h.initrd_addr_max))
                    .filter(|&m| m != 0)
                    .unwrap_or(MMIO_HOLE_START);
                Some(boot::load_initrd(&mem, p, kernel.end, max)?)
            }
            None => None,
        };
        let cmdline_size = boot::load_cmdline(&mem, &config.cmdline)?;
        let rsdp = acpi::write_tables(&mem, config.vcpus, &announced)?;
        boot::write_boot_params(&mem, &kernel, cmdline_size, initrd, rsdp)?;

        let base_cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = cpu::cpuid_for(&base_cpuid, id, config.vcpus);
            cpu::setup_vcpu(&fd, &mem, &cpuid, (id == 0).then_some(&kernel))?;
            vcpus.push(fd);
        }

        let shared = Arc::new(Shared {
            control: Arc::new(VcpuControl::new()),
            exit,
            started: Instant::now(),
            vcpus: config.vcpus,
            mem_mib: config.mem_mib,
            flavour: flavour::detect().name(),
            pause_requests: Mutex::new(None),
        });
        Ok(Vm {
            config,
            _kvm: kvm,
            _vm: vm,
            vcpus,
            pio,
            mmio,
            serial,
            vsock,
            shared,
            kernel,
            _mem: mem,
        })
    }

    pub fn handle(&self) -> VmHandle {
        VmHandle(self.shared.clone())
    }

    /// Runs until the guest powers off, resets or exits, or the VM is stopped.
    pub fn run(self) -> Result<ExitReason, Error> {
        vcpu::install_kick_handler()?;
        let Vm {
            config,
            vcpus,
            pio,
            mmio,
            serial,
            vsock,
            shared,
            _vm,
            _kvm,
            _mem,
            ..
        } = self;
        let done = Arc::new(AtomicBool::new(false));
        let api = match &config.api_socket {
            Some(p) => Some(crate::api::serve(
                p,
                VmHandle(shared.clone()),
                done.clone(),
            )?),
            None => None,
        };
        if let Some((transport, epoll)) = vsock {
            spawn_vsock_thread(transport, epoll, done.clone())?;
        }
        if config.console == crate::devices::Console::Stdio {
            spawn_stdin_thread(serial, done.clone());
        }
        let (req_tx, req_rx) = std::sync::mpsc::channel();
        *lock(&shared.pause_requests) = Some(req_tx);

        let mut threads = Vec::new();
        for (id, fd) in vcpus.into_iter().enumerate() {
            threads.push(
                VcpuThread::spawn(
                    id as u8,
                    fd,
                    pio.clone(),
                    mmio.clone(),
                    shared.control.clone(),
                    shared.exit.clone(),
                )
                .map_err(io("starting a vCPU thread"))?,
            );
        }

        // Wait for the end, serving pause/resume requests meanwhile.
        let reason = loop {
            if let Some(r) = shared.exit.reason() {
                break r;
            }
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&shared.exit.evt),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on the stack, count 1.
            unsafe { libc::poll(&mut pfd, 1, 20) };
            let _ = shared.exit.evt.read();
            while let Ok(req) = req_rx.try_recv() {
                match req {
                    Request::Pause(ack) => {
                        vcpu::pause_all(&threads, &shared.control);
                        let _ = ack.send(());
                    }
                }
            }
        };
        *lock(&shared.pause_requests) = None;
        vcpu::stop_all(&mut threads, &shared.control);
        done.store(true, Ordering::SeqCst);
        if let Some(api) = api {
            api.shutdown();
        }
        Ok(reason)
    }
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
