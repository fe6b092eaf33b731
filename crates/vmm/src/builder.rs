//! Building a VM, by either of two paths that share the machine: booting (`boot`: memory,
//! devices from a [`VmConfig`], the kernel loaded, ACPI tables, vCPUs at the kernel's entry)
//! and restoring (`restore`: the state file checked first, memory mapped copy-on-write or
//! served lazily, the devices rebuilt from their own saved states, KVM state set back).
//! Every input is checked before a guest instruction runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::boot::{self, cpu};
use crate::budget::ForkBudget;
use crate::config::{Console, VmConfig};
use crate::devices::SerialPort;
use crate::exit::ExitSignal;
use crate::layout::*;
use crate::machine::{io_err, kvm_err, Machine};
use crate::memory::GuestRam;
use crate::persist::Persist;
use crate::service::{Identity, Services};
use crate::snapshot::{self, kvm as kstate, DeviceInfo, VmInfo};
use crate::spec::RestoreSpec;
use crate::virtio::{
    blk::Block, fs::Fs, net::Net, rng::Rng, vsock::Vsock, DeviceEnv, VirtioDevice,
};
use crate::vm::{Vm, VmParts, Wiring};
use crate::{acpi, Error};

impl Vm {
    /// Builds the VM and loads its kernel (see [`boot`]).
    pub fn build(config: VmConfig) -> Result<Vm, Error> {
        boot(config)
    }

    /// Builds a VM from a snapshot (see [`restore`]).
    pub fn restore(spec: &RestoreSpec) -> Result<Vm, Error> {
        restore(spec)
    }
}

/// The run directory of a VM whose caller named none: one per monitor process, in the
/// user's private runtime directory (see [`runtime_root`]).
pub(crate) fn default_run_dir() -> PathBuf {
    default_run_dir_of(std::process::id())
}

/// The run directory a monitor with process id `pid` makes when its caller names none.
pub fn default_run_dir_of(pid: u32) -> PathBuf {
    runtime_root_path().join(format!("vm-{pid}"))
}

/// Where defaulted run directories go: `$XDG_RUNTIME_DIR/starling`, else
/// `/run/starling/UID` for root, else `TMPDIR/starling-UID`.
fn runtime_root_path() -> PathBuf {
    let uid = crate::private::euid();
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(x) if x.is_absolute() && x.is_dir() => x.join("starling"),
        _ if uid == 0 => PathBuf::from(format!("/run/starling/{uid}")),
        _ => std::env::temp_dir().join(format!("starling-{uid}")),
    }
}

/// Makes the user's runtime directory for VMs (0700, created if missing) and checks it is
/// theirs: a directory, not a link, owned by this user, open to nobody else. Guest memory
/// files, disk overlays and sockets go under it.
fn runtime_root() -> Result<PathBuf, Error> {
    let root = runtime_root_path();
    ensure_private_dir(&root)?;
    Ok(root)
}

/// Creates `root` (0700) if missing; refuses it unless it is a directory (not a link) of this
/// user; takes group and other access away.
fn ensure_private_dir(root: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    let bad =
        |reason: String| Error::Invalid(format!("runtime directory {}: {reason}", root.display()));
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent).map_err(|e| bad(e.to_string()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(e.to_string())),
    }
    crate::private::make_private(root)
        .map_err(|e| Error::Invalid(format!("the runtime directory for VMs: {e}")))
}

