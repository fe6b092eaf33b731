//! vCPU threads: run KVM_RUN, dispatch port and MMIO exits to the buses, park on pause, stop
//! on request. A thread is pulled out of KVM_RUN by a signal; kicks repeat until it answers,
//! so a signal landing just before it enters the guest is not lost.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::{lock, Bus};
use crate::exit::{ExitReason, ExitSignal};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Stopping,
}

/// Shared between the vCPU threads and whoever pauses, resumes or stops them.
pub struct VcpuControl {
    state: Mutex<(RunState, usize)>,
    cv: Condvar,
}

impl Default for VcpuControl {
    fn default() -> Self {
        Self::new()
    }
}

impl VcpuControl {
    pub fn new() -> Self {
        VcpuControl {
            state: Mutex::new((RunState::Running, 0)),
            cv: Condvar::new(),
        }
    }

    pub fn state(&self) -> RunState {
        lock(&self.state).0
    }

    pub fn set(&self, s: RunState) {
        let mut g = lock(&self.state);
        if g.0 != RunState::Stopping {
            g.0 = s;
        }
        self.cv.notify_all();
    }

    /// Called by a vCPU thread between runs: parks while paused; false when it must stop.
    fn checkpoint(&self) -> bool {
        let mut g = lock(&self.state);
        if g.0 == RunState::Paused {
            g.1 += 1;
            self.cv.notify_all();
            while g.0 == RunState::Paused {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            g.1 -= 1;
        }
        g.0 != RunState::Stopping
    }

    fn parked(&self) -> usize {
        lock(&self.state).1
    }
}

/// Signal used to pull vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process.
pub fn install_kick_handler() -> Result<(), crate::Error> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result =
            vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(|e| {
                crate::Error::Io {
                    what: "installing the vCPU kick signal handler".into(),
                    source: std::io::Error::from_raw_os_error(e.errno()),
                }
            });
    });
    result
}

pub struct VcpuThread {
    pub id: u8,
    handle: Option<JoinHandle<()>>,
}

impl VcpuThread {
    pub fn spawn(
        id: u8,
        vcpu: Arc<Mutex<VcpuFd>>,
        pio: Bus,
        mmio: Bus,
        control: Arc<VcpuControl>,
        exit: Arc<ExitSignal>,
    ) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || run(id, vcpu, &pio, &mmio, &control, &exit))?;
        Ok(VcpuThread {
            id,
            handle: Some(handle),
        })
    }

    fn kick(&self) {
        use std::os::unix::thread::JoinHandleExt;
        if let Some(h) = &self.handle {
            if !h.is_finished() {
                // SAFETY: the thread is alive (not finished) and owned by this handle, so its
                // pthread_t is valid; the kick signal has a handler that does nothing.
                unsafe { libc::pthread_kill(h.as_pthread_t(), kick_signal()) };
            }
        }
    }

    fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Pauses all vCPUs and returns once every one is parked (or has ended).
