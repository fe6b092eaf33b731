//! How a VM ends, and the signal devices raise to end it.

use std::sync::Mutex;

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;

/// Why the VM stopped running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "value")]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (i8042 0xFE, ACPI reset register) or triple-faulted.
    Reset,
    /// The guest wrote its own exit status to the debug-exit port.
    GuestExit(u8),
    /// Stopped from outside: the API or a signal (its number).
    Stopped(Option<i32>),
    /// A vCPU hit an exit the monitor cannot handle or KVM failed (the log says which).
    VcpuFailed(u8),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "the guest powered off"),
            ExitReason::Reset => write!(
                f,
                "the guest reset (a reboot, a kernel panic with panic=-1, or a triple fault)"
            ),
            ExitReason::GuestExit(n) => write!(f, "the guest exited with status {n}"),
            ExitReason::Stopped(None) => write!(f, "stopped"),
            ExitReason::Stopped(Some(sig)) => write!(f, "stopped by signal {sig}"),
            ExitReason::VcpuFailed(id) => write!(f, "vCPU {id} failed (the log above says how)"),
        }
    }
}

impl ExitReason {
    /// The process exit status that follows the guest: 0 for poweroff, the guest's own status,
    /// 3 for a reset (a panicking kernel with `panic=-1` resets), 128+N for signal N, 1 for a
    /// vCPU failure.
    pub fn status(self) -> i32 {
        match self {
            ExitReason::PowerOff => 0,
            ExitReason::Reset => 3,
            ExitReason::GuestExit(n) => i32::from(n),
            ExitReason::Stopped(None) => 0,
            ExitReason::Stopped(Some(sig)) => 128 + sig,
            ExitReason::VcpuFailed(_) => 1,
        }
    }
}

/// Shared by devices and vCPUs: the first reason recorded wins, and the event wakes the waiter.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    pub evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn raise(&self, reason: ExitReason) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        *lock(&self.reason)
    }
}