/// Makes a VM's run directory: the defaulted one under [`runtime_root`], one the caller named
/// where it is; either private (a link or another user's directory is refused).
pub(crate) fn make_run_dir(named: Option<&PathBuf>) -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = named else {
        let dir = runtime_root()?.join(format!("vm-{}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            // A monitor of an earlier boot with this pid left it: the root is ours alone.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let m = std::fs::symlink_metadata(&dir).map_err(|e| Error::Io {
                    what: format!("run directory {}", dir.display()),
                    source: e,
                })?;
                if !m.is_dir() {
                    return Err(Error::Invalid(format!(
                        "run directory {}: not a directory",
                        dir.display()
                    )));
                }
            }
            Err(e) => {
                return Err(Error::Io {
                    what: format!("creating {}", dir.display()),
                    source: e,
                })
            }
        }
        return Ok(dir);
    };
    crate::private::create_dir_all(dir).map_err(|e| Error::Io {
        what: "the run directory".into(),
        source: e,
    })?;
    Ok(dir.clone())
}

/// Builds a VM from its config and loads its kernel; every input problem (kernel, initrd,
/// memory, disks) is reported here, before any guest code runs.
pub fn boot(config: VmConfig) -> Result<Vm, Error> {
    config.validate()?;
    let ram = GuestRam::fresh(config.mem_mib << 20, config.hugepages).map_err(|e| Error::Io {
        what: format!("allocating {} MiB of guest memory", config.mem_mib),
        source: e,
    })?;
    let mut m = Machine::new(ram)?;
    let exit = Arc::new(ExitSignal::new().map_err(io_err("creating the exit event"))?);
    let serial = SerialPort::new(m.irqfd(COM1_IRQ)?, &config.console)
        .map_err(io_err("opening the console"))?;
    m.attach_legacy(serial, &exit);
    let identity = Identity::fresh(0, config.hostname.clone());
    let budget = ForkBudget::new(config.fork_budget).map_err(io_err("making the fork budget"))?;
    let services = Services::new(identity, wake_event()?, exit.clone(), budget);

    // Virtio devices: disks in order, then rng, vsock, file systems, network devices. One
    // line per device kind.
    let mut devices: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let disk = Block::open(&d.path, d.read_only).map_err(|e| Error::Disk {
            path: d.path.clone(),
            reason: e.to_string(),
        })?;
        devices.push((format!("disk{i}"), Box::new(disk)));
    }
    if config.rng {
        devices.push(("rng".into(), Box::new(Rng)));
    }
    if let Some(v) = &config.vsock {
        let mut vsock = Vsock::new(v.cid, &v.path).map_err(|e| Error::Io {
            what: format!("vsock socket {}", v.path.display()),
            source: e,
        })?;
        vsock.set_service(services.handler());
        devices.push(("vsock".into(), Box::new(vsock)));
    }
    for (i, f) in config.fs.iter().enumerate() {
        devices.push((format!("fs{i}"), Box::new(Fs::new(f.clone())?)));
    }
    for (i, n) in config.net.iter().enumerate() {
        devices.push((format!("net{i}"), Box::new(Net::new(n)?)));
    }
    let mut info = VmInfo {
        mem_mib: config.mem_mib,
        vcpus: config.vcpus,
        hostname: config.hostname.clone(),
        devices: Vec::new(),
    };
    for (id, dev) in devices {
        info.devices.push(DeviceInfo {
            id: id.clone(),
            device_type: dev.device_type(),
        });
        m.attach_virtio(id, dev, None)?;
    }
    nic_identity(&m, &services);

    let mem = &m.ram.mem;
    let kernel = boot::load_kernel(mem, &config.kernel)?;
    let initrd = match &config.initrd {
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
    let cmdline_size = boot::load_cmdline(mem, &config.cmdline)?;
    let rsdp = acpi::write_tables(mem, config.vcpus, &m.devices.windows())?;
    boot::write_boot_params(mem, &kernel, cmdline_size, initrd, rsdp)?;

    let base_cpuid = m
        .kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    for id in 0..config.vcpus {
        let fd =
            m.vm.create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = boot::cpuid::cpuid_for(&base_cpuid, id, config.vcpus);
        cpu::setup_vcpu(&fd, &m.ram.mem, &cpuid, (id == 0).then_some(&kernel))?;
        m.vcpus.push(Arc::new(Mutex::new(fd)));
    }
    m.coalesce_console();
    Ok(Vm::new(VmParts {
        machine: m,
        info,
        exit,
        services,
        wiring: Wiring {
            api_socket: config.api_socket,
            console: config.console,
            run_dir: make_run_dir(config.run_dir.as_ref())?,
        },
        clone_id: 0,
        lazy: None,
        restored_from: None,
        kernel: Some(kernel),
    }))
}