pub fn pause_all(threads: &[VcpuThread], control: &VcpuControl) {
    control.set(RunState::Paused);
    loop {
        let live = threads.iter().filter(|t| !t.finished()).count();
        if control.parked() >= live || control.state() != RunState::Paused {
            return;
        }
        threads.iter().for_each(VcpuThread::kick);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Stops all vCPUs and joins their threads.
pub fn stop_all(threads: &mut [VcpuThread], control: &VcpuControl) {
    control.set(RunState::Stopping);
    while threads.iter().any(|t| !t.finished()) {
        threads.iter().for_each(VcpuThread::kick);
        std::thread::sleep(Duration::from_micros(200));
    }
    threads.iter_mut().for_each(VcpuThread::join);
}

fn run(
    id: u8,
    vcpu: Arc<Mutex<VcpuFd>>,
    pio: &Bus,
    mmio: &Bus,
    control: &VcpuControl,
    exit: &ExitSignal,
) {
    let mut trace = std::env::var_os("STARLING_VM_TRACE").map(|_| ExitTrace::default());
    run_loop(id, vcpu, pio, mmio, control, exit, trace.as_mut());
    if let Some(t) = trace {
        t.report(id);
    }
}

/// Exit counts by kind and address, printed at the end when STARLING_VM_TRACE is set: where a
/// guest's time in the monitor goes.
#[derive(Default)]
struct ExitTrace {
    started: Option<std::time::Instant>,
    counts: std::collections::BTreeMap<(&'static str, u64), u64>,
}

impl ExitTrace {
    fn count(&mut self, kind: &'static str, addr: u64) {
        self.started.get_or_insert_with(std::time::Instant::now);
        *self.counts.entry((kind, addr)).or_default() += 1;
    }

    fn report(&self, id: u8) {
        let total: u64 = self.counts.values().sum();
        eprintln!(
            "starling-vmm trace: vCPU {id}: {total} exits in {:?}",
            self.started.map(|s| s.elapsed()).unwrap_or_default()
        );
        let mut v: Vec<_> = self.counts.iter().collect();
        v.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
        for ((kind, addr), n) in v.into_iter().take(12) {
            eprintln!("starling-vmm trace:   {kind} 0x{addr:x}: {n}");
        }
    }
}

fn run_loop(
    id: u8,
    vcpu: Arc<Mutex<VcpuFd>>,
    pio: &Bus,
    mmio: &Bus,
    control: &VcpuControl,
    exit: &ExitSignal,
    mut trace: Option<&mut ExitTrace>,
) {
    loop {
        // Held while in the guest and handling the exit; free while parked, when a snapshot
        // reads the vCPU's state.
        let mut fd = lock(&vcpu);
        // Asked to park: enter once more with immediate_exit set, so that KVM completes the
        // port or MMIO instruction of the last exit (its result is in the run structure)
        // before returning EINTR. Only then is the vCPU state whole — a snapshot taken
        // earlier would replay the instruction.
        if control.state() != RunState::Running {
            fd.set_kvm_immediate_exit(1);
        }
        let r = fd.run();
        if let Some(t) = trace.as_deref_mut() {
            match &r {
                Ok(VcpuExit::IoIn(port, _)) => t.count("in", u64::from(*port)),
                Ok(VcpuExit::IoOut(port, _)) => t.count("out", u64::from(*port)),
                Ok(VcpuExit::MmioRead(addr, _)) => t.count("mmio-read", *addr),
                Ok(VcpuExit::MmioWrite(addr, _)) => t.count("mmio-write", *addr),
                Ok(_) => t.count("other", 0),
                Err(_) => t.count("error", 0),
            }
        }
        match r {
            Ok(VcpuExit::IoIn(port, data)) => pio.read(u64::from(port), data),
            Ok(VcpuExit::IoOut(port, data)) => pio.write(u64::from(port), data),
            Ok(VcpuExit::MmioRead(addr, data)) => mmio.read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => mmio.write(addr, data),
            // Without an in-kernel HLT (no interrupts can wake it), a halted CPU is done.
            Ok(VcpuExit::Hlt) => {
                exit.raise(ExitReason::PowerOff);
                return;
            }
            // A triple fault: what a real machine does is reset.
            Ok(VcpuExit::Shutdown) => {
                // Where it faulted is the one clue to an early boot failure with no console
                // (on AMD, KVM has already reset the vCPU by now: rip 0xfff0).
                match (fd.get_regs(), fd.get_sregs()) {
                    (Ok(r), Ok(s)) => eprintln!(
                        "starling-vmm: vCPU {id} triple-faulted at rip {:#x} (rsp {:#x}, cr0 {:#x}, \
                         cr3 {:#x}, cr4 {:#x}, efer {:#x})",
                        r.rip, r.rsp, s.cr0, s.cr3, s.cr4, s.efer
                    ),
                    _ => eprintln!("starling-vmm: vCPU {id} triple-faulted"),
                }
                exit.raise(ExitReason::Reset);
                return;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let reason = match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    _ => ExitReason::Reset,
                };
                exit.raise(reason);
                return;
            }
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {}
            Ok(other) => {
                eprintln!("starling-vmm: vCPU {id} stopped on an unhandled exit: {other:?}");
                exit.raise(ExitReason::VcpuFailed(id));
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                drop(fd);
                if control.state() != RunState::Running && !control.checkpoint() {
                    return;
                }
            }
            Err(e) => {
                eprintln!("starling-vmm: vCPU {id}: KVM_RUN failed: {e}");
                exit.raise(ExitReason::VcpuFailed(id));
                return;
            }
        }
    }
}
