//! The VM's hardware as KVM and the monitor hold it: the VM and vCPU descriptors, guest RAM,
//! the buses and the devices on them. Built by `builder.rs`, run by `vm.rs`, saved by
//! `snapshot/`.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemory, GuestMemoryRegion};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::MmioDevice;
use crate::bus::{lock, Bus};
use crate::devices::{DebugExit, PowerButton, Rtc, SerialPort, I8042};
use crate::exit::ExitSignal;
use crate::layout::*;
use crate::memory::GuestRam;
use crate::virtio::mmio::TransportState;
use crate::virtio::{IrqLine, MmioTransport, VirtioDevice};
use crate::Error;

const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

pub fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

pub fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}

pub struct Machine {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub vcpus: Vec<Arc<Mutex<VcpuFd>>>,
    pub ram: GuestRam,
    pub devices: Devices,
}

impl Machine {
    /// A VM over `ram` with its in-kernel interrupt controllers and PIT, no devices yet.
    pub fn new(ram: GuestRam) -> Result<Machine, Error> {
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
            // SAFETY: the region is a live mapping owned by `ram`, which the Machine keeps
            // alive for as long as the VM fd that references it (a freeze replaces the pages
            // behind the same addresses, never the addresses).
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
        Ok(Machine {
            kvm,
            vm,
            vcpus: Vec::new(),
            ram,
            devices: Devices::default(),
        })
    }

    /// An interrupt line on `gsi`: an eventfd KVM injects from.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, Error> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("creating an irqfd"))?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(kvm_err("KVM_IRQFD"))?;
        Ok(evt)
    }

    /// Lets the guest's writes to the console's transmit register wait in KVM's coalesced
    /// ring instead of exiting one by one (`devices/coalesced.rs`); where KVM cannot, or with
    /// `STARLING_SERIAL_COALESCE=off`, they exit as before. Call once the vCPUs exist.
    pub fn coalesce_console(&self) {
        let (Some(serial), Some(vcpu)) = (&self.devices.serial, self.vcpus.first()) else {
            return;
        };
        if std::env::var_os("STARLING_SERIAL_COALESCE").is_some_and(|v| v == "off") {
            return;
        }
        let ring = crate::devices::coalesced::Ring::new(&self.vm, &lock(vcpu), COM1_PORT, 1);
        match ring {
            Ok(Some(ring)) => lock(serial).coalesce(ring),
            Ok(None) => {}
            Err(e) => eprintln!(
                "starling: console writes exit one by one (mapping KVM's coalesced ring: {e})"
            ),
        }
    }

    /// The legacy devices on the port bus: COM1 (`serial`, its interrupt on COM1_IRQ), the
    /// i8042, the RTC, the ACPI PM registers and the debug-exit port.
    pub fn attach_legacy(&mut self, serial: SerialPort, exit: &Arc<ExitSignal>) {
        let d = &mut self.devices;
        let serial = Arc::new(Mutex::new(serial));
        d.pio.insert(u64::from(COM1_PORT), 8, serial.clone());
        d.serial = Some(serial);
        d.pio.insert(
            u64::from(I8042_PORT),
            5,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        );
        d.pio
            .insert(u64::from(RTC_PORT), 2, Arc::new(Mutex::new(Rtc::default())));
        d.pio.insert(
            u64::from(ACPI_PM_PORT),
            2,
            Arc::new(Mutex::new(PowerButton(exit.clone()))),
        );
        d.pio.insert(
            u64::from(DEBUG_EXIT_PORT),
            1,
            Arc::new(Mutex::new(DebugExit(exit.clone()))),
        );
        if std::env::var_os(crate::jail::PROBE_VAR).is_some_and(|v| v == "1") {
            d.pio.insert(
                u64::from(SECCOMP_PROBE_PORT),
                1,
                Arc::new(Mutex::new(crate::jail::Probe)),
            );
        }
    }

    /// Puts `device` in the next virtio-mmio window with the next interrupt line; with
    /// `state`, its transport continues from a snapshot (pending interrupts raised again).
    pub fn attach_virtio(
        &mut self,
        id: String,
        device: Box<dyn VirtioDevice>,
        state: Option<&TransportState>,
    ) -> Result<(), Error> {
        let index = self.devices.virtio.len();
        let irq = *VIRTIO_IRQS
            .get(index)
            .ok_or_else(|| Error::Invalid(format!("{} virtio devices are too many", index + 1)))?;
        let addr = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE;
        let line = IrqLine::new(self.irqfd(irq)?);
        let irq_line = line.clone();
        let events = device.event_source();
        for (queue, kick) in device.queue_kicks() {
            let notify = IoEventAddress::Mmio(addr + crate::virtio::mmio::QUEUE_NOTIFY);
            self.vm
                .register_ioevent(kick, &notify, queue as u32)
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
        }
        let counters = device.fs_counters();
        let net = device.net_figures();
        let mem = self.ram.mem.clone();
        let transport = match state {
            None => MmioTransport::new(device, mem, line),
            Some(s) => {
                use crate::persist::Persist;
                MmioTransport::restore((device, mem, line), s).map_err(|e| match e {
                    Error::Invalid(reason) => {
                        Error::Invalid(format!("virtio device {id}: {reason}"))
                    }
                    e => e,
                })?
            }
        };
        let transport = Arc::new(Mutex::new(transport));
        crate::virtio::mmio::map_window(
            &mut self.devices.mmio,
            addr,
            VIRTIO_MMIO_SIZE,
            &transport,
            &irq_line,
        );
        self.devices.virtio.push(VirtioSlot {
            id,
            transport,
            window: MmioDevice {
                addr,
                len: VIRTIO_MMIO_SIZE,
                irq,
            },
            events,
            counters,
            net,
        });
        Ok(())
    }
}