/// The MAC the service tells the guest (`whoami`) is its first network device's, when it
/// has one (a clone's device has a new one: see `virtio/net`).
/// The identity takes the first network device's MAC and address; requests resumed from a
/// snapshot are answered from here on.
fn nic_identity(m: &Machine, services: &Services) {
    if let Some((_, f)) = m.devices.net_figures().first() {
        services.follow_nic(&f.identity());
    }
    services.settle();
}

fn wake_event() -> Result<Arc<vmm_sys_util::eventfd::EventFd>, Error> {
    vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
        .map(Arc::new)
        .map_err(io_err("creating an eventfd"))
}

/// A descriptor the parent handed over (`memory_fd`, `ready_fd`, `release_fd`), taken as this process's own
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

/// Builds a VM from a snapshot: the state file is checked (format version, checksum, its
/// parts against each other) before anything is created, RAM is mapped copy-on-write (or
/// served lazily), and the vCPUs, interrupt controllers, clock and devices continue where
/// they were. What belongs to one running VM (sockets, console, disk overlays) comes from
/// `spec` or its run directory, never from the snapshot.
pub fn restore(spec: &RestoreSpec) -> Result<Vm, Error> {
    let t0 = Instant::now();
    if let Some(p) = spec.ready_file.as_ref().filter(|p| !p.is_absolute()) {
        return Err(Error::Invalid(format!(
            "ready_file {}: give an absolute path",
            p.display()
        )));
    }
    let snap_err = |reason: String| Error::Snapshot {
        path: spec.dir.clone(),
        reason,
    };
    // What this host's KVM offers, which the snapshot's CPUID is checked against, asked on a
    // thread of its own while the state is read and the VM made: KVM runs CPUID for every
    // leaf it lists, and CPUID is slow where the host is itself a VM (~0.3 ms here).
    let supported = std::thread::Builder::new()
        .name("cpuid".into())
        .spawn(|| {
            kvm_ioctls::Kvm::new()
                .and_then(|k| k.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES))
        })
        .map_err(io_err("starting a thread"))?;
    let (state, lazy) = match &spec.lazy {
        Some(r) => {
            let (state, map, client) = crate::lazy::fetch_state(&r.parse()?)?;
            state.check().map_err(snap_err)?;
            (state, Some((map, client)))
        }
        None => (snapshot::read(&spec.dir)?, None),
    };
    if lazy.is_some() && state.info.has(crate::virtio::TYPE_BLOCK) {
        // Disk paths in a state from another host name files of that host.
        return Err(snap_err(
            "lazy restores of VMs with disks are not supported (the disks are on the \
             snapshot's host)"
                .into(),
        ));
    }
    let exit = Arc::new(ExitSignal::new().map_err(io_err("creating the exit event"))?);
    let mut lazy_pages = None;
    let mem_bytes = state.info.mem_bytes();
    let (ram, fault_stats) = match (lazy, spec.memory_fd) {
        (Some((map, client)), _) => {
            let ram =
                GuestRam::anonymous(mem_bytes).map_err(|e| snap_err(format!("memory: {e}")))?;
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
            let ram = GuestRam::private_over(memory, mem_bytes)
                .map_err(|e| snap_err(format!("memory: {e}")))?;
            (ram, None)
        }
    };

    let clone_id = spec.clone_id.unwrap_or(0);
    let mut info = state.info.clone();
    if spec.clone_id.is_some() {
        let h = format!("{}-{clone_id}", info.hostname);
        // Clones of clones: keep the distinguishing end within a hostname's 63 bytes.
        info.hostname = h[h.len().saturating_sub(63)..]
            .trim_start_matches('-')
            .to_owned();
    }
    let run_dir = make_run_dir(spec.run_dir.as_ref())?;
    let console = spec.console.clone().unwrap_or(Console::Stdio);

    let mut m = Machine::new(ram)?;
    kstate::restore_vm(&m.vm, &state.kvm)?;
    let host_cpuid = supported
        .join()
        .map_err(|_| Error::Invalid("the thread asking KVM for its CPUID panicked".into()))?
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    for (id, s) in state.vcpus.iter().enumerate() {
        let fd =
            m.vm.create_vcpu(id as u64)
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        if boot::cpuid::check_restorable(&s.cpuid, &host_cpuid).is_err() {
            // Some KVMs (kvm_pvm) list less in KVM_GET_SUPPORTED_CPUID than a vCPU is
            // given: ask this vCPU what it gets (the snapshot's CPUID replaces it below).
            let given = boot::cpuid::cpuid_for(&host_cpuid, id as u8, state.vcpus.len() as u8);
            let got = fd
                .set_cpuid2(&given)
                .and_then(|()| fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES))
                .unwrap_or(host_cpuid.clone());
            boot::cpuid::check_restorable(&s.cpuid, &got).map_err(snap_err)?;
        }
        kstate::restore_vcpu(&fd, s)?;
        m.vcpus.push(Arc::new(Mutex::new(fd)));
    }
    let serial = SerialPort::restore((m.irqfd(COM1_IRQ)?, &console), &state.serial)?;
    m.attach_legacy(serial, &exit);
    m.coalesce_console();
    let budget = match spec.budget_fd {
        Some(fd) => ForkBudget::inherit(fd).map_err(io_err("taking the inherited fork budget"))?,
        None => {
            ForkBudget::new(crate::budget::DEFAULT).map_err(io_err("making the fork budget"))?
        }
    };
    let services = Services::new(
        Identity::fresh(clone_id, info.hostname.clone()),
        wake_event()?,
        exit.clone(),
        budget,
    );
    let handler = services.handler();
    for (d, s) in info.devices.iter().zip(&state.devices) {
        let env = DeviceEnv {
            id: &d.id,
            snapshot_dir: &spec.dir,
            run_dir: &run_dir,
            spec,
            service: &handler,
        };
        let device = s.device.restore(&env)?;
        m.attach_virtio(d.id.clone(), device, Some(&s.transport))
            .map_err(|e| match e {
                Error::Invalid(reason) => snap_err(reason),
                e => e,
            })?;
    }
    nic_identity(&m, &services);
    m.devices.poll_backends();
    if let Some(a) = &spec.activate {
        services.activate(a.clone());
    }
    let mut vm = Vm::new(VmParts {
        machine: m,
        info,
        exit,
        services,
        wiring: Wiring {
            api_socket: spec.api_socket.clone(),
            console,
            run_dir,
        },
        clone_id,
        lazy: fault_stats,
        restored_from: Some(t0),
        kernel: None,
    });
    vm.start_paused(spec.paused);
    vm.set_ready_fd(spec.ready_fd.map(inherited).transpose()?);
    vm.set_ready_file(spec.ready_file.clone());
    vm.hold_until_closed(spec.release_fd.map(inherited).transpose()?);
    vm.set_lazy_pages(lazy_pages);
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn the_runtime_directory_is_private_and_a_link_or_a_stranger_s_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("a/starling");
        ensure_private_dir(&root).unwrap();
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        // Opened up behind our back: closed again.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&root).unwrap();
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        // A link planted where it goes is refused, not followed.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path().join("a"), &link).unwrap();
        let e = ensure_private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        // Another user's directory is refused (as root: give it away first).
        if crate::private::euid() == 0 {
            let theirs = t.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = ensure_private_dir(&theirs).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }
}