/// The buses and what is on them.
#[derive(Default)]
pub struct Devices {
    pub pio: Bus,
    pub mmio: Bus,
    pub serial: Option<Arc<Mutex<SerialPort>>>,
    /// Virtio devices in the order of their MMIO windows.
    pub virtio: Vec<VirtioSlot>,
}

/// A virtio device in its MMIO window.
pub struct VirtioSlot {
    /// Its name in the VM: `disk0`, `rng`, `vsock`, …
    pub id: String,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub window: MmioDevice,
    /// Host-side input the device waits for (see `VirtioDevice::event_source`).
    pub events: Option<Arc<Epoll>>,
    /// A file-system device's figures (see `VirtioDevice::fs_counters`).
    pub counters: Option<crate::virtio::FsFigures>,
    /// A network device's identity and counters (see `VirtioDevice::net_figures`).
    pub net: Option<crate::virtio::NetFigures>,
}

impl Devices {
    /// The MMIO windows, as ACPI announces them.
    pub fn windows(&self) -> Vec<MmioDevice> {
        self.virtio.iter().map(|s| s.window).collect()
    }

    /// The file-system devices' figures, by device name.
    pub fn fs_counters(&self) -> Vec<(String, crate::virtio::FsFigures)> {
        self.virtio
            .iter()
            .filter_map(|s| Some((s.id.clone(), s.counters.clone()?)))
            .collect()
    }

    /// The network devices' figures, by device name.
    pub fn net_figures(&self) -> Vec<(String, crate::virtio::NetFigures)> {
        self.virtio
            .iter()
            .filter_map(|s| Some((s.id.clone(), s.net.clone()?)))
            .collect()
    }

    /// Lets every device with host-side input serve what is already waiting (restored
    /// connections may have bytes to deliver right away).
    pub fn poll_backends(&self) {
        for s in self.virtio.iter().filter(|s| s.events.is_some()) {
            lock(&s.transport).process_backend();
        }
    }
}
